"""Every attack of issue 10, replayed as a hostile peer would, against real agents over ZeroMQ.

Three agents ``n1``, ``n2``, ``n3`` run in this process on loopback, each with its mesh node
(routing, Plumtree, delivery), linked to one another (active view 2: full, as in the issue's
runs), with CURVE on (every node's own key pair, each key bound to its node id, as Ray mode
publishes them in the GCS) and off (plain text, the sidecar's and a standalone agent's mode
without ``[security]``). The attacker speaks raw ZeroMQ and the real wire codec; in CURVE runs
it holds ``mallory``, a key the nodes admit for the id ``mallory`` only (an admitted node that
is nobody's neighbour), or a fresh key nobody admits. Each test states what a trustworthy
system does and asserts it: refused, counted by cause, the real overlay keeps its links, memory
bounded, no file created by a pickle.

Attack (issue 10) -> test; modes: ``both`` (plain and CURVE hold), ``curve; plain X`` (holds
with CURVE; strict xfail in plain text, see below).

=============================================  ==================================================
forged graceful leaves (LEFT / DISCONNECT from  test_forged_leaves_cut_nothing
a non-owner)                                    curve; plain X
JOIN with incarnation 2**63 - 1 under a real    test_top_incarnation_joins_lock_nobody_out
id                                              curve; plain X
forged JOIN hijacking an id                     test_a_forged_join_hijacks_no_id
                                                curve; plain X
Sybil ids flooding the active view              test_sybil_ids_hold_no_active_slot
                                                curve (mallory's key, fresh keys); plain X
SHUFFLE_REPLY from a stranger                   test_an_unsolicited_shuffle_reply_is_dropped
                                                both
JOIN flood from fresh ids                       test_a_join_flood_evicts_no_real_link
                                                curve; plain X
garbage under a neighbour's id                  test_garbage_under_a_neighbours_id_keeps_its_link
                                                both
DATA / GOSSIP with a crafted pickle from a      test_a_strangers_pickle_runs_nowhere
non-neighbour (direct, two hops, gossip)        both
routed frame with a forged source, relayed by   test_a_forged_routed_source_is_dropped
an admitted neighbour                           both
  ... by a neighbour lying in its route         test_a_neighbour_lying_in_announcements_can_still_
  announcements (the limit that remains)        forge: both (asserts the forgery still passes)
gossip memory flood from an admitted node       test_a_gossip_flood_stays_within_bounds
                                                both
many-connection flood (RSS of a real agent      test_a_connection_flood_keeps_memory_bounded_and_
subprocess, 50 connections x 60 KB)             the_overlay_whole: both (2 s; the 10 s and 20 s
                                                runs, test_a_long_connection_flood_..., are slow)
reconnaissance by an unknown key or a           test_unknown_keys_and_plain_text_get_no_answer
plain-text peer                                 curve
what an admitted neighbour can still do (the    test_an_admitted_neighbour_runs_code_in_actors_
README's trust model), held as a fact           it_sends_to: both (the pickle is live)
=============================================  ==================================================

``plain X``: in plain text a claimed id is no proof (README, "Trust model"), so the attacks
that only claim someone else's id succeed. Those runs are strict ``xfail``: they assert what a
trustworthy system would do, fail today, and turn red (XPASS) the day one of them holds in
plain text too.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from pathlib import Path

import pytest

from ray_hyparview.protocol import limits
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.delivery_values import MeshPublish
from ray_hyparview.protocol.messages import Disconnect, Join, ShuffleReply
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.testing.conditions import until, wait_sync
from tests import hostile
from tests.hostile_overlay import (
    CACHE_BYTES,
    CODEC,
    IDS,
    INBOX_BYTES,
    consume,
    crafted,
    dealt_with,
    envelope,
    garbage,
    links_lost,
    overlay,
    raw_joins,
    victims,
)

PLAIN_FAILS = pytest.mark.xfail(
    reason="plain text: a claimed id is no proof (README, trust model)", strict=True
)
CLAIMED_ID_MODES = [
    pytest.param(False, marks=PLAIN_FAILS, id="plain"),
    pytest.param(True, id="curve"),
]
BOTH_MODES = [pytest.param(False, id="plain"), pytest.param(True, id="curve")]


# --- identity attacks: only the owner of an id may leave, restart or move it --------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", CLAIMED_ID_MODES)
async def test_forged_leaves_cut_nothing(curve: bool) -> None:
    """6 graceful leaves, one per ordered pair, each claiming the leaving node's id: the issue
    saw them cut a 3-node overlay apart within 0.5 s, for good. With CURVE each is refused
    (the key is mallory's: ``impersonation``), and mallory's own leave naming another node is
    dropped by the core (``spoofed_sender``)."""
    async with overlay(curve) as o:
        before = {
            n: o.total(n, "agent.received.Disconnect", "transport.recv.dropped.impersonation")
            for n in IDS
        }
        for claimed in IDS:
            forger = await o.attacker(claimed)
            leave = Disconnect(
                sender=o.peer(claimed), incarnation=o.agents[claimed].incarnation, leaving=True
            )
            for target in IDS:
                if target != claimed:
                    o.inject(forger, target, leave)
        await until(
            lambda: all(
                o.total(n, "agent.received.Disconnect", "transport.recv.dropped.impersonation")
                >= before[n] + 2
                for n in IDS
            ),
            limit=10,
        )
        if curve:
            assert all(o.counter(n, "transport.recv.dropped.impersonation") >= 2 for n in IDS)
            mallory = await o.attacker("mallory")
            o.inject(
                mallory,
                "n1",
                Disconnect(
                    sender=o.peer("n2"), incarnation=o.agents["n2"].incarnation, leaving=True
                ),
            )
            await until(lambda: o.counter("n1", "core.dropped.spoofed_sender") >= 1, limit=10)
        await o.still_whole()


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", CLAIMED_ID_MODES)
async def test_top_incarnation_joins_lock_nobody_out(curve: bool) -> None:
    """6 JOINs, each under a real node's id with incarnation 2**63 - 1: the issue saw them lock
    the real nodes out for ``lost_retention`` (their real incarnation reads as stale). With
    CURVE each is refused as ``impersonation``; the real nodes keep their links and talk."""
    async with overlay(curve) as o:
        top = limits.MAX_INCARNATION

        def seen(n: NodeId) -> int:
            return o.total(n, "agent.received.Join", "transport.recv.dropped.impersonation")

        before = {n: seen(n) for n in IDS}
        for claimed in IDS:
            forger = await o.attacker(claimed)
            for target in IDS:
                if target != claimed:
                    o.inject(forger, target, Join(sender=o.peer(claimed), incarnation=top))
        await until(lambda: all(seen(n) >= before[n] + 2 for n in IDS), limit=10)
        if curve:
            assert all(o.counter(n, "transport.recv.dropped.impersonation") >= 2 for n in IDS)
        await o.still_whole()
        victims(o, "n1")
        o.meshes["n2"].register("sender")
        assert await o.meshes["n2"].send("sender", "victim-n1", b"hi", timeout=5) == "direct"


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", CLAIMED_ID_MODES)
async def test_a_forged_join_hijacks_no_id(curve: bool) -> None:
    """A JOIN claiming n3's id from the attacker's own endpoint, with a newer incarnation: the
    issue saw the victim take the attacker for n3 and send it n3's traffic. With CURVE the
    frame is refused (``impersonation``), and a dial of n3's id could only reach a holder of
    n3's secret key anyway."""
    async with overlay(curve) as o:
        forger = await o.attacker("n3")
        hijack = Join(
            sender=Peer("n3", forger.endpoint), incarnation=o.agents["n3"].incarnation + 1
        )

        def seen() -> int:
            return o.total("n1", "agent.received.Join", "transport.recv.dropped.impersonation")

        before = seen()
        o.inject(forger, "n1", hijack)
        await until(lambda: seen() > before, limit=10)
        peer = o.agents["n1"].active_peer("n3")
        assert peer is not None
        assert peer.endpoint == o.peer("n3").endpoint
        await o.still_whole()
        victims(o, "n3")
        o.meshes["n1"].register("sender")
        await o.meshes["n1"].send("sender", "victim-n3", pickle.dumps("for n3"), timeout=5)
        assert await consume(o) == ["for n3"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("curve", "fresh_keys"),
    [
        pytest.param(False, False, marks=PLAIN_FAILS, id="plain"),
        pytest.param(True, False, id="curve-mallorys_key"),
        pytest.param(True, True, id="curve-fresh_keys"),
    ],
)
async def test_sybil_ids_hold_no_active_slot(curve: bool, fresh_keys: bool) -> None:
    """6 Sybil ids JOINing over and over: the issue saw them hold the victim's active view 98%
    of the time. With CURVE a Sybil id has no key of its own: under mallory's key it is an
    impersonation, under a fresh key the handshake is refused (``zap.denied``)."""
    async with overlay(curve) as o:
        sybils = [f"sybil-{i}" for i in range(6)]
        cut = links_lost(o)
        joined = o.counter("n1", "agent.received.Join")
        before = dealt_with(o, "n1")
        await raw_joins(o, "n1", sybils, rounds=5, fresh_keys=fresh_keys)
        # Every frame read or refused; with fresh keys, every connection refused.
        await until(lambda: dealt_with(o, "n1") >= before + (6 if fresh_keys else 30), limit=10)
        assert not o.active("n1") & set(sybils)
        assert links_lost(o) == cut
        assert o.counter("n1", "agent.received.Join") == joined
        await o.still_whole()


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", CLAIMED_ID_MODES)
async def test_a_join_flood_evicts_no_real_link(curve: bool) -> None:
    """300 JOINs from fresh ids (the issue sent 951 and saw 227 real links evicted). With
    CURVE none of those ids has a key: refused at the handshake, counted."""
    async with overlay(curve) as o:
        ids = [f"fresh-{i}" for i in range(300)]
        cut = links_lost(o)
        before = dealt_with(o, "n1")
        await raw_joins(o, "n1", ids, rounds=1, fresh_keys=True)
        await until(lambda: dealt_with(o, "n1") >= before + len(ids), limit=20)
        assert links_lost(o) == cut
        assert not o.active("n1") & set(ids)
        await o.still_whole()


# --- membership from strangers, garbage --------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", BOTH_MODES)
async def test_an_unsolicited_shuffle_reply_is_dropped(curve: bool) -> None:
    """One SHUFFLE_REPLY of 12 fake ids from a node nobody asked: the issue saw 11 of 12
    passive ids turn fake, spread by shuffles to every node. A reply counts only as the answer
    to the node's own open shuffle, proved by its nonce (``unsolicited_shuffle_reply``)."""
    async with overlay(curve) as o:
        mallory = await o.attacker("mallory")
        fakes = tuple(Peer(f"fake-{i}", f"tcp://127.0.0.1:{9000 + i}") for i in range(12))
        for nonce in (0, 1, 2**52):
            o.inject(
                mallory,
                "n1",
                ShuffleReply(
                    sender=Peer("mallory", mallory.endpoint),
                    incarnation=1,
                    peers=fakes,
                    nonce=nonce,
                ),
            )
        await until(
            lambda: o.counter("n1", "core.dropped.unsolicited_shuffle_reply") >= 3, limit=10
        )
        fake_ids = {p.id for p in fakes}
        assert not {p.id for p in o.agents["n1"].passive_view} & fake_ids
        assert not o.active("n1") & fake_ids
        await o.still_whole()


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", BOTH_MODES)
async def test_garbage_under_a_neighbours_id_keeps_its_link(curve: bool) -> None:
    """Garbage sent under n2's id used to get n2's link dropped. Plain text: the claimed id is
    no proof, so the offence is counted (``offender.unproved``), nobody is cut off. CURVE: the
    frames never reach the agent (``impersonation``)."""
    async with overlay(curve) as o:
        forger = await o.attacker("n2")
        for index in range(40):
            assert forger.send(o.peer("n1"), b"\xff garbage " + bytes([index]))
        if curve:
            await until(
                lambda: o.counter("n1", "transport.recv.dropped.impersonation") >= 40, limit=10
            )
        else:
            # Counted by cause; the real n2's frames reset its tally, and a full tally would
            # only be counted as unproved.
            await until(lambda: garbage(o, "n1") >= 40, limit=10)
        assert o.counter("n1", "agent.offender.disconnected") == 0
        await o.still_whole()


# --- pickles: nothing from a stranger reaches an actor -----------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", BOTH_MODES)
async def test_a_strangers_pickle_runs_nowhere(curve: bool, tmp_path: Path) -> None:
    """A crafted pickle from an id that is nobody's neighbour (with CURVE: mallory, admitted),
    as a DATA frame for an actor on n1, one for an actor two hops on (n3, relayed by n1), and a
    GOSSIP to every subscriber: the issue saw all three run code. None is routed, gossiped or
    delivered (``dropped.not_neighbor``), and no file appears when the actors read."""
    async with overlay(curve) as o:
        victims(o, *IDS, topic="news")
        pwned = tmp_path / "pwned"
        mallory = await o.attacker("mallory")
        for destination in ("n1", "n3"):
            o.inject(
                mallory,
                "n1",
                rt.DataFrame(
                    source="mallory",
                    destination=destination,
                    frame_id=1,
                    hops=1,
                    hop_limit=8,
                    payload=envelope(crafted(pwned), f"victim-{destination}"),
                ),
            )
        gossip = pt.Gossip(
            msg_id=("mallory", 1, 1),
            round=0,
            topic="news",
            payload=CODEC.encode(MeshPublish(src_name="mallory-actor", payload=crafted(pwned))),
        )
        o.inject(mallory, "n1", gossip)
        await until(lambda: o.counter("n1", "agent.dropped.not_neighbor") >= 3, limit=10)
        assert await consume(o) == []
        assert not pwned.exists()
        assert all(m.router.counters["arrived"] == 0 for m in o.meshes.values())


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", BOTH_MODES)
async def test_an_admitted_neighbour_runs_code_in_actors_it_sends_to(
    curve: bool, tmp_path: Path
) -> None:
    """The trust model, held as a fact so that the suite shows the pickle above is live: an
    admitted neighbour's send reaches the actor, and the actor's unpickling runs its code."""
    async with overlay(curve) as o:
        victims(o, "n1")
        o.meshes["n2"].register("sender")
        pwned = tmp_path / "pwned"
        await o.meshes["n2"].send("sender", "victim-n1", crafted(pwned), timeout=5)
        assert len(await consume(o)) == 1
        assert pwned.exists()


# --- routed frames: the source is checked against the route it came by -------------------------


def _forged(source: str, destination: str, payload: bytes) -> rt.DataFrame:
    return rt.DataFrame(
        source=source, destination=destination, frame_id=7, hops=2, hop_limit=8, payload=payload
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", BOTH_MODES)
async def test_a_forged_routed_source_is_dropped(curve: bool, tmp_path: Path) -> None:
    """n2, an admitted neighbour gone bad, relays frames under sources it has no route to (an
    id nobody announces, and n1's own): dropped and counted (``dropped.source_route``), not
    delivered, not relayed on to n3, no file. A frame under n2's own id still arrives."""
    async with overlay(curve) as o:
        victims(o, "n1", "n3")
        pwned = tmp_path / "pwned"
        n2 = o.agents["n2"].transport
        router1, router3 = o.meshes["n1"].router, o.meshes["n3"].router
        for source, destination in (("ghost", "n1"), ("n1", "n1"), ("ghost", "n3")):
            payload = envelope(crafted(pwned), f"victim-{destination}")
            assert n2.send(o.peer("n1"), CODEC.encode(_forged(source, destination, payload)))
        await until(lambda: router1.counters["dropped.source_route"] >= 3, limit=10)
        assert router1.counters["arrived"] == 0
        assert router3.counters["arrived"] == 0
        assert await consume(o) == []
        assert not pwned.exists()
        honest = _forged("n2", "n1", envelope(pickle.dumps("honest"), "victim-n1"))
        assert n2.send(o.peer("n1"), CODEC.encode(honest))
        await until(lambda: router1.counters["arrived"] == 1, limit=10)
        assert router1.counters["dropped.source_route"] == 3
        await o.still_whole()


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", BOTH_MODES)
async def test_a_neighbour_lying_in_announcements_can_still_forge(curve: bool) -> None:
    """What the check does not stop (README, trust model): a neighbour that announces a route
    to an id it does not reach can then forge that id's frames. Held as a fact, so that a
    change of the model shows here."""
    async with overlay(curve) as o:
        victims(o, "n1")
        n2 = o.agents["n2"].transport
        router1 = o.meshes["n1"].router
        lie = rt.RouteUpdate(entries=(("ghost", 1, 1),))
        assert n2.send(o.peer("n1"), CODEC.encode(lie))
        await until(lambda: "ghost" in router1.routes(), limit=10)
        forged = _forged("ghost", "n1", envelope(pickle.dumps("forged"), "victim-n1"))
        assert n2.send(o.peer("n1"), CODEC.encode(forged))
        await until(lambda: router1.counters["arrived"] == 1, limit=10)
        assert router1.counters["dropped.source_route"] == 0
        assert await consume(o) == ["forged"]


# --- memory ------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("curve", BOTH_MODES)
async def test_a_gossip_flood_stays_within_bounds(curve: bool) -> None:
    """n2, an admitted neighbour, sends n1 200 GOSSIPs of 49 KB (9.8 MB in all) to a topic
    that an actor on every node subscribes to; the issue saw 6,000 gossips of 59 KB grow every
    node by ~350 MiB. On every node the Plumtree payload cache and the inboxes stay within
    their byte bounds (2 MiB each here), the rest is evicted or refused and counted
    (``cache.evicted``, ``publish.inbox_full``), and the overlay keeps its links."""
    async with overlay(curve) as o:
        victims(o, *IDS, topic="news")
        n2 = o.agents["n2"]
        body = os.urandom(limits.MAX_PAYLOAD - 8)
        peak = dict.fromkeys(IDS, 0)
        peak_inbox = dict.fromkeys(IDS, 0)

        def sample() -> None:
            for node_id, mesh in o.meshes.items():
                peak[node_id] = max(peak[node_id], mesh.tree.cache_bytes)
                peak_inbox[node_id] = max(peak_inbox[node_id], mesh.core.inbox_bytes)

        count = 200
        for index in range(count):
            publish = MeshPublish(src_name="flooder", payload=body + index.to_bytes(8, "big"))
            gossip = pt.Gossip(
                msg_id=("n2", n2.incarnation, 10_000 + index),
                round=0,
                topic="news",
                payload=CODEC.encode(publish),
            )
            n2.transport.send(o.peer("n1"), CODEC.encode(gossip))
            sample()
            if index % 10 == 9:
                await asyncio.sleep(0)  # let the loops run, as a flood over time would

        enough = 2 * CACHE_BYTES // len(body)  # twice what the bounds hold

        def flooded() -> bool:
            sample()
            return o.meshes["n1"].tree.counters["received.Gossip"] >= enough and all(
                o.meshes[n].core.counters["publish.inbox_full"] > 0
                and o.meshes[n].tree.counters["cache.evicted"] > 0
                for n in ("n1", "n3")
            )

        await until(flooded, limit=20)
        assert all(value <= CACHE_BYTES for value in peak.values()), peak
        assert all(value <= INBOX_BYTES for value in peak_inbox.values()), peak_inbox
        await o.still_whole()


def _settled_target(before: float) -> float:
    return max(before * 1.5, before + 20.0)


def _connection_flood(tmp_path: Path, *, curve: bool, seconds: float) -> None:
    """50 connections sending 60 KB frames of garbage to a real agent subprocess (the issue saw
    30 MB grow to 1.1-1.8 GB, 437 MB kept after); with CURVE they hold a key the victim admits
    unbound. Peak RSS under 200 MiB, back near the baseline within a minute, links kept, a
    bounded number of log lines."""
    with hostile.cluster(tmp_path, curve=curve) as c:
        victim = c.victim
        wait_sync(lambda: sorted(victim.status()["active"]) == ["n2", "n3"], limit=30)
        before = hostile.rss_mib(victim.pid)
        keys = None
        if c.attacker_keys is not None and c.server_key is not None:
            keys = (c.server_key, *c.attacker_keys)
        result = hostile.flood(
            victim.info["endpoint"], seconds=seconds, watch_pid=victim.pid, curve=keys
        )
        counters = victim.status()["counters"]
        assert counters.get("transport.recv.msgs", 0) > 1000, counters  # it was an attack
        assert result.peak_mib < RSS_LIMIT_MIB, (before, result.samples)
        after, waited = hostile.settle(victim.pid, target_mib=_settled_target(before), limit=60)
        assert after <= _settled_target(before), (before, after, waited)
        status = victim.status()
        assert sorted(status["active"]) == ["n2", "n3"]
        for node_id in ("n2", "n3"):
            assert "n1" in c.agents[node_id].status()["active"]
        # Bounded log volume: thousands of bad frames, a handful of lines.
        assert victim.log_lines() <= 40, victim.log.read_text()[-2000:]
        if status["counters"].get("agent.offender.disconnected", 0) > 20:
            # Rate-limited in the agent itself, or by the process's log filter.
            suppressed = ("agent.log.suppressed", "process.log.suppressed")
            assert sum(status["counters"].get(k, 0) for k in suppressed) > 0


RSS_LIMIT_MIB = 200.0


@pytest.mark.parametrize("curve", BOTH_MODES)
def test_a_connection_flood_keeps_memory_bounded_and_the_overlay_whole(
    tmp_path: Path, curve: bool
) -> None:
    _connection_flood(tmp_path, curve=curve, seconds=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("curve", BOTH_MODES)
@pytest.mark.parametrize("seconds", [10.0, 20.0])
def test_a_long_connection_flood_keeps_memory_bounded_and_the_overlay_whole(
    tmp_path: Path, curve: bool, seconds: float
) -> None:
    _connection_flood(tmp_path, curve=curve, seconds=seconds)


# --- what held before, and must keep holding ---------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_keys_and_plain_text_get_no_answer() -> None:
    """Reconnaissance: one JOIN used to name every node in its replies. With CURVE, a JOIN
    under a key nobody admits is refused at the handshake (``zap.denied``), and so is a
    plain-text peer (``handshake_failed``): neither reaches the agent."""
    async with overlay(True) as o:
        joined = o.counter("n1", "agent.received.Join")
        denied = o.counter("n1", "transport.zap.denied")
        await raw_joins(o, "n1", ["scout"], rounds=1, fresh_keys=True)
        await until(lambda: o.counter("n1", "transport.zap.denied") > denied, limit=10)

        def failed() -> int:
            counters = o.agents["n1"].stats()["counters"]
            return sum(
                v for k, v in counters.items() if k.startswith("transport.router.handshake_failed")
            )

        before = failed()
        await raw_joins(o, "n1", ["plain-scout"], rounds=1, fresh_keys=True, plain_text=True)
        await until(lambda: failed() > before, limit=10)
        assert o.counter("n1", "agent.received.Join") == joined
        await o.still_whole()
