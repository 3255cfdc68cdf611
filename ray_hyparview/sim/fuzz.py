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
* **Faults** (:mod:`ray_hyparview.sim.faults`) are values drawn from the seed with the
  workload into a ``Plan``: lossy windows (loss, duplication, extra delay), partitions of any
  length (some outlast ``lost_retention``), crashes, restarts under the same id with a new
  incarnation, pauses (the node's frames wait in a backlog), clock steps and hostile frames
  with extreme field values, encoded by the real codec.
* **Clocks.** The agent feeds its cores the event loop's monotonic clock, which never steps
  (``now = max(last now, clock)`` on top, aioquic's rule); only its wall clock steps (NTP, a
  restored snapshot), and the wall clock is read for one thing: a new life's incarnation. So a
  clock step here moves the node's wall clock alone. A process or VM that stops and resumes
  (its monotonic time jumps, its timers fire late) is a *pause*. A restart takes its
  incarnation from the node's wall clock in microseconds but above the last life's
  (``limits.next_incarnation``), as the agent with its incarnation file and the Ray plugin
  with the GCS do; the checker's ``incarnation`` check holds that rule.
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

from ray_hyparview.protocol import limits
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.messages import ForwardJoin, Shuffle
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.sim import history as hs
from ray_hyparview.sim.faults import (
    DEFAULT_KNOWN,
    MAX_U64,
    ClockStep,
    Crash,
    Fault,
    FuzzConfig,
    Hostile,
    Lossy,
    Partition,
    Pause,
    Plan,
    Restart,
    draw_plan,
    is_known,
)
from ray_hyparview.sim.nodestack import FrameEncodeError, NodeStack
from ray_hyparview.wire.table import wire_codec

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


# -- the world ----------------------------------------------------------------------------------

_DELIVER, _TIMER, _LINK_FAILED, _OP = 0, 1, 2, 3
_SPIN_LIMIT = 1000
"""Timer firings of one node at one instant before the world calls it a busy loop."""
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
        self._lied_about: set[NodeId] = set()  # destinations of hostile routing frames
        self._unrouted: set[tuple[NodeId, NodeId]] | None = None
        self._overlay: set[tuple[str, NodeId, str]] | None = None
        self._spin: dict[NodeId, tuple[float, int]] = {}
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
        budget = self.config.max_events
        while self._heap and self._heap[0][0] <= end:  # the samples at ``end`` run too
            when, _, kind, a, b, data = heapq.heappop(self._heap)
            self.now = when
            self.events += 1
            if self.events > budget:
                # A world this busy is a message or timer storm (the "too many round trips"
                # guard of aioquic's tests): a finding, and the world stops here.
                self._find("storm", "", f"more than {budget} events by t={self.now:.3f}")
                break
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
        previous = self._incarnations.get(host.id)
        # As the agent with its incarnation file and the Ray plugin with the GCS do: the clock,
        # but above the last life (the one rule, limits.next_incarnation).
        host.incarnation = limits.next_incarnation(int(wall * 1e6), previous or 0)
        if previous is not None and host.incarnation <= previous:
            self._find("incarnation", host.id, f"restarted as {host.incarnation} after {previous}")
        self._incarnations[host.id] = host.incarnation
        host.last = max(host.last, self.now)
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
            # A life after a crash holds its routes down, as the Ray plugin's replacement agent
            # does (routing.py, rule 6): its neighbours may still route through its last life.
            routing=(
                self.config.routing
                if life == 1
                else replace(self.config.routing, start_holddown=None)
            ),
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
        self._notes.append((self.now, host.id, "crashed", (), ""))  # its inbox is lost with it
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
        # earliest (aioquic's ``now = max(deadline, now)``).
        now = max(host.last, self.now, due)
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
        # A distance vector trusts its neighbours' metrics: an admitted neighbour that lies
        # about a destination (a hostile ROUTE_UPDATE or SEQNO_REQUEST) can make others route
        # in a loop towards it, until the lie expires; the hop limit bounds such a loop. The
        # README's trust model says so; loops towards any other destination are findings.
        honest = [n for n in self.plan.nodes if n not in self._lied_about]
        loop = hs.find_loop(host.id, routers, honest)
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
        when = max(self.now, due)
        if when != host.armed:
            host.armed = when
            self._push(when, _TIMER, host.id, "", (host.life, when, due))

    def _timer(self, node: NodeId, data: tuple[int, float, float]) -> None:
        host = self._hosts[node]
        life, when, due = data
        if host.stack is None or host.paused or (life, when) != (host.life, host.armed):
            return
        host.armed = None
        spin = self._spin.get(node)
        count = spin[1] + 1 if spin is not None and spin[0] == self.now else 1
        self._spin[node] = (self.now, count)
        if count > _SPIN_LIMIT:  # a core that asks for its timer again at the same instant
            self._find("timer_spin", node, f"timer due again at once {count} times")
            self._crash(host)
            return
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
                self._hosts[node].offset += delta  # the wall clock: the next incarnation
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
                message = rt.RouteUpdate(entries=((subject, MAX_U64, 0), (host.id, MAX_U64, 0)))
                self._lied_about.update((subject, host.id))
            case "seqno_request":
                message = rt.SeqnoRequest(
                    destination=subject, seqno=MAX_U64, origin=host.id, hop_limit=255
                )
                self._lied_about.add(subject)
            case "gossip":
                message = pt.Gossip(
                    msg_id=(host.id, MAX_U64, MAX_U64), round=255, topic="t", payload=b""
                )
            case "ihave":
                message = pt.IHave(announcements=(((subject, MAX_U64, MAX_U64), 255),))
            case "graft":
                message = pt.Graft(msg_id=(subject, MAX_U64, MAX_U64), round=255)
            case "data_frame":
                message = rt.DataFrame(
                    source=host.id, destination=subject, frame_id=MAX_U64, hops=254, hop_limit=255,
                    payload=b"",
                )  # fmt: skip
            case "route_error":
                message = rt.RouteError(
                    source=host.id, destination=subject, frame_id=MAX_U64,
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
