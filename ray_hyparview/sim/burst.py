"""Every node broadcasts at once: Plumtree under a burst of concurrent sources.

Theory of operation
-------------------
Plumtree (Leitão, Pereira and Rodrigues, SRDS 2007) builds its tree from the first broadcast:
each duplicate prunes a link. When many sources broadcast at the same instant, every node sees
duplicates of many messages at once, and each message prunes the links that were redundant *for
it*; links that were the only path of another message are pruned as well, so the eager links left
cover far less than a spanning tree and most messages have to be pulled hop by hop with IHAVE and
GRAFT. How long that takes is set by the lazy-push timers, and whether it always ends by the
announcements and the payload cache.

:func:`burst` starts one broadcast on every live node (or on ``senders``) at the same simulated
instant, runs the clock for ``horizon`` seconds and measures, over every (message, node) pair
except each message at its own origin:

* missing deliveries (a live node that never delivered a message by the horizon);
* delivery latency percentiles (seconds from the burst to the delivery);
* LDH, the last delivery hop: the largest hop count of a delivery (paper, section 4.1), and its
  mean over the messages;
* RMR, the relative message redundancy of the whole burst: ``GOSSIP received / deliveries - 1``
  with deliveries counted without the origins (paper, section 4.1, summed over the messages).

:func:`run` builds the overlay (sequential joins, then shuffle periods, as the other stacked
scenarios do), runs ``bursts`` bursts a few seconds apart and then ``singles`` single broadcasts
one after the other, the settled-tree redundancy the paper reports. It is the driver of
``benchmarks/plumtree_burst.py`` and of ``tests/test_sim_plumtree.py``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.protocol.plumtree import MsgId, PlumtreeConfig
from ray_hyparview.sim.engine import Simulation, SimulationError
from ray_hyparview.sim.scenario import build_overlay, default_join_interval
from ray_hyparview.sim.stacked import (
    SIM_TREE_CONFIG,
    BroadcastNode,
    BroadcastResult,
    broadcast,
    broadcast_node_factory,
)

__all__ = ["BurstResult", "BurstRun", "burst", "run"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BurstResult:
    """What one burst of simultaneous broadcasts achieved by its horizon."""

    messages: int
    """Broadcasts started (one per sender)."""

    alive: int
    """Live nodes at the end."""

    expected: int
    """Deliveries owed: each message to every live node but its origin."""

    missing: int
    """Of :attr:`expected`, deliveries that had not happened by the horizon."""

    duplicates: int
    """Deliveries of a message a node had already delivered (Plumtree promises 0)."""

    latencies: tuple[float, ...]
    """Seconds from the burst to each non-origin delivery, sorted."""

    last_hop: int
    """LDH: the largest hop count of any delivery."""

    mean_last_hop: float
    """The last delivery hop of each message, averaged over the messages."""

    gossip: int
    """GOSSIP received by all nodes during the burst (payload copies, GRAFT answers included)."""

    graft: int
    """GRAFT sent by all nodes during the burst."""

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the delivery latency; ``inf`` when ``q`` of the owed
        deliveries include missing ones (a missing delivery counts as never)."""
        if self.expected == 0:
            return 0.0
        rank = math.ceil(q * self.expected)
        if rank > len(self.latencies):
            return math.inf
        return self.latencies[max(rank, 1) - 1]

    @property
    def rmr(self) -> float:
        """Relative message redundancy: GOSSIP received per delivery, minus one."""
        delivered = len(self.latencies)
        return self.gossip / delivered - 1.0 if delivered else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BurstRun:
    """:func:`run`'s figures: the bursts in order, then the single broadcasts after them."""

    seed: int
    bursts: tuple[BurstResult, ...]
    singles: tuple[BroadcastResult, ...]

    @property
    def settled_rmr(self) -> float:
        """Mean RMR of the single broadcasts after the bursts (0 when there were none)."""
        if not self.singles:
            return 0.0
        return sum(r.rmr for r in self.singles) / len(self.singles)


def _tree_nodes(sim: Simulation) -> list[BroadcastNode]:
    out = []
    for _, node in sim.nodes():
        if not isinstance(node, BroadcastNode):
            raise SimulationError(f"{type(node).__name__} is not a BroadcastNode")
        out.append(node)
    return out


