"""Plumtree over the real HyParView core in the simulator, at 1,000 nodes.

What the paper promises (Leitão, Pereira and Rodrigues, SRDS 2007, section 4): every node
delivers every broadcast exactly once; the first broadcast floods the active views, and once the
eager links have pruned into a tree, a broadcast costs about N - 1 payload copies, so its
relative message redundancy (RMR) falls far below a flood's over the same views.
"""

from __future__ import annotations

import random

import pytest

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.sim import burst, metrics
from ray_hyparview.sim.engine import Simulation, SimulationError
from ray_hyparview.sim.scenario import build_overlay, default_join_interval, live_adjacency
from ray_hyparview.sim.stacked import BroadcastNode, broadcast, broadcast_node_factory

CONFIG = HyParViewConfig(keepalive_interval=None)


def settled_overlay(n: int, seed: int) -> tuple[Simulation, list[str], random.Random]:
    """Sequential joins (paper 5.1), then three shuffle periods."""
    sim = Simulation(CONFIG, seed=seed, node_factory=broadcast_node_factory())
    rng = random.Random(seed)
    ids = build_overlay(sim, n, rng, join_interval=default_join_interval(n, CONFIG))
    sim.run_for(3 * CONFIG.shuffle_interval)
    return sim, ids, rng


@pytest.mark.parametrize("n", [1000])
def test_every_node_delivers_once_and_the_tree_beats_flooding(n: int) -> None:
    sim, ids, rng = settled_overlay(n, seed=n)
    results = []
    floods = []
    for _ in range(6):
        origin = rng.choice(ids)
        floods.append(metrics.flood(live_adjacency(sim), origin))
        results.append(broadcast(sim, origin, b"m"))
    for result in results:
        assert result.duplicates == 0, "a node delivered twice"
        assert len(result.delivery_times) == result.delivered
        assert result.delivery_times[0] == 0.0  # the origin, at once
        assert 0.0 < result.last_delivery < 1.0  # no repair needed: tens of ms per hop at most
        assert result.reliability_by(result.last_delivery) == result.reliability
        assert result.delivered == n, f"{n - result.delivered} nodes missed {result.msg_id}"
    # The first broadcast floods the active views: its redundancy is a flood's.
    assert results[0].rmr > 2.0
    assert results[0].rmr == pytest.approx(floods[0].rmr, rel=0.25)
    # Once the tree has settled, redundancy is far below flooding's (0 on a static overlay;
    # shuffles may still replace a few active links, each costing a GRAFT).
    for result, flood in zip(results[3:], floods[3:], strict=True):
        assert result.rmr < 0.05 * flood.rmr
    # A tree path is never shorter than the flood's (which takes every shortest path).
    assert all(r.last_hop >= f.last_hop for r, f in zip(results, floods, strict=True))
    eager = {
        node_id: list(node.tree.eager_peers)
        for node_id, node in sim.nodes()
        if isinstance(node, BroadcastNode)
    }
    # The eager links span the overlay and are a tree but for the few active links that
    # shuffles opened since the last broadcast (new links start eager until a duplicate
    # prunes them). Links are symmetric, so each is counted from both ends.
    assert metrics.largest_component_fraction(eager) == 1.0
    assert metrics.symmetric_fraction(eager) == 1.0
    assert 2 * (n - 1) <= sum(len(peers) for peers in eager.values()) <= 2 * (n - 1) + n // 50


def test_half_crash_then_repair_reaches_every_survivor() -> None:
    sim, ids, rng = settled_overlay(300, seed=3)
    for _ in range(3):
        assert broadcast(sim, rng.choice(ids)).delivered == 300
    sim.crash(rng.sample(ids, 150))
    live = sim.alive_ids
    sender = rng.choice(live)
    # What the crash left reachable from the sender over the torn active views: a random half
    # crash can leave the sender in a small fragment, so the bar is relative to its component.
    component = metrics.flood(metrics.undirected(live_adjacency(sim)), sender).reached
    first = broadcast(sim, sender)
    assert first.duplicates == 0
    # GRAFT over lazy links patches the torn tree: the whole component hears it.
    assert first.delivered >= 0.9 * component, (first.delivered, component)
    sim.run_for(2 * CONFIG.shuffle_interval)
    for _ in range(3):
        result = broadcast(sim, rng.choice(live))
        assert result.duplicates == 0
        assert result.delivered == len(live) == result.alive


def test_apply_actions_refuses_a_crashed_node() -> None:
    sim, ids, _ = settled_overlay(20, seed=1)
    sim.crash([ids[5]])
    node = sim.node(ids[5])
    assert isinstance(node, BroadcastNode)
    _, actions = node.broadcast(b"x", now=sim.now)
    with pytest.raises(SimulationError):
        sim.apply_actions(ids[5], actions)
    with pytest.raises(SimulationError):
        sim.apply_actions("nobody", [])


def test_snapshot_branches_a_stacked_run() -> None:
    sim, ids, _ = settled_overlay(50, seed=2)
    copy = sim.snapshot()
    first = broadcast(sim, ids[0])
    second = broadcast(copy, ids[0])
    assert first == second
    assert first.delivered == 50


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_node_broadcasting_at_once_loses_nothing(seed: int) -> None:
    # Issue 9: with the paper's prune rule and 1 s timers, a burst of 100 simultaneous
    # broadcasts on a settled tree tore it apart: p99 delivery 2-3 s, a message missing now and
    # then. Now nothing is missing, p99 stays far under 1 s and the tree survives the burst.
    run = burst.run(100, seed, bursts=2, singles=3)
    for result in run.bursts:
        assert result.messages == 100
        assert result.missing == 0, f"seed {seed}: {result.missing} deliveries missing"
        assert result.duplicates == 0
        assert result.percentile(0.99) < 1.0, result.percentile(0.99)
        assert result.rmr < 0.5  # a flood over these views costs about 3
    for single in run.singles:
        assert single.delivered == 100
    assert run.settled_rmr < 0.1


@pytest.mark.parametrize("seed", [0, 3])
def test_a_burst_right_after_a_crash_loses_nothing(seed: int) -> None:
    # 20 of 100 nodes crash just before the bursts: the tree is torn and failure detection has
    # not run yet, so the first burst is repaired by GRAFT. Before issue 9's fixes these seeds
    # lost 8 and 6 deliveries of the first burst (announcements dropped at the IHAVE flush).
    # In these seeds the 80 survivors stay connected, so every delivery is owed.
    run = burst.run(100, seed, crash=0.2, bursts=2, singles=2)
    for result in run.bursts:
        assert result.alive == 80
        assert result.missing == 0, f"seed {seed}: {result.missing} deliveries missing"
        assert result.duplicates == 0
        assert result.percentile(0.99) < 1.0, result.percentile(0.99)
    assert all(single.delivered == 80 for single in run.singles)
