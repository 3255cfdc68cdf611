"""The README's promises as code: checks over one fuzzed world's state and history.

Theory of operation
-------------------
The fuzzer (:mod:`ray_hyparview.sim.fuzz`) calls two kinds of checks:

* **After every event**, on the node the event touched: its views are within their bounds,
  disjoint and free of itself; every table of every core is within its bound; and no routing
  loop goes through it. A loop that forms must include the node whose table just changed, so
  walking the next hops from that node for every destination finds every loop the moment it
  forms (not only at quiescence), in ``O(nodes * hops)`` per event.
* **At the stated times after the faults stop**: views symmetric and the overlay connected
  ``converge`` seconds after the last fault; then every live node routes to every other, every
  publication made after that instant reached every live node once, and the history of the
  delivery layer keeps its contract (no acknowledged message missing, none delivered twice, none
  delivered after ``not_delivered``).

A check returns a :class:`Finding` only when the promise is broken for sure. What the world
cannot tell (a publication made while a partition was up; a message whose target crashed) is
counted as *unknown*, never failed.

Tables are read through the cores' private attributes here, and only here: the checker must see
every table the cores hold without the cores growing a query API for it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ray_hyparview.protocol import overlay
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.peer import NodeId

_EARLY_PEERS = 32
"""``routing._EARLY_PEERS``: peers whose early updates a router holds."""

__all__ = [
    "CHECKS",
    "KNOWN_FINDINGS",
    "Finding",
    "check_delivery",
    "check_node",
    "check_overlay",
    "check_publications",
    "check_routes",
    "components",
    "find_loop",
    "unrouted",
]

CHECKS: dict[str, str] = {
    "views": "active/passive views within bounds, disjoint, self in neither (every event)",
    "tables": "every core table within its configured bound (every event)",
    "lost_expiry": "no lost entry kept past its retention (plus two probe periods)",
    "routing_loop": "no next-hop loop after any event",
    "storm": "a world ends within its event budget (no message or timer storm)",
    "encode_error": "no core derives a value the wire cannot carry (the agent would die)",
    "core_exception": "no core raises on any input",
    "timer_spin": "no core asks for its timer again at the same instant, over and over",
    "incarnation": "a restarted node's incarnation exceeds its previous one",
    "symmetric": "active views symmetric `converge` s after the faults stop",
    "connected": "live overlay connected `converge` s after the faults stop",
    "routes": "every live node routes to every other of its component by the end",
    "publish_once": "no publication delivered twice to one node life",
    "publish_reach": "publications made after convergence reach every live node by the end",
    "delivered_twice": "no message delivered twice",
    "acked_missing": "no acknowledged message missing from its actor",
    "delivered_after_not_delivered": "no delivery of a message reported not delivered",
}
"""Every check, by the name a :class:`Finding` carries, with the promise it states."""

KNOWN_FINDINGS: dict[str, str] = {}
"""Checks that fail only because of bugs being fixed now, with the issue item they belong to.

Filled in by :mod:`ray_hyparview.sim.fuzz` (``DEFAULT_KNOWN``); kept here for the names only."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken promise."""

    check: str
    """The check's name (a key of :data:`CHECKS`), with a ``.detail`` suffix for some."""
    time: float
    """Simulated seconds when it was seen."""
    node: NodeId
    """The node it was seen on ('' for global checks)."""
    detail: str

    @property
    def family(self) -> str:
        """The check's name without its suffix: ``encode_error.Gossip`` -> ``encode_error``."""
        return self.check.split(".", 1)[0]

    def __str__(self) -> str:
        where = f" at {self.node}" if self.node else ""
        return f"[{self.check}] t={self.time:.3f}{where}: {self.detail}"


# -- per event ----------------------------------------------------------------------------------


