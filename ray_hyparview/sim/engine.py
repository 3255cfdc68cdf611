"""A seeded discrete-event network that drives many protocol cores at once.

Theory of operation
-------------------
The simulator is one more driver of :class:`~ray_hyparview.protocol.hyparview.HyParView`, like
the asyncio agent: it feeds each core ``receive``, ``link_failed`` and ``on_timer`` calls with an
explicit ``now`` and carries out the ``Send`` actions the core returns. It never decides anything
the protocol decides. What it adds is a model of the network, in simulated seconds:

* **Timed events**, taken in ``(time, sequence number)`` order: deliveries, timer firings and
  failure notices. The sequence number makes the order total, so a seed replays a run exactly
  (the same idea as hashicorp/hyparview's ``simulation`` package and PeerSim's event mode). They
  wait in two heaps, one for timers and one for the rest, and the loop takes the smaller of the
  two tops: the order is the same as one heap's, but every node keeps a timer about a shuffle
  period ahead while only a few dozen messages are in flight, so a message's push and pop walk a
  heap of tens of entries instead of one of ten thousand (a pop was 11% of a compiled run).
* **Latency** per message from a seeded model (uniform or log-normal, a few milliseconds by
  default), with **FIFO order per directed link**: a message never overtakes an earlier one on the
  same link, as TCP and ZeroMQ guarantee. Delivery time is ``max(last delivery on the link,
  now + latency)``.
* **Loss**: each message may be dropped silently with a fixed probability.
* **Crashes**: a crashed node stops at once. Its peers learn about it the way the real agent does:
  a send to it fails after one latency (connection refused, the monitor's ``DISCONNECTED``), and
  every live node that holds it in its active view is told after ``detection_delay`` seconds (the
  heartbeat timeout of the agent). ``detection_delay=None`` leaves only the first path, which is
  the paper's model (failures are found by TCP when sending).
* **Partitions**: a set of groups; a message between groups is dropped and its sender sees the
  link fail after ``detection_delay``; active links across groups fail on both sides after the
  same delay. :meth:`Simulation.heal` lets traffic through again; merging the halves is the
  protocol's job.
* **Timers**: after every input the node's ``next_deadline()`` is read and, if it changed, a new
  timer event is pushed. Older timer events stay in their heap and are skipped when they come up
  (lazy invalidation), which is cheaper than deleting from a heap.

Nothing here reads the wall clock or a global random generator: one ``random.Random`` drives the
network and one, shared by all cores, drives the protocol. Sharing one generator costs nothing in
determinism (events are processed one at a time in a fixed order) and saves 2.5 KB of Mersenne
Twister state per node, which matters at 100,000 nodes.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import math
import pickle
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.messages import Action, Message, Send
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.sim.errors import SimulationError

__all__ = [
    "LatencyModel",
    "LogNormalLatency",
    "NetworkConfig",
    "NodeFactory",
    "SimNode",
    "SimStats",
    "Simulation",
    "SimulationError",
    "UniformLatency",
    "collector_paused",
    "default_node_factory",
]

# Event kinds, kept as small ints: the event loop compares them millions of times.
_DELIVER = 0
_TIMER = 1
_LINK_FAILED = 2

# Heap entry: (time, sequence, kind, a, b, message). For _DELIVER a is the receiver and b the
# sender; for _TIMER a is the node; for _LINK_FAILED a is the node told that its link to b failed.
_Event = tuple[float, int, int, NodeId, NodeId, Message | None]

_TIMER_NUDGE = 1e-6
"""How far a timer that a core re-arms in the past is pushed into the future (counted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UniformLatency:
    """One-way latency drawn uniformly from ``[low, high]`` seconds."""

    low: float = 0.001
    """Shortest one-way delay, in seconds."""

    high: float = 0.005
    """Longest one-way delay, in seconds."""

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high or not math.isfinite(self.high):
            raise SimulationError(f"need 0 <= low <= high, got {self.low!r}, {self.high!r}")

    def sample(self, rng: random.Random) -> float:
        """Draw one delay."""
        return self.low + (self.high - self.low) * rng.random()


@dataclass(frozen=True, slots=True, kw_only=True)
class LogNormalLatency:
    """One-way latency with a log-normal distribution, the usual fit for measured RTTs.

    The long right tail (a few slow messages) is what reorders replies across links.
    """

    median: float = 0.002
    """Median one-way delay, in seconds."""

    sigma: float = 0.5
    """Shape: standard deviation of the delay's natural logarithm."""

    cap: float = 1.0
    """Upper bound on one delay, so that one unlucky draw cannot stall a link for minutes."""

    def __post_init__(self) -> None:
        if not (self.median > 0 and self.sigma >= 0 and self.cap >= self.median):
            raise SimulationError(
                f"need median > 0, sigma >= 0, cap >= median; got {self.median!r},"
                f" {self.sigma!r}, {self.cap!r}"
            )

    def sample(self, rng: random.Random) -> float:
        """Draw one delay."""
        return min(self.cap, self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0)))


