"""The simulator: network model (with stub nodes), metrics (on graphs with known answers),
the paper's experiment at 1,000 nodes over the real core, and the command line."""

from __future__ import annotations

import gc
import io
import json
import multiprocessing
import os
import random
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.messages import Action, KeepAlive, Message, Send
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.sim import metrics
from ray_hyparview.sim.cli import ProgressBar, main, sweep_table
from ray_hyparview.sim.engine import (
    LogNormalLatency,
    NetworkConfig,
    SimNode,
    Simulation,
    SimulationError,
    UniformLatency,
)
from ray_hyparview.sim.scenario import (
    SIM_CONFIG,
    TIMING_KEYS,
    Experiment,
    live_adjacency,
    prepare,
    run_experiment,
)

# --------------------------------------------------------------------------- stub nodes


class Stub:
    """A node that records its inputs and sends whatever a test puts in its outbox."""

    def __init__(self, myself: Peer, config: HyParViewConfig, rng: random.Random) -> None:
        self.myself = myself
        self.received: list[tuple[float, NodeId, Message]] = []
        self.failed: list[tuple[float, NodeId]] = []
        self.timer_calls: list[float] = []
        self.outbox: list[Action] = []
        self.deadlines: list[float] = []
        self.active: dict[NodeId, None] = {}

    def _flush(self) -> list[Action]:
        out, self.outbox = self.outbox, []
        return out

    def join(self, contacts: Sequence[Peer], *, now: float) -> list[Action]:
        return self._flush()

    def receive(self, sender: NodeId, message: Message, *, now: float) -> list[Action]:
        self.received.append((now, sender, message))
        return self._flush()

    def link_failed(self, peer: NodeId, *, now: float) -> list[Action]:
        self.failed.append((now, peer))
        return self._flush()

    def on_timer(self, *, now: float) -> list[Action]:
        self.timer_calls.append(now)
        self.deadlines = [d for d in self.deadlines if d > now]
        return self._flush()

    def next_deadline(self) -> float | None:
        return min(self.deadlines, default=None)

    @property
    def active_ids(self) -> Collection[NodeId]:
        return self.active.keys()

    @property
    def passive_view(self) -> tuple[Peer, ...]:
        return ()


def stub_sim(n: int, network: NetworkConfig | None = None, seed: int = 1) -> Simulation:
    sim = Simulation(SIM_CONFIG, network=network, seed=seed, node_factory=Stub)
    for i in range(n):
        sim.add_node(f"s{i}")
    return sim


def stub(sim: Simulation, node_id: NodeId) -> Stub:
    node: SimNode = sim.node(node_id)
    assert isinstance(node, Stub)
    return node


def send(sim: Simulation, source: NodeId, target: NodeId, count: int = 1) -> None:
    """Make ``source`` send ``count`` numbered keepalives to ``target`` now."""
    node = stub(sim, source)
    for i in range(count):
        node.outbox.append(Send(sim.peer(target), KeepAlive(sender=node.myself, incarnation=i)))
    sim.join(source, [])


# --------------------------------------------------------------------------- network model


def test_latency_within_model_bounds() -> None:
    sim = stub_sim(2, NetworkConfig(latency=UniformLatency(low=0.010, high=0.020)))
    send(sim, "s0", "s1")
    sim.run_until(1.0)
    [(when, sender, _)] = stub(sim, "s1").received
    assert sender == "s0"
    assert 0.010 <= when <= 0.020


def test_lognormal_latency_capped_and_positive() -> None:
    model = LogNormalLatency(median=0.002, sigma=2.0, cap=0.05)
    rng = random.Random(3)
    draws = [model.sample(rng) for _ in range(2000)]
    assert all(0 < d <= 0.05 for d in draws)
    assert max(draws) == 0.05
    assert sorted(draws)[1000] == pytest.approx(0.002, rel=0.25)


