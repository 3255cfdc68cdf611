"""The paper's experiment: build an overlay, let it settle, crash a share of it, watch it heal.

Theory of operation
-------------------
Leitão et al. (DSN 2007, section 5.1) build a 10,000-node overlay by sequential joins, each new
node joining through a random node already in, then run membership cycles, crash a share of the
nodes at once and send broadcasts. :func:`build_overlay` does the same on a :class:`Simulation`:
node ``i`` joins through a random earlier node (two more random earlier nodes are kept as spare
contacts for re-joins, as a real deployment lists several), and the clock advances by
``join_interval`` between joins (3 ms: a join's walks overlap only the next few joins'; see
:func:`default_join_interval`). Then ``cycles`` shuffle periods pass.

:func:`run_experiment` measures the overlay (:func:`measure`), crashes ``fail`` of the nodes at
one instant, measures the first broadcast right then (before any repair: the overlay as the
crash left it), and once after every further cycle. Every random choice of the experiment
(victims, broadcast senders, BFS sources) comes from its own generator, seeded from the run's
seed, so that measuring never disturbs the protocol's random stream.
"""

from __future__ import annotations

import multiprocessing
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.pool import AsyncResult, Pool
from typing import Any

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.sim import metrics
from ray_hyparview.sim.engine import NetworkConfig, Simulation, collector_paused

__all__ = [
    "Experiment",
    "Measurement",
    "Progress",
    "SWEEP_FRACTIONS",
    "baseline",
    "build_overlay",
    "default_join_interval",
    "live_adjacency",
    "measure",
    "node_ids",
    "peak_rss_mb",
    "run_experiment",
    "run_sweep",
]

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called as a run advances, e.g. to draw a progress bar."""

SWEEP_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
"""The failure levels of ``--sweep``: the paper's figure 3 range."""

SIM_CONFIG = HyParViewConfig(keepalive_interval=None)
"""The paper's parameters with keepalives off: the simulated network models failure detection."""