def check_node(
    node_id: NodeId, membership: HyParView, router: rt.Router, tree: pt.Plumtree, now: float
) -> list[tuple[str, str]]:
    """``(check, detail)`` for every bound the node's cores break right now.

    Called after every event: the common case (nothing broken) is a few ``len`` calls.
    """
    out: list[tuple[str, str]] = []
    cfg = membership.config
    active = membership.active_ids
    passive = membership.passive_ids
    if (
        len(active) > cfg.active_view_size
        or len(passive) > cfg.passive_view_size
        or node_id in active
        or node_id in passive
        or not active.isdisjoint(passive)
    ):
        out.append(
            (
                "views",
                f"active {sorted(active)} (max {cfg.active_view_size}),"
                f" passive {sorted(passive)} (max {cfg.passive_view_size})",
            )
        )
    m: Any = membership
    if len(m._reserve) > cfg.reserve_size or len(m._lost) > cfg.passive_view_size:
        out.append(("tables", f"hyparview reserve {len(m._reserve)}, lost {len(m._lost)}"))
    if m._lost:
        slack = 2 * cfg.probe_interval_max
        for peer_id, entry in m._lost.items():
            if entry.expires + slack < now:
                out.append(
                    (
                        "lost_expiry",
                        f"lost entry {peer_id} ({entry.reason.value}) expired at"
                        f" {entry.expires:.1f}",
                    )
                )
                break
    r: Any = router
    most = router.config.max_routes
    if (
        len(r._rib) > most
        or len(r._selected) > most
        or len(r._fd) > most
        or len(r._requesting) > most
        or len(r._asked) > most
    ):
        out.append(("tables", f"router rib {len(r._rib)}, selected {len(r._selected)} > {most}"))
    if len(r._early) > _EARLY_PEERS:
        out.append(("tables", f"router early updates from {len(r._early)} peers"))
    t: Any = tree
    tc = tree.config
    if (
        len(t._seen) > tc.seen_max
        or len(t._watermark) > tc.seen_max
        or len(t._cache) > tc.payload_cache_max
        or len(t._missing) > tc.missing_max
    ):
        out.append(
            (
                "tables",
                f"plumtree seen {len(t._seen)}, watermarks {len(t._watermark)},"
                f" cache {len(t._cache)}, missing {len(t._missing)}",
            )
        )
    if t._queues and max(len(q) for q in t._queues.values()) > tc.ihave_batch_max:
        out.append(("tables", f"plumtree IHAVE queue over {tc.ihave_batch_max}"))
    return out


def find_loop(
    start: NodeId, routers: Mapping[NodeId, rt.Router], destinations: Iterable[NodeId]
) -> list[NodeId] | None:
    """A next-hop cycle through ``start`` for some destination, or ``None``.

    ``routers`` holds the live nodes' routers (paused ones included: their tables stand).
    """
    mine = routers.get(start)
    if mine is None:
        return None
    for dest in destinations:
        if dest == start:
            continue
        path = [start]
        hop = mine.next_hop(dest)
        while hop is not None and hop != dest:
            if hop in path:
                return [*path[path.index(hop) :], hop, dest]
            router = routers.get(hop)
            if router is None:
                break
            path.append(hop)
            hop = router.next_hop(dest)
    return None


# -- at the stated times ------------------------------------------------------------------------


def check_overlay(views: Mapping[NodeId, Collection[NodeId]], now: float) -> list[Finding]:
    """Symmetric active views and one connected component over the live nodes ``views``
    (:func:`ray_hyparview.protocol.overlay.problems`); a dead peer in a view breaks symmetry."""
    out: list[Finding] = []
    for problem in overlay.problems(views):
        if problem.check == "connected":
            out.append(Finding("connected", now, "", problem.detail))
        else:
            out.append(Finding("symmetric", now, problem.node, problem.detail))
    return out[:3]


components = overlay.components
"""The connected component of each live node over the active links (either direction)."""


def unrouted(
    routers: Mapping[NodeId, rt.Router], component: Mapping[NodeId, int]
) -> set[tuple[NodeId, NodeId]]:
    """Pairs of live nodes of one component with no loop-free route from the first to the
    second right now (the overlay's connectivity is a check of its own)."""
    out: set[tuple[NodeId, NodeId]] = set()
    for node in routers:
        for dest in routers:
            if dest == node or component.get(dest) != component.get(node):
                continue
            hop: NodeId | None = node
            for _ in range(len(routers) + 1):
                if hop == dest or hop is None or hop not in routers:
                    break
                hop = routers[hop].next_hop(dest)
            if hop != dest:
                out.add((node, dest))
    return out


def check_routes(missing: set[tuple[NodeId, NodeId]] | None, now: float) -> list[Finding]:
    """``missing``: the pairs unrouted at every sample of the final window. HyParView may keep
    rewiring small overlays for good (a node that cannot fill its view asks with HIGH priority),
    so a snapshot can catch a route being re-learnt; a pair that stays unrouted through the
    whole window is a failure."""
    if not missing:
        return []
    node, dest = min(missing)
    return [Finding("routes", now, node, f"no route to {dest} through the last samples")]


@dataclass(frozen=True, slots=True)
class Publication:
    """One broadcast made by the world's workload."""

    msg_id: pt.MsgId
    time: float
    origin: NodeId


