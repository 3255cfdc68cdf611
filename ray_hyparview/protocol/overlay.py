"""Is the overlay connected and symmetric? One answer for every layer.

HyParView promises (paper, section 4) that once the network is quiet every active view is
symmetric (``q`` in ``p``'s active view iff ``p`` in ``q``'s) and that the graph of active views
is connected. The simulator's history checker, the fuzzer, the demo, the plugin's
``wait_converged``, the test harnesses and the benchmarks all ask that question of a snapshot of
the views; this module is the one place that answers it. It is pure (a mapping in, values out):
each caller collects the views its own way (actors, control endpoints, in-memory cores).

A snapshot is ``views``: node id -> the ids in its active view. The overlay under test is
``alive`` (default: the nodes of ``views``); views of nodes outside it are left out, and a node
of ``alive`` without a view is a problem. Connectivity is taken over the links either side
holds, so a one-sided link is reported as one-sided, not as a split as well.

Everything is iterated in sorted order: the same snapshot gives the same problems, in the same
order, whatever the hash seed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from ray_hyparview.protocol.peer import NodeId

__all__ = ["OverlayProblem", "components", "overlay_problems", "problems"]

Check = Literal["missing", "dead", "symmetric", "connected", "isolated"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OverlayProblem:
    """One reason a snapshot is not a connected, symmetric overlay."""

    check: Check
    """``missing``: a node of the overlay has no view in the snapshot; ``dead``: a view holds an
    id outside the overlay; ``symmetric``: a link is one-sided; ``connected``: some nodes are
    not reachable from the first; ``isolated``: a node's active view holds too few peers."""

    node: NodeId
    """The node whose view shows it (the first node, for ``connected``)."""

    detail: str
    """What is wrong, for a person."""

    def __str__(self) -> str:
        return self.detail


def _live(
    views: Mapping[NodeId, Collection[NodeId]], alive: Collection[NodeId] | None
) -> dict[NodeId, frozenset[NodeId]]:
    wanted = set(views) if alive is None else set(alive)
    return {node: frozenset(views[node]) for node in sorted(wanted) if node in views}


def components(views: Mapping[NodeId, Collection[NodeId]]) -> dict[NodeId, int]:
    """The connected component of each node of ``views`` over the active links (either
    direction), numbered by the position of the component's smallest id in sorted order."""
    links: dict[NodeId, set[NodeId]] = {node: set() for node in views}
    for node, peers in views.items():
        for peer in peers:
            if peer in links and peer != node:
                links[node].add(peer)
                links[peer].add(node)
    label: dict[NodeId, int] = {}
    for index, node in enumerate(sorted(views)):
        if node in label:
            continue
        label[node] = index
        todo = [node]
        while todo:
            for peer in sorted(links[todo.pop()]):
                if peer not in label:
                    label[peer] = index
                    todo.append(peer)
    return label


def problems(
    views: Mapping[NodeId, Collection[NodeId]],
    *,
    alive: Collection[NodeId] | None = None,
    dead_peers: bool = True,
    min_active: int = 0,
) -> list[OverlayProblem]:
    """Why ``views`` is not a connected, symmetric overlay of ``alive``; empty when it is.

    ``dead_peers=False`` lets a view hold ids outside the overlay (a crash the survivors have
    not noticed yet); symmetry and connectivity are then judged among the overlay's nodes only.
    ``min_active`` also asks every node of an overlay of more than one node for at least that
    many active peers."""
    found: list[OverlayProblem] = []
    live = _live(views, alive)
    if alive is not None:
        for node in sorted(set(alive) - set(live)):
            found.append(OverlayProblem(check="missing", node=node, detail=f"no view from {node}"))
    for node, peers in live.items():
        for peer in sorted(peers):
            if peer not in live:
                if dead_peers:
                    detail = f"{node} holds unknown or dead peer {peer}"
                    found.append(OverlayProblem(check="dead", node=node, detail=detail))
            elif node not in live[peer]:
                detail = f"{node} -> {peer} is one-sided"
                found.append(OverlayProblem(check="symmetric", node=node, detail=detail))
        if min_active and len(live) > 1 and len(peers & live.keys()) < min_active:
            detail = f"{node} has {len(peers & live.keys())} active peers, fewer than {min_active}"
            found.append(OverlayProblem(check="isolated", node=node, detail=detail))
    if live:
        label = components(live)
        first = next(iter(live))
        apart = [node for node in live if label[node] != label[first]]
        if apart:
            reached = len(live) - len(apart)
            detail = (
                f"not connected: {reached} of {len(live)} reachable from {first}"
                f" (not: {', '.join(apart[:10])}{', ...' if len(apart) > 10 else ''})"
            )
            found.append(OverlayProblem(check="connected", node=first, detail=detail))
    return found


def overlay_problems(
    views: Mapping[NodeId, Collection[NodeId]],
    *,
    alive: Collection[NodeId] | None = None,
    dead_peers: bool = True,
    min_active: int = 0,
) -> list[str]:
    """:func:`problems` as sentences; empty when the overlay is connected and symmetric."""
    found = problems(views, alive=alive, dead_peers=dead_peers, min_active=min_active)
    return [str(p) for p in found]
