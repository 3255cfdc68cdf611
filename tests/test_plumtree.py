"""Tests of the Plumtree broadcast core, driven back to back with explicit time.

The small :class:`Net` driver below delivers messages over a static graph with random per-message
latencies (seeded), fires timers in time order, and stops at quiescence with a guard against
runaway exchanges, the way aioquic's ``roundtrip_until_done`` does.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.protocol.plumtree import (
    MAX_ID_INT,
    MAX_IHAVE_ENTRIES,
    MAX_ORIGIN_LEN,
    MAX_PAYLOAD,
    MAX_ROUND,
    MAX_TOPIC_LEN,
    Action,
    Deliver,
    Gossip,
    Graft,
    IHave,
    MsgId,
    Plumtree,
    PlumtreeConfig,
    PlumtreeError,
    Prune,
    SendTo,
)
from ray_hyparview.sim.engine import Simulation
from ray_hyparview.sim.scenario import build_overlay
from ray_hyparview.sim.stacked import broadcast, broadcast_node_factory
from ray_hyparview.wire.table import wire_codec

QUICK = PlumtreeConfig(ihave_timeout=1.0, graft_timeout=0.5, lazy_flush_interval=0.0)


def make(name: str, config: PlumtreeConfig = QUICK, incarnation: int = 0) -> Plumtree:
    return Plumtree(name, config, rng=random.Random(name), incarnation=incarnation)


def sends(actions: Iterable[Action]) -> list[SendTo]:
    return [a for a in actions if isinstance(a, SendTo)]


def delivers(actions: Iterable[Action]) -> list[Deliver]:
    return [a for a in actions if isinstance(a, Deliver)]


class Net:
    """Plumtree nodes over an undirected graph, with seeded random latencies."""

    def __init__(
        self,
        edges: Iterable[tuple[str, str]],
        nodes: Iterable[str] = (),
        *,
        seed: int = 0,
        config: PlumtreeConfig = QUICK,
        latency: tuple[float, float] = (0.001, 0.05),
    ) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.now = 0.0
        self.nodes: dict[str, Plumtree] = {}
        self.delivered: dict[str, list[Deliver]] = {}
        self.links: set[frozenset[str]] = set()
        self.queue: list[tuple[float, int, str, str, object]] = []
        self.seq = 0
        self.timers: list[tuple[float, int, str]] = []  # (deadline, seq, node); stale skipped
        self.config = config
        for name in nodes:
            self._add(name)
        for a, b in edges:
            self.link_up(a, b)

    def _add(self, name: str) -> None:
        if name not in self.nodes:
            self.nodes[name] = make(name, self.config)
            self.delivered[name] = []

    def link_up(self, a: str, b: str) -> None:
        self._add(a)
        self._add(b)
        self.links.add(frozenset((a, b)))
        self.apply(a, self.nodes[a].neighbor_up(b, now=self.now))
        self.apply(b, self.nodes[b].neighbor_up(a, now=self.now))

    def link_down(self, a: str, b: str) -> None:
        self.links.discard(frozenset((a, b)))
        self.apply(a, self.nodes[a].neighbor_down(b, now=self.now))
        self.apply(b, self.nodes[b].neighbor_down(a, now=self.now))

    def apply(self, name: str, actions: list[Action]) -> None:
        deadline = self.nodes[name].next_deadline()
        if deadline is not None:
            self.seq += 1
            heapq.heappush(self.timers, (deadline, self.seq, name))
        for action in actions:
            match action:
                case SendTo(peer_id=peer, message=message):
                    assert frozenset((name, peer)) in self.links, "sent off the active view"
                    self.seq += 1
                    at = self.now + self.rng.uniform(*self.latency)
                    heapq.heappush(self.queue, (at, self.seq, name, peer, message))
                case Deliver():
                    self.delivered[name].append(action)

    def broadcast(self, name: str, payload: bytes = b"x", topic: str = "t") -> MsgId:
        msg_id, actions = self.nodes[name].broadcast(payload, topic=topic, now=self.now)
        self.apply(name, actions)
        return msg_id

    def run(self, until: float | None = None, max_steps: int = 1_000_000) -> None:
        """Deliver messages and fire protocol timers (not cache expiry) until quiescence."""
        for _ in range(max_steps):
            timer_at, timer_node = self._next_timer()
            msg_at = self.queue[0][0] if self.queue else None
            if msg_at is None and timer_at is None:
                if until is not None:
                    self.now = max(self.now, until)  # quiet until then: time still passes
                return
            at = min(t for t in (msg_at, timer_at) if t is not None)
            if until is not None and at > until:
                self.now = until
                return
            self.now = max(self.now, at)
            if msg_at is not None and msg_at == at:
                _, _, src, dst, message = heapq.heappop(self.queue)
                if frozenset((src, dst)) in self.links:  # a link that went down loses its queue
                    self.apply(dst, self.nodes[dst].receive(src, message, now=self.now))
            else:
                assert timer_node is not None
                heapq.heappop(self.timers)
                self.apply(timer_node, self.nodes[timer_node].on_timer(now=self.now))
        raise AssertionError("no quiescence: too many steps")

    def _next_timer(self) -> tuple[float | None, str | None]:
        # Cache expiry deadlines are minutes away; quiescence means no protocol timer is due
        # within the horizon of ten ihave + graft cycles.
        horizon = self.now + 10 * (self.config.ihave_timeout + self.config.graft_timeout)
        while self.timers:
            deadline, _, name = self.timers[0]
            if self.nodes[name].next_deadline() == deadline:
                return (deadline, name) if deadline <= horizon else (None, None)
            heapq.heappop(self.timers)  # stale: the node re-armed or cancelled
        return None, None

    def eager_edges(self) -> set[frozenset[str]]:
        edges = set()
        for name, node in self.nodes.items():
            for peer in node.eager_peers:
                assert name in self.nodes[peer].eager_peers, f"asymmetric eager {name}-{peer}"
                edges.add(frozenset((name, peer)))
        return edges

    def total(self, key: str) -> int:
        return sum(node.counters[key] for node in self.nodes.values())


def is_spanning_tree(nodes: Iterable[str], edges: set[frozenset[str]]) -> bool:
    names = list(nodes)
    if len(edges) != len(names) - 1:
        return False
    parent = {n: n for n in names}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for edge in edges:
        a, b = tuple(edge)
        ra, rb = find(a), find(b)
        if ra == rb:
            return False
        parent[ra] = rb
    return True


def random_connected_graph(rng: random.Random, n: int, degree: int) -> list[tuple[str, str]]:
    """A random tree (so it is connected) plus random chords up to about ``degree`` per node."""
    names = [f"n{i:04d}" for i in range(n)]
    edges: set[frozenset[str]] = set()
    for i in range(1, n):
        edges.add(frozenset((names[i], names[rng.randrange(i)])))
    target = n * degree // 2
    while len(edges) < min(target, n * (n - 1) // 2):
        a, b = rng.sample(names, 2)
        edges.add(frozenset((a, b)))
    return sorted(tuple(sorted(e)) for e in edges)  # type: ignore[misc]


# --- unit tests, back to back --------------------------------------------------------------------


def test_broadcast_delivers_locally_and_pushes_to_every_neighbor() -> None:
    a = make("a")
    a.neighbor_up("b", now=0.0)
    a.neighbor_up("c", now=0.0)
    msg_id, actions = a.broadcast(b"hello", topic="news", now=0.0)
    gossip = Gossip(msg_id=msg_id, round=0, topic="news", payload=b"hello")
    assert msg_id == ("a", 0, 1)
    assert actions == [
        Deliver(msg_id=msg_id, topic="news", payload=b"hello", origin="a", hops=0),
        SendTo("b", gossip),
        SendTo("c", gossip),
    ]
    assert a.counters["sent.Gossip"] == 2


def test_receiver_delivers_once_forwards_and_prunes_duplicates() -> None:
    b = make("b")
    for peer in ("a", "c", "d"):
        b.neighbor_up(peer, now=0.0)
    gossip = Gossip(msg_id=("a", 0, 1), round=0, topic="t", payload=b"p")
    first = b.receive("a", gossip, now=1.0)
    relayed = Gossip(msg_id=("a", 0, 1), round=1, topic="t", payload=b"p")
    assert first == [
        Deliver(msg_id=("a", 0, 1), topic="t", payload=b"p", origin="a", hops=1),
        SendTo("c", relayed),
        SendTo("d", relayed),
    ]
    # The same message again from c: c's link is redundant, c becomes lazy and is told so.
    assert b.receive("c", relayed, now=1.1) == [SendTo("c", Prune())]
    assert list(b.eager_peers) == ["a", "d"]
    assert list(b.lazy_peers) == ["c"]
    # Next message: eager to a and d, an IHAVE to c.
    _, actions = b.broadcast(b"q", topic="t", now=2.0)
    assert [a.peer_id for a in sends(actions) if isinstance(a.message, Gossip)] == ["a", "d"]
    assert SendTo("c", IHave(announcements=((("b", 0, 1), 0),))) in actions


def test_prune_moves_sender_to_lazy() -> None:
    a = make("a")
    a.neighbor_up("b", now=0.0)
    assert a.receive("b", Prune(), now=0.0) == []
    assert list(a.lazy_peers) == ["b"]
    assert list(a.eager_peers) == []


def test_missing_message_is_grafted_after_timeout1_then_next_announcer_after_timeout2() -> None:
    x = make("x")
    x.neighbor_up("p", now=0.0)
    x.neighbor_up("q", now=0.0)
    x.receive("p", Prune(), now=0.0)
    x.receive("q", Prune(), now=0.0)
    mid: MsgId = ("o", 0, 7)
    assert x.receive("p", IHave(announcements=((mid, 2),)), now=10.0) == []
    assert x.receive("q", IHave(announcements=((mid, 1),)), now=10.2) == []
    assert x.next_deadline() == pytest.approx(11.0)
    assert x.on_timer(now=10.9) == []
    # timeout1 expired: graft the first announcer and make the link eager.
    assert x.on_timer(now=11.0) == [SendTo("p", Graft(msg_id=mid, round=2))]
    assert "p" in x.eager_peers
    assert x.next_deadline() == pytest.approx(11.5)
    # p did not answer within timeout2: graft q.
    assert x.on_timer(now=11.5) == [SendTo("q", Graft(msg_id=mid, round=1))]
    # q answers: delivered once, no timer left, later answers are duplicates.
    answer = Gossip(msg_id=mid, round=1, topic="t", payload=b"z")
    got = x.receive("q", answer, now=11.6)
    assert delivers(got) == [Deliver(msg_id=mid, topic="t", payload=b"z", origin="o", hops=2)]
    assert x.on_timer(now=20.0) == []
    assert delivers(x.receive("p", answer, now=20.0)) == []
    assert x.counters["graft.timer"] == 2


def test_graft_is_answered_from_the_payload_cache() -> None:
    a = make("a")
    a.neighbor_up("b", now=0.0)
    a.receive("b", Prune(), now=0.0)
    msg_id, _ = a.broadcast(b"data", topic="t", now=1.0)
    assert a.receive("b", Graft(msg_id=msg_id, round=0), now=1.5) == [
        SendTo("b", Gossip(msg_id=msg_id, round=0, topic="t", payload=b"data"))
    ]
    assert "b" in a.eager_peers
    # After payload_retention the payload is gone: the link is still grafted, nothing is sent.
    a.receive("b", Prune(), now=2.0)
    late = 1.0 + QUICK.payload_retention + 1
    assert a.receive("b", Graft(msg_id=msg_id, round=0), now=late) == []
    assert a.counters["graft.unanswered"] == 1
    assert "b" in a.eager_peers


def test_optimization_swaps_to_the_shorter_path() -> None:
    config = PlumtreeConfig(lazy_flush_interval=0.0, optimization_threshold=2)
    x = make("x", config)
    for peer in ("far", "near"):
        x.neighbor_up(peer, now=0.0)
    x.receive("near", Prune(), now=0.0)
    mid: MsgId = ("o", 0, 1)
    x.receive("near", IHave(announcements=((mid, 1),)), now=1.0)
    actions = x.receive("far", Gossip(msg_id=mid, round=4, topic="t", payload=b""), now=1.1)
    assert SendTo("near", Graft(msg_id=None, round=1)) in actions
    assert SendTo("far", Prune()) in actions
    assert list(x.eager_peers) == ["near"]
    assert list(x.lazy_peers) == ["far"]
    assert x.counters["graft.optimize"] == 1


def test_optimization_respects_threshold() -> None:
    config = PlumtreeConfig(lazy_flush_interval=0.0, optimization_threshold=3)
    x = make("x", config)
    for peer in ("far", "near"):
        x.neighbor_up(peer, now=0.0)
    x.receive("near", Prune(), now=0.0)
    mid: MsgId = ("o", 0, 1)
    x.receive("near", IHave(announcements=((mid, 1),)), now=1.0)
    actions = x.receive("far", Gossip(msg_id=mid, round=3, topic="t", payload=b""), now=1.1)
    assert sends(actions) == []
    assert x.counters["graft.optimize"] == 0


def test_neighbor_down_forgets_announcements() -> None:
    x = make("x")
    x.neighbor_up("p", now=0.0)
    x.receive("p", Prune(), now=0.0)
    x.receive("p", IHave(announcements=((("o", 0, 1), 0),)), now=0.0)
    x.neighbor_down("p", now=0.5)
    assert x.on_timer(now=5.0) == []
    assert x.counters["graft.exhausted"] == 1
    assert list(x.eager_peers) == []
    assert list(x.lazy_peers) == []


def test_ihave_batched_per_peer_and_bounded() -> None:
    config = PlumtreeConfig(lazy_flush_interval=0.1, ihave_batch_max=3)
    a = make("a", config)
    a.neighbor_up("b", now=0.0)
    a.receive("b", Prune(), now=0.0)
    out: list[Action] = []
    for i in range(4):
        out += a.broadcast(b"", topic="t", now=0.01 * i)[1]
    ihaves = [s.message for s in sends(out) if isinstance(s.message, IHave)]
    assert [len(m.announcements) for m in ihaves] == [3]  # queue full: flushed at once
    deadline = a.next_deadline()
    assert deadline is not None
    assert deadline <= 0.03 + 0.1
    flushed = a.on_timer(now=deadline)
    assert flushed == [SendTo("b", IHave(announcements=((("a", 0, 4), 0),)))]


def test_exactly_once_after_the_seen_cache_forgets() -> None:
    config = PlumtreeConfig(lazy_flush_interval=0.0, seen_retention=5.0, payload_retention=5.0)
    a = make("a", config)
    a.neighbor_up("b", now=0.0)
    old = Gossip(msg_id=("b", 0, 3), round=0, topic="t", payload=b"")
    assert len(delivers(a.receive("b", old, now=0.0))) == 1
    a.on_timer(now=100.0)
    # The id itself is forgotten, its origin's watermark is not: no second delivery.
    again = a.receive("b", old, now=100.0)
    assert delivers(again) == []
    assert a.counters["dropped.stale"] == 1
    older = Gossip(msg_id=("b", 0, 2), round=0, topic="t", payload=b"")
    assert delivers(a.receive("b", older, now=100.0)) == []
    # A new incarnation of the origin starts its own sequence.
    reborn = Gossip(msg_id=("b", 1, 1), round=0, topic="t", payload=b"")
    assert len(delivers(a.receive("b", reborn, now=100.0))) == 1


def test_seen_cache_is_bounded() -> None:
    config = PlumtreeConfig(lazy_flush_interval=0.0, seen_max=10, payload_cache_max=5)
    a = make("a", config)
    a.neighbor_up("b", now=0.0)
    for seq in range(100):
        g = Gossip(msg_id=("o", 0, seq), round=0, topic="t", payload=b"")
        a.receive("b", g, now=0.0)
    assert a.counters["delivered"] == 100
    assert len(a._seen) == 10
    assert len(a._cache) == 5


@pytest.mark.parametrize(
    "message",
    [
        Gossip(msg_id=("", 0, 1), round=0, topic="t", payload=b""),
        Gossip(msg_id=("o", 0, -1), round=0, topic="t", payload=b""),
        Gossip(msg_id=("o", 0, 1), round=-3, topic="t", payload=b""),
        Gossip(msg_id=("o", True, 1), round=0, topic="t", payload=b""),
        Gossip(msg_id=("o", 0, 1), round=0, topic=5, payload=b""),  # type: ignore[arg-type]
        Gossip(msg_id=("o", 0, 1), round=0, topic="t", payload="s"),  # type: ignore[arg-type]
        Gossip(msg_id="nope", round=0, topic="t", payload=b""),  # type: ignore[arg-type]
        IHave(announcements=(("bad", 1),)),  # type: ignore[arg-type]
        IHave(announcements=None),  # type: ignore[arg-type]
        Graft(msg_id=("o", 0), round=0),  # type: ignore[arg-type]
        "not a message",
        None,
    ],
)
def test_garbage_is_dropped_and_counted(message: object) -> None:
    a = make("a")
    a.neighbor_up("b", now=0.0)
    assert a.receive("b", message, now=0.0) == []
    assert sum(v for k, v in a.counters.items() if k.startswith("dropped.")) >= 1
    assert a.counters["delivered"] == 0


def test_control_messages_from_strangers_are_dropped() -> None:
    a = make("a")
    a.neighbor_up("b", now=0.0)
    assert a.receive("z", Prune(), now=0.0) == []
    assert a.receive("z", Graft(msg_id=None, round=0), now=0.0) == []
    assert a.receive("z", IHave(announcements=((("o", 0, 1), 0),)), now=0.0) == []
    assert a.counters["dropped.not_neighbor"] == 3
    assert a.next_deadline() is None
    # GOSSIP from a stranger is still delivered and forwarded, without touching the links.
    got = a.receive("z", Gossip(msg_id=("o", 0, 1), round=0, topic="t", payload=b""), now=0.0)
    assert len(delivers(got)) == 1
    assert [s.peer_id for s in sends(got)] == ["b"]
    assert "z" not in a.eager_peers
    assert "z" not in a.lazy_peers


def test_local_misuse_raises() -> None:
    a = make("a")
    with pytest.raises(PlumtreeError):
        a.broadcast("text", topic="t", now=0.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        PlumtreeConfig(ihave_timeout=0)
    with pytest.raises(ConfigError):
        PlumtreeConfig(optimization_threshold=0)
    with pytest.raises(ConfigError):
        PlumtreeConfig(seen_max=0)


# --- whole overlays ------------------------------------------------------------------------------


def test_triangle_prunes_to_a_tree() -> None:
    net = Net([("a", "b"), ("b", "c"), ("a", "c")], seed=1)
    mid = net.broadcast("a")
    net.run()
    for name in "abc":
        assert [d.msg_id for d in net.delivered[name]] == [mid]
    assert net.eager_edges() == {frozenset("ab"), frozenset("ac")}


def assert_exactly_once(net: Net, ids: list[MsgId]) -> None:
    for name, got in net.delivered.items():
        counts = Counter(d.msg_id for d in got)
        assert sorted(counts) == sorted(ids), f"{name} missed or invented messages"
        assert set(counts.values()) <= {1}, f"{name} delivered a message twice"


def test_200_nodes_deliver_once_and_settle_into_a_spanning_tree() -> None:
    rng = random.Random(200)
    net = Net(random_connected_graph(rng, 200, 5), seed=200)
    ids = []
    for i in range(5):
        ids.append(net.broadcast(f"n{rng.randrange(200):04d}", payload=bytes([i])))
        net.run()
    assert_exactly_once(net, ids)
    assert is_spanning_tree(net.nodes, net.eager_edges())
    # Once the tree is built a broadcast costs N - 1 GOSSIP messages, nothing more.
    before = net.total("received.Gossip")
    ids.append(net.broadcast("n0000"))
    net.run()
    assert net.total("received.Gossip") - before == 199
    assert_exactly_once(net, ids)


def test_tree_heals_when_tree_links_fail() -> None:
    rng = random.Random(7)
    edges = random_connected_graph(rng, 60, 5)
    net = Net(edges, seed=7)
    ids = [net.broadcast("n0000")]
    net.run()
    tree = sorted(tuple(sorted(e)) for e in net.eager_edges())
    # Cut tree links whose removal keeps the graph connected.
    cut = 0
    for a, b in tree:
        remaining = net.links - {frozenset((a, b))}
        if is_connected(net.nodes, remaining):
            net.link_down(a, b)
            cut += 1
        if cut == 10:
            break
    assert cut == 10
    ids.append(net.broadcast("n0001"))
    net.run()
    assert_exactly_once(net, ids)
    assert net.total("graft.timer") >= 1
    assert is_connected(net.nodes, net.eager_edges())


def is_connected(nodes: Iterable[str], edges: set[frozenset[str]]) -> bool:
    names = list(nodes)
    adj: dict[str, list[str]] = {n: [] for n in names}
    for edge in edges:
        a, b = tuple(edge)
        adj[a].append(b)
        adj[b].append(a)
    seen = {names[0]}
    stack = [names[0]]
    while stack:
        for nxt in adj[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return len(seen) == len(names)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 30),
    degree=st.integers(1, 6),
    ops=st.lists(st.sampled_from(["broadcast", "cut", "link", "burst"]), min_size=1, max_size=12),
)
def test_property_exactly_once_and_tree_at_quiescence(
    seed: int, n: int, degree: int, ops: list[str]
) -> None:
    rng = random.Random(seed)
    edges = random_connected_graph(rng, n, degree)
    net = Net(edges, seed=seed)
    names = sorted(net.nodes)
    ids: list[MsgId] = []
    for op in ops:
        match op:
            case "broadcast":
                ids.append(net.broadcast(rng.choice(names)))
            case "burst":  # concurrent broadcasts from several origins
                for origin in rng.sample(names, min(3, n)):
                    ids.append(net.broadcast(origin))
            case "cut":  # a link fails, the graph stays connected
                link = rng.choice(sorted(tuple(sorted(e)) for e in net.links))
                if is_connected(names, net.links - {frozenset(link)}):
                    net.link_down(*link)
            case "link":
                a, b = rng.sample(names, 2)
                if frozenset((a, b)) not in net.links:
                    net.link_up(a, b)
        net.run()
    assert_exactly_once(net, ids)
    # Tree at quiescence: a broadcast from each node in turn settles the tree, after which the
    # eager links form a spanning tree of the (static, connected) graph. The broadcasts are
    # spaced by more than prune_grace: within it, a link that just delivered a new message is
    # not pruned (rule 8 of plumtree.py, the burst departure), so back-to-back broadcasts from
    # different origins keep the tree wider on purpose.
    for origin in names:
        net.run(until=net.now + 2 * net.config.prune_grace)
        ids.append(net.broadcast(origin))
        net.run()
    assert_exactly_once(net, ids)
    assert is_spanning_tree(names, net.eager_edges())


@pytest.mark.parametrize("n", [1000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_redundancy_falls_from_flooding_to_zero_and_survives_half_crashing(n: int) -> None:
    """The paper's figures in small (section 4): relative message redundancy (RMR) of the first
    broadcast is flooding's, once the tree settles it is zero; after half the nodes crash (with
    no membership repair here) every survivor still connected to the origin delivers."""
    rng = random.Random(n)
    config = PlumtreeConfig(ihave_timeout=0.5, graft_timeout=0.25, lazy_flush_interval=0.05)
    net = Net(random_connected_graph(rng, n, 5), seed=n, config=config, latency=(0.001, 0.02))
    names = sorted(net.nodes)

    def broadcast(origin: str) -> tuple[int, float]:
        for got in net.delivered.values():
            got.clear()
        before = net.total("received.Gossip")
        net.broadcast(origin)
        net.run()
        delivered = sum(len(got) for got in net.delivered.values())
        assert all(len(got) <= 1 for got in net.delivered.values())
        rmr = (net.total("received.Gossip") - before) / (delivered - 1) - 1
        return delivered, rmr

    delivered, flood_rmr = broadcast(names[0])
    assert delivered == n
    assert flood_rmr > 2.5  # average degree 5: about 2E / (N - 1) - 2 = 3
    for _ in range(3):
        delivered, rmr = broadcast(rng.choice(names))
    assert delivered == n
    assert rmr == 0.0
    assert is_spanning_tree(names, net.eager_edges())

    dead = set(rng.sample(names, n // 2))
    for edge in sorted(tuple(sorted(e)) for e in net.links):
        if dead & set(edge):
            net.link_down(*edge)
    origin = next(name for name in names if name not in dead)
    reachable = component(net.links, origin)
    delivered, _ = broadcast(origin)
    assert delivered == len(reachable)
    assert all(net.delivered[name] for name in reachable)
    assert net.total("graft.timer") > 0


def component(links: set[frozenset[str]], origin: str) -> set[str]:
    """The nodes linked to ``origin``, directly or not."""
    adj: dict[str, list[str]] = {}
    for edge in links:
        a, b = tuple(edge)
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    seen = {origin}
    stack = [origin]
    while stack:
        for nxt in adj.get(stack.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


# --- over the real membership layer, in the simulator ---------------------------------------------


@pytest.mark.parametrize("n", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_plumtree_over_hyparview_in_the_simulator(n: int) -> None:
    config = HyParViewConfig(keepalive_interval=None)
    sim = Simulation(config, seed=n, node_factory=broadcast_node_factory())
    rng = random.Random(n)
    ids = build_overlay(sim, n, rng, join_interval=0.01)
    sim.run_for(30.0)  # a few shuffles: the overlay settles

    def run(origin: NodeId) -> tuple[int, float, int]:
        """Delivering nodes, relative message redundancy and last delivery hop."""
        result = broadcast(sim, origin, b"m", settle=5.0)
        assert result.duplicates == 0, "a node delivered twice"
        return result.delivered, result.rmr, result.last_hop

    delivered, flood_rmr, _ = run(ids[0])
    assert delivered == n
    assert flood_rmr > 1.5  # the first broadcast floods the active view
    for _ in range(3):
        delivered, rmr, _ = run(rng.choice(ids))
        assert delivered == n
    assert rmr < 0.1 * flood_rmr  # the tree has settled

    # Crash a fifth of the nodes: the first broadcast after it is repaired by GRAFT as the
    # membership layer replaces the dead links.
    sim.crash(rng.sample(ids[1:], n // 5))
    delivered, _, _ = run(ids[0])
    assert delivered >= 0.95 * len(sim.alive_ids)
    sim.run_for(30.0)
    delivered, _, _ = run(ids[0])
    assert delivered == len(sim.alive_ids)


def test_announcements_queued_for_a_peer_grafted_before_the_flush_are_still_sent() -> None:
    # Regression: the flush sent a queue only if its peer was still lazy, then cleared them all,
    # so a GRAFT inside the flush window silently dropped the announcements owed to the grafter.
    config = PlumtreeConfig(lazy_flush_interval=0.05)
    x = make("x", config)
    x.neighbor_up("a", now=0.0)
    x.neighbor_up("p", now=0.0)
    x.receive("p", Prune(), now=0.0)
    mid: MsgId = ("o", 0, 1)
    got = x.receive("a", Gossip(msg_id=mid, round=0, topic="t", payload=b"m"), now=1.0)
    assert sends(got) == []  # p is lazy: its IHAVE waits for the flush
    # p grafts the link for a repair of its own before the flush: p is eager again.
    assert x.receive("p", Graft(msg_id=None, round=0), now=1.01) == []
    assert "p" in x.eager_peers
    deadline = x.next_deadline()
    assert deadline is not None
    assert deadline <= 1.05
    assert x.on_timer(now=deadline) == [SendTo("p", IHave(announcements=((mid, 1),)))]


# --- every value the core emits fits the wire ----------------------------------------------------

LONG_ORIGIN = "\U0001d11e" * (MAX_ORIGIN_LEN // 4)  # printable, 4 UTF-8 bytes each: 240 bytes
TOP: MsgId = (LONG_ORIGIN, MAX_ID_INT, MAX_ID_INT)


def encodable(actions: Iterable[Action]) -> list[SendTo]:
    """Every SendTo in ``actions``, each checked to encode (and decode back) on the wire."""
    out = sends(actions)
    codec = wire_codec()
    for action in out:
        assert codec.decode(codec.encode(action.message)) == action.message
    return out


def lazy_node(config: PlumtreeConfig = QUICK) -> Plumtree:
    """x with neighbours a (eager) and p (lazy)."""
    x = make("x", config)
    x.neighbor_up("a", now=0.0)
    x.neighbor_up("p", now=0.0)
    x.receive("p", Prune(), now=0.0)
    return x


@pytest.mark.parametrize("rnd", [0, 1, MAX_ROUND - 1, MAX_ROUND])
def test_round_saturates_at_the_wire_max(rnd: int) -> None:
    # Regression: a GOSSIP at round 255 was relayed at round 256, which the one-byte wire field
    # cannot carry; the agent's re-encode raised EncodeError inside its TaskGroup.
    x = lazy_node()
    gossip = Gossip(msg_id=TOP, round=rnd, topic="t" * MAX_TOPIC_LEN, payload=bytes(MAX_PAYLOAD))
    got = x.receive("b", gossip, now=1.0)  # b is no neighbour: forwarded to a, announced to p
    relayed = [s.message for s in encodable(got)]
    out_round = min(rnd + 1, MAX_ROUND)
    assert [m.round for m in relayed if isinstance(m, Gossip)] == [out_round]
    assert [m for m in relayed if isinstance(m, IHave)] == [
        IHave(announcements=((TOP, out_round),))
    ]
    assert delivers(got)[0].hops == out_round


@pytest.mark.parametrize("rnd", [MAX_ROUND - 1, MAX_ROUND])
def test_graft_and_its_answer_at_the_top_round_fit_the_wire(rnd: int) -> None:
    x = lazy_node()
    assert x.receive("p", IHave(announcements=((TOP, rnd),)), now=1.0) == []
    graft = encodable(x.on_timer(now=1.0 + QUICK.ihave_timeout))
    assert graft == [SendTo("p", Graft(msg_id=TOP, round=rnd))]
    answer = Gossip(msg_id=TOP, round=rnd, topic="", payload=b"")
    got = x.receive("p", answer, now=2.5)
    assert [s.message for s in encodable(got)] == [
        Gossip(msg_id=TOP, round=MAX_ROUND, topic="", payload=b"")
    ]
    # The neighbour at round 255 asks for it back: answered from the cache, still encodable.
    assert encodable(x.receive("a", Graft(msg_id=TOP, round=MAX_ROUND), now=3.0)) != []


def test_a_full_ihave_of_the_longest_ids_fits_one_frame() -> None:
    config = PlumtreeConfig(lazy_flush_interval=0.05, ihave_batch_max=MAX_IHAVE_ENTRIES)
    x = lazy_node(config)
    out: list[SendTo] = []
    for seq in range(3 * MAX_IHAVE_ENTRIES):
        gossip = Gossip(msg_id=(LONG_ORIGIN, 0, seq), round=MAX_ROUND, topic="", payload=b"")
        out += encodable(x.receive("a", gossip, now=1.0))
    out += encodable(x.on_timer(now=1.1))
    announced = 0
    for send in out:
        if isinstance(send.message, IHave):
            assert len(send.message.announcements) <= MAX_IHAVE_ENTRIES
            announced += len(send.message.announcements)
    assert announced == 3 * MAX_IHAVE_ENTRIES  # split over frames, none lost
    with pytest.raises(ConfigError):
        PlumtreeConfig(ihave_batch_max=MAX_IHAVE_ENTRIES + 1)


def test_a_long_queue_of_short_ids_is_flushed_whole() -> None:
    x = lazy_node(PlumtreeConfig(lazy_flush_interval=0.05, ihave_batch_max=MAX_IHAVE_ENTRIES))
    for seq in range(MAX_IHAVE_ENTRIES - 1):
        gossip = Gossip(msg_id=("o", 0, seq), round=0, topic="", payload=b"")
        assert sends(x.receive("a", gossip, now=1.0)) == []
    deadline = x.next_deadline()
    assert deadline is not None
    [flush] = encodable(x.on_timer(now=deadline))
    assert isinstance(flush.message, IHave)
    assert len(flush.message.announcements) == MAX_IHAVE_ENTRIES - 1


@pytest.mark.parametrize(
    "message",
    [
        Gossip(msg_id=("o", 0, 1), round=MAX_ROUND + 1, topic="t", payload=b""),
        Gossip(msg_id=("o", 0, 1), round=1 << 20, topic="t", payload=b""),
        Gossip(msg_id=("o", 0, MAX_ID_INT + 1), round=0, topic="t", payload=b""),
        Gossip(msg_id=("o", MAX_ID_INT + 1, 1), round=0, topic="t", payload=b""),
        Gossip(msg_id=("o", -1, 1), round=0, topic="t", payload=b""),
        Gossip(msg_id=("o" * (MAX_ORIGIN_LEN + 1), 0, 1), round=0, topic="t", payload=b""),
        Gossip(msg_id=("o\n", 0, 1), round=0, topic="t", payload=b""),
        Gossip(msg_id=("o", 0, 1), round=0, topic="t" * (MAX_TOPIC_LEN + 1), payload=b""),
        Gossip(msg_id=("o", 0, 1), round=0, topic="\x00", payload=b""),
        Gossip(msg_id=("o", 0, 1), round=0, topic="t", payload=bytes(MAX_PAYLOAD + 1)),
        IHave(announcements=((("o", 0, 1), MAX_ROUND + 1),)),
        IHave(announcements=((("o", 0, MAX_ID_INT + 1), 0),)),
        Graft(msg_id=None, round=MAX_ROUND + 1),
        Graft(msg_id=("o", 0, MAX_ID_INT + 1), round=0),
    ],
)
def test_values_beyond_the_wire_are_dropped_and_counted(message: object) -> None:
    a = make("a")
    a.neighbor_up("b", now=0.0)
    a.receive("b", Prune(), now=0.0)
    assert a.receive("b", message, now=0.0) == []
    assert a.counters["dropped.out_of_range"] == 1
    assert a.counters["delivered"] == 0
    assert a.next_deadline() is None  # no missing-message timer either
    assert "b" in a.lazy_peers  # an out-of-range GRAFT does not change the link


def test_local_values_beyond_the_wire_raise() -> None:
    a = make("a")
    with pytest.raises(PlumtreeError):
        a.broadcast(b"", topic="t" * (MAX_TOPIC_LEN + 1), now=0.0)
    with pytest.raises(PlumtreeError):
        a.broadcast(bytes(MAX_PAYLOAD + 1), topic="t", now=0.0)
    for bad in ("", "x" * (MAX_ORIGIN_LEN + 1), "x\ny"):
        with pytest.raises(PlumtreeError):
            make(bad)
    with pytest.raises(PlumtreeError):
        make("a", incarnation=MAX_ID_INT + 1)
    top = make("o" * MAX_ORIGIN_LEN, incarnation=MAX_ID_INT)
    top.neighbor_up("b", now=0.0)
    _, actions = top.broadcast(bytes(MAX_PAYLOAD), topic="t" * MAX_TOPIC_LEN, now=0.0)
    assert len(encodable(actions)) == 1


# --- concurrent origins (rule 8) -----------------------------------------------------------------


def test_a_duplicate_from_a_link_that_just_brought_a_first_copy_does_not_prune() -> None:
    # Two origins at once: a brings m1 first, b brings m2 first; m1 from b is a duplicate, but
    # b's link is the path of m2. The paper's rule would prune it and tear the tree.
    x = make("x", PlumtreeConfig(lazy_flush_interval=0.0, prune_grace=0.5))
    for peer in ("a", "b"):
        x.neighbor_up(peer, now=0.0)
    m1 = Gossip(msg_id=("o1", 0, 1), round=0, topic="t", payload=b"")
    m2 = Gossip(msg_id=("o2", 0, 1), round=0, topic="t", payload=b"")
    x.receive("a", m1, now=1.0)
    x.receive("b", m2, now=1.001)
    assert x.receive("b", m1, now=1.002) == []
    assert x.receive("a", m2, now=1.003) == []
    assert list(x.eager_peers) == ["a", "b"]
    assert x.counters["prune.deferred"] == 2
    # Past the grace, a link that brings only duplicates is pruned as in the paper.
    m3 = Gossip(msg_id=("o1", 0, 2), round=0, topic="t", payload=b"")
    x.receive("a", m3, now=2.0)
    assert x.receive("b", m3, now=2.001) == [SendTo("b", Prune())]
    assert list(x.lazy_peers) == ["b"]


def test_no_prune_grace_is_the_papers_rule() -> None:
    x = make("x", PlumtreeConfig(lazy_flush_interval=0.0, prune_grace=0.0))
    for peer in ("a", "b"):
        x.neighbor_up(peer, now=0.0)
    m1 = Gossip(msg_id=("o1", 0, 1), round=0, topic="t", payload=b"")
    m2 = Gossip(msg_id=("o2", 0, 1), round=0, topic="t", payload=b"")
    x.receive("a", m1, now=1.0)
    x.receive("b", m2, now=1.001)
    assert x.receive("b", m1, now=1.002) == [SendTo("b", Prune())]
    assert x.counters["prune.deferred"] == 0


def test_no_section_3_8_swap_while_several_origins_are_in_flight() -> None:
    config = PlumtreeConfig(lazy_flush_interval=0.0, optimization_threshold=2, prune_grace=0.5)
    x = make("x", config)
    for peer in ("far", "near"):
        x.neighbor_up(peer, now=0.0)
    x.receive("near", Prune(), now=0.0)
    x.receive("far", Gossip(msg_id=("other", 0, 1), round=0, topic="t", payload=b""), now=1.0)
    mid: MsgId = ("o", 0, 1)
    x.receive("near", IHave(announcements=((mid, 1),)), now=1.0)
    actions = x.receive("far", Gossip(msg_id=mid, round=4, topic="t", payload=b""), now=1.1)
    assert sends(actions) == []  # a swap for o could cut the path of "other"
    assert x.counters["graft.optimize_skipped"] == 1
    assert list(x.eager_peers) == ["far"]
    # Once only one origin is heard for a grace, the swap is made as in the paper.
    later: MsgId = ("o", 0, 2)
    x.receive("near", IHave(announcements=((later, 1),)), now=3.0)
    actions = x.receive("far", Gossip(msg_id=later, round=4, topic="t", payload=b""), now=3.1)
    assert SendTo("near", Graft(msg_id=None, round=1)) in actions
    assert SendTo("far", Prune()) in actions


_EXTREME_ORIGINS = st.sampled_from(["o", "o" * MAX_ORIGIN_LEN, LONG_ORIGIN, "\u00e9" * 7])
_EXTREME_INTS = st.sampled_from([0, 1, MAX_ID_INT - 1, MAX_ID_INT])
_EXTREME_ROUNDS = st.sampled_from([0, 1, MAX_ROUND - 1, MAX_ROUND])
_MSG_IDS = st.tuples(_EXTREME_ORIGINS, _EXTREME_INTS, _EXTREME_INTS)
_PEERS = st.sampled_from(["a", "b", "c"])
_INPUTS = st.one_of(
    st.tuples(
        st.just("gossip"),
        _PEERS,
        st.builds(
            Gossip,
            msg_id=_MSG_IDS,
            round=_EXTREME_ROUNDS,
            topic=st.sampled_from(["", "t" * MAX_TOPIC_LEN, "\u00e9" * MAX_TOPIC_LEN]),
            payload=st.sampled_from([b"", bytes(MAX_PAYLOAD)]),
        ),
    ),
    st.tuples(
        st.just("ihave"),
        _PEERS,
        st.builds(
            IHave,
            announcements=st.lists(st.tuples(_MSG_IDS, _EXTREME_ROUNDS), max_size=8).map(tuple),
        ),
    ),
    st.tuples(
        st.just("graft"),
        _PEERS,
        st.builds(Graft, msg_id=st.one_of(st.none(), _MSG_IDS), round=_EXTREME_ROUNDS),
    ),
    st.tuples(st.just("prune"), _PEERS, st.just(Prune())),
    st.tuples(st.just("timer"), _PEERS, st.none()),
    st.tuples(st.just("down"), _PEERS, st.none()),
    st.tuples(st.just("up"), _PEERS, st.none()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=st.lists(_INPUTS, max_size=40), batch=st.sampled_from([1, 64, MAX_IHAVE_ENTRIES]))
def test_property_whatever_arrives_the_core_emits_only_what_the_wire_carries(
    inputs: list[tuple[str, str, object]], batch: int
) -> None:
    config = PlumtreeConfig(lazy_flush_interval=0.01, ihave_batch_max=batch)
    x = make("x", config)
    for peer in ("a", "b", "c"):
        x.neighbor_up(peer, now=0.0)
    now = 0.0
    for kind, peer, message in inputs:
        now += 0.05
        match kind:
            case "timer":
                actions = x.on_timer(now=now + 1.0)
                now += 1.0
            case "down":
                actions = x.neighbor_down(peer, now=now)
            case "up":
                actions = x.neighbor_up(peer, now=now)
            case _:
                actions = x.receive(peer, message, now=now)
        for action in encodable(actions):
            if isinstance(action.message, Gossip | Graft):
                assert 0 <= action.message.round <= MAX_ROUND
    encodable(x.on_timer(now=now + 10.0))
    assert x.counters["dropped.out_of_range"] == 0  # every input was within the wire's ranges


def test_announcements_owed_to_a_departed_peer_are_counted() -> None:
    x = lazy_node(PlumtreeConfig(lazy_flush_interval=0.05))
    x.receive("a", Gossip(msg_id=("o", 0, 1), round=0, topic="t", payload=b""), now=1.0)
    assert x.neighbor_down("p", now=1.01) == []
    assert x.counters["ihave.dropped_peer_down"] == 1
    assert x.on_timer(now=2.0) == []


def test_payload_cache_is_bounded_in_bytes() -> None:
    """A flood of large broadcasts cannot pin more than payload_cache_bytes on a node (6,000
    gossips of 59 KB once grew every node by about 350 MiB); the oldest payloads go first, and
    the newest can still answer a GRAFT."""
    config = dataclasses.replace(QUICK, payload_cache_bytes=1_000_000)
    x = make("x", config)
    x.neighbor_up("a", now=0.0)
    size = 59_000
    ids = []
    for seq in range(1, 101):
        msg_id: MsgId = ("origin", 1, seq)
        ids.append(msg_id)
        x.receive("a", Gossip(msg_id=msg_id, round=1, topic="t", payload=bytes(size)), now=0.001)
    assert x.cache_bytes <= 1_000_000
    assert x.cache_bytes == (1_000_000 // size) * size
    assert x.counters["cache.evicted"] == 100 - 1_000_000 // size
    x.neighbor_up("b", now=0.002)
    answer = sends(x.receive("b", Graft(msg_id=ids[-1], round=1), now=0.003))
    assert [s.message.msg_id for s in answer if isinstance(s.message, Gossip)] == [ids[-1]]
