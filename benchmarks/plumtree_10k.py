"""Plumtree over HyParView in the simulator at 10,000 nodes, next to flooding the same views.

    python benchmarks/plumtree_10k.py                 # 10,000 nodes
    python benchmarks/plumtree_10k.py --quick         # smoke run, 1,000 nodes
    python benchmarks/plumtree_10k.py --json out.json

The paper's setting (Leitão, Pereira and Rodrigues, "Epidemic Broadcast Trees", SRDS 2007,
section 4): a HyParView overlay with the paper's parameters built by sequential joins (as
``ray_hyparview.sim.scenario.build_overlay`` does), a few shuffle periods, then ``--broadcasts``
broadcasts one after the other from random live senders (drawn from the largest component).
For each: reliability (share of live nodes that delivered), relative message redundancy
``RMR = GOSSIP received / (delivered - 1) - 1`` and the last delivery hop, and the same figures
for a flood over the same active views at the same instant (``ray_hyparview.sim.metrics.flood``:
each node forwards its first copy to every active peer but the one it came from). The first
broadcast floods (every link starts eager); the later ones ride the tree it pruned to.

Then half the nodes crash at once. The first broadcast right after (the tree torn, failure
detection not yet done: GRAFT over lazy links has to patch it), a few more while membership
repairs, ``--repair-cycles`` shuffle periods, and broadcasts after the repair. Prints a table
and a one-line summary; ``--json`` writes every figure and the phase timings.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_hyparview.protocol import overlay
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.sim import metrics
from ray_hyparview.sim.engine import Simulation
from ray_hyparview.sim.scenario import (
    build_overlay,
    default_join_interval,
    live_adjacency,
    peak_rss_mb,
)
from ray_hyparview.sim.stacked import SIM_TREE_CONFIG, broadcast, broadcast_node_factory

CONFIG = HyParViewConfig(keepalive_interval=None)
"""The paper's HyParView parameters; the simulated network models failure detection."""


@dataclass(frozen=True, slots=True)
class Row:
    """One broadcast: Plumtree's figures and a flood's over the same views at the same time."""

    phase: str
    index: int
    alive: int
    reliability: float
    rmr: float
    last_hop: int
    duplicates: int
    last_delivery: float
    by_1s: float
    by_2s: float
    flood_reliability: float
    flood_rmr: float
    flood_last_hop: int


def largest_component(adjacency: dict[NodeId, list[NodeId]]) -> list[NodeId]:
    """The live nodes of the largest connected component of the active views, in id order
    (of two as large, the one with the smallest id)."""
    groups: dict[int, list[NodeId]] = {}
    for node, label in sorted(overlay.components(adjacency).items()):
        groups.setdefault(label, []).append(node)
    best = max(sorted(groups.items()), key=lambda item: len(item[1]), default=(0, []))
    return best[1]