LatencyModel = UniformLatency | LogNormalLatency
"""The latency models the simulator knows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    """How the simulated network behaves."""

    latency: LatencyModel = field(default_factory=UniformLatency)
    """Per-message one-way delay."""

    loss: float = 0.0
    """Probability that one message is dropped silently (no failure notice)."""

    detection_delay: float | None = 2.0
    """Seconds until a node notices that an active peer crashed or is partitioned away without
    sending to it: the agent's heartbeat timeout. ``None``: only failed sends reveal failures."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise SimulationError(f"loss must be in [0, 1), got {self.loss!r}")
        if self.detection_delay is not None and not self.detection_delay > 0:
            raise SimulationError(f"detection_delay must be > 0, got {self.detection_delay!r}")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Keep Python's cyclic garbage collector off inside the block, as it was after.

    The event loop runs in one: each event allocates a message, an action list and a heap
    entry, so the collector would start every few hundred events and walk the young objects
    (and, every so often, the whole overlay), while nothing the loop or the core does forms a
    reference cycle; refcounting frees it all, and a test checks that a collection after a run
    finds nothing. A cycle that some node type does make is not lost, only collected later.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class SimNode(Protocol):
    """What the simulator needs from a node: the protocol core's input methods and views.

    :class:`~ray_hyparview.protocol.hyparview.HyParView` satisfies it; tests plug in small stubs
    to check the network model on its own.
    """

    def join(self, contacts: Sequence[Peer], *, now: float) -> list[Action]: ...

    def receive(self, sender: NodeId, message: Message, *, now: float) -> list[Action]: ...

    def link_failed(self, peer: NodeId, *, now: float) -> list[Action]: ...

    def on_timer(self, *, now: float) -> list[Action]: ...

    def next_deadline(self) -> float | None: ...

    @property
    def active_ids(self) -> Collection[NodeId]: ...

    @property
    def passive_view(self) -> tuple[Peer, ...]: ...


NodeFactory = Callable[[Peer, HyParViewConfig, random.Random], SimNode]
"""Builds the node for one peer: ``factory(myself, config, shared_rng)``."""


def default_node_factory(myself: Peer, config: HyParViewConfig, rng: random.Random) -> SimNode:
    """Build the real protocol core (imported late so that the engine loads without it)."""
    from ray_hyparview.protocol.hyparview import HyParView

    node: SimNode = HyParView(myself, config, rng=rng)
    return node


