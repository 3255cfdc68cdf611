"""Overlay metrics with the definitions of the HyParView paper (DSN 2007, section 5).

Theory of operation
-------------------
Every metric works on an *adjacency dict*: ``{node: [active peers]}``, directed (a node's active
view), closed over its keys (edges to crashed nodes are removed first with :func:`restrict`). The
dict is built once per measurement from the simulation, and the metrics run plain breadth-first
searches over it: at 10,000 nodes a flood costs a few milliseconds, far less than building a
networkx graph would (networkx serves only as a cross-check in the tests).

* **Reliability** of a broadcast (paper 5.2): the share of live nodes that deliver a message
  flooded from one live sender, averaged over several random senders. The flood is HyParView's
  (paper 4.1 uses the active views as the gossip fanout): a node that receives the message for
  the first time forwards it once to every active peer except the one it got it from. The flood
  runs in synchronous hops, so a node's first copy comes over a shortest path.
* **Relative message redundancy** (RMR, paper 5.2): ``messages / (reached - 1) - 1``; 0 means
  every message brought news. **Last delivery hop**: the hop at which the last node got its
  first copy.
* **Largest connected component**, **clustering coefficient** (average of the local
  coefficients, nodes of degree < 2 counting as 0, as networkx's ``average_clustering``) and
  **average shortest path** (BFS from sampled sources) use the undirected graph of active links.
* **Symmetry**: the share of directed active links ``u -> v`` whose reverse ``v -> u`` exists.
* **In-degree**: how many live active views hold each live node, as a histogram.

:func:`random_regular_graph` builds the baseline the paper compares against: a random d-regular
graph of the same size (pairing model, Bollobás 1980, with rejection of loops and double edges).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "BroadcastStats",
    "FloodResult",
    "average_shortest_path",
    "broadcast_stats",
    "clustering_coefficient",
    "flood",
    "in_degree_histogram",
    "largest_component_fraction",
    "random_regular_graph",
    "restrict",
    "symmetric_fraction",
    "Undirected",
    "undirected",
]

N = TypeVar("N", bound=Hashable)


@dataclass(frozen=True, slots=True, kw_only=True)
class FloodResult:
    """One flood from one sender."""

    reached: int
    """Nodes that delivered the message, the sender included."""

    messages: int
    """Copies sent to live nodes, duplicates included."""

    last_hop: int
    """Hop at which the last node received its first copy (0 if only the sender has it)."""

    @property
    def rmr(self) -> float:
        """Relative message redundancy: ``messages / (reached - 1) - 1`` (0 when alone)."""
        if self.reached <= 1:
            return 0.0
        return self.messages / (self.reached - 1) - 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastStats:
    """Floods from several senders, averaged."""

    reliability: float
    """Mean share of live nodes reached."""

    min_reliability: float
    """Worst flood's share."""

    rmr: float
    """Mean relative message redundancy."""

    last_delivery_hop: float
    """Mean last delivery hop."""

    floods: int
    """Number of floods averaged."""


def restrict(adjacency: Mapping[N, Iterable[N]], keep: Collection[N]) -> dict[N, list[N]]:
    """The adjacency of the nodes in ``keep``, with edges to other nodes removed."""
    return {v: [u for u in peers if u in keep] for v, peers in adjacency.items() if v in keep}


class Undirected(dict[N, set[N]]):
    """An undirected graph: each node's set of neighbours, every edge listed both ways.

    The metrics that need the undirected graph accept one as is, so that :func:`measure`-style
    callers convert once and reuse it.
    """


def undirected(adjacency: Mapping[N, Collection[N]]) -> Undirected[N]:
    """Each directed edge taken both ways; self-loops dropped. An :class:`Undirected` graph is
    returned as it is."""
    if isinstance(adjacency, Undirected):
        return adjacency
    out: Undirected[N] = Undirected({v: set(peers) for v, peers in adjacency.items()})
    for v, peers in adjacency.items():
        for u in peers:
            out[u].add(v)
    for v, peers in out.items():
        peers.discard(v)
    return out


def flood(adjacency: Mapping[N, Collection[N]], source: N) -> FloodResult:
    """Flood from ``source``: each node forwards its first copy to all its peers but the one it
    got it from. Runs hop by hop; returns reach, copies and last delivery hop.

    Within one hop several nodes may deliver to the same receiver; the tie is broken in favour
    of one that is in the receiver's own view (the receiver then skips it when forwarding). The
    traversal works one hop at a time with set operations, which run in C: a 10,000-node flood
    takes a few milliseconds.
    """
    seen = {source}
    frontier = {source}
    skipped = 0  # receivers that do not send back to the node they got the message from
    hop = 0
    while True:
        nxt: set[N] = set()
        nxt = nxt.union(*[adjacency[v] for v in frontier])
        nxt -= seen
        if not nxt:
            break
        hop += 1
        skipped += sum(1 for v in nxt if not frontier.isdisjoint(adjacency[v]))
        seen |= nxt
        frontier = nxt
    messages = sum(len(adjacency[v]) for v in seen) - skipped
    return FloodResult(reached=len(seen), messages=messages, last_hop=hop)


