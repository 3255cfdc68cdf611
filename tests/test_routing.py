"""Tests of the distance-vector routing core, driven back to back with explicit time.

:class:`Net` delivers messages over a graph of active links with seeded random latencies, fires
timers in time order, and loses whatever is in flight on a link that goes down. After a run of
a few seconds of simulated time without topology changes the network is quiescent: the checks
below then hold for every pair of nodes.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import random
import subprocess
import sys
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_hyparview.protocol import messages as hv
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.protocol.routing import (
    INFINITY,
    Action,
    Arrived,
    DataFrame,
    RouteError,
    Router,
    RouteUpdate,
    RoutingConfig,
    RoutingError,
    SendTo,
    SeqnoRequest,
    Undeliverable,
)
from ray_hyparview.sim.engine import Simulation
from ray_hyparview.sim.scenario import build_overlay

FAST = RoutingConfig(update_interval=1.0, route_expiry=3.5, request_interval=0.2, hop_limit=64)


def make(name: str, config: RoutingConfig = FAST) -> Router:
    return Router(name, config, rng=random.Random(name))


class Net:
    """Routers over an undirected graph of links, with seeded random latencies."""

    def __init__(
        self,
        edges: Iterable[tuple[str, str]] = (),
        nodes: Iterable[str] = (),
        *,
        seed: int = 0,
        config: RoutingConfig = FAST,
        latency: tuple[float, float] = (0.001, 0.05),
    ) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.config = config
        self.now = 0.0
        self.nodes: dict[str, Router] = {}
        self.links: set[frozenset[str]] = set()
        self.queue: list[tuple[float, int, str, str, object]] = []
        self.seq = 0
        self.timers: list[tuple[float, int, str]] = []  # (deadline, seq, node); stale skipped
        self.last: dict[tuple[str, str], float] = {}
        self.arrived: dict[str, list[Arrived]] = {}
        self.undeliverable: dict[str, list[Undeliverable]] = {}
        self.sent: dict[str, int] = {}
        for name in nodes:
            self.add(name)
        for a, b in edges:
            self.link_up(a, b)

    def add(self, name: str) -> None:
        if name not in self.nodes:
            self.nodes[name] = make(name, self.config)
            self.arrived[name] = []
            self.undeliverable[name] = []

    def link_up(self, a: str, b: str) -> None:
        self.add(a)
        self.add(b)
        self.links.add(frozenset((a, b)))
        self.apply(a, self.nodes[a].link_up(b, now=self.now))
        self.apply(b, self.nodes[b].link_up(a, now=self.now))

    def link_down(self, a: str, b: str) -> None:
        self.links.discard(frozenset((a, b)))
        self.apply(a, self.nodes[a].link_down(b, now=self.now))
        self.apply(b, self.nodes[b].link_down(a, now=self.now))

    def apply(self, name: str, actions: list[Action]) -> None:
        deadline = self.nodes[name].next_deadline()
        if deadline is not None:
            self.seq += 1
            heapq.heappush(self.timers, (deadline, self.seq, name))
        for action in actions:
            match action:
                case SendTo(peer_id=peer, message=message):
                    edge = (name, peer)
                    assert frozenset(edge) in self.links, "sent off the active view"
                    kind = type(message).__name__
                    self.sent[kind] = self.sent.get(kind, 0) + 1
                    self.seq += 1
                    # Links are FIFO, like the TCP connections under ZeroMQ.
                    at = max(self.now + self.rng.uniform(*self.latency), self.last.get(edge, 0.0))
                    self.last[edge] = at
                    heapq.heappush(self.queue, (at, self.seq, name, peer, message))
                case Arrived():
                    self.arrived[name].append(action)
                case Undeliverable():
                    self.undeliverable[name].append(action)

    def send(self, src: str, dst: str, payload: bytes = b"x") -> int:
        frame_id, actions = self.nodes[src].route(dst, payload, now=self.now)
        self.apply(src, actions)
        return frame_id

    def run(self, duration: float = 5.0, max_steps: int = 2_000_000) -> None:
        """Deliver messages and fire timers for ``duration`` seconds of simulated time."""
        until = self.now + duration
        for _ in range(max_steps):
            while (
                self.timers and self.nodes[self.timers[0][2]].next_deadline() != (self.timers[0][0])
            ):
                heapq.heappop(self.timers)  # stale: the node re-armed or cancelled
            timer_at: float | None = None
            timer_node: str | None = None
            if self.timers:
                timer_at, _, timer_node = self.timers[0]
            msg_at = self.queue[0][0] if self.queue else None
            at = min((t for t in (msg_at, timer_at) if t is not None), default=None)
            if at is None or at > until:
                self.now = until
                return
            self.now = max(self.now, at)
            if msg_at is not None and msg_at == at:
                _, _, src, dst, message = heapq.heappop(self.queue)
                if frozenset((src, dst)) not in self.links:
                    # The link died with the message queued: the shell hands frames back.
                    if isinstance(message, DataFrame | RouteError):
                        self.apply(src, self.nodes[src].forward_failed(message, dst, now=self.now))
                    continue
                self.apply(dst, self.nodes[dst].receive(src, message, now=self.now))
            else:
                assert timer_node is not None
                heapq.heappop(self.timers)
                self.apply(timer_node, self.nodes[timer_node].on_timer(now=self.now))
        raise AssertionError("too many steps")

    def distances(self, src: str) -> dict[str, int]:
        adj: dict[str, list[str]] = {n: [] for n in self.nodes}
        for edge in self.links:
            a, b = tuple(edge)
            adj[a].append(b)
            adj[b].append(a)
        dist = {src: 0}
        todo = deque([src])
        while todo:
            node = todo.popleft()
            for nxt in adj[node]:
                if nxt not in dist:
                    dist[nxt] = dist[node] + 1
                    todo.append(nxt)
        return dist


def check_routes(net: Net) -> None:
    """Every reachable destination has a loop-free shortest route over links; others none."""
    check_routes_on(net.nodes, net.links, net.config.hop_limit)


def bfs(links: set[frozenset[str]], src: str) -> dict[str, int]:
    adj: dict[str, list[str]] = {}
    for edge in links:
        a, b = tuple(edge)
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    dist = {src: 0}
    todo = deque([src])
    while todo:
        node = todo.popleft()
        for nxt in adj.get(node, []):
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                todo.append(nxt)
    return dist


def check_routes_on(
    routers: Mapping[str, Router], links: set[frozenset[str]], hop_limit: int
) -> None:
    for src in routers:
        dist = bfs(links, src)
        for dst in routers:
            if dst == src:
                continue
            hop = routers[src].next_hop(dst)
            if dst not in dist or dist[dst] > hop_limit:
                assert hop is None, f"{src} has a route to unreachable {dst}"
                continue
            assert hop is not None, f"{src} has no route to reachable {dst}"
            path = [src]
            while path[-1] != dst:
                step = routers[path[-1]].next_hop(dst)
                assert step is not None, f"route {path} to {dst} breaks"
                assert frozenset((path[-1], step)) in links, f"hop {path[-1]}-{step} no link"
                assert step not in path, f"loop {[*path, step]} towards {dst}"
                path.append(step)
            assert len(path) - 1 == dist[dst], f"{src}->{dst} takes {path}, not a shortest path"


def random_connected_graph(rng: random.Random, n: int, degree: int) -> list[tuple[str, str]]:
    names = [f"n{i:04d}" for i in range(n)]
    edges: set[tuple[str, str]] = set()
    for i in range(1, n):
        a, b = sorted((names[i], names[rng.randrange(i)]))
        edges.add((a, b))
    while len(edges) < min(n * degree // 2, n * (n - 1) // 2):
        a, b = sorted(rng.sample(names, 2))
        edges.add((a, b))
    return sorted(edges)


# --- unit tests, back to back --------------------------------------------------------------------


def test_link_up_announces_own_route_and_learns_the_neighbors() -> None:
    a, b = make("a"), make("b")
    to_b = a.link_up("b", now=0.0)
    assert to_b == [SendTo("b", RouteUpdate(entries=(("a", 0, 0),)))]
    (to_a,) = b.link_up("a", now=0.0)
    assert isinstance(to_a, SendTo)
    b.receive("a", RouteUpdate(entries=(("a", 0, 0),)), now=0.01)
    a.receive("b", to_a.message, now=0.01)
    assert a.next_hop("b") == "b"
    assert a.routes() == {"b": ("b", 1)}
    assert a.next_hop("z") is None


def test_line_routes_frames_hop_by_hop() -> None:
    net = Net([("a", "b"), ("b", "c"), ("c", "d")])
    net.run(0.5)
    assert net.nodes["a"].next_hop("d") == "b"
    assert net.nodes["a"].routes()["d"] == ("b", 3)
    frame_id = net.send("a", "d", b"payload")
    net.run(0.5)
    assert net.arrived["d"] == [Arrived(source="a", frame_id=frame_id, payload=b"payload", hops=3)]
    check_routes(net)


def test_failed_link_switches_to_a_feasible_alternative_at_once() -> None:
    # a-b-c and a-d-c: two equal paths; losing the used one leaves the other feasible.
    net = Net([("a", "b"), ("b", "c"), ("a", "d"), ("d", "c")])
    net.run(0.5)
    used = net.nodes["a"].next_hop("c")
    other = "d" if used == "b" else "b"
    actions = net.nodes["a"].link_down(used or "", now=net.now)
    net.links.discard(frozenset(("a", used or "")))
    net.apply("a", actions)
    assert net.nodes["a"].next_hop("c") == other  # same input, no round trip
    # The route to the lost neighbour itself (now 3 hops, was 1) needs a new seqno from it.
    assert net.nodes["a"].next_hop(used or "") is None
    net.apply(used or "", net.nodes[used or ""].link_down("a", now=net.now))
    net.run(1.0)
    assert net.nodes["a"].routes()[used or ""] == (other, 3)
    check_routes(net)


def test_starved_node_gets_a_new_seqno_from_the_destination() -> None:
    # a reaches c in 2 hops via b; the only other way (a-d-e-c) is longer, so after a-b fails
    # d's announcement (metric 2, same seqno) is not feasible for a: a must ask c.
    net = Net([("a", "b"), ("b", "c"), ("a", "d"), ("d", "e"), ("e", "c")])
    net.run(1.0)
    assert net.nodes["a"].routes()["c"] == ("b", 2)
    net.link_down("a", "b")
    assert net.nodes["a"].next_hop("c") is None
    net.run(1.0)
    assert net.nodes["a"].counters["route.starved"] >= 1
    assert net.nodes["c"].seqno >= 1
    assert net.nodes["a"].routes()["c"] == ("d", 3)
    check_routes(net)


def test_frames_keep_flowing_while_starved() -> None:
    net = Net([("a", "b"), ("b", "c"), ("a", "d"), ("d", "e"), ("e", "c")])
    net.run(1.0)
    net.link_down("a", "b")
    assert net.nodes["a"].next_hop("c") is None  # starved: no feasible route yet
    frame_id = net.send("a", "c")  # ...but d still announces c: the frame goes that way
    assert net.nodes["a"].counters["forward.alternate"] == 1
    net.run(1.0)
    assert [x.frame_id for x in net.arrived["c"]] == [frame_id]


def test_frame_queued_on_a_failing_link_takes_another_route() -> None:
    net = Net([("a", "b"), ("b", "c"), ("a", "d"), ("d", "c")])
    net.run(0.5)
    used = net.nodes["a"].next_hop("c") or ""
    frame_id = net.send("a", "c", b"in flight")
    net.link_down("a", used)  # the frame is still queued on the link: the shell hands it back
    net.run(0.5)
    # Two links crossed, plus the hop charged for the failed attempt.
    assert net.arrived["c"] == [
        Arrived(source="a", frame_id=frame_id, payload=b"in flight", hops=3)
    ]
    assert net.nodes["a"].counters["forward.failed"] == 1
    assert net.undeliverable["a"] == []


def test_unknown_destination_is_reported_at_once() -> None:
    a = make("a")
    frame_id, actions = a.route("nowhere", b"x", now=0.0)
    assert actions == [
        Undeliverable(frame_id=frame_id, destination="nowhere", reason="no_route", reported_by="a")
    ]


def test_frame_to_self_arrives_locally() -> None:
    a = make("a")
    frame_id, actions = a.route("a", b"x", now=0.0)
    assert actions == [Arrived(source="a", frame_id=frame_id, payload=b"x", hops=0)]


def test_dead_end_sends_a_route_error_back_to_the_source() -> None:
    net = Net([("a", "b"), ("b", "c")])
    net.run(0.5)
    # b loses c, but a's frame is already on its way to b.
    frame_id = net.send("a", "c")
    actions = net.nodes["b"].link_down("c", now=net.now)
    net.nodes["c"].link_down("b", now=net.now)
    net.links.discard(frozenset(("b", "c")))
    net.apply("b", actions)
    net.run(0.5)
    assert net.undeliverable["a"] == [
        Undeliverable(frame_id=frame_id, destination="c", reason="no_route", reported_by="b")
    ]
    assert net.arrived["c"] == []


def test_hop_limit_is_enforced_and_reported() -> None:
    config = RoutingConfig(update_interval=1.0, route_expiry=3.5, hop_limit=3)
    net = Net([("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")], config=config)
    net.run(0.5)
    # e is 4 hops from a: beyond the hop limit, so there is no route at all.
    assert net.nodes["a"].next_hop("e") is None
    assert net.nodes["a"].next_hop("d") == "b"
    # A frame that has used its hops is dropped where it is and reported to its source.
    b = net.nodes["b"]
    frame = DataFrame(source="a", destination="e", frame_id=9, hops=3, hop_limit=3, payload=b"")
    out = b.receive("a", frame, now=net.now)
    reports = [s.message for s in out if isinstance(s, SendTo)]
    assert reports == [
        RouteError(
            source="b",
            destination="a",
            frame_id=9,
            frame_destination="e",
            reason="hop_limit",
            hops=1,
            hop_limit=3,
        )
    ]
    check_routes(net)


def test_forward_failed_takes_another_next_hop() -> None:
    net = Net([("a", "b"), ("b", "c"), ("a", "d"), ("d", "c")])
    net.run(0.5)
    a = net.nodes["a"]
    _, actions = a.route("c", b"x", now=net.now)
    (first,) = actions
    assert isinstance(first, SendTo)
    retry = a.forward_failed(first.message, first.peer_id, now=net.now)
    assert len(retry) == 1
    assert isinstance(retry[0], SendTo)
    assert retry[0].peer_id != first.peer_id
    assert isinstance(first.message, DataFrame)
    assert retry[0].message == replace(first.message, hops=2)  # the failed try is charged
    assert a.counters["forward.failed"] == 1


def test_a_shell_whose_sends_keep_failing_cannot_loop_a_frame() -> None:
    net = Net([("a", "b"), ("b", "c"), ("a", "d"), ("d", "c")])
    net.run(0.5)
    a = net.nodes["a"]
    _, actions = a.route("c", b"x", now=net.now)
    attempts = 0
    while actions and isinstance(actions[0], SendTo):
        attempts += 1
        action = actions[0]
        assert isinstance(action.message, DataFrame)
        actions = a.forward_failed(action.message, action.peer_id, now=net.now)
    assert attempts == FAST.hop_limit
    assert [type(x) for x in actions] == [Undeliverable]


def test_partition_leaves_no_route_and_goes_quiet() -> None:
    net = Net([("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("c", "e")])
    net.run(1.0)
    net.link_down("c", "e")
    net.run(3.0)
    check_routes(net)
    assert net.nodes["a"].next_hop("e") is None
    assert net.nodes["e"].next_hop("a") is None
    before = dict(net.sent)
    net.run(3.0)
    # Quiescent: only the periodic tables are sent, no requests chase the lost node.
    assert net.sent.get("SeqnoRequest", 0) == before.get("SeqnoRequest", 0)
    frame_id = net.send("a", "e")
    assert net.undeliverable["a"][-1].frame_id == frame_id


def test_routes_expire_without_refresh() -> None:
    a = make("a")
    a.link_up("b", now=0.0)
    a.receive("b", RouteUpdate(entries=(("b", 0, 0), ("far", 0, 2))), now=0.0)
    assert a.next_hop("far") == "b"
    for t in range(1, 8):
        a.on_timer(now=float(t))
    assert a.next_hop("far") is None
    assert a.counters["route.expired"] >= 2


def test_restarted_node_moves_past_its_old_seqno() -> None:
    a = make("a")
    a.link_up("b", now=0.0)
    a.receive("b", RouteUpdate(entries=(("a", 41, 1),)), now=0.0)
    assert a.seqno == 42


def test_seqno_request_raises_the_destination_seqno_once() -> None:
    c = make("c")
    c.link_up("b", now=0.0)
    out = c.receive("b", SeqnoRequest(destination="c", seqno=5, origin="a", hop_limit=8), now=0.1)
    assert c.seqno == 5
    assert out == []  # the triggered update waits triggered_delay to batch changes
    assert c.next_deadline() == pytest.approx(0.1 + FAST.triggered_delay)
    out = c.on_timer(now=0.1 + FAST.triggered_delay)
    assert out == [SendTo("b", RouteUpdate(entries=(("c", 5, 0),)))]
    again = c.receive("b", SeqnoRequest(destination="c", seqno=5, origin="a", hop_limit=8), now=0.2)
    assert again == []
    assert c.next_deadline() != pytest.approx(0.2 + FAST.triggered_delay)


@pytest.mark.parametrize(
    "message",
    [
        RouteUpdate(entries=(("x", -1, 1),)),
        RouteUpdate(entries=(("", 0, 1),)),
        RouteUpdate(entries=(("x", 0, INFINITY + 1),)),
        RouteUpdate(entries=(("x", 0),)),  # type: ignore[arg-type]
        RouteUpdate(entries=None),  # type: ignore[arg-type]
        SeqnoRequest(destination="x", seqno=-1, origin="a", hop_limit=3),
        DataFrame(source="a", destination="z", frame_id=1, hops=0, hop_limit=4, payload=b""),
        DataFrame(source="a", destination="z", frame_id=1, hops=5, hop_limit=4, payload=b""),
        DataFrame(source="a", destination="z", frame_id=1, hops=1, hop_limit=4, payload="s"),  # type: ignore[arg-type]
        "not a message",
        None,
    ],
)
def test_garbage_is_dropped_and_counted(message: object) -> None:
    a = make("a")
    a.link_up("b", now=0.0)
    assert a.receive("b", message, now=0.0) == []
    assert sum(v for k, v in a.counters.items() if k.startswith("dropped.")) >= 1
    assert a.routes() == {"b": ("b", 1)}


def test_updates_before_link_up_are_held_and_replayed() -> None:
    # The two ends of a new link learn of it one message apart: z may announce its table to
    # us before our own PeerUp(z). Held, not applied (z is not a link yet), replayed on link_up.
    a = make("a")
    assert a.receive("z", RouteUpdate(entries=(("z", 0, 0), ("far", 0, 1))), now=0.0) == []
    assert a.next_hop("far") is None
    assert a.counters["early.held"] == 1
    a.link_up("z", now=0.5)
    assert a.next_hop("far") == "z"
    assert a.routes()["far"] == ("z", 2)
    # Held updates are bounded and do not outlive route_expiry.
    for i in range(100):
        a.receive(f"s{i}", RouteUpdate(entries=((f"s{i}", 0, 0),)), now=1.0)
    assert len(a._early) <= 32
    a.link_up("s99", now=1.0 + FAST.route_expiry + 1)
    assert a.next_hop("s99") == "s99"  # the link itself
    assert "s99" not in a._selected  # but the stale announcement was not replayed


def test_a_replayed_update_expires_from_when_it_came_not_from_the_replay() -> None:
    """An update held for a link that comes up late is as old as it is: a replay that renewed
    it let an announcement of a peer's earlier life outlive that life's hold-down, and the
    fuzzer found a next-hop loop through it (seed 4189 once one-sided links were told at
    once: ``n02 -> n03 -> n07 -> n02``)."""
    a = make("a")
    a.receive("z", RouteUpdate(entries=(("z", 0, 0), ("far", 0, 1))), now=0.0)
    came_up = FAST.route_expiry - 1.0
    a.link_up("z", now=came_up)
    assert a.routes()["far"] == ("z", 2)
    # z never announces again: its route expires route_expiry after the update came.
    now = came_up
    while now < FAST.route_expiry + FAST.update_interval * 2:
        now += 0.25
        a.on_timer(now=now)
    assert "far" not in a.routes()
    assert a.counters["early.replayed"] == 1
    # One held longer than route_expiry is not replayed at all.
    a.receive("y", RouteUpdate(entries=(("y", 0, 0), ("other", 0, 1))), now=now)
    a.link_up("y", now=now + FAST.route_expiry)
    assert "other" not in a.routes()
    assert a.counters["early.expired"] == 1


def test_table_is_bounded_and_chunked() -> None:
    config = RoutingConfig(max_routes=10, max_entries_per_update=4)
    a = make("a", config)
    a.link_up("b", now=0.0)
    entries = tuple((f"d{i}", 0, 1) for i in range(20))
    a.receive("b", RouteUpdate(entries=entries), now=0.0)
    out = a.on_timer(now=1.0)
    assert len(a.routes()) == 1 + 10
    assert a.counters["dropped.table_full"] == 10
    sizes = [
        len(s.message.entries)
        for s in out
        if isinstance(s, SendTo) and isinstance(s.message, RouteUpdate)
    ]
    assert sizes == [4, 4, 2]  # the 10 new routes, poisoned back to b


def test_local_misuse_raises() -> None:
    a = make("a")
    with pytest.raises(RoutingError):
        a.route("b", "text", now=0.0)  # type: ignore[arg-type]
    with pytest.raises(RoutingError):
        a.route("", b"", now=0.0)
    with pytest.raises(ConfigError):
        RoutingConfig(update_interval=5.0, route_expiry=5.0)
    with pytest.raises(ConfigError):
        RoutingConfig(hop_limit=0)


# --- whole overlays ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [100, pytest.param(400, marks=pytest.mark.slow)])
def test_overlay_converges_to_shortest_loop_free_routes_and_delivers(n: int) -> None:
    config = RoutingConfig(update_interval=10.0, route_expiry=35.0, request_interval=0.2)
    rng = random.Random(n)
    net = Net(random_connected_graph(rng, n, 5), seed=n, config=config)
    net.run(2.0)
    check_routes(net)
    # Fail 10% of the nodes' worth of random links (the graph may split), then check again.
    for edge in rng.sample(sorted(tuple(sorted(e)) for e in net.links), n // 10):
        net.link_down(*edge)
    net.run(3.0)
    check_routes(net)
    names = sorted(net.nodes)
    sent = []
    for _ in range(100):
        src, dst = rng.sample(names, 2)
        sent.append((src, dst, net.send(src, dst)))
    net.run(1.0)
    for src, dst, frame_id in sent:
        arrived = [a for a in net.arrived[dst] if a.source == src and a.frame_id == frame_id]
        failed = [u for u in net.undeliverable[src] if u.frame_id == frame_id]
        if dst in net.distances(src):
            assert len(arrived) == 1
            assert arrived[0].hops == net.distances(src)[dst]
        else:
            assert arrived == []
            assert [u.reason for u in failed] == ["no_route"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 14),
    ops=st.lists(
        st.tuples(st.sampled_from(["up", "down", "wait"]), st.integers(0, 10_000)),
        min_size=1,
        max_size=25,
    ),
)
def test_property_quiescent_routes_are_loop_free_over_links(
    seed: int, n: int, ops: list[tuple[str, int]]
) -> None:
    rng = random.Random(seed)
    names = [f"n{i:02d}" for i in range(n)]
    net = Net(nodes=names, seed=seed)
    in_flight: list[tuple[str, str, int]] = []
    for op, pick in ops:
        match op:
            case "up":
                a, b = sorted(random.Random(pick).sample(names, 2))
                if frozenset((a, b)) not in net.links:
                    net.link_up(a, b)
            case "down":
                if net.links:
                    edges = sorted(tuple(sorted(e)) for e in net.links)
                    net.link_down(*edges[pick % len(edges)])
            case "wait":
                a, b = random.Random(pick).sample(names, 2)
                in_flight.append((a, b, net.send(a, b)))  # frames ride through the churn
                net.run(rng.uniform(0.0, 0.3))  # changes overlap with convergence
    net.run(6.0)
    check_routes(net)
    # Every frame sent during the churn arrived once or was reported once, never both; one
    # that got neither is accounted for by an error report that itself found no route.
    silent = 0
    for src, dst, frame_id in in_flight:
        arrived = [x for x in net.arrived[dst] if x.source == src and x.frame_id == frame_id]
        failed = [u for u in net.undeliverable[src] if u.frame_id == frame_id]
        assert len(arrived) + len(failed) <= 1
        silent += not (arrived or failed)
    lost_reports = sum(
        v
        for node in net.nodes.values()
        for k, v in node.counters.items()
        if k.startswith("dropped.route_error_")
    )
    assert silent <= lost_reports
    # In-flight frames after quiescence: every one arrives or is reported, never lost.
    pairs = [(a, b) for a in names for b in names if a != b]
    sent = [(a, b, net.send(a, b)) for a, b in rng.sample(pairs, min(10, len(pairs)))]
    net.run(1.0)
    for src, dst, frame_id in sent:
        arrived = [x for x in net.arrived[dst] if x.source == src and x.frame_id == frame_id]
        failed = [u for u in net.undeliverable[src] if u.frame_id == frame_id]
        assert len(arrived) + len(failed) == 1


# --- over the real membership layer, in the simulator ---------------------------------------------


class RoutedNode:
    """HyParView and the router stacked as the agent stacks them, for the simulator: PeerUp /
    PeerDown drive ``link_up`` / ``link_down``, the router's ``SendTo`` becomes ``Send``."""

    def __init__(self, myself: Peer, config: HyParViewConfig, rng: random.Random) -> None:
        self.membership = HyParView(myself, config, rng=rng)
        self.router = Router(myself.id, SIM_ROUTING, rng=rng)
        self.arrived: list[Arrived] = []
        self.undeliverable: list[Undeliverable] = []

    @property
    def active_ids(self) -> Collection[NodeId]:
        return self.membership.active_ids

    @property
    def passive_view(self) -> tuple[Peer, ...]:
        return self.membership.passive_view

    def join(self, contacts: Sequence[Peer], *, now: float) -> list[hv.Action]:
        return self._lift(self.membership.join(contacts, now=now), now)

    def receive(self, sender: NodeId, message: object, *, now: float) -> list[hv.Action]:
        if isinstance(message, RouteUpdate | SeqnoRequest | DataFrame | RouteError):
            return self._route(self.router.receive(sender, message, now=now))
        assert isinstance(message, hv.Message)
        return self._lift(self.membership.receive(sender, message, now=now), now)

    def link_failed(self, peer: NodeId, *, now: float) -> list[hv.Action]:
        return self._lift(self.membership.link_failed(peer, now=now), now)

    def on_timer(self, *, now: float) -> list[hv.Action]:
        out = self._lift(self.membership.on_timer(now=now), now)
        return out + self._route(self.router.on_timer(now=now))

    def next_deadline(self) -> float | None:
        deadlines = [self.membership.next_deadline(), self.router.next_deadline()]
        return min((d for d in deadlines if d is not None), default=None)

    def send(self, dest: NodeId, *, now: float) -> tuple[int, list[hv.Action]]:
        frame_id, actions = self.router.route(dest, b"x", now=now)
        return frame_id, self._route(actions)

    def _lift(self, actions: list[hv.Action], now: float) -> list[hv.Action]:
        out: list[hv.Action] = []
        for action in actions:
            match action:
                case hv.PeerUp(peer=peer):
                    out += self._route(self.router.link_up(peer.id, now=now))
                case hv.PeerDown(peer=peer):
                    out += self._route(self.router.link_down(peer.id, now=now))
                case _:
                    out.append(action)
        return out

    def _route(self, actions: list[Action]) -> list[hv.Action]:
        out: list[hv.Action] = []
        for action in actions:
            match action:
                case SendTo(peer_id=peer_id, message=message):
                    # The simulator carries any message value; only HyParView's are typed here.
                    out.append(hv.Send(Peer(peer_id), message))  # type: ignore[arg-type]
                case Arrived():
                    self.arrived.append(action)
                case Undeliverable():
                    self.undeliverable.append(action)
        return out


