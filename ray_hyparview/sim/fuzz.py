"""A deterministic fault-injection fuzzer of the whole stack: seeded worlds, a history checker.

Theory of operation
-------------------
FoundationDB's simulator and TigerBeetle's VOPR test the same way: one seed builds one small
world, runs it under faults drawn from the seed, and checks every promise against what
happened; a seed that fails is a bug report that replays forever. Here:

* **A world** (:class:`World`) is 5 to ``max_nodes`` nodes, each a
  :class:`~ray_hyparview.sim.nodestack.NodeStack` (HyParView + routing + Plumtree + an optional
  delivery service, wired as the agent and the mesh wire them), on a network of timed frames:
  latency per frame, FIFO per directed link (as TCP keeps), so frames reorder only across links.
  One heap of ``(time, sequence)`` events makes the order total; nothing reads a clock or a
  global generator, and every generator is seeded from a string (Python hashes strings with
  ``PYTHONHASHSEED``, but ``random.Random(str)`` seeds from SHA-512), so a seed replays the
  same event trace under any hash seed.
* **Faults** (:data:`Fault`) are values drawn from the seed: lossy windows (loss, duplication,
  extra delay), partitions of any length (some outlast ``lost_retention``), crashes, restarts
  under the same id with a new incarnation, pauses (the node's frames wait in a backlog),
  clock steps and hostile frames with extreme field values, encoded by the real codec.
* **Clocks.** Each node's monotonic clock is the world's plus an offset that a clock step moves;
  the shell feeds the cores ``now = max(last now, clock)``, as the agent's timer loop does
  (aioquic's rule), so a step back freezes the node's time and a step forward fires its timers
  at once. A restart takes its incarnation from the node's wall clock in microseconds, as
  ``agent.py`` does, so a clock stepped back before a restart gives a smaller incarnation.
* **The agent's deaths are modelled**: a core that raises, or that returns a value the codec
  cannot encode, ends the node (the agent's TaskGroup would end) and is a finding.
* **Checks** are in :mod:`ray_hyparview.sim.history`; a failing seed is shrunk by
  delta-debugging over its fault list (re-running the world each time) and printed with its
  shortest fault schedule and the trace tail before the finding.

Stated times: the faults stop by ``faults_end``; views are symmetric and the overlay connected
``converge`` seconds later (a pair or a split seen at each of five samples over the next two
seconds fails: one latency of a link in flight does not); publications made then reach every
live node of their component within ``reach`` seconds; and every live node routes to every
other of its component at one sample at least of the last ``reach`` seconds (small overlays
may keep rewiring for good, so a snapshot can catch a route being re-learnt).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.messages import ForwardJoin, Shuffle
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.sim import history as hs
from ray_hyparview.sim.nodestack import FrameEncodeError, NodeStack, ServiceFactory
from ray_hyparview.wire import wire_codec

__all__ = [
    "DEFAULT_KNOWN",
    "ClockStep",
    "Crash",
    "Fault",
    "FuzzConfig",
    "Hostile",
    "Lossy",
    "Partition",
    "Pause",
    "Plan",
    "Restart",
    "SeedResult",
    "World",
    "draw_plan",
    "run_seed",
    "shrink",
]

FUZZ_MEMBERSHIP = HyParViewConfig(
    active_view_size=3,
    passive_view_size=8,
    reserve_size=8,
    arwl=3,
    prwl=1,
    shuffle_active=2,
    shuffle_passive=3,
    shuffle_ttl=3,
    shuffle_interval=5.0,
    neighbor_timeout=1.0,
    rejoin_backoff_max=8.0,
    keepalive_interval=2.0,
    keepalive_timeout=6.0,
    lost_retention=30.0,
    probe_interval_min=1.0,
    probe_interval_max=8.0,
)
"""Membership scaled to worlds of 5-16 nodes and a few simulated minutes: a partition of more
than 30 s outlasts the lost set, as a long one outlasts the default 600 s."""

FUZZ_ROUTING = rt.RoutingConfig(
    update_interval=5.0, route_expiry=17.5, request_interval=0.5, source_retention=60.0,
    max_routes=64,
)  # fmt: skip
FUZZ_PLUMTREE = pt.PlumtreeConfig(
    ihave_timeout=0.2, graft_timeout=0.1, lazy_flush_interval=0.02, seen_retention=60.0,
    seen_max=256, payload_retention=20.0, payload_cache_max=128, missing_max=128,
    ihave_batch_max=16,
)  # fmt: skip

DEFAULT_KNOWN: dict[str, str] = {
    "encode_error.RouteUpdate": "issue 9, 'One frame stops a node's agent': our seqno becomes"
    " 2**64 after a ROUTE_UPDATE with 2**64-1 (routing.py:570)",
    "encode_error.SeqnoRequest": "issue 9, 'One frame stops a node's agent': a relayed"
    " SEQNO_REQUEST with seqno 2**64-1 (routing.py:661)",
    "encode_error.Gossip": "issue 9, 'One frame stops a node's agent': GOSSIP round 255 is"
    " forwarded as 256 (plumtree.py:431; the wire's round is a byte)",
    "encode_error.IHave": "issue 9, 'One frame stops a node's agent': Plumtree round > 255",
    "encode_error.Graft": "issue 9, 'One frame stops a node's agent': Plumtree round > 255",
    "connected": "issue 9 item 6: a partition longer than lost_retention never re-merges"
    " (the merge check lives in meshnode.py, the delivery core takes it)",
    "lost_expiry": "issue 9 item 8: lost entries expire only in a probe tick, which stops when"
    " no FAILED entry is left to probe",
    "incarnation": "issue 9 item 8: incarnations come from the wall clock (agent.py:131), so a"
    " clock stepped back makes a new life look older",
    "routing_loop": "issue 9 item 10: transient next-hop loop (router restarts, link flaps)",
}
"""Checks turned off by default because they fail only through bugs being fixed now, each
with its issue item; ``--all-checks`` turns them on again."""


CONSEQUENCES: dict[str, tuple[str, ...]] = {
    "routes": ("encode_error", "connected"),
    "publish_reach": ("encode_error", "connected"),
}
"""Checks whose failure in a seed that broke one of these families first may be its
consequence (a seqno poisoned at 2**64-1 leaves its destination unreachable for good)."""


def is_known(finding: hs.Finding, findings: Sequence[hs.Finding], known: frozenset[str]) -> bool:
    """Is ``finding`` a known finding, or a consequence of a known one in the same seed?"""
    if finding.check in known or finding.family in known:
        return True
    causes = CONSEQUENCES.get(finding.family, ())
    return any(
        other.family in causes and (other.check in known or other.family in known)
        for other in findings
        if other.time <= finding.time
    )


# -- faults -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lossy:
    """Between ``at`` and ``until`` every frame is lost with ``loss``, duplicated with ``dup``
    and delayed by up to ``delay`` s more (FIFO per link still holds)."""

    at: float
    until: float
    loss: float
    dup: float
    delay: float


@dataclass(frozen=True, slots=True)
class Partition:
    """Between ``at`` and ``until`` frames between different ``groups`` vanish silently."""

    at: float
    until: float
    groups: tuple[tuple[NodeId, ...], ...]


@dataclass(frozen=True, slots=True)
class Crash:
    """The node stops for good (until a :class:`Restart`)."""

    at: float
    node: NodeId


@dataclass(frozen=True, slots=True)
class Restart:
    """The node starts again under its id with a new incarnation (a live one is killed first)."""

    at: float
    node: NodeId


@dataclass(frozen=True, slots=True)
class Pause:
    """The node processes nothing between ``at`` and ``until``; frames wait in a backlog."""

    at: float
    until: float
    node: NodeId


@dataclass(frozen=True, slots=True)
class ClockStep:
    """The node's clock jumps by ``delta`` s (both its monotonic and its wall clock)."""

    at: float
    node: NodeId
    delta: float