TIMING_KEYS = frozenset(
    {"wall_seconds", "cpu_seconds", "peak_rss_mb", "events_per_second", "phase_seconds"}
)
"""Result keys that vary between identical runs (everything else is determined by the seed)."""


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    """One run of the paper's scenario."""

    nodes: int = 1000
    """Overlay size."""

    seed: int = 0
    """Seeds the protocol, the network and the experiment's own choices."""

    fail: float = 0.5
    """Share of nodes crashed at once after the build."""

    cycles: int = 10
    """Shuffle periods between the last join and the crash."""

    heal_cycles: int = 4
    """Shuffle periods measured after the crash."""

    broadcasts: int = 10
    """Floods averaged per reliability figure."""

    path_samples: int = 32
    """BFS sources for the average shortest path."""

    join_interval: float | None = None
    """Simulated seconds between two joins; ``None`` picks :func:`default_join_interval`."""

    config: HyParViewConfig = field(
        default_factory=lambda: HyParViewConfig(keepalive_interval=None)
    )
    """Protocol parameters: the paper's, keepalives off (the network models detection)."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    """Latency, loss and failure-detection model."""

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError(f"nodes must be at least 2, got {self.nodes!r}")
        if not 0.0 <= self.fail < 1.0:
            raise ValueError(f"fail must be in [0, 1), got {self.fail!r}")
        if self.cycles < 0 or self.heal_cycles < 0:
            raise ValueError("cycles and heal_cycles must be >= 0")
        if self.broadcasts < 1 or self.path_samples < 1:
            raise ValueError("broadcasts and path_samples must be >= 1")
        if self.join_interval is not None and self.join_interval < 0:
            raise ValueError(f"join_interval must be >= 0, got {self.join_interval!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """The paper's figures for the overlay of live nodes at one instant."""

    alive: int
    reliability: float
    min_reliability: float
    rmr: float
    last_delivery_hop: float
    connected_fraction: float
    symmetric_fraction: float
    clustering_coefficient: float
    avg_shortest_path: float
    dead_passive_fraction: float
    in_degree: dict[int, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (histogram keys as strings)."""
        out = asdict(self)
        out["in_degree"] = {str(k): v for k, v in self.in_degree.items()}
        return out


def default_join_interval(nodes: int, config: HyParViewConfig) -> float:
    """3 ms between joins, but the whole join phase at most 10 shuffle periods, so that 100,000
    nodes do not spend 100 periods shuffling while they join.

    A join's FORWARD_JOIN walks take 6 hops of 1-5 ms, so joins overlap a little, as they do
    in a real cluster that starts at once. Measured at 10,000 nodes, seeds 0-3 (95% crash):
    3 ms costs 1.66 M events against 1.97 M at 10 ms, the overlay is connected and symmetric
    before the crash either way, and the clustering coefficient stays 0.0003-0.0008 (random
    5-regular graph: 0.0002). Below that, walks interfere: at 1 ms one seed in three left 0.6%
    of the nodes in islands that no rule of the paper merges.
    """
    return min(0.003, 10 * config.shuffle_interval / nodes)


def node_ids(n: int) -> list[NodeId]:
    """``n`` node ids that sort in join order: ``n0000``, ``n0001``, ..."""
    width = len(str(max(n - 1, 0)))
    return [f"n{i:0{width}d}" for i in range(n)]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own
    address space. ``getrusage``'s ``ru_maxrss`` is not used there because Linux carries it
    over from the parent across fork and exec: a 10,000-node run started by a test process
    that had itself built a 10,000-node overlay reported the parent's peak. Elsewhere,
    ``ru_maxrss`` (KiB on Linux and the BSDs, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def build_overlay(
    sim: Simulation,
    n: int,
    rng: random.Random,
    *,
    join_interval: float,
    progress: Progress = _no_progress,
) -> list[NodeId]:
    """Sequential joins: node ``i`` joins through a random earlier node (paper 5.1)."""
    ids = node_ids(n)
    step = max(1, n // 200)
    for i, node_id in enumerate(ids):
        sim.add_node(node_id)
        if i == 0:
            sim.join(node_id, [])
        else:
            contacts = rng.sample(range(i), min(3, i))
            sim.join(node_id, [ids[c] for c in contacts])
        sim.run_for(join_interval)
        if i % step == 0 or i == n - 1:
            progress("join", i + 1, n)
    return ids


def live_adjacency(sim: Simulation) -> dict[NodeId, list[NodeId]]:
    """The directed graph of active views among live nodes."""
    alive = set(sim.alive_ids)
    return {
        node_id: [p for p in node.active_ids if p in alive]
        for node_id, node in sim.nodes()
        if node_id in alive
    }


def _dead_passive_fraction(sim: Simulation) -> float:
    total = 0
    dead = 0
    for node_id, node in sim.nodes():
        if not sim.is_alive(node_id):
            continue
        for peer in node.passive_view:
            total += 1
            if not sim.is_alive(peer.id):
                dead += 1
    return dead / total if total else 0.0


def _reliability(adjacency: dict[NodeId, list[NodeId]], rng: random.Random, k: int) -> float:
    live = list(adjacency)
    senders = rng.sample(live, min(k, len(live)))
    return metrics.broadcast_stats(adjacency, senders).reliability


def measure(
    adjacency: dict[NodeId, list[NodeId]],
    rng: random.Random,
    *,
    broadcasts: int,
    path_samples: int,
    dead_passive_fraction: float = 0.0,
) -> Measurement:
    """Every figure of the paper for one overlay (``adjacency`` closed over live nodes)."""
    live = list(adjacency)
    senders = rng.sample(live, min(broadcasts, len(live)))
    stats = metrics.broadcast_stats(adjacency, senders)
    sources = rng.sample(live, min(path_samples, len(live)))
    graph = metrics.undirected(adjacency)
    return Measurement(
        alive=len(adjacency),
        reliability=stats.reliability,
        min_reliability=stats.min_reliability,
        rmr=stats.rmr,
        last_delivery_hop=stats.last_delivery_hop,
        connected_fraction=metrics.largest_component_fraction(graph),
        symmetric_fraction=metrics.symmetric_fraction(adjacency),
        clustering_coefficient=metrics.clustering_coefficient(graph),
        avg_shortest_path=metrics.average_shortest_path(graph, sources),
        dead_passive_fraction=dead_passive_fraction,
        in_degree=metrics.in_degree_histogram(adjacency),
    )


def baseline(
    nodes: int,
    seed: int,
    *,
    degree: int = 5,
    fractions: tuple[float, ...] = (),
    broadcasts: int = 10,
    path_samples: int = 32,
) -> dict[str, Any]:
    """The same figures for a random ``degree``-regular graph of ``nodes`` nodes, and its flood
    reliability after removing each share in ``fractions`` with no repair at all."""
    rng = random.Random(seed * 7919 + 3)
    graph = metrics.random_regular_graph(nodes, degree, rng)
    figures = measure(graph_as_ids(graph), rng, broadcasts=broadcasts, path_samples=path_samples)
    crashed: dict[str, float] = {}
    for fraction in fractions:
        victims = set(rng.sample(range(nodes), round(fraction * nodes)))
        survivors = {v for v in graph if v not in victims}
        adjacency = graph_as_ids(metrics.restrict(graph, survivors))
        crashed[f"{fraction:g}"] = _reliability(adjacency, rng, broadcasts)
    return {"degree": degree, **figures.as_dict(), "reliability_after_crash": crashed}


def _timed_baseline(
    nodes: int, seed: int, fractions: tuple[float, ...], broadcasts: int, path_samples: int
) -> tuple[dict[str, Any], float, float]:
    """:func:`baseline` in a worker process: its figures, CPU seconds and peak RSS in MiB."""
    cpu = time.process_time()
    figures = baseline(
        nodes, seed, fractions=fractions, broadcasts=broadcasts, path_samples=path_samples
    )
    return figures, time.process_time() - cpu, peak_rss_mb()


class _Baseline:
    """The random-graph baseline of a run, computed beside it.

    It shares nothing with the simulation, so with ``background=True`` it runs in a second
    process (spawned: a fresh interpreter, no fork of a large heap) while this one simulates,
    and :meth:`result` waits for it. Its CPU time is added to the run's and its peak memory to
    the run's own, since both processes are alive at once. Without ``background`` it is computed
    in :meth:`result`, in this process.
    """

    def __init__(
        self, experiment: Experiment, fractions: tuple[float, ...], *, background: bool
    ) -> None:
        self._args = (
            experiment.nodes,
            experiment.seed,
            fractions,
            experiment.broadcasts,
            experiment.path_samples,
        )
        self._pool: Pool | None = None
        self._pending: AsyncResult[tuple[dict[str, Any], float, float]] | None = None
        if background:
            self._pool = multiprocessing.get_context("spawn").Pool(1)
            self._pending = self._pool.apply_async(_timed_baseline, self._args)

    def result(self) -> tuple[dict[str, Any], float, float]:
        """``(figures, CPU seconds spent elsewhere, peak RSS of the other process in MiB)``."""
        if self._pending is None:
            figures, _, _ = _timed_baseline(*self._args)
            return figures, 0.0, 0.0
        return self._pending.get()

    def __enter__(self) -> _Baseline:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the worker and wait for it to exit. A run that fails or is interrupted does not
        wait for its baseline: the worker is terminated."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def graph_as_ids(graph: dict[int, list[int]]) -> dict[NodeId, list[NodeId]]:
    """An int-keyed graph with string ids, so that one set of helpers serves both."""
    return {f"g{v}": [f"g{u}" for u in peers] for v, peers in graph.items()}


class _Clock:
    """Wall-clock and CPU time of a run's phases (the only place the simulator reads real time).

    CPU time is reported next to wall time because on a shared machine the wall clock also
    counts other processes' turns; events per second are computed from CPU time.
    """

    def __init__(self) -> None:
        self.cpu_start = time.process_time()
        self.start = time.perf_counter()
        self.last = self.start
        self.last_cpu = self.cpu_start
        self.phases: dict[str, float] = {}
        self.cpu_phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        cpu = time.process_time()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.cpu_phases[phase] = self.cpu_phases.get(phase, 0.0) + cpu - self.last_cpu
        self.last = now
        self.last_cpu = cpu

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    @property
    def cpu(self) -> float:
        """CPU seconds of this process: the honest figure on a shared machine."""
        return time.process_time() - self.cpu_start


def prepare(
    experiment: Experiment, progress: Progress = _no_progress
) -> tuple[Simulation, random.Random]:
    """Build the overlay and run ``experiment.cycles`` shuffle periods; return the simulation
    and the experiment's generator (for victims and senders)."""
    sim = Simulation(experiment.config, network=experiment.network, seed=experiment.seed)
    rng = random.Random(experiment.seed * 1_000_003 + 17)
    interval = experiment.join_interval
    if interval is None:
        interval = default_join_interval(experiment.nodes, experiment.config)
    build_overlay(sim, experiment.nodes, rng, join_interval=interval, progress=progress)
    period = experiment.config.shuffle_interval
    for c in range(experiment.cycles):
        sim.run_for(period)
        progress("cycles", c + 1, experiment.cycles)
    return sim, rng


def crash_and_heal(
    experiment: Experiment,
    sim: Simulation,
    rng: random.Random,
    fail: float,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Crash ``fail`` of the live nodes at once, then measure after each healing cycle."""
    live = sim.alive_ids
    victims = rng.sample(live, round(fail * len(live)))
    sim.crash(victims)
    first = _reliability(live_adjacency(sim), rng, experiment.broadcasts)
    by_cycle: list[float] = []
    for c in range(experiment.heal_cycles):
        sim.run_for(experiment.config.shuffle_interval)
        by_cycle.append(_reliability(live_adjacency(sim), rng, experiment.broadcasts))
        progress("heal", c + 1, experiment.heal_cycles)
    healing: int | None = 0
    if first < 1.0:
        healing = next((i + 1 for i, r in enumerate(by_cycle) if r == 1.0), None)
    return {
        "failed_fraction": fail,
        "crashed": len(victims),
        "first_reliability": first,
        "reliability_by_cycle": by_cycle,
        "healing_cycles": healing,
        "reliability": by_cycle[-1] if by_cycle else first,
    }


def run_experiment(
    experiment: Experiment, progress: Progress = _no_progress, *, background: bool = False
) -> dict[str, Any]:
    """The whole scenario; returns the JSON object the CLI writes.

    ``background=True`` computes the random-graph baseline in a second process meanwhile (the
    CLI does so on a machine with more than one core); the figures are the same either way. The
    process is spawned, so a script that asks for it must keep its top level behind
    ``if __name__ == "__main__":``, as with any spawned :mod:`multiprocessing` worker.
    """
    fractions = (experiment.fail,) if experiment.fail > 0 else ()
    with collector_paused():
        clock = _Clock()
        with _Baseline(experiment, fractions, background=background) as base_job:
            return _run_experiment(experiment, progress, clock, base_job)


def _run_experiment(
    experiment: Experiment, progress: Progress, clock: _Clock, base_job: _Baseline
) -> dict[str, Any]:
    sim, rng = prepare(experiment, progress)
    clock.lap("build")
    before = measure(
        live_adjacency(sim),
        rng,
        broadcasts=experiment.broadcasts,
        path_samples=experiment.path_samples,
    )
    clock.lap("measure")
    outcome = crash_and_heal(experiment, sim, rng, experiment.fail, progress)
    clock.lap("crash_and_heal")
    after = measure(
        live_adjacency(sim),
        rng,
        broadcasts=experiment.broadcasts,
        path_samples=experiment.path_samples,
        dead_passive_fraction=_dead_passive_fraction(sim),
    )
    clock.lap("measure")
    base, elsewhere_cpu, elsewhere_rss = base_job.result()
    clock.lap("baseline")
    wall = clock.total
    sim_seconds = clock.cpu_phases["build"] + clock.cpu_phases["crash_and_heal"]
    result: dict[str, Any] = {
        "nodes": experiment.nodes,
        "seed": experiment.seed,
        "cycles": experiment.cycles,
        "heal_cycles": experiment.heal_cycles,
        "broadcasts": experiment.broadcasts,
        **outcome,
        "alive": after.alive,
        "connected_fraction": after.connected_fraction,
        "symmetric_fraction": after.symmetric_fraction,
        "last_delivery_hop": after.last_delivery_hop,
        "rmr": after.rmr,
        "clustering_coefficient": after.clustering_coefficient,
        "avg_shortest_path": after.avg_shortest_path,
        "dead_passive_fraction": after.dead_passive_fraction,
        "in_degree": {str(k): v for k, v in after.in_degree.items()},
        "before_crash": before.as_dict(),
        "after_healing": after.as_dict(),
        "baseline": base,
        "sim_time": sim.now,
        "events": sim.stats.events,
        "network": sim.stats.as_dict(),
        "core_counters": dict(sorted(sim.core_counters().items())),
        "wall_seconds": wall,
        "cpu_seconds": clock.cpu + elsewhere_cpu,
        "phase_seconds": clock.phases,
        "events_per_second": sim.stats.events / sim_seconds if sim_seconds > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb() + elsewhere_rss,
    }
    return result


def run_sweep(
    experiment: Experiment,
    fractions: tuple[float, ...] = SWEEP_FRACTIONS,
    progress: Progress = _no_progress,
    *,
    background: bool = False,
) -> dict[str, Any]:
    """Build one overlay, then branch one copy per failure level (same overlay for all).

    ``background`` as for :func:`run_experiment`.
    """
    with collector_paused():
        clock = _Clock()
        with _Baseline(experiment, fractions, background=background) as base_job:
            return _run_sweep(experiment, fractions, progress, clock, base_job)


def _run_sweep(
    experiment: Experiment,
    fractions: tuple[float, ...],
    progress: Progress,
    clock: _Clock,
    base_job: _Baseline,
) -> dict[str, Any]:
    sim, rng = prepare(experiment, progress)
    clock.lap("build")
    before = measure(
        live_adjacency(sim),
        rng,
        broadcasts=experiment.broadcasts,
        path_samples=experiment.path_samples,
    )
    events = sim.stats.events
    levels: list[dict[str, Any]] = []
    for index, fraction in enumerate(fractions):
        branch = sim.snapshot()
        branch_rng = random.Random(experiment.seed * 1_000_003 + 101 + index)
        outcome = crash_and_heal(experiment, branch, branch_rng, fraction)
        adjacency = live_adjacency(branch)
        outcome["alive"] = len(adjacency)
        outcome["connected_fraction"] = metrics.largest_component_fraction(adjacency)
        outcome["symmetric_fraction"] = metrics.symmetric_fraction(adjacency)
        outcome["dead_passive_fraction"] = _dead_passive_fraction(branch)
        levels.append(outcome)
        events += branch.stats.events - sim.stats.events
        progress("sweep", index + 1, len(fractions))
    clock.lap("sweep")
    base, elsewhere_cpu, elsewhere_rss = base_job.result()
    clock.lap("baseline")
    sim_seconds = clock.cpu_phases["build"] + clock.cpu_phases["sweep"]
    return {
        "nodes": experiment.nodes,
        "seed": experiment.seed,
        "cycles": experiment.cycles,
        "heal_cycles": experiment.heal_cycles,
        "broadcasts": experiment.broadcasts,
        "before_crash": before.as_dict(),
        "levels": levels,
        "baseline": base,
        "events": events,
        "wall_seconds": clock.total,
        "cpu_seconds": clock.cpu + elsewhere_cpu,
        "phase_seconds": clock.phases,
        "events_per_second": events / sim_seconds if sim_seconds > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb() + elsewhere_rss,
    }
