"""The mesh service over in-memory agents: gating, routed delivery, acks, requests, Plumtree."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from ray_hyparview.agent.meshnode import DeliveryError, DuplicateName
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.routing import DataFrame, RoutingConfig
from ray_hyparview.testing.conditions import until
from ray_hyparview.testing.memory_mesh import MemoryMesh
from ray_hyparview.wire.table import MeshAck, MeshReply, MeshSend, wire_codec

T = TypeVar("T")

CONFIG = HyParViewConfig(
    active_view_size=2,
    passive_view_size=6,
    min_active_size=1,
    shuffle_interval=0.5,
    keepalive_interval=0.1,
    keepalive_timeout=0.5,
    neighbor_timeout=0.5,
)
ROUTING = RoutingConfig(update_interval=0.5, route_expiry=2.0, request_interval=0.2)
N = 6


class Overlay(MemoryMesh):
    """Agents and meshes on one in-memory network, with this module's timings."""

    def __init__(self, config: HyParViewConfig = CONFIG) -> None:
        super().__init__(config, routing=ROUTING)


@pytest_asyncio.fixture
async def overlay() -> AsyncIterator[Overlay]:
    o = Overlay()
    try:
        await o.add("n0")
        for i in range(1, N):
            await o.add(f"n{i}", "n0")
        await until(lambda: all(a.active_view for a in o.agents.values()), limit=10)
        await until(o.routes_complete, limit=15)
        for name, mesh in o.meshes.items():
            mesh.register(f"actor-{name}")
            mesh.subscribe(f"actor-{name}", "news")
        yield o
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_active_views_are_bounded_and_every_actor_reaches_every_other(
    overlay: Overlay,
) -> None:
    assert all(len(a.active_view) <= 2 for a in overlay.agents.values())
    kinds: set[str] = set()
    for src, dst in itertools.permutations(overlay.meshes, 2):
        kind = await overlay.meshes[src].send(f"actor-{src}", f"actor-{dst}", b"hi", timeout=5)
        kinds.add(kind)
    assert kinds <= {"direct", "routed"}
    assert "routed" in kinds  # with 6 nodes and 2 links each, some targets are 2+ hops away
    # A relay passes a routed frame on as its fields, never decoding it (Router.pass_on).
    assert sum(a.counters["passed_through"] for a in overlay.agents.values()) > 0
    for name, mesh in overlay.meshes.items():
        items = await mesh.poll(f"actor-{name}", wait=1.0)
        assert sorted(i.sender for i in items) == sorted(
            f"actor-{n}" for n in overlay.meshes if n != name
        )
        assert all(i.kind == "send" and i.payload == b"hi" for i in items)


@pytest.mark.asyncio
async def test_gate_allows_only_self_and_active_view(overlay: Overlay) -> None:
    mesh = overlay.meshes["n0"]
    active = set(overlay.agents["n0"].core.active_ids)
    for node in overlay.meshes:
        assert mesh.allowed(node) == (node == "n0" or node in active)


@pytest.mark.asyncio
async def test_request_reply_across_the_overlay(overlay: Overlay) -> None:
    async def server() -> None:
        [item] = await overlay.meshes["n5"].poll("actor-n5", wait=5.0)
        assert item.kind == "request"
        assert item.request is not None
        await overlay.meshes["n5"].reply(item.request, item.payload.upper())

    task = asyncio.create_task(server())
    answer = await overlay.meshes["n1"].request("actor-n1", "actor-n5", b"ping", timeout=5)
    await task
    assert answer == b"PING"


@pytest.mark.asyncio
async def test_publish_reaches_every_subscriber_exactly_once(overlay: Overlay) -> None:
    for i in range(5):
        overlay.meshes["n2"].publish("actor-n2", "news", f"m{i}".encode())
    for name, mesh in overlay.meshes.items():
        got: list[bytes] = []
        async with asyncio.timeout(5):
            while len(got) < 5:
                got += [i.payload for i in await mesh.poll(f"actor-{name}", wait=1.0)]
        await asyncio.sleep(0.2)
        got += [i.payload for i in await mesh.poll(f"actor-{name}", wait=0.0)]
        assert sorted(got) == [f"m{i}".encode() for i in range(5)], name