@dataclass(frozen=True, slots=True)
class Hostile:
    """The hostile node sends a well-formed frame of ``kind`` with extreme values to a peer."""

    at: float
    node: NodeId
    kind: str
    pick: float
    """Chooses the victim and the subject among the ids the world has, at send time."""


Fault = Lossy | Partition | Crash | Restart | Pause | ClockStep | Hostile
HOSTILE_KINDS = (
    "route_update", "seqno_request", "gossip", "ihave", "graft", "data_frame", "route_error",
    "forward_join", "shuffle",
)  # fmt: skip
_U64 = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a seed decides: the world, its workload and its faults."""

    seed: int
    nodes: tuple[NodeId, ...]
    hostile: tuple[NodeId, ...]
    faults: tuple[Fault, ...]
    faults_end: float
    publishes: tuple[tuple[float, int], ...]
    """``(time, pick)``: a live node picked by ``pick`` publishes at ``time``."""
    sends: tuple[tuple[float, int, int], ...]
    """``(time, from pick, to pick)`` for the delivery service."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FuzzConfig:
    """The shape of the worlds the fuzzer draws."""

    min_nodes: int = 5
    max_nodes: int = 10
    fault_span: float = 60.0
    """Longest time over which faults are spread, in simulated seconds."""
    max_faults: int = 12
    converge: float = 30.0
    """Stated time from the last fault to symmetric, connected views."""
    reach: float = 6.0
    """Stated time for a publication made after convergence to reach every live node."""
    known: frozenset[str] = frozenset(DEFAULT_KNOWN)
    """Checks (``encode_error.Gossip``) or families (``connected``) whose findings are reported
    as known, not as failures."""
    membership: HyParViewConfig = FUZZ_MEMBERSHIP
    routing: rt.RoutingConfig = FUZZ_ROUTING
    plumtree: pt.PlumtreeConfig = FUZZ_PLUMTREE
    service: ServiceFactory | None = None
    """The delivery layer on top of routing (none: routing, membership and Plumtree only)."""
    sends: int = 0
    """Messages the workload sends through the service."""