def check_publications(
    publications: Iterable[Publication],
    delivered: Mapping[tuple[NodeId, int], Mapping[pt.MsgId, int]],
    lives: Mapping[NodeId, tuple[int, float]],
    *,
    component: Mapping[NodeId, int],
    settled: float,
    now: float,
) -> tuple[list[Finding], int]:
    """Reach of publications made at or after ``settled`` by nodes alive to the end, within
    the publisher's component (the promise is per component; connectivity is its own check).

    ``delivered[(node, life)][msg_id]`` counts deliveries; ``lives[node]`` is the node's
    current ``(life, since)`` for the live nodes. Returns findings and the unknown count.
    """
    out: list[Finding] = []
    unknown = 0
    for (node, _life), counts in sorted(delivered.items()):
        for msg_id, count in counts.items():
            if count > 1:
                out.append(Finding("publish_once", now, node, f"{msg_id} delivered {count} times"))
    for pub in publications:
        if pub.time < settled or pub.origin not in lives:
            unknown += 1
            continue
        for node in sorted(lives):
            if component.get(node) != component.get(pub.origin):
                unknown += 1
                continue
            life, since = lives[node]
            if since > pub.time:
                unknown += 1  # restarted after the publication: its new life may have missed it
                continue
            if delivered.get((node, life), {}).get(pub.msg_id, 0) == 0:
                out.append(Finding("publish_reach", now, node, f"missing {pub.msg_id}"))
    return out[:5], unknown


def _delivered_again(
    copies: list[tuple[float, NodeId]], crashes: dict[NodeId, list[float]]
) -> tuple[float, NodeId] | None:
    """The first copy of one message delivered again within the same life of its node, or
    ``None``. The README's Delivery contract states the limit: "a target node that restarts
    forgets its ids and keys (a copy retried into its new life can be delivered again)". A
    restart is noted as ``crashed``; a copy after one since the node's previous copy is that
    limit, not a broken promise."""
    for index in range(1, len(copies)):
        time, node = copies[index]
        before = [t for t, n in copies[:index] if n == node]
        if not before or not any(max(before) <= c <= time for c in crashes.get(node, ())):
            return time, node
    return None


def check_delivery(
    notes: Iterable[tuple[float, NodeId, str, tuple[object, ...], NodeId]], now: float
) -> tuple[list[Finding], int]:
    """The delivery contract over the service's notes ``(time, node, kind, key, dest)``.

    A message acknowledged but never handed to its actor fails whatever happened later (the
    ACK said it was there); an outcome the sender reported as ``unknown`` is counted only.

    One exception, the README's Delivery contract's stated limit: "what the dead agent had
    queued for an actor and not yet handed over is lost". A message noted ``queued`` on a node
    that then ``crashed`` (the world's note) before its actor took it is counted as lost with
    the crash (with the unknowns), not as missing. Likewise a copy delivered again after its
    node restarted (see ``_delivered_again``)."""
    delivered: dict[tuple[object, ...], list[tuple[float, NodeId]]] = {}
    acked: dict[tuple[object, ...], float] = {}
    refused: dict[tuple[object, ...], float] = {}
    target: dict[tuple[object, ...], NodeId] = {}
    queued: dict[tuple[object, ...], list[tuple[float, NodeId]]] = {}
    crashes: dict[NodeId, list[float]] = {}
    unknown = 0
    for time, node, kind, key, dest in notes:
        if kind == "delivered":
            delivered.setdefault(key, []).append((time, node))
        elif kind == "acked":
            acked.setdefault(key, time)
        elif kind == "not_delivered":
            refused.setdefault(key, time)
        elif kind == "sent":
            target[key] = dest
        elif kind == "unknown":
            unknown += 1
        elif kind == "queued":
            queued.setdefault(key, []).append((time, node))
        elif kind == "crashed":
            crashes.setdefault(node, []).append(time)
    out: list[Finding] = []
    for key, copies in delivered.items():
        twice = _delivered_again(copies, crashes)
        if twice is not None:
            out.append(Finding("delivered_twice", twice[0], twice[1], f"{key}"))
        elif len(copies) > 1:
            unknown += 1  # a copy retried into the target's next life (a stated limit)
        if key in refused:
            out.append(
                Finding("delivered_after_not_delivered", copies[0][0], copies[0][1], f"{key}")
            )
    for key, time in acked.items():
        if key not in delivered:
            if any(
                crash >= when
                for when, node in queued.get(key, ())
                for crash in crashes.get(node, ())
            ):
                unknown += 1  # lost with the crash of the node that held it
                continue
            dest = target.get(key, "")
            out.append(Finding("acked_missing", time, dest, f"{key} acknowledged, never delivered"))
    return out[:5], unknown
