"""What a fuzzed world is made of: the cores' settings, the faults, and the plan a seed draws.

A :class:`Plan` is everything one seed decides before the world runs: how many nodes, which one
is hostile, the workload (publications, sends) and the list of faults. Faults are plain values
with the time they strike, so that the shrinker can drop any of them and re-run the rest: a
world with a subset of its faults is still a valid world.

The cores run with settings scaled to worlds of 5-16 nodes and a few simulated minutes (a
partition of more than 30 s outlasts the lost set there, as a long one outlasts the default
600 s). Checks that fail only because of bugs being fixed now are listed in
:data:`DEFAULT_KNOWN` with the issue item they belong to.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.sim import history as hs
from ray_hyparview.sim.delivery_service import delivery_service
from ray_hyparview.sim.nodestack import ServiceFactory

__all__ = [
    "CONSEQUENCES",
    "DEFAULT_KNOWN",
    "FUZZ_MEMBERSHIP",
    "FUZZ_PLUMTREE",
    "FUZZ_ROUTING",
    "HOSTILE_KINDS",
    "MAX_U64",
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
    "draw_plan",
    "is_known",
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
    merge_interval=5.0,
)
"""Membership scaled to worlds of 5-16 nodes and a few simulated minutes: a partition of more
than 30 s outlasts the lost set, as a long one outlasts the default 600 s; the merge rule's
beat (5 s) keeps ``3 * merge_interval`` below ``lost_retention``, as the defaults do."""

FUZZ_ROUTING = rt.RoutingConfig(
    update_interval=5.0, route_expiry=17.5, request_interval=0.5, source_retention=60.0,
    max_routes=64,
)  # fmt: skip
FUZZ_PLUMTREE = pt.PlumtreeConfig(
    ihave_timeout=0.2, graft_timeout=0.1, lazy_flush_interval=0.02, seen_retention=60.0,
    seen_max=256, payload_retention=20.0, payload_cache_max=128, missing_max=128,
    ihave_batch_max=16,
)  # fmt: skip

DEFAULT_KNOWN: dict[str, str] = {}
"""Checks turned off by default, each with the issue item whose open bug it waits for;
``--all-checks`` turns them on again. Empty: every check is on. (It listed the Plumtree and
routing encode errors, the lost-set expiry, wall-clock incarnations, long partitions that never
merged and the loops after a restart until their fixes landed.)"""


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
MAX_U64 = 2**64 - 1
"""The largest value of the wire's u64 fields (seqnos, frame ids, message id parts)."""


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
    max_events: int = 100_000
    """Events one world may take (a seed takes about 4,000): past it the world stops with a
    ``storm`` finding instead of running away."""
    known: frozenset[str] = frozenset(DEFAULT_KNOWN)
    """Checks (``encode_error.Gossip``) or families (``connected``) whose findings are reported
    as known, not as failures."""
    membership: HyParViewConfig = FUZZ_MEMBERSHIP
    routing: rt.RoutingConfig = FUZZ_ROUTING
    plumtree: pt.PlumtreeConfig = FUZZ_PLUMTREE
    service: ServiceFactory | None = delivery_service
    """The delivery layer on top of routing (none: routing, membership and Plumtree only)."""
    sends: int = 4
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