def draw_plan(seed: int, config: FuzzConfig) -> Plan:
    """The world ``seed`` makes: nodes, workload and faults, drawn from one seeded generator."""
    rng = random.Random(f"plan:{seed}")
    count = rng.randint(config.min_nodes, config.max_nodes)
    nodes = tuple(f"n{i:02d}" for i in range(count))
    hostile = (nodes[-1],) if rng.random() < 0.3 else ()
    start = 4.0
    span = rng.uniform(5.0, config.fault_span)
    faults: list[Fault] = []
    for _ in range(rng.randint(0, config.max_faults)):
        at = start + rng.uniform(0, span)
        kind = rng.random()
        node = rng.choice(nodes)
        if kind < 0.15:
            until = at + rng.uniform(0.5, 20.0)
            faults.append(Lossy(at, until, rng.uniform(0, 0.3), rng.uniform(0, 0.2), rng.random()))
        elif kind < 0.3:
            cut = rng.randint(1, count - 1)
            order = list(nodes)
            rng.shuffle(order)
            groups = (tuple(sorted(order[:cut])), tuple(sorted(order[cut:])))
            length = rng.choice((rng.uniform(1, 10), rng.uniform(10, 45)))
            faults.append(Partition(at, at + length, groups))
        elif kind < 0.42:
            faults.append(Crash(at, node))
            if rng.random() < 0.7:
                faults.append(Restart(at + rng.uniform(0.1, 15.0), node))
        elif kind < 0.5:
            faults.append(Restart(at, node))
        elif kind < 0.62:
            faults.append(Pause(at, at + rng.uniform(0.5, 12.0), node))
        elif kind < 0.72:
            step = rng.uniform(0.5, 60.0) if rng.random() < 0.5 else -rng.uniform(0.5, 20.0)
            faults.append(ClockStep(at, node, step))
        elif hostile:
            for _ in range(rng.randint(1, 4)):
                when = at + rng.uniform(0, 5)
                faults.append(Hostile(when, hostile[0], rng.choice(HOSTILE_KINDS), rng.random()))
    faults.sort(key=lambda f: f.at)
    # A clock stepped back freezes the node's time (the shell feeds max(last, clock)) until
    # its clock catches up: that fault lasts as long as the step.
    ends = [
        f.at - f.delta if isinstance(f, ClockStep) and f.delta < 0 else getattr(f, "until", f.at)
        for f in faults
    ]
    faults_end = max([start, *ends])
    settled = faults_end + config.converge
    publishes = [(rng.uniform(start, faults_end + 5.0), rng.randrange(1 << 30)) for _ in range(3)]
    publishes += [(settled + rng.uniform(0, 1.0), rng.randrange(1 << 30)) for _ in range(2)]
    sends = [
        (rng.uniform(start, settled), rng.randrange(1 << 30), rng.randrange(1 << 30))
        for _ in range(config.sends)
    ]
    return Plan(
        seed,
        nodes,
        hostile,
        tuple(faults),
        faults_end,
        tuple(sorted(publishes)),
        tuple(sorted(sends)),
    )