def test_fifo_per_directed_link_despite_jittery_latency() -> None:
    sim = stub_sim(3, NetworkConfig(latency=UniformLatency(low=0.001, high=0.100)))
    send(sim, "s0", "s1", count=200)
    send(sim, "s2", "s1", count=200)
    sim.run_until(1.0)
    got = stub(sim, "s1").received
    for source in ("s0", "s2"):
        numbers = [m.incarnation for _, s, m in got if s == source]
        assert numbers == list(range(200))
    times = [t for t, _, _ in got]
    assert times == sorted(times)
    # Two links are independent: their messages interleave.
    senders = [s for _, s, _ in got]
    assert senders != sorted(senders)


def test_loss_drops_about_the_configured_share_silently() -> None:
    sim = stub_sim(2, NetworkConfig(loss=0.3))
    send(sim, "s0", "s1", count=2000)
    sim.run_until(1.0)
    delivered = len(stub(sim, "s1").received)
    assert 1250 < delivered < 1550
    assert sim.stats.lost == 2000 - delivered
    assert stub(sim, "s0").failed == []


def test_send_to_crashed_node_fails_after_one_latency() -> None:
    sim = stub_sim(2, NetworkConfig(latency=UniformLatency(low=0.01, high=0.01)))
    sim.crash(["s1"])
    send(sim, "s0", "s1")
    sim.run_until(1.0)
    [(when, peer)] = stub(sim, "s0").failed
    assert when == pytest.approx(0.01)
    assert peer == "s1"
    assert stub(sim, "s1").received == []


def test_message_in_flight_to_a_node_that_crashes_is_lost_and_reported() -> None:
    sim = stub_sim(2, NetworkConfig(latency=UniformLatency(low=0.05, high=0.05)))
    send(sim, "s0", "s1")
    sim.run_until(0.01)
    sim.crash(["s1"])
    sim.run_until(1.0)
    assert stub(sim, "s1").received == []
    [(when, peer)] = stub(sim, "s0").failed
    assert when == pytest.approx(0.10)
    assert peer == "s1"


def test_active_neighbours_detect_crash_after_detection_delay() -> None:
    sim = stub_sim(4, NetworkConfig(detection_delay=0.5))
    stub(sim, "s0").active = {"s1": None, "s2": None}
    stub(sim, "s1").active = {"s0": None}
    stub(sim, "s3").active = {"s1": None}
    sim.run_until(1.0)
    sim.crash(["s0", "s3"])
    sim.run_until(3.0)
    assert stub(sim, "s1").failed == [(1.5, "s0")]
    # s2 does not hold s0 in its active view: nothing to detect.
    assert stub(sim, "s2").failed == []
    assert sim.stats.link_failures == 1


def test_without_detection_delay_only_sends_reveal_a_crash() -> None:
    sim = stub_sim(2, NetworkConfig(detection_delay=None))
    stub(sim, "s1").active = {"s0": None}
    sim.crash(["s0"])
    sim.run_until(10.0)
    assert stub(sim, "s1").failed == []
    send(sim, "s1", "s0")
    sim.run_until(11.0)
    assert [peer for _, peer in stub(sim, "s1").failed] == ["s0"]


def test_partition_cuts_links_both_ways_and_heal_restores_traffic() -> None:
    sim = stub_sim(4, NetworkConfig(detection_delay=0.5))
    stub(sim, "s0").active = {"s2": None, "s1": None}
    stub(sim, "s2").active = {"s0": None}
    sim.run_until(1.0)
    sim.partition([["s0", "s1"]])  # s2 and s3 form the other side
    during = sim.partitioned
    sim.run_until(2.0)
    assert stub(sim, "s0").failed == [(1.5, "s2")]
    assert stub(sim, "s2").failed == [(1.5, "s0")]
    send(sim, "s0", "s3")
    send(sim, "s0", "s1")
    sim.run_until(3.0)
    assert stub(sim, "s3").received == []
    assert [s for _, s, _ in stub(sim, "s1").received] == ["s0"]
    assert stub(sim, "s0").failed[-1] == (2.5, "s3")
    sim.heal()
    after = sim.partitioned
    assert during
    assert not after
    send(sim, "s0", "s3")
    sim.run_until(4.0)
    assert [s for _, s, _ in stub(sim, "s3").received] == ["s0"]