@pytest.mark.asyncio
async def test_errors_are_reported_never_silent(overlay: Overlay) -> None:
    with pytest.raises(DuplicateName):
        overlay.meshes["n3"].register("actor-n1")
    with pytest.raises(DeliveryError) as info:
        await overlay.meshes["n1"].send("actor-n1", "nobody", b"x", timeout=1)
    assert info.value.reason == "unknown_name"
    await overlay.kill("n4")
    with pytest.raises(DeliveryError) as info:
        await overlay.meshes["n1"].send("actor-n1", "actor-n4", b"x", timeout=2)
    assert info.value.reason in {"no_route", "timeout", "unknown_name"}
    # Live nodes still reach each other once routes heal around the dead one.
    for src, dst in itertools.permutations(overlay.meshes, 2):
        await overlay.meshes[src].send(f"actor-{src}", f"actor-{dst}", b"again", timeout=10)


@pytest.mark.asyncio
async def test_two_full_components_are_merged_by_the_membership_core() -> None:
    # Two triangles with an active view of 2: every node is full, so the paper's rules never
    # link them again (LOW requests are refused, nobody is short of links). The core's merge
    # rule (protocol/merge.py) finds a passive peer in another component and opens one MERGE
    # link; routing then reaches every node. (This was the mesh's routing-based merge check,
    # which the simulator and the standalone agent never ran.)
    o = Overlay(config=dataclasses.replace(CONFIG, merge_interval=0.5))
    try:
        for group in (("a0", "a1", "a2"), ("b0", "b1", "b2")):
            await o.add(group[0])
            for name in group[1:]:
                await o.add(name, group[0])
        await until(lambda: all(len(a.active_view) == 2 for a in o.agents.values()), limit=10)
        a_side = {"a0", "a1", "a2"}
        assert all(set(o.agents[n].core.active_ids) <= a_side for n in a_side)
        for name in a_side:
            o.agents[name].add_passive([o.agents[f"b{name[1]}"].myself])
        await until(o.routes_complete, limit=30)
        assert sum(a.core.counters["merge.linked"] for a in o.agents.values()) >= 1
        assert all(len(a.active_view) <= 2 for a in o.agents.values())
    finally:
        await o.aclose()


# --- regression tests for issue 9, findings 1, 3 and 4, and the timer loop ---------------------