# -- the world ----------------------------------------------------------------------------------

_DELIVER, _TIMER, _LINK_FAILED, _OP = 0, 1, 2, 3
_OVERLAY_SAMPLES = 5
_OVERLAY_SAMPLE_EVERY = 0.5
"""Symmetry and connectivity are sampled this often from ``converge`` s after the faults."""
_ROUTE_SAMPLES = 6
_ROUTE_SAMPLE_EVERY = 1.0
"""Routes are sampled this often over the last seconds of a world; see ``check_routes``."""
_NAMES = {tag: cls.__name__ for tag, cls in wire_codec().registry.types.items() if tag < 128}
"""Message names by tag (a tag below 128 is the frame's fifth byte) for the trace."""
_EPOCH = 1_800_000_000.0
"""The wall clock at the world's time 0 (incarnations are wall-clock microseconds)."""


@dataclass(slots=True)
class _Host:
    id: NodeId
    peer: Peer
    stack: NodeStack | None = None
    life: int = 0
    since: float = 0.0
    incarnation: int = 0
    paused: bool = False
    backlog: list[tuple[str, Callable[[NodeStack, float], object]]] = field(default_factory=list)
    offset: float = 0.0
    last: float = 0.0
    armed: float | None = None


@dataclass(slots=True)
class SeedResult:
    """What one world found."""

    seed: int
    findings: list[hs.Finding]
    known: list[hs.Finding]
    unknown: int
    digest: str
    events: int
    trace: list[str]
    faults: tuple[Fault, ...]

    @property
    def failed(self) -> bool:
        return bool(self.findings)