def test_partition_drops_messages_already_in_flight() -> None:
    sim = stub_sim(2, NetworkConfig(latency=UniformLatency(low=0.1, high=0.1)))
    send(sim, "s0", "s1")
    sim.run_until(0.05)
    sim.partition([["s0"], ["s1"]])
    sim.run_until(5.0)
    assert stub(sim, "s1").received == []
    assert [peer for _, peer in stub(sim, "s0").failed] == ["s1"]


def test_timers_follow_next_deadline_and_stale_entries_are_skipped() -> None:
    sim = stub_sim(1)
    node = stub(sim, "s0")
    node.deadlines = [5.0]
    sim.join("s0", [])
    node.deadlines = [2.0, 7.0]  # moved earlier, and a later one behind it
    sim.join("s0", [])
    sim.run_until(10.0)
    assert node.timer_calls == [2.0, 7.0]
    assert sim.stats.stale_timers == 1  # the entry for 5.0


def test_timer_asked_for_the_past_fires_now_and_a_spinning_timer_is_nudged() -> None:
    sim = stub_sim(1)
    sim.run_until(3.0)
    node = stub(sim, "s0")
    node.deadlines = [1.0]
    sim.join("s0", [])
    sim.run_until(3.0)
    assert node.timer_calls == [3.0]

    class Spinner(Stub):
        def next_deadline(self) -> float | None:
            return 0.0 if len(self.timer_calls) < 5 else None

    spin = Simulation(SIM_CONFIG, node_factory=Spinner)
    spin.add_node("x")
    spin.join("x", [])
    spin.run_until(1.0)
    assert len(stub(spin, "x").timer_calls) == 5
    assert spin.stats.timer_nudges == 4


def test_crashed_node_gets_no_more_inputs() -> None:
    sim = stub_sim(2)
    node = stub(sim, "s0")
    node.deadlines = [1.0]
    sim.join("s0", [])
    sim.crash(["s0"])
    send(sim, "s1", "s0")
    sim.run_until(5.0)
    assert node.timer_calls == []
    assert node.received == []
    assert not sim.is_alive("s0")
    assert sim.alive_ids == ["s1"]


def test_misuse_raises() -> None:
    sim = stub_sim(2)
    with pytest.raises(SimulationError):
        sim.add_node("s0")
    with pytest.raises(SimulationError):
        sim.crash(["nobody"])
    with pytest.raises(SimulationError):
        sim.partition([["s0"], ["s0"]])
    sim.run_until(2.0)
    with pytest.raises(SimulationError):
        sim.run_until(1.0)
    with pytest.raises(SimulationError):
        NetworkConfig(loss=1.0)
    with pytest.raises(SimulationError):
        UniformLatency(low=0.2, high=0.1)


def test_snapshot_is_independent() -> None:
    sim = stub_sim(2)
    copy = sim.snapshot()
    copy.crash(["s1"])
    assert sim.is_alive("s1")
    assert not copy.is_alive("s1")


def test_the_event_loop_pauses_the_cycle_collector_and_leaves_no_cycles() -> None:
    # run_until turns the cyclic collector off while it runs; that is only free if the protocol
    # and the loop make no reference cycles, which a collection right after a run shows.
    gc.collect()
    assert gc.isenabled()
    experiment = Experiment(nodes=200, seed=3, fail=0.5, cycles=2, heal_cycles=1)
    sim, _ = prepare(experiment)
    sim.crash(sim.alive_ids[::2])
    sim.run_for(2 * SIM_CONFIG.shuffle_interval)
    assert sim.stats.delivered > 10_000
    assert gc.isenabled()
    assert gc.collect() == 0
    gc.disable()
    try:
        sim.run_for(1.0)
        assert not gc.isenabled()  # a caller's choice is left alone
    finally:
        gc.enable()