def _counter_sum(sim: Simulation, name: str) -> int:
    return sum(node.tree.counters[name] for node in _tree_nodes(sim))


def burst(
    sim: Simulation, senders: Sequence[NodeId] | None = None, *, horizon: float = 5.0
) -> BurstResult:
    """Broadcast once from each of ``senders`` (default: every live node) at the same instant,
    run the clock ``horizon`` seconds and measure."""
    origins = list(sim.alive_ids if senders is None else senders)
    gossip_before = _counter_sum(sim, "received.Gossip")
    graft_before = _counter_sum(sim, "sent.Graft")
    start = sim.now
    marks = {node_id: len(_node(sim, node_id).delivered) for node_id in sim.alive_ids}
    ids: dict[MsgId, NodeId] = {}
    for origin in origins:
        node = _node(sim, origin)
        msg_id, actions = node.broadcast(b"burst", now=start)
        ids[msg_id] = origin
        sim.apply_actions(origin, actions)
    sim.run_for(horizon)
    alive = sim.alive_ids
    latencies: list[float] = []
    hops_by_msg: dict[MsgId, int] = dict.fromkeys(ids, 0)
    delivered = duplicates = 0
    for node_id in alive:
        node = _node(sim, node_id)
        got: set[MsgId] = set()
        start_at = marks.get(node_id, 0)
        for deliver, at in zip(
            node.delivered[start_at:], node.delivered_at[start_at:], strict=True
        ):
            source = ids.get(deliver.msg_id)
            if source is None or source == node_id:
                continue
            if deliver.msg_id in got:
                duplicates += 1
                continue
            got.add(deliver.msg_id)
            delivered += 1
            latencies.append(at - start)
            hops_by_msg[deliver.msg_id] = max(hops_by_msg[deliver.msg_id], deliver.hops)
    live = set(alive)
    expected = sum(len(live) - (origin in live) for origin in ids.values())
    return BurstResult(
        messages=len(ids),
        alive=len(alive),
        expected=expected,
        missing=expected - delivered,
        duplicates=duplicates,
        latencies=tuple(sorted(latencies)),
        last_hop=max(hops_by_msg.values(), default=0),
        mean_last_hop=sum(hops_by_msg.values()) / len(ids) if ids else 0.0,
        gossip=_counter_sum(sim, "received.Gossip") - gossip_before,
        graft=_counter_sum(sim, "sent.Graft") - graft_before,
    )


def _node(sim: Simulation, node_id: NodeId) -> BroadcastNode:
    node = sim.node(node_id)
    if not isinstance(node, BroadcastNode):
        raise SimulationError(f"node {node_id!r} is a {type(node).__name__}, not a BroadcastNode")
    return node


def run(
    n: int = 100,
    seed: int = 0,
    *,
    tree_config: PlumtreeConfig = SIM_TREE_CONFIG,
    config: HyParViewConfig | None = None,
    warmup: int = 3,
    crash: float = 0.0,
    bursts: int = 2,
    horizon: float = 5.0,
    singles: int = 5,
    shuffle_periods: int = 3,
) -> BurstRun:
    """Build an ``n``-node overlay, settle its tree with ``warmup`` single broadcasts, crash a
    ``crash`` fraction of the nodes (the tree torn, failure detection not yet done), run
    ``bursts`` bursts (each watched ``horizon`` seconds), then ``singles`` single broadcasts from
    random live nodes (each watched 2 s). A crash may cut survivors off; the figures count them
    as missing, so read them with the overlay's components in mind."""
    hv_config = config if config is not None else HyParViewConfig(keepalive_interval=None)
    sim = Simulation(hv_config, seed=seed, node_factory=broadcast_node_factory(tree_config))
    rng = random.Random(seed)
    ids = build_overlay(sim, n, rng, join_interval=default_join_interval(n, hv_config))
    sim.run_for(shuffle_periods * hv_config.shuffle_interval)
    for _ in range(warmup):
        broadcast(sim, rng.choice(ids))
    if crash:
        sim.crash(rng.sample(ids, round(crash * n)))
    results = tuple(burst(sim, horizon=horizon) for _ in range(bursts))
    live = sim.alive_ids
    single = tuple(broadcast(sim, rng.choice(live)) for _ in range(singles))
    return BurstRun(seed=seed, bursts=results, singles=single)