class World:
    """One seeded world: build it with a :class:`Plan`, :meth:`run` it, read its result."""

    def __init__(self, plan: Plan, config: FuzzConfig, *, keep_trace: bool = False) -> None:
        self.plan = plan
        self.config = config
        self.now = 0.0
        self._net = random.Random(f"net:{plan.seed}")
        self._proto = random.Random(f"proto:{plan.seed}")
        self._hosts = {n: _Host(n, Peer(n, f"sim://{n}")) for n in plan.nodes}
        self._heap: list[tuple[float, int, int, NodeId, NodeId, Any]] = []
        self._seq = itertools.count()
        self._fifo: dict[tuple[NodeId, NodeId], float] = {}
        self._lossy: list[Lossy] = []
        self._partitions: list[Partition] = []
        self._pending_fail: set[tuple[NodeId, NodeId]] = set()
        self._digest = hashlib.sha256()
        self._keep = keep_trace
        self.trace: list[str] = []
        self.findings: list[hs.Finding] = []
        self._seen_checks: set[tuple[str, NodeId]] = set()
        self._delivered: dict[tuple[NodeId, int], dict[pt.MsgId, int]] = {}
        self._publications: list[hs.Publication] = []
        self._notes: list[tuple[float, NodeId, str, tuple[object, ...], NodeId]] = []
        self._incarnations: dict[NodeId, int] = {}
        self._routers: dict[NodeId, rt.Router] = {}
        self._unrouted: set[tuple[NodeId, NodeId]] | None = None
        self._overlay: set[tuple[str, NodeId, str]] | None = None
        self.events = 0
        self.unknown = 0

    # -- trace and findings ---------------------------------------------------------------------

    def _log(self, text: str) -> None:
        self._digest.update(text.encode())
        self._digest.update(b"\n")
        if self._keep:
            self.trace.append(text)

    def _find(self, check: str, node: NodeId, detail: str) -> None:
        key = (check.split(".", 1)[0], node)
        if key in self._seen_checks:
            return  # one finding per check and node: the first is the one to explain
        self._seen_checks.add(key)
        finding = hs.Finding(check, self.now, node, detail)
        self.findings.append(finding)
        self._log(f"{self.now:.6f} FINDING {finding}")

    # -- scheduling -----------------------------------------------------------------------------

    def _push(self, when: float, kind: int, a: NodeId, b: NodeId, data: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, a, b, data))

    def run(self) -> SeedResult:
        plan = self.plan
        for index, node in enumerate(plan.nodes):
            self._push(index * 0.2, _OP, node, "", ("start",))
        for fault in plan.faults:
            self._push(fault.at, _OP, "", "", ("fault", fault))
            if isinstance(fault, Lossy | Partition | Pause):
                self._push(fault.until, _OP, "", "", ("end", fault))
        for when, pick in plan.publishes:
            self._push(when, _OP, "", "", ("publish", pick))
        for when, src, dst in plan.sends:
            self._push(when, _OP, "", "", ("send", src, dst))
        settled = plan.faults_end + self.config.converge
        for index in range(_OVERLAY_SAMPLES):
            last = index == _OVERLAY_SAMPLES - 1
            self._push(settled + index * _OVERLAY_SAMPLE_EVERY, _OP, "", "", ("converged", last))
        end = settled + self.config.reach
        for index in range(_ROUTE_SAMPLES):
            self._push(end - index * _ROUTE_SAMPLE_EVERY, _OP, "", "", ("routes",))
        while self._heap and self._heap[0][0] <= end:  # the samples at ``end`` run too
            when, _, kind, a, b, data = heapq.heappop(self._heap)
            self.now = when
            self.events += 1
            if kind == _DELIVER:
                self._deliver(a, b, data)
            elif kind == _TIMER:
                self._timer(a, data)
            elif kind == _LINK_FAILED:
                self._pending_fail.discard((a, b))
                self._input(a, f"link_failed {b}", _link_failer(b))
            else:
                self._op(a, data)
        self.now = end
        self._final(settled)
        known = [f for f in self.findings if is_known(f, self.findings, self.config.known)]
        return SeedResult(
            plan.seed,
            [f for f in self.findings if f not in known],
            known,
            self.unknown,
            self._digest.hexdigest(),
            self.events,
            self.trace,
            plan.faults,
        )

    # -- nodes ----------------------------------------------------------------------------------

    def _alive(self) -> list[_Host]:
        return [h for h in self._hosts.values() if h.stack is not None]

    def _start(self, host: _Host) -> None:
        wall = _EPOCH + self.now + host.offset
        host.life += 1
        host.since = self.now
        host.incarnation = int(wall * 1e6)
        previous = self._incarnations.get(host.id)
        if previous is not None and host.incarnation <= previous:
            self._find("incarnation", host.id, f"restarted as {host.incarnation} after {previous}")
        self._incarnations[host.id] = host.incarnation
        host.last = max(host.last, self.now + host.offset)
        host.paused = False
        host.backlog.clear()
        node, life = host.id, host.life

        def record(kind: str, data: tuple[object, ...]) -> None:
            if kind == "publish_delivered":
                msg_id = data[0]
                assert isinstance(msg_id, tuple)
                counts = self._delivered.setdefault((node, life), {})
                counts[msg_id] = counts.get(msg_id, 0) + 1
            else:
                key, dest = data
                assert isinstance(key, tuple)
                assert isinstance(dest, str)
                self._notes.append((self.now, node, kind, key, dest))

        host.stack = NodeStack(
            host.peer,
            incarnation=host.incarnation,
            rng=random.Random(f"node:{self.plan.seed}:{node}:{life}:{self._proto.random()}"),
            membership=self.config.membership,
            routing=self.config.routing,
            plumtree=self.config.plumtree,
            service=self.config.service,
            record=record,
        )
        self._routers[node] = host.stack.router
        contacts = [self._hosts[n].peer for n in self.plan.nodes if n != node]
        random.Random(f"contacts:{self.plan.seed}:{node}").shuffle(contacts)
        self._log(f"{self.now:.6f} start {node} life={life} inc={host.incarnation}")
        # As the agent does on start: join through the strategy's contacts (every other node,
        # in an order of the node's own); a contact that is not up yet refuses the dial.
        self._input(host, "join", lambda s, now: s.join(contacts, now=now))

    def _crash(self, host: _Host) -> None:
        if host.stack is None:
            return
        self._log(f"{self.now:.6f} crash {host.id}")
        host.stack = None
        del self._routers[host.id]
        host.armed = None
        host.backlog.clear()
        host.paused = False
        for other in self._alive():
            assert other.stack is not None
            if host.id in other.stack.membership.active_ids:  # the kernel resets the sockets
                self._fail_later(other.id, host.id, self._net.uniform(0.001, 0.05))

    def _fail_later(self, node: NodeId, peer: NodeId, delay: float) -> None:
        if (node, peer) not in self._pending_fail:
            self._pending_fail.add((node, peer))
            self._push(self.now + delay, _LINK_FAILED, node, peer, None)

    def _input(
        self,
        host_or_id: _Host | NodeId,
        what: str,
        call: Callable[[NodeStack, float], object],
        *,
        due: float = 0.0,
    ) -> None:
        host = self._hosts[host_or_id] if isinstance(host_or_id, str) else host_or_id
        stack = host.stack
        if stack is None:
            return
        if host.paused:
            host.backlog.append((what, call))
            return
        # The shell's clock never goes back, and a timer wakes the core at its deadline at the
        # earliest (aioquic's ``now = max(deadline, now)``: float rounding of the offset).
        now = max(host.last, self.now + host.offset, due)
        host.last = now
        self._log(f"{self.now:.6f} {host.id} {what}")
        try:
            call(stack, now)
        except FrameEncodeError as exc:
            self._find(f"encode_error.{exc.message_type}", host.id, str(exc))
            self._crash(host)
            return
        except Exception as exc:  # a core raised: the agent would die of it
            self._find("core_exception", host.id, f"{what}: {type(exc).__name__}: {exc}")
            self._crash(host)
            return
        outbox, stack.outbox = stack.outbox, []
        for to, data in outbox:
            self._transmit(host.id, to, data)
        self._check(host, stack, now)
        self._rearm(host)

    def _check(self, host: _Host, stack: NodeStack, now: float) -> None:
        for check, detail in hs.check_node(
            host.id, stack.membership, stack.router, stack.tree, now
        ):
            self._find(check, host.id, detail)
        if not stack.router_touched:
            return  # a loop that forms goes through the node whose table just changed
        stack.router_touched = False
        routers = self._routers
        loop = hs.find_loop(host.id, routers, self.plan.nodes)
        if loop is not None:
            self._find(
                "routing_loop", host.id, f"next hops {' -> '.join(loop[:-1])} for {loop[-1]}"
            )

    def _rearm(self, host: _Host) -> None:
        stack = host.stack
        if stack is None or host.paused:
            return
        due = stack.next_deadline()
        if due is None:
            host.armed = None
            return
        when = max(self.now, due - host.offset)
        if when != host.armed:
            host.armed = when
            self._push(when, _TIMER, host.id, "", (host.life, when, due))

    def _timer(self, node: NodeId, data: tuple[int, float, float]) -> None:
        host = self._hosts[node]
        life, when, due = data
        if host.stack is None or host.paused or (life, when) != (host.life, host.armed):
            return
        host.armed = None
        self._input(host, "timer", lambda s, now: s.on_timer(now=now), due=due)

    # -- network --------------------------------------------------------------------------------

    def _cut(self, a: NodeId, b: NodeId) -> bool:
        for part in self._partitions:
            for group in part.groups:
                if (a in group) != (b in group):
                    return True
        return False

    def _transmit(self, source: NodeId, target: NodeId, data: bytes) -> None:
        host = self._hosts.get(target)
        if host is None or host.stack is None:
            if not self._cut(source, target):  # connection refused
                self._fail_later(source, target, self._net.uniform(0.001, 0.01))
            return
        if self._cut(source, target):
            return
        net = self._net
        due = self.now + net.uniform(0.001, 0.01)
        copies = 1
        for window in self._lossy:
            if net.random() < window.loss:
                return
            due += net.uniform(0, window.delay)
            if net.random() < window.dup:
                copies = 2
        key = (source, target)
        due = max(due, self._fifo.get(key, 0.0))
        self._fifo[key] = due
        for _ in range(copies):
            self._push(due, _DELIVER, target, source, data)

    def _deliver(self, target: NodeId, source: NodeId, data: bytes) -> None:
        host = self._hosts[target]
        if host.stack is None:
            return
        name = _NAMES.get(data[4], "?") if len(data) > 4 else "?"
        self._input(host, f"recv {name} from {source}", _receiver(source, data))

    # -- operations -----------------------------------------------------------------------------

    def _pick(self, pick: int, *, honest: bool = True) -> _Host | None:
        live = [h for h in self._alive() if not h.paused]
        if honest:
            live = [h for h in live if h.id not in self.plan.hostile]
        return live[pick % len(live)] if live else None

    def _op(self, node: NodeId, data: tuple[Any, ...]) -> None:
        match data:
            case ("start",):
                self._start(self._hosts[node])
            case ("fault", fault):
                self._log(f"{self.now:.6f} fault {fault}")
                self._fault(fault)
            case ("end", fault):
                self._log(f"{self.now:.6f} end {fault}")
                self._end(fault)
            case ("publish", pick):
                host = self._pick(pick)
                if host is not None:
                    payload = f"pub{len(self._publications)}".encode()
                    box: list[pt.MsgId] = []
                    self._input(
                        host,
                        "publish",
                        lambda s, now: box.append(s.publish(payload, topic="t", now=now)),
                    )
                    if box:
                        self._publications.append(hs.Publication(box[0], self.now, host.id))
            case ("send", src, dst):
                host, other = self._pick(src), self._pick(dst)
                if host is not None and other is not None:
                    payload = f"msg{self.events}".encode()
                    self._input(
                        host, f"send {other.id}", lambda s, now: s.send(other.id, payload, now=now)
                    )
            case ("converged", last):
                self._converged(last)
            case ("routes",):
                live = [h for h in self._alive() if h.stack is not None]
                routers = {h.id: h.stack.router for h in live if h.stack is not None}
                component = hs.components(
                    {h.id: tuple(h.stack.membership.active_ids) for h in live if h.stack}
                )
                now_missing = hs.unrouted(routers, component)
                missing = self._unrouted
                self._unrouted = now_missing if missing is None else missing & now_missing

    def _fault(self, fault: Fault) -> None:
        match fault:
            case Lossy():
                self._lossy.append(fault)
            case Partition():
                self._partitions.append(fault)
            case Crash(node=node):
                self._crash(self._hosts[node])
            case Restart(node=node):
                host = self._hosts[node]
                self._crash(host)
                self._start(host)
            case Pause(node=node):
                host = self._hosts[node]
                if host.stack is not None:
                    host.paused = True
                    host.armed = None
            case ClockStep(node=node, delta=delta):
                host = self._hosts[node]
                host.offset += delta
                if host.stack is not None:
                    host.armed = None
                    self._rearm(host)
            case Hostile(node=node, kind=kind, pick=pick):
                self._hostile(self._hosts[node], kind, pick)

    def _end(self, fault: Fault) -> None:
        match fault:
            case Lossy():
                self._lossy.remove(fault)
            case Partition():
                self._partitions.remove(fault)
            case Pause(node=node):
                host = self._hosts[node]
                if host.stack is None or not host.paused:
                    return
                host.paused = False
                backlog, host.backlog = host.backlog, []
                for what, call in backlog:
                    self._input(host, f"backlog {what}", call)
                host.armed = None
                self._rearm(host)

    def _hostile(self, host: _Host, kind: str, pick: float) -> None:
        stack = host.stack
        if stack is None or host.paused:
            return
        peers = sorted(stack.membership.active_ids) or sorted(self.plan.nodes)
        victim = peers[int(pick * len(peers)) % len(peers)]
        others = [n for n in self.plan.nodes if n != host.id]
        subject = others[int(pick * 7919) % len(others)] if others else victim
        me = host.peer
        inc = host.incarnation
        message: object
        match kind:
            case "route_update":
                message = rt.RouteUpdate(entries=((subject, _U64, 0), (host.id, _U64, 0)))
            case "seqno_request":
                message = rt.SeqnoRequest(
                    destination=subject, seqno=_U64, origin=host.id, hop_limit=255
                )
            case "gossip":
                message = pt.Gossip(msg_id=(host.id, _U64, _U64), round=255, topic="t", payload=b"")
            case "ihave":
                message = pt.IHave(announcements=(((subject, _U64, _U64), 255),))
            case "graft":
                message = pt.Graft(msg_id=(subject, _U64, _U64), round=255)
            case "data_frame":
                message = rt.DataFrame(
                    source=host.id, destination=subject, frame_id=_U64, hops=254, hop_limit=255,
                    payload=b"",
                )  # fmt: skip
            case "route_error":
                message = rt.RouteError(
                    source=host.id, destination=subject, frame_id=_U64,
                    frame_destination=victim, reason="no_route", hops=254, hop_limit=255,
                )  # fmt: skip
            case "forward_join":
                message = ForwardJoin(
                    sender=me, incarnation=inc, new_peer=self._hosts[subject].peer, ttl=255
                )
            case _:
                message = Shuffle(
                    sender=me, incarnation=inc, origin=me,
                    peers=tuple(self._hosts[n].peer for n in self.plan.nodes), ttl=255,
                )  # fmt: skip
        self._log(f"{self.now:.6f} hostile {host.id} -> {victim}: {message}")
        stack.inject(victim, message)
        outbox, stack.outbox = stack.outbox, []
        for to, data in outbox:
            self._transmit(host.id, to, data)

    # -- the stated times -----------------------------------------------------------------------

    def _converged(self, last: bool) -> None:
        """Sample symmetry and connectivity; a finding is one seen at every sample (an
        acceptance or a DISCONNECT in flight makes a link one-sided for one latency)."""
        views = {
            h.id: tuple(h.stack.membership.active_ids) for h in self._alive() if h.stack is not None
        }
        seen = {(f.check, f.node, f.detail) for f in hs.check_overlay(views, self.now)}
        kept = self._overlay
        self._overlay = seen if kept is None else kept & seen
        if last:
            for check, node, detail in sorted(self._overlay):
                self._find(check, node, detail)

    def _final(self, settled: float) -> None:
        live = [h for h in self._alive() if h.stack is not None]
        component = hs.components(
            {h.id: tuple(h.stack.membership.active_ids) for h in live if h.stack is not None}
        )
        for finding in hs.check_routes(self._unrouted, self.now):
            self._find(finding.check, finding.node, finding.detail)
        lives = {h.id: (h.life, h.since) for h in live}
        found, unknown = hs.check_publications(
            self._publications, self._delivered, lives,
            component=component, settled=settled, now=self.now,
        )  # fmt: skip
        found2, unknown2 = hs.check_delivery(self._notes, self.now)
        self.unknown += unknown + unknown2
        for finding in [*found, *found2]:
            self._find(finding.check, finding.node, finding.detail)