# --------------------------------------------------------------------------- metrics


PATH4 = {0: [1], 1: [0, 2], 2: [1, 3], 3: [2]}
TRIANGLE = {0: [1, 2], 1: [0, 2], 2: [0, 1]}


def test_flood_on_a_path_has_no_redundancy() -> None:
    result = metrics.flood(PATH4, 0)
    assert (result.reached, result.messages, result.last_hop) == (4, 3, 3)
    assert result.rmr == 0.0


def test_flood_on_a_triangle_sends_one_redundant_copy_per_delivery() -> None:
    result = metrics.flood(TRIANGLE, 0)
    # 0 sends to 1 and 2; each forwards to the other: 4 copies for 2 deliveries.
    assert (result.reached, result.messages, result.last_hop) == (3, 4, 1)
    assert result.rmr == 1.0


def test_flood_follows_direction_and_a_lone_sender_has_zero_rmr() -> None:
    graph = {"a": ["b"], "b": [], "c": ["a"]}
    assert metrics.flood(graph, "a").reached == 2
    lone = metrics.flood(graph, "b")
    assert (lone.reached, lone.messages, lone.last_hop, lone.rmr) == (1, 0, 0, 0.0)


def test_broadcast_stats_average_over_senders() -> None:
    graph = {"a": ["b"], "b": ["a"], "c": []}
    stats = metrics.broadcast_stats(graph, ["a", "c"])
    assert stats.reliability == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert stats.min_reliability == pytest.approx(1 / 3)
    assert stats.floods == 2
    with pytest.raises(ValueError, match="sender"):
        metrics.broadcast_stats(graph, [])


def test_restrict_removes_dead_nodes_and_edges_to_them() -> None:
    assert metrics.restrict(PATH4, {0, 1, 3}) == {0: [1], 1: [0], 3: []}


def test_largest_component_symmetry_and_in_degree() -> None:
    graph = {1: [2], 2: [3], 3: [1], 4: [5], 5: []}
    assert metrics.largest_component_fraction(graph) == pytest.approx(3 / 5)
    assert metrics.symmetric_fraction({"a": ["b", "c"], "b": ["a"], "c": []}) == pytest.approx(
        2 / 3
    )
    assert metrics.symmetric_fraction(TRIANGLE) == 1.0
    assert metrics.in_degree_histogram({"a": ["b", "c"], "b": ["c"], "c": []}) == {0: 1, 1: 1, 2: 1}


def test_clustering_and_shortest_paths_on_known_graphs() -> None:
    assert metrics.clustering_coefficient(TRIANGLE) == 1.0
    star = {0: [1, 2, 3], 1: [0], 2: [0], 3: [0]}
    assert metrics.clustering_coefficient(star) == 0.0
    # Path of 4: ordered pairs at distance 1 (6), 2 (4), 3 (2) -> 20 / 12.
    assert metrics.average_shortest_path(PATH4, PATH4) == pytest.approx(20 / 12)
    assert metrics.average_shortest_path(TRIANGLE, [0]) == 1.0


def test_metrics_agree_with_networkx_on_a_random_graph() -> None:
    rng = random.Random(5)
    graph: dict[int, list[int]] = {v: [] for v in range(300)}
    for v, peers in graph.items():
        for u in rng.sample(range(300), 3):
            if u != v and u not in peers:
                peers.append(u)
    reference = nx.Graph()
    reference.add_nodes_from(graph)
    reference.add_edges_from((v, u) for v, peers in graph.items() for u in peers)
    assert metrics.clustering_coefficient(graph) == pytest.approx(nx.average_clustering(reference))
    assert metrics.average_shortest_path(graph, graph) == pytest.approx(
        nx.average_shortest_path_length(reference)
    )
    largest = max(nx.connected_components(reference), key=len)
    assert metrics.largest_component_fraction(graph) == len(largest) / 300