def _make(cls: type[T], **values: object) -> T:
    """A wire message from the fields its class has: these tests build envelopes by hand, and
    also run against the schema from before incarnations and horizons existed."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in names})


async def _pair() -> Overlay:
    o = Overlay()
    await o.add("n0")
    await o.add("n1", "n0")
    await until(o.routes_complete, limit=15)
    o.meshes["n0"].register("actor-n0")
    o.meshes["n1"].register("actor-n1")
    return o


def _drop_acks(monkeypatch: pytest.MonkeyPatch, receiver: Any) -> None:
    """Make ``receiver`` (a MeshNode) lose every ACK it sends; the rest still goes out."""
    codec = wire_codec()
    route = receiver._route

    def drop_acks(node: str, data: bytes, *args: Any) -> None:
        if not isinstance(codec.decode(data), MeshAck):
            route(node, data, *args)

    monkeypatch.setattr(receiver, "_route", drop_acks)


async def _restart_n1(o: Overlay) -> None:
    await o.kill("n1")
    await o.add("n1", "n0")  # the same id, a new incarnation
    await until(o.routes_complete, limit=15)
    o.meshes["n1"].register("actor-n1")


@pytest.mark.asyncio
async def test_a_restarted_senders_first_messages_are_delivered_not_swallowed() -> None:
    o = await _pair()
    try:
        for i in range(3):
            await o.meshes["n1"].send("actor-n1", "actor-n0", b"old %d" % i, timeout=5)
        await _restart_n1(o)
        await o.meshes["n1"].send("actor-n1", "actor-n0", b"new", timeout=5)
        items = await o.meshes["n0"].poll("actor-n0", wait=1.0)
        assert [i.payload for i in items] == [b"old 0", b"old 1", b"old 2", b"new"]
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_a_reply_to_the_last_life_does_not_complete_the_new_lifes_request() -> None:
    o = await _pair()
    try:
        server = o.meshes["n0"]
        last_life = o.meshes["n1"].agent.incarnation
        first = asyncio.create_task(
            o.meshes["n1"].request("actor-n1", "actor-n0", b"q1", timeout=10)
        )
        [old] = await server.poll("actor-n0", wait=5)
        await _restart_n1(o)
        with contextlib.suppress(DeliveryError):
            await first
        second = asyncio.create_task(
            o.meshes["n1"].request("actor-n1", "actor-n0", b"q2", timeout=10)
        )
        await asyncio.sleep(0)  # the new life's first request: request id 1 again
        # A late answer to the last life's request 1, from the node that was asked.
        late = _make(MeshReply, request_id=1, incarnation=last_life, payload=b"answer to q1")
        o.meshes["n1"]._on_arrived("n0", wire_codec().encode(late))
        await asyncio.wait([second], timeout=0.2)
        assert not second.done(), "a reply to the last life completed this life's request"
        [new] = await server.poll("actor-n0", wait=5)
        assert old.request is not None
        assert new.request is not None
        await server.reply(old.request, b"answer to q1")  # the same link: arrives first
        await server.reply(new.request, b"answer to q2")
        assert await second == b"answer to q2"
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_an_ack_from_a_node_that_was_not_asked_is_ignored() -> None:
    o = await _pair()
    try:
        sender = o.meshes["n1"]
        o.directory.claim("actor-ghost", "ghost")  # a node nobody can reach
        task = asyncio.create_task(sender.send("actor-n1", "actor-ghost", b"x", timeout=1.5))
        await asyncio.sleep(0)  # the send takes message id 1 and routes its first copy
        forged = _make(
            MeshAck, msg_id=1, incarnation=sender.agent.incarnation, attempt=1, status="ok"
        )
        sender._on_arrived("n0", wire_codec().encode(forged))
        with pytest.raises(DeliveryError) as info:
            await task
        assert info.value.reason == "no_route"
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_a_retry_outliving_50000_other_messages_is_not_delivered_twice() -> None:
    o = Overlay()
    try:
        await o.add("n0")
        receiver = o.meshes["n0"]
        receiver.register("actor-n0")
        codec = wire_codec()

        def copy(msg_id: int, payload: bytes) -> bytes:
            message = _make(
                MeshSend,
                msg_id=msg_id,
                incarnation=5,
                attempt=1,
                horizon_ms=600_000,  # the sender retries for ten more minutes
                src_name="actor-far",
                dst_name="actor-n0",
                kind="send",
                key="",
                payload=payload,
                request_id=0,
            )
            return codec.encode(message)

        first = copy(1, b"once")
        receiver._on_arrived("far", first)  # delivered; the ACK is lost (no route to "far")
        delivered = len(await receiver.poll("actor-n0", wait=0, limit=10_000))
        for msg_id in range(2, 50_002):
            receiver._on_arrived("far", copy(msg_id, b"other"))
            if msg_id % 5000 == 0:
                delivered += len(await receiver.poll("actor-n0", wait=0, limit=10_000))
        delivered += len(await receiver.poll("actor-n0", wait=0, limit=10_000))
        assert delivered == 50_001
        receiver._on_arrived("far", first)  # the sender's retry of message 1
        assert await receiver.poll("actor-n0", wait=0) == []
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_a_lost_ack_is_an_unknown_outcome_and_a_keyed_retry_delivers_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    o = await _pair()
    try:
        receiver = o.meshes["n0"]
        _drop_acks(monkeypatch, receiver)
        with pytest.raises(DeliveryError) as info:
            await o.meshes["n1"].send("actor-n1", "actor-n0", b"pay", timeout=1.2, key="inv-7")
        assert info.value.outcome == "unknown"
        assert info.value.reason == "timeout"
        monkeypatch.undo()
        await o.meshes["n1"].send("actor-n1", "actor-n0", b"pay", timeout=5, key="inv-7")
        items = await receiver.poll("actor-n0", wait=0)
        assert [i.payload for i in items] == [b"pay"]
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_a_failing_timer_costs_one_counted_error_not_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    o = await _pair()
    try:
        mesh = o.meshes["n0"]
        on_timer = mesh.router.on_timer
        calls = 0

        def flaky(*, now: float) -> list[Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in a timer")
            return on_timer(now=now)

        monkeypatch.setattr(mesh.router, "on_timer", flaky)
        await until(lambda: calls >= 3, limit=10)  # route updates go on after the failure
        assert mesh.counters["errors.timer"] == 1
        assert await mesh.send("actor-n0", "actor-n1", b"still here", timeout=5) == "direct"
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_a_delivery_acknowledges_its_sender_before_it_tells_the_inbox(
    overlay: Overlay,
) -> None:
    # The sender waits for the ACK; the local actor does not: the ACK leaves first, and the
    # push to the actor (told through on_inbox) comes after it in the same event.
    receiver = overlay.meshes["n0"]
    order: list[str] = []
    send_raw = receiver.agent.send_raw

    def recording_send(peer: Any, message: object) -> bool:
        inner = wire_codec().decode(message.payload) if isinstance(message, DataFrame) else None
        if isinstance(inner, MeshAck):
            order.append("ack")
        return send_raw(peer, message)

    receiver.agent.send_raw = recording_send  # type: ignore[method-assign]
    receiver.on_inbox = lambda name: order.append("inbox:" + name)
    await overlay.meshes["n1"].send("actor-n1", "actor-n0", b"hi", timeout=5)
    assert order[:2] == ["ack", "inbox:actor-n0"]


@pytest.mark.asyncio
async def test_start_settles_by_callback_and_abandon_stops_it(overlay: Overlay) -> None:
    mesh = overlay.meshes["n1"]
    outcomes: list[tuple[bytes | None, Exception | None]] = []
    # To an actor on its own node: settled inside the call, before start returns.
    mesh.register("local-actor")
    mesh.start("actor-n1", "local-actor", b"x", lambda r, e: outcomes.append((r, e)), timeout=5)
    assert outcomes == [(None, None)]
    # Across the overlay: settled when the ACK comes, once.
    mesh.start("actor-n1", "actor-n0", b"x", lambda r, e: outcomes.append((r, e)), timeout=5)
    await until(lambda: len(outcomes) == 2)
    assert outcomes[1] == (None, None)
    # Abandoned: delivered all the same, never settled.
    ref = mesh.start("actor-n1", "actor-n0", b"y", lambda r, e: outcomes.append((r, e)), timeout=5)
    mesh.abandon(ref)
    inbox = overlay.meshes["n0"].core
    await until(lambda: [i.payload for i in inbox.take("actor-n0")][-1:] == [b"y"])
    assert len(outcomes) == 2


@pytest.mark.asyncio
async def test_a_turn_of_sends_asks_the_cores_for_their_deadlines_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every action list used to end with a check of all three cores' deadlines: seven per
    # message on the path. The check now runs once at the end of the loop turn.
    o = await _pair()
    try:
        mesh = o.meshes["n0"]
        asked = 0
        next_deadline = mesh.core.next_deadline

        def counted() -> float | None:
            nonlocal asked
            asked += 1
            return next_deadline()

        monkeypatch.setattr(mesh.core, "next_deadline", counted)
        await asyncio.gather(
            *(mesh.send("actor-n0", "actor-n1", b"%d" % i, timeout=5) for i in range(50))
        )
        assert asked < 25, f"{asked} deadline checks for 50 sends"
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_a_new_retry_time_still_wakes_a_sleeping_timer_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no routing or Plumtree timer due, the timer loop sleeps with no deadline; a send
    # whose ACK is lost must still be retried, so the end-of-turn check has to wake it.
    o = await _pair()
    try:
        mesh, receiver = o.meshes["n0"], o.meshes["n1"]
        monkeypatch.setattr(mesh.router, "next_deadline", lambda: None)
        monkeypatch.setattr(mesh.tree, "next_deadline", lambda: None)
        _drop_acks(monkeypatch, receiver)
        await until(lambda: mesh._armed == math.inf, limit=5)  # asleep, nothing due
        task = asyncio.ensure_future(mesh.send("actor-n0", "actor-n1", b"x", timeout=3))
        await until(lambda: mesh.core.counters["send.retried"] >= 1, limit=2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DeliveryError):
            await task
    finally:
        await o.aclose()