def broadcast_stats(adjacency: Mapping[N, Collection[N]], senders: Sequence[N]) -> BroadcastStats:
    """Flood once from each sender and average (paper 5.2 averages over many messages)."""
    if not senders:
        raise ValueError("need at least one sender")
    total = len(adjacency)
    results = [flood(adjacency, s) for s in senders]
    shares = [r.reached / total for r in results]
    return BroadcastStats(
        reliability=sum(shares) / len(shares),
        min_reliability=min(shares),
        rmr=sum(r.rmr for r in results) / len(results),
        last_delivery_hop=sum(r.last_hop for r in results) / len(results),
        floods=len(results),
    )


def _distances(graph: Undirected[N], source: N) -> list[int]:
    """How many nodes lie at each hop distance from ``source`` (index = distance)."""
    seen = {source}
    frontier = {source}
    counts = [1]
    while True:
        nxt: set[N] = set()
        nxt = nxt.union(*[graph[v] for v in frontier])
        nxt -= seen
        if not nxt:
            return counts
        counts.append(len(nxt))
        seen |= nxt
        frontier = nxt


def largest_component_fraction(adjacency: Mapping[N, Collection[N]]) -> float:
    """Share of nodes in the largest connected component of the undirected graph."""
    if not adjacency:
        return 0.0
    graph = undirected(adjacency)
    left = set(graph)
    best = 0
    for start in graph:
        if start not in left:
            continue
        seen = {start}
        frontier = {start}
        while frontier:
            nxt: set[N] = set()
            nxt = nxt.union(*[graph[v] for v in frontier])
            nxt -= seen
            seen |= nxt
            frontier = nxt
        left -= seen
        best = max(best, len(seen))
        if best * 2 >= len(graph):
            break
    return best / len(graph)


def symmetric_fraction(adjacency: Mapping[N, Collection[N]]) -> float:
    """Share of directed links ``u -> v`` whose reverse exists (1.0 when there are none)."""
    views = {v: set(peers) for v, peers in adjacency.items()}
    links = 0
    symmetric = 0
    for v, peers in views.items():
        for u in peers:
            links += 1
            if v in views.get(u, ()):
                symmetric += 1
    return symmetric / links if links else 1.0


def in_degree_histogram(adjacency: Mapping[N, Collection[N]]) -> dict[int, int]:
    """``{in-degree: number of nodes}``, sorted by degree; every node counted, zeros included."""
    degree: Counter[N] = Counter(dict.fromkeys(adjacency, 0))
    for peers in adjacency.values():
        degree.update(peers)
    return dict(sorted(Counter(degree.values()).items()))


def clustering_coefficient(adjacency: Mapping[N, Collection[N]]) -> float:
    """Mean local clustering coefficient of the undirected graph (paper 5.2; networkx's
    ``average_clustering``): for each node, the share of pairs of neighbours that are linked."""
    graph = undirected(adjacency)
    if not graph:
        return 0.0
    total = 0.0
    for peers in graph.values():
        k = len(peers)
        if k < 2:
            continue
        links = sum(len(graph[u] & peers) for u in peers) / 2
        total += links / (k * (k - 1) / 2)
    return total / len(graph)


def average_shortest_path(adjacency: Mapping[N, Collection[N]], sources: Iterable[N]) -> float:
    """Mean hop distance from each of ``sources`` to every node it reaches, undirected graph.

    With all nodes as sources this is the exact average shortest path of a connected graph;
    a few dozen random sources estimate it within a percent at 10,000 nodes.
    """
    graph = undirected(adjacency)
    total = 0
    pairs = 0
    for source in sources:
        counts = _distances(graph, source)
        total += sum(d * c for d, c in enumerate(counts))
        pairs += sum(counts) - 1
    return total / pairs if pairs else 0.0


def random_regular_graph(
    n: int, degree: int, rng: random.Random, *, max_restarts: int = 100
) -> dict[int, list[int]]:
    """A random ``degree``-regular simple graph on nodes ``0 .. n-1`` (pairing model).

    Each node gets ``degree`` stubs; the stubs are shuffled and paired. Pairs that would make a
    loop or a double edge are put back and re-paired among themselves, a few rounds at most;
    when that gets stuck the whole pairing restarts. When ``n * degree`` is odd one node gets
    one stub less. Returns an adjacency dict with each edge listed both ways.
    """
    if n < degree + 1 or degree < 0:
        raise ValueError(f"no simple {degree}-regular graph on {n} nodes")
    for _ in range(max_restarts):
        stubs = [v for v in range(n) for _ in range(degree)]
        if len(stubs) % 2:
            stubs.pop()
        edges: set[tuple[int, int]] = set()
        for _round in range(50):
            rng.shuffle(stubs)
            rest: list[int] = []
            for i in range(0, len(stubs), 2):
                a, b = stubs[i], stubs[i + 1]
                edge = (a, b) if a < b else (b, a)
                if a == b or edge in edges:
                    rest.extend((a, b))
                else:
                    edges.add(edge)
            stubs = rest
            if not stubs:
                adjacency: dict[int, list[int]] = {v: [] for v in range(n)}
                for a, b in sorted(edges):
                    adjacency[a].append(b)
                    adjacency[b].append(a)
                return adjacency
    raise RuntimeError(f"could not pair a {degree}-regular graph on {n} nodes")