def test_random_regular_graph_is_simple_regular_and_seeded() -> None:
    graph = metrics.random_regular_graph(1000, 5, random.Random(1))
    assert all(len(peers) == 5 for peers in graph.values())
    assert all(v not in peers and len(set(peers)) == 5 for v, peers in graph.items())
    assert all(v in graph[u] for v, peers in graph.items() for u in peers)
    assert graph == metrics.random_regular_graph(1000, 5, random.Random(1))
    odd = metrics.random_regular_graph(11, 3, random.Random(2))
    assert sorted(len(p) for p in odd.values()) == [2] + [3] * 10
    with pytest.raises(ValueError, match="regular"):
        metrics.random_regular_graph(4, 5, random.Random(0))


def test_random_5_regular_baseline_figures() -> None:
    graph = metrics.random_regular_graph(2000, 5, random.Random(9))
    assert metrics.largest_component_fraction(graph) == 1.0
    assert metrics.average_shortest_path(graph, list(graph)[:50]) == pytest.approx(5.2, abs=0.3)
    assert metrics.clustering_coefficient(graph) < 0.01


# --------------------------------------------------------------------------- the real core


@pytest.fixture(scope="module")
def run_1000() -> dict[str, Any]:
    return run_experiment(Experiment(nodes=1000, seed=3, fail=0.5))


def test_1000_nodes_before_the_crash_match_the_paper(run_1000: dict[str, Any]) -> None:
    before = run_1000["before_crash"]
    assert before["connected_fraction"] == 1.0
    assert before["symmetric_fraction"] == 1.0
    assert before["reliability"] == 1.0
    assert before["min_reliability"] == 1.0
    # Most active views are full: in-degree 5 dominates.
    degrees = {int(k): v for k, v in before["in_degree"].items()}
    assert degrees.get(5, 0) > 900
    assert max(degrees) <= 5
    assert before["avg_shortest_path"] == pytest.approx(
        run_1000["baseline"]["avg_shortest_path"], rel=0.1
    )


def test_1000_nodes_heal_after_half_crash(run_1000: dict[str, Any]) -> None:
    assert run_1000["alive"] == 500
    assert run_1000["crashed"] == 500
    assert run_1000["first_reliability"] < 1.0
    assert run_1000["healing_cycles"] is not None
    assert run_1000["healing_cycles"] <= 2
    assert run_1000["reliability"] == 1.0
    assert run_1000["connected_fraction"] == 1.0
    assert run_1000["symmetric_fraction"] == 1.0
    assert len(run_1000["reliability_by_cycle"]) == 4
    # Before any repair, most survivors are still reachable, as in a random graph.
    assert run_1000["first_reliability"] > 0.7
    assert run_1000["baseline"]["reliability_after_crash"]["0.5"] > 0.7
    assert run_1000["network"]["to_dead"] > 0
    assert run_1000["core_counters"]["peer_down.failed"] > 0


def test_same_seed_same_results() -> None:
    small = Experiment(nodes=300, seed=11, fail=0.4, cycles=3, heal_cycles=2)
    first = run_experiment(small)
    # The baseline computed in a second process, as the CLI does on two cores: same figures.
    second = run_experiment(small, background=True)
    for result in (first, second):
        for key in TIMING_KEYS:
            result.pop(key)
    assert first == second
    other = run_experiment(Experiment(nodes=300, seed=12, fail=0.4, cycles=3, heal_cycles=2))
    assert other["events"] != first["events"]


def test_a_run_that_fails_stops_its_baseline_worker() -> None:
    class Stop(Exception):
        pass

    def fail_during_the_joins(phase: str, done: int, total: int) -> None:
        if phase == "join" and done > 10:
            raise Stop

    # 20,000 nodes: the baseline worker is still busy when the run fails.
    with pytest.raises(Stop):
        run_experiment(
            Experiment(nodes=20_000, seed=1, fail=0.5), fail_during_the_joins, background=True
        )
    assert multiprocessing.active_children() == []