def measure(sim: Simulation, rng: random.Random, phase: str, index: int, settle: float) -> Row:
    """Flood the current live views from a random sender, then broadcast from it.

    The sender is drawn from the largest connected component of the live views: right after a
    crash a few survivors are cut off on their own (every active peer dead), and a broadcast
    from one of them would measure the sender's bad luck, not the protocol. The flood's
    reliability from there is the best any protocol can do over the torn views.
    """
    adjacency = live_adjacency(sim)
    origin = rng.choice(largest_component(adjacency))
    flood = metrics.flood(adjacency, origin)
    result = broadcast(sim, origin, b"payload", settle=settle)
    return Row(
        phase=phase,
        index=index,
        alive=result.alive,
        reliability=result.reliability,
        rmr=result.rmr,
        last_hop=result.last_hop,
        duplicates=result.duplicates,
        last_delivery=round(result.last_delivery, 4),
        by_1s=result.reliability_by(1.0),
        by_2s=result.reliability_by(2.0),
        flood_reliability=flood.reached / len(adjacency),
        flood_rmr=flood.rmr,
        flood_last_hop=flood.last_hop,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole scenario; returns rows, summary figures and timings."""
    n: int = args.nodes
    started = time.perf_counter()
    phases: dict[str, float] = {}
    lap = started

    def mark(phase: str) -> None:
        nonlocal lap
        now = time.perf_counter()
        phases[phase] = round(now - lap, 2)
        lap = now
        print(f"  {phase}: {phases[phase]:.1f} s", file=sys.stderr, flush=True)

    sim = Simulation(CONFIG, seed=args.seed, node_factory=broadcast_node_factory(SIM_TREE_CONFIG))
    rng = random.Random(args.seed * 1_000_003 + 17)
    build_overlay(sim, n, rng, join_interval=default_join_interval(n, CONFIG))
    mark("join")
    sim.run_for(args.cycles * CONFIG.shuffle_interval)
    mark("cycles")

    rows: list[Row] = []
    for i in range(args.broadcasts):
        rows.append(measure(sim, rng, "stable", i, args.settle))
    mark("broadcasts")

    live = sim.alive_ids
    sim.crash(rng.sample(live, len(live) // 2))
    for i in range(args.after_crash):
        rows.append(measure(sim, rng, "crash", i, args.crash_settle))
    mark("after crash")
    sim.run_for(args.repair_cycles * CONFIG.shuffle_interval)
    for i in range(args.broadcasts_after_repair):
        rows.append(measure(sim, rng, "repaired", i, args.settle))
    mark("after repair")

    stable = [r for r in rows if r.phase == "stable"]
    settled = stable[args.settle_broadcasts :] or stable[-1:]
    crash = [r for r in rows if r.phase == "crash"]
    repaired = [r for r in rows if r.phase == "repaired"]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    summary = {
        "first_rmr": stable[0].rmr,
        "first_flood_rmr": stable[0].flood_rmr,
        "settled_rmr": mean([r.rmr for r in settled]),
        "settled_flood_rmr": mean([r.flood_rmr for r in settled]),
        "first_last_hop": stable[0].last_hop,
        "settled_last_hop": mean([r.last_hop for r in settled]),
        "flood_last_hop": mean([r.flood_last_hop for r in stable]),
        "stable_min_reliability": min(r.reliability for r in stable),
        "crash_first_reliability": crash[0].reliability if crash else float("nan"),
        "crash_first_flood_reliability": crash[0].flood_reliability if crash else float("nan"),
        "crash_first_rmr": crash[0].rmr if crash else float("nan"),
        "crash_first_by_1s": crash[0].by_1s if crash else float("nan"),
        "crash_first_by_2s": crash[0].by_2s if crash else float("nan"),
        "crash_first_last_delivery": crash[0].last_delivery if crash else float("nan"),
        "settled_last_delivery": mean([r.last_delivery for r in settled]),
        "repaired_reliability": mean([r.reliability for r in repaired]),
        "repaired_min_reliability": min((r.reliability for r in repaired), default=float("nan")),
        "repaired_rmr": mean([r.rmr for r in repaired]),
        "duplicates": sum(r.duplicates for r in rows),
    }
    return {
        "nodes": n,
        "seed": args.seed,
        "cycles": args.cycles,
        "repair_cycles": args.repair_cycles,
        "settle_seconds": args.settle,
        "crash_settle_seconds": args.crash_settle,
        "tree_config": {
            "ihave_timeout": SIM_TREE_CONFIG.ihave_timeout,
            "graft_timeout": SIM_TREE_CONFIG.graft_timeout,
            "lazy_flush_interval": SIM_TREE_CONFIG.lazy_flush_interval,
            "optimization_threshold": SIM_TREE_CONFIG.optimization_threshold,
            "prune_grace": SIM_TREE_CONFIG.prune_grace,
        },
        "rows": [_row_dict(r) for r in rows],
        "summary": summary,
        "events": sim.stats.events,
        "phase_seconds": phases,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time(), 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _row_dict(row: Row) -> dict[str, Any]:
    return {name: getattr(row, name) for name in Row.__slots__}


def print_table(result: dict[str, Any]) -> None:
    print(f"Plumtree vs flooding over the same HyParView active views, {result['nodes']:,} nodes")
    print()
    print(
        "| phase | # | alive | Plumtree reliability | RMR | last hop | last delivery |"
        " flood reliability | RMR | last hop |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(
            f"| {r['phase']} | {r['index']} | {r['alive']:,} | {100 * r['reliability']:.2f}% |"
            f" {r['rmr']:.3f} | {r['last_hop']} | {1000 * r['last_delivery']:.0f} ms |"
            f" {100 * r['flood_reliability']:.2f}% | {r['flood_rmr']:.3f} |"
            f" {r['flood_last_hop']} |"
        )
    s = result["summary"]
    print()
    print(
        f"{result['nodes']:,} nodes: RMR {s['first_rmr']:.2f} on the first broadcast"
        f" (flood {s['first_flood_rmr']:.2f}), {s['settled_rmr']:.3f} once the tree settles"
        f" (flood {s['settled_flood_rmr']:.2f}); last hop {s['settled_last_hop']:.1f}"
        f" (flood {s['flood_last_hop']:.1f}), last delivery"
        f" {1000 * s['settled_last_delivery']:.0f} ms; after 50% crash: first broadcast"
        f" {100 * s['crash_first_by_1s']:.2f}% by 1 s, {100 * s['crash_first_by_2s']:.2f}% by 2 s,"
        f" {100 * s['crash_first_reliability']:.2f}% by {result['crash_settle_seconds']:g} s"
        f" (flood over the torn views {100 * s['crash_first_flood_reliability']:.2f}%),"
        f" after repair {100 * s['repaired_reliability']:.2f}% at RMR {s['repaired_rmr']:.3f};"
        f" {s['duplicates']} duplicate deliveries; wall {result['wall_seconds']:.0f} s,"
        f" CPU {result['cpu_seconds']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 nodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cycles", type=int, default=3, help="shuffle periods before measuring")
    parser.add_argument("--broadcasts", type=int, default=8, help="broadcasts before the crash")
    parser.add_argument(
        "--settle-broadcasts",
        type=int,
        default=3,
        help="broadcasts the tree needs to settle (the rest are averaged as 'settled')",
    )
    parser.add_argument("--after-crash", type=int, default=3, help="broadcasts right after it")
    parser.add_argument("--repair-cycles", type=int, default=2)
    parser.add_argument("--broadcasts-after-repair", type=int, default=4)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds run per broadcast")
    parser.add_argument(
        "--crash-settle",
        type=float,
        default=5.0,
        help="seconds run per broadcast right after the crash (failure detection takes 2 s)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.nodes = 1000
    result = run(args)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