def _link_failer(peer: NodeId) -> Callable[[NodeStack, float], None]:
    def call(stack: NodeStack, now: float) -> None:
        stack.link_failed(peer, now=now)

    return call


def _receiver(source: NodeId, data: bytes) -> Callable[[NodeStack, float], None]:
    def call(stack: NodeStack, now: float) -> None:
        stack.receive(source, data, now=now)

    return call


# -- running, shrinking -------------------------------------------------------------------------


def run_seed(
    seed: int,
    config: FuzzConfig | None = None,
    *,
    faults: Sequence[Fault] | None = None,
    keep_trace: bool = False,
) -> SeedResult:
    """Run the world of ``seed`` (with ``faults`` instead of its own, when given)."""
    config = config if config is not None else FuzzConfig()
    plan = draw_plan(seed, config)
    if faults is not None:
        plan = replace(plan, faults=tuple(faults))
    return World(plan, config, keep_trace=keep_trace).run()


def shrink(
    seed: int, check: str, config: FuzzConfig, *, budget: int = 200
) -> tuple[tuple[Fault, ...], int]:
    """The smallest fault list (delta debugging, Zeller's ddmin) under which ``seed`` still
    fails ``check``; returns it and the number of worlds run."""
    faults = list(draw_plan(seed, config).faults)
    runs = 0

    def fails(subset: list[Fault]) -> bool:
        nonlocal runs
        runs += 1
        result = run_seed(seed, config, faults=subset)
        return any(f.check == check for f in result.findings)

    chunks = 2
    while len(faults) >= 2 and runs < budget:
        size = max(1, len(faults) // chunks)
        parts = [faults[i : i + size] for i in range(0, len(faults), size)]
        for index in range(len(parts)):
            rest = [f for j, part in enumerate(parts) if j != index for f in part]
            if runs < budget and fails(rest):
                faults = rest
                chunks = max(chunks - 1, 2)
                break
        else:
            if chunks >= len(faults):
                break
            chunks = min(len(faults), chunks * 2)
    if len(faults) == 1 and runs < budget and fails([]):
        faults = []
    return tuple(faults), runs