def test_same_seed_same_results_across_interpreters_and_hash_seeds(tmp_path: Path) -> None:
    """Nothing may depend on string hashing (set order): two interpreters with different
    ``PYTHONHASHSEED`` must produce the same figures."""
    results = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"run{hash_seed}.json"
        argv = ["--nodes", "150", "--cycles", "2", "--heal-cycles", "2", "--fail", "0.6"]
        subprocess.run(
            [sys.executable, "-m", "ray_hyparview.sim", *argv, "--json", str(out), "--no-plot"],
            check=True,
            capture_output=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        result = json.loads(out.read_text())
        for key in TIMING_KEYS:
            result.pop(key)
        results.append(result)
    assert results[0] == results[1]


def test_partition_splits_the_overlay_and_heals_back() -> None:
    experiment = Experiment(nodes=300, seed=4, cycles=2)
    sim, _ = prepare(experiment)
    ids = sim.alive_ids
    left = set(ids[::2])
    sim.partition([left])
    sim.run_for(3 * experiment.config.shuffle_interval)
    adjacency = live_adjacency(sim)
    crossing = [
        (v, u) for v, peers in adjacency.items() for u in peers if (v in left) != (u in left)
    ]
    assert crossing == []
    assert metrics.largest_component_fraction(adjacency) <= 0.5
    # Each side is a healthy overlay on its own.
    for side in (left, set(ids) - left):
        part = metrics.restrict(adjacency, side)
        assert metrics.largest_component_fraction(part) == 1.0
        assert metrics.symmetric_fraction(part) == 1.0
    sim.heal()
    # The halves find each other again by probing lost peers: wait for it, 10 cycles at most.
    for _ in range(10):
        sim.run_for(experiment.config.shuffle_interval)
        adjacency = live_adjacency(sim)
        if metrics.largest_component_fraction(adjacency) == 1.0:
            break
    assert metrics.largest_component_fraction(adjacency) == 1.0
    sim.run_for(experiment.config.shuffle_interval)

    # A link being set up is one-sided for the one latency its acceptance is in flight; what
    # must not exist is a one-sided link that stays so.
    def one_sided() -> set[tuple[str, str]]:
        adjacency = live_adjacency(sim)
        return {
            (v, u) for v, peers in adjacency.items() for u in peers if v not in adjacency.get(u, ())
        }

    before = one_sided()
    sim.run_for(0.1)  # 20 times the longest link latency
    assert not before & one_sided()


def test_overlay_builds_over_a_lossy_jittery_network() -> None:
    network = NetworkConfig(loss=0.01, latency=LogNormalLatency(median=0.002, sigma=0.8))
    sim, _ = prepare(Experiment(nodes=500, seed=0, cycles=4, network=network))
    assert sim.stats.lost > 0
    adjacency = live_adjacency(sim)
    # A lost DISCONNECT leaves a one-sided link until traffic crosses it (keepalives are off
    # in the simulator), so symmetry is near, not at, 100%.
    assert metrics.symmetric_fraction(adjacency) > 0.99
    assert all(peers for peers in adjacency.values())
    assert metrics.broadcast_stats(adjacency, list(adjacency)[:5]).reliability > 0.95


def test_overlay_over_a_lossy_network_is_one_component() -> None:
    network = NetworkConfig(loss=0.01, latency=LogNormalLatency(median=0.002, sigma=0.8))
    sim, _ = prepare(Experiment(nodes=500, seed=0, cycles=10, network=network))
    assert metrics.largest_component_fraction(live_adjacency(sim)) == 1.0


# --------------------------------------------------------------------------- command line

REQUIRED_KEYS = {
    "nodes",
    "seed",
    "failed_fraction",
    "alive",
    "connected_fraction",
    "symmetric_fraction",
    "reliability",
    "first_reliability",
    "reliability_by_cycle",
    "healing_cycles",
    "last_delivery_hop",
    "rmr",
    "clustering_coefficient",
    "avg_shortest_path",
    "in_degree",
    "wall_seconds",
    "peak_rss_mb",
}


def test_cli_writes_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    png = tmp_path / "run.png"
    argv = ["--nodes", "200", "--seed", "2", "--fail", "0.3", "--cycles", "3"]
    assert main([*argv, "--json", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result.keys() >= REQUIRED_KEYS
    assert result["nodes"] == 200
    assert result["failed_fraction"] == 0.3
    assert result["alive"] == 140
    assert result["compiled"] is False
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "first broadcast" in text
    assert "events per CPU second" in text


def test_cli_json_alone_prints_json_in_place_of_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--nodes", "60", "--seed", "2", "--fail", "0.3", "--cycles", "2", "--quiet"]
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)  # nothing but the JSON on stdout
    assert result["nodes"] == 60
    assert result["alive"] == 42
    assert "first broadcast" not in out.out
    # `--json -` says the same; a PATH still writes the file (the documented form).
    assert main([*argv, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"] == 60


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    from ray_hyparview import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"ray_hyparview {__version__}"


def test_cli_sweep_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep.json"
    png = tmp_path / "sweep.png"
    argv = ["--nodes", "150", "--cycles", "2", "--heal-cycles", "2", "--sweep"]
    assert main([*argv, "--json", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    fractions = [level["failed_fraction"] for level in result["levels"]]
    assert fractions == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert [level["alive"] for level in result["levels"]][-1] == 8
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert sweep_table(result) in text
    assert text.count("\n| ") == 11


def test_cli_help_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--nodes", "--fail", "--sweep", "--json", "--plot", "--latency", "--loss"):
        assert option in text
    with pytest.raises(SystemExit) as bad:
        main(["--fail", "1.5"])
    assert bad.value.code == 2
    with pytest.raises(SystemExit):
        main(["--latency", "gaussian:1:2"])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal() -> None:
    terminal = _Terminal()
    bar = ProgressBar(terminal, width=10)
    bar("join", 5, 10)
    bar("join", 10, 10)
    bar.close()
    text = terminal.getvalue()
    assert "\r   join [#####-----]       5/10" in text
    assert "[##########]" in text
    assert text.endswith("\r")
    pipe = io.StringIO()
    quiet = ProgressBar(pipe)
    quiet("join", 1, 2)
    quiet.close()
    assert pipe.getvalue() == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux carries ru_maxrss over")
def test_peak_memory_of_a_child_run_is_its_own_not_its_parents() -> None:
    # Linux keeps ru_maxrss across fork and exec, so a run started by a process that had
    # already grown (a test that built a large overlay) used to report the parent's peak.
    ballast = bytearray(256 * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    code = "from ray_hyparview.sim.scenario import peak_rss_mb; print(peak_rss_mb())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert float(done.stdout) < 200, done.stdout
    assert len(ballast) == 256 * 1024 * 1024


def test_compiled_refuses_a_sweep_before_compiling_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--nodes", "100", "--sweep", "--compiled"])
    assert info.value.code == 2
    assert "--compiled runs single experiments only" in capsys.readouterr().err


def test_compiled_cache_location_and_a_plain_run_says_it_is_not_compiled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ray_hyparview.sim import compiled

    monkeypatch.setenv("HYPARVIEW_SIM_CACHE", str(tmp_path / "cache"))
    assert compiled.cache_root() == tmp_path / "cache"
    monkeypatch.delenv("HYPARVIEW_SIM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiled.cache_root() == tmp_path / "xdg" / "ray_hyparview"
    first = compiled.source_hash()
    assert first == compiled.source_hash()
    assert len(first) == 16
    assert not compiled.running_compiled()