SIM_ROUTING = RoutingConfig(update_interval=5.0, route_expiry=17.5, request_interval=0.5)


@pytest.mark.parametrize("n", [100, pytest.param(250, marks=pytest.mark.slow)])
def test_routing_over_hyparview_in_the_simulator(n: int) -> None:
    sim = Simulation(HyParViewConfig(keepalive_interval=None), seed=n, node_factory=RoutedNode)
    rng = random.Random(n)
    ids = build_overlay(sim, n, rng, join_interval=0.01)

    def node(node_id: NodeId) -> RoutedNode:
        found = sim.node(node_id)
        assert isinstance(found, RoutedNode)
        return found

    def check() -> None:
        alive = sim.alive_ids
        routers = {i: node(i).router for i in alive}
        links = {frozenset((i, p)) for i in alive for p in routers[i].links}
        for edge in links:  # active links are symmetric at quiescence
            a, b = tuple(edge)
            assert a in routers[b].links
            assert b in routers[a].links
        check_routes_on(routers, links, SIM_ROUTING.hop_limit)

    def exchange(pairs: int) -> None:
        alive = sim.alive_ids
        sent = []
        for _ in range(pairs):
            src, dst = rng.sample(alive, 2)
            frame_id, actions = node(src).send(dst, now=sim.now)
            sim._apply(src, actions)
            sim._rearm(src)
            sent.append((src, dst, frame_id))
        sim.run_for(2.0)
        for src, dst, frame_id in sent:
            got = [a for a in node(dst).arrived if a.source == src and a.frame_id == frame_id]
            assert len(got) == 1, f"frame {src}->{dst} lost"

    def settle(first: float) -> None:
        """Run until the routes check out: quiescence takes longer in larger overlays (HyParView
        repairs links for a while after a crash), so wait on the condition, with a deadline."""
        sim.run_for(first)
        for _ in range(12):
            try:
                check()
            except AssertionError:
                sim.run_for(5.0)
            else:
                return
        check()

    settle(20.0)
    exchange(50)
    sim.crash(rng.sample(ids, n // 10))
    settle(30.0)  # detection, HyParView repair, route convergence
    exchange(50)
    # Frames to a crashed node are reported, not lost.
    dead = next(i for i in ids if not sim.is_alive(i))
    src = sim.alive_ids[0]
    frame_id, actions = node(src).send(dead, now=sim.now)
    sim._apply(src, actions)
    sim.run_for(2.0)
    assert [u.frame_id for u in node(src).undeliverable] == [frame_id]


# --- no loop after any event, replayable whatever the hash seed (issue 9, finding 10) ----------


class LoopWatch(Net):
    """A :class:`Net` that checks the next-hop graph after every input of every router (not only
    at quiescence) and keeps a digest of everything that happened, to compare runs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.loops: list[str] = []
        self.events = 0
        self._digest = hashlib.sha256()
        self.restarts = 0
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def apply(self, name: str, actions: list[Action]) -> None:
        super().apply(name, actions)
        self.events += 1
        self._digest.update(f"{self.now!r} {name} {actions!r}\n".encode())
        loop = self.find_loop()
        if loop is not None and not self.loops:
            self.loops.append(f"t={self.now:.4f} event {self.events} at {name}: {loop}")

    def find_loop(self) -> str | None:
        names = sorted(self.nodes)
        for dest in names:
            for src in names:
                path = [src]
                while path[-1] != dest:
                    step = self.nodes[path[-1]].next_hop(dest)
                    if step is None:
                        break
                    if step in path:
                        return f"loop {[*path, step]} towards {dest}"
                    path.append(step)
        return None

    def link_down(self, a: str, b: str) -> None:
        # A broken connection loses what was in flight on it (control messages; frames are
        # handed back by the shell, as Net does when they are delivered).
        edge = frozenset((a, b))
        self.queue = [
            q
            for q in self.queue
            if frozenset((q[2], q[3])) != edge or isinstance(q[4], DataFrame | RouteError)
        ]
        heapq.heapify(self.queue)
        super().link_down(a, b)

    def restart(self, name: str, *, noticed: bool = True) -> None:
        """Crash ``name`` and start it again with a fresh router. If the neighbours ``noticed``,
        their links drop and come back; if not (a quick restart under the same id), they keep
        their state from the old life and only the new router hears ``link_up``."""
        peers = sorted(p for e in self.links if name in e for p in e if p != name)
        if noticed:
            for peer in peers:
                self.link_down(name, peer)
        else:
            self.queue = [q for q in self.queue if name not in (q[2], q[3])]
            heapq.heapify(self.queue)
        self.restarts += 1
        self.nodes[name] = Router(name, self.config, rng=random.Random(f"{name}/{self.restarts}"))
        for peer in peers:
            if noticed:
                self.link_up(name, peer)
            else:
                self.apply(name, self.nodes[name].link_up(peer, now=self.now))

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()


FUZZ = replace(FAST, start_holddown=None)
"""The fuzzer's routers hold down at start, as routing.py's rule 6 asks of restarted ones."""


def fuzz_run(
    seed: int, *, n: int = 6, steps: int = 60, config: RoutingConfig = FUZZ
) -> tuple[str, list[str], int]:
    """One seeded run of link flaps, router restarts (noticed by the neighbours or not) and
    frames; returns (digest of everything that happened, the first loop seen if any, events)."""
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(n)]
    edges = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    start = [e for e in edges if rng.random() < 0.5]
    net = LoopWatch(start, names, seed=seed, config=config)
    net.run(rng.uniform(0.0, 3.0))
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.3:
            a, b = rng.choice(edges)
            if frozenset((a, b)) in net.links:
                net.link_down(a, b)
            else:
                net.link_up(a, b)
        elif roll < 0.4:
            net.restart(rng.choice(names), noticed=rng.random() < 0.5)
        elif roll < 0.6:
            a, b = rng.sample(names, 2)
            net.send(a, b)
        net.run(rng.choice([0.0, 0.001, 0.01, rng.uniform(0.0, 0.5), rng.uniform(0.0, 3.0)]))
    net.run(8.0)
    if not net.loops:
        check_routes(net)
    return net.digest, net.loops, net.events


# Seeds where the fuzzer saw a loop before rule 6 (the start hold-down): seed 6 closed
# r0 -> r3 -> r4 -> r0 right after r3 restarted unnoticed; seed 190 closed a four-router loop
# when the hold-down lasted route_expiry only (expired announcements are purged up to one
# update_interval later).
LOOP_SEEDS = [6, 190]


@pytest.mark.parametrize("seed", [*LOOP_SEEDS, *range(20)])
def test_no_next_hop_loop_after_any_event(seed: int) -> None:
    _, loops, events = fuzz_run(seed)
    assert events > 100
    assert loops == []


@pytest.mark.parametrize(
    ("seed", "holddown"), [(LOOP_SEEDS[0], 0.0), (LOOP_SEEDS[1], FUZZ.route_expiry)]
)
def test_a_shorter_hold_down_lets_the_regression_seeds_loop(seed: int, holddown: float) -> None:
    """The check above can fail: with no hold-down, or one of route_expiry only, these seeds
    show a transient loop."""
    _, loops, _ = fuzz_run(seed, config=replace(FUZZ, start_holddown=holddown))
    assert loops


_REPLAY = """
import sys
from tests.test_routing import fuzz_run
for seed in map(int, sys.argv[1:]):
    digest, loops, events = fuzz_run(seed)
    print(seed, digest, events, len(loops))
"""


def test_runs_replay_whatever_the_hash_seed() -> None:
    """The same seeds give the same trace (every action of every router, in order) under
    different PYTHONHASHSEED values: a loop the fuzzer finds can be replayed."""
    root = Path(__file__).resolve().parent.parent
    outputs = []
    for hash_seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-c", _REPLAY, *map(str, [*LOOP_SEEDS, 3])],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outputs.append(done.stdout)
    assert outputs[0].count("\n") == 3
    assert outputs[0] == outputs[1] == outputs[2]


def test_a_restarted_router_holds_down_then_selects() -> None:
    net = Net([("a", "b"), ("b", "c")])
    net.run(3.0)
    config = replace(FAST, start_holddown=None)
    net.link_down("a", "b")
    net.nodes["a"] = a = Router("a", config, rng=random.Random("a/2"))
    net.link_up("a", "b")
    net.run(1.0)
    assert a.next_hop("c") is None  # held down: nothing selected through a neighbour yet
    assert a.routes()["c"] == ("b", 2)  # but reachable: frames take b
    frame_id = net.send("a", "c")
    net.run(0.5)
    assert [x.frame_id for x in net.arrived["c"]] == [frame_id]
    net.run(config.route_expiry + config.update_interval)
    assert a.next_hop("c") == "b"
    check_routes(net)