@dataclass(slots=True)
class SimStats:
    """Counts of what the network did; ``events`` is the figure for events per second."""

    events: int = 0
    """Heap entries processed, stale timers included."""

    delivered: int = 0
    """Messages handed to a live receiver."""

    timers: int = 0
    """``on_timer`` calls."""

    stale_timers: int = 0
    """Timer entries skipped because the node re-armed or crashed since they were pushed."""

    link_failures: int = 0
    """``link_failed`` calls."""

    sent: int = 0
    """``Send`` actions carried out (including those then dropped)."""

    lost: int = 0
    """Messages dropped by the loss model."""

    to_dead: int = 0
    """Messages sent to, or arriving at, a crashed node."""

    cut: int = 0
    """Messages dropped because sender and receiver were in different partition groups."""

    timer_nudges: int = 0
    """Times a core asked for a timer at or before the instant it was just woken for."""

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict, for JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Simulation:
    """A network of protocol cores, advanced by :meth:`run_until`.

    Drivers add nodes, make them join, run the clock, crash nodes, cut and heal the network,
    and read views between runs. All times are simulated seconds.
    """

    def __init__(
        self,
        config: HyParViewConfig,
        *,
        network: NetworkConfig | None = None,
        seed: int = 0,
        node_factory: NodeFactory = default_node_factory,
    ) -> None:
        self.config = config
        self.network = network if network is not None else NetworkConfig()
        self.now = 0.0
        self.stats = SimStats()
        self._net_rng = random.Random(seed * 2 + 1)
        self._protocol_rng = random.Random(seed * 2)
        self._node_factory = node_factory
        self._nodes: dict[NodeId, SimNode] = {}
        self._peers: dict[NodeId, Peer] = {}
        self._alive: set[NodeId] = set()
        self._group: dict[NodeId, int] = {}
        self._rest_group = 0
        self._heap: list[_Event] = []  # deliveries and failure notices
        self._timers: list[_Event] = []
        self._seq = itertools.count()
        self._armed: dict[NodeId, float] = {}
        self._fifo: dict[tuple[NodeId, NodeId], float] = {}
        self._fifo_limit = 65_536
        self._pending_failures: set[tuple[NodeId, NodeId]] = set()

    # -- membership of the simulation ---------------------------------------------------------

    def add_node(self, node_id: NodeId) -> Peer:
        """Create a live node that has not joined anything yet."""
        if node_id in self._nodes:
            raise SimulationError(f"node {node_id!r} exists already")
        peer = Peer(node_id, f"sim://{node_id}")
        self._nodes[node_id] = self._node_factory(peer, self.config, self._protocol_rng)
        self._peers[node_id] = peer
        self._alive.add(node_id)
        if self._group:
            self._group[node_id] = self._rest_group
        return peer

    def join(self, node_id: NodeId, contacts: Sequence[NodeId]) -> None:
        """Make ``node_id`` join through ``contacts`` (the first is tried first) at ``now``."""
        node = self.node(node_id)
        peers = [self.peer(c) for c in contacts]
        self._apply(node_id, node.join(peers, now=self.now))
        self._rearm(node_id)

    def apply_actions(self, node_id: NodeId, actions: Iterable[Action]) -> None:
        """Carry out ``actions`` that a driver got from a live node outside the event loop, at
        ``now``, then re-arm the node's timer.

        Inputs the simulator does not model (a broadcast started by the application, a call on a
        stacked node type) return actions too; this puts their sends on the wire under the same
        latency, loss, crash and partition rules as the event loop's, so drivers never reach for
        the engine's internals.
        """
        self.node(node_id)
        if node_id not in self._alive:
            raise SimulationError(f"node {node_id!r} has crashed and cannot act")
        self._apply(node_id, actions)
        self._rearm(node_id)

    def node(self, node_id: NodeId) -> SimNode:
        """The node object (alive or crashed) for ``node_id``."""
        try:
            return self._nodes[node_id]
        except KeyError:
            raise SimulationError(f"unknown node {node_id!r}") from None

    def peer(self, node_id: NodeId) -> Peer:
        """The :class:`Peer` of ``node_id``."""
        try:
            return self._peers[node_id]
        except KeyError:
            raise SimulationError(f"unknown node {node_id!r}") from None

    @property
    def node_ids(self) -> list[NodeId]:
        """Every node ever added, in the order they were added."""
        return list(self._nodes)

    @property
    def alive_ids(self) -> list[NodeId]:
        """Live nodes, in the order they were added."""
        alive = self._alive
        return [n for n in self._nodes if n in alive]

    def is_alive(self, node_id: NodeId) -> bool:
        """Whether ``node_id`` has not crashed."""
        return node_id in self._alive

    def nodes(self) -> Iterable[tuple[NodeId, SimNode]]:
        """``(id, node)`` for every node, crashed ones included, in the order they were added."""
        return self._nodes.items()

    # -- faults --------------------------------------------------------------------------------

    def crash(self, node_ids: Iterable[NodeId]) -> None:
        """Stop ``node_ids`` now; their live active neighbours hear of it after the detection
        delay, and anyone who sends to them hears of it after one latency."""
        victims = set(node_ids)
        for node_id in victims:
            self.node(node_id)
        victims &= self._alive
        if not victims:
            return
        self._alive -= victims
        for node_id in victims:
            self._armed.pop(node_id, None)
        delay = self.network.detection_delay
        if delay is None:
            return
        when = self.now + delay
        for node_id, node in self._nodes.items():
            if node_id not in self._alive:
                continue
            for peer_id in node.active_ids:
                if peer_id in victims:
                    self._notify_failure(node_id, peer_id, when)

    def partition(self, groups: Sequence[Iterable[NodeId]]) -> None:
        """Cut the network into ``groups``; nodes not named form one more group.

        Active links across groups fail on both sides after the detection delay (heartbeats stop
        arriving); later messages across are dropped and their senders told after the same delay.
        """
        group: dict[NodeId, int] = {}
        for index, members in enumerate(groups):
            for node_id in members:
                self.node(node_id)
                if node_id in group:
                    raise SimulationError(f"node {node_id!r} is in two partition groups")
                group[node_id] = index
        rest = self._rest_group = len(groups)
        self._group = {n: group.get(n, rest) for n in self._nodes}
        delay = self.network.detection_delay
        if delay is None:
            return
        when = self.now + delay
        for node_id, node in self._nodes.items():
            if node_id not in self._alive:
                continue
            mine = self._group[node_id]
            for peer_id in node.active_ids:
                if self._group.get(peer_id, rest) != mine:
                    self._notify_failure(node_id, peer_id, when)

    def heal(self) -> None:
        """Remove every partition: messages flow between all live nodes again."""
        self._group = {}

    @property
    def partitioned(self) -> bool:
        """Whether a partition is in force."""
        return bool(self._group)

    # -- running -------------------------------------------------------------------------------

    def run_for(self, duration: float) -> None:
        """Advance the clock by ``duration`` seconds."""
        self.run_until(self.now + duration)

    def run_until(self, until: float) -> None:
        """Process every event due at or before ``until``, then set the clock to ``until``.

        This loop is the simulator's hot path (millions of iterations per 10,000-node run), so
        it keeps everything in locals and carries out ``Send`` actions inline; the rules are
        the same as in :meth:`_send`, :meth:`_rearm` and :meth:`_notify_failure`.
        """
        if until < self.now:
            raise SimulationError(f"time cannot go back from {self.now} to {until}")
        if len(self._fifo) > self._fifo_limit:
            self._prune_fifo()
        with collector_paused():
            self._run_until(until)

    def _run_until(self, until: float) -> None:
        heap = self._heap
        timer_heap = self._timers
        pop = heapq.heappop
        push = heapq.heappush
        seq = self._seq
        nodes = self._nodes
        alive = self._alive
        armed = self._armed
        group = self._group
        fifo = self._fifo
        pending_failures = self._pending_failures
        rng = self._net_rng
        rand = rng.random
        network = self.network
        detection = network.detection_delay
        detect = detection is not None
        delay = detection if detection is not None else 0.0  # read only when detect
        loss = network.loss
        latency = network.latency
        sample = latency.sample
        uniform = isinstance(latency, UniformLatency)
        low = latency.low if isinstance(latency, UniformLatency) else 0.0
        span = latency.high - latency.low if isinstance(latency, UniformLatency) else 0.0
        notify = self._notify_failure
        stats = self.stats
        # Every event lands in exactly one of these tallies; ``events`` is their sum, taken once
        # at the end rather than counted on each of millions of turns.
        delivered = timers = stale = failures = sent = 0
        dead_in = cut_in = notices_dropped = 0
        actions: list[Action]
        try:
            while True:
                # The smaller of the two heads; sequence numbers are unique, so the tuples
                # never compare past them and the order is one heap's.
                if timer_heap and (not heap or timer_heap[0] < heap[0]):
                    if timer_heap[0][0] > until:
                        break
                    now, _, kind, a, b, message = pop(timer_heap)
                elif heap and heap[0][0] <= until:
                    now, _, kind, a, b, message = pop(heap)
                else:
                    break
                self.now = now
                if kind == _DELIVER:
                    if a not in alive:
                        dead_in += 1
                        stats.to_dead += 1
                        if b in alive:
                            notify(b, a, now + sample(rng))
                        continue
                    if group and group[a] != group[b]:
                        cut_in += 1
                        stats.cut += 1
                        if detect and b in alive:
                            notify(b, a, now + delay)
                        continue
                    delivered += 1
                    assert message is not None
                    node = nodes[a]
                    actions = node.receive(b, message, now=now)
                    if detect and b not in alive:
                        # A message from a node that has crashed since: heartbeats on any link
                        # it opened stop, so the receiver finds out after the detection delay.
                        notify(a, b, now + delay)
                elif kind == _TIMER:
                    if armed.get(a) != now:
                        stale += 1
                        continue
                    del armed[a]
                    timers += 1
                    node = nodes[a]
                    actions = node.on_timer(now=now)
                else:
                    pending_failures.discard((a, b))
                    if a not in alive:
                        notices_dropped += 1
                        continue
                    failures += 1
                    node = nodes[a]
                    actions = node.link_failed(b, now=now)
                for action in actions:
                    if type(action) is not Send:
                        continue
                    sent += 1
                    target = action.to.id
                    if target not in alive:
                        if target not in nodes:
                            raise SimulationError(f"{a!r} sent to unknown node {target!r}")
                        stats.to_dead += 1
                        notify(a, target, now + sample(rng))
                        continue
                    if group and group[a] != group[target]:
                        stats.cut += 1
                        if detect:
                            notify(a, target, now + delay)
                        continue
                    if loss and rand() < loss:
                        stats.lost += 1
                        continue
                    due = now + (low + span * rand() if uniform else sample(rng))
                    key = (a, target)
                    last = fifo.get(key, 0.0)  # no entry: 0.0, which no delivery time is below
                    due = last if last > due else due  # not max(): a call per message
                    fifo[key] = due
                    push(heap, (due, next(seq), _DELIVER, target, a, action.message))
                deadline = node.next_deadline()
                if deadline is None:
                    armed.pop(a, None)
                    continue
                current = armed.get(a)
                if deadline == current:
                    continue
                if deadline <= now:
                    if kind == _TIMER:
                        # A core that asks to be woken again for the instant it was just woken
                        # for would spin forever: it waits a microsecond (counted).
                        stats.timer_nudges += 1
                        deadline = now + _TIMER_NUDGE
                    elif deadline < now:
                        deadline = now
                    if deadline == current:
                        continue
                armed[a] = deadline
                push(timer_heap, (deadline, next(seq), _TIMER, a, a, None))
        finally:
            stats.events += (
                delivered + dead_in + cut_in + timers + stale + failures + notices_dropped
            )
            stats.delivered += delivered
            stats.timers += timers
            stats.stale_timers += stale
            stats.link_failures += failures
            stats.sent += sent
        self.now = until

    @property
    def pending_events(self) -> int:
        """Events waiting, stale timers included."""
        return len(self._heap) + len(self._timers)

    def snapshot(self) -> Simulation:
        """An independent deep copy, to branch several experiments off one built overlay."""
        copy: Simulation = pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        return copy

    def core_counters(self) -> Counter[str]:
        """The sum of every core's ``counters`` (when the node type has them)."""
        total: Counter[str] = Counter()
        for node in self._nodes.values():
            counters = getattr(node, "counters", None)
            if counters is not None:
                total.update(counters)
        return total

    # -- internals -----------------------------------------------------------------------------

    def _apply(self, source: NodeId, actions: Iterable[Action]) -> None:
        """Carry out a core's actions: sends go on the wire; PeerUp/PeerDown are for users."""
        for action in actions:
            if type(action) is Send:
                self._send(source, action.to.id, action.message)

    def _send(self, source: NodeId, target: NodeId, message: Message) -> None:
        stats = self.stats
        stats.sent += 1
        now = self.now
        network = self.network
        if target not in self._alive:
            if target not in self._nodes:
                raise SimulationError(f"{source!r} sent {message!r} to unknown node {target!r}")
            stats.to_dead += 1
            self._notify_failure(source, target, now + network.latency.sample(self._net_rng))
            return
        if self._group and self._group[source] != self._group[target]:
            stats.cut += 1
            if network.detection_delay is not None:
                self._notify_failure(source, target, now + network.detection_delay)
            return
        rng = self._net_rng
        if network.loss and rng.random() < network.loss:
            stats.lost += 1
            return
        due = now + network.latency.sample(rng)
        key = (source, target)
        fifo = self._fifo
        last = fifo.get(key)
        if last is not None and last > due:
            due = last
        fifo[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), _DELIVER, target, source, message))

    def _notify_failure(self, node_id: NodeId, peer_id: NodeId, when: float) -> None:
        """Tell ``node_id`` at ``when`` that its link to ``peer_id`` failed (once per pair while
        a notice is pending)."""
        key = (node_id, peer_id)
        if key in self._pending_failures:
            return
        self._pending_failures.add(key)
        heapq.heappush(self._heap, (when, next(self._seq), _LINK_FAILED, node_id, peer_id, None))

    def _rearm(self, node_id: NodeId) -> None:
        """Push a timer event if the node's deadline moved; stale entries are skipped later.

        Used outside the event loop (after ``join``); the loop inlines the same rule.
        """
        if node_id not in self._alive:
            return
        deadline = self._nodes[node_id].next_deadline()
        armed = self._armed
        current = armed.get(node_id)
        if deadline is None:
            if current is not None:
                del armed[node_id]
            return
        deadline = max(deadline, self.now)  # time never goes back: a past deadline fires now
        if deadline == current:
            return
        armed[node_id] = deadline
        heapq.heappush(self._timers, (deadline, next(self._seq), _TIMER, node_id, node_id, None))

    def _prune_fifo(self) -> None:
        """Forget links whose last delivery is past: they no longer constrain the order."""
        now = self.now
        self._fifo = {k: t for k, t in self._fifo.items() if t > now}
        self._fifo_limit = max(65_536, 4 * len(self._fifo))
