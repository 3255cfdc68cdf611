"""Measure the simulator in the paper's setting and print the figures for the README.

    python benchmarks/sim_10k.py                    # sweep + timed run at 10,000 nodes
    python benchmarks/sim_10k.py --big 100000       # also one 100,000-node run
    python benchmarks/sim_10k.py --nodes 2000       # a quicker look
    python benchmarks/sim_10k.py --quick            # smoke run, 1,000 nodes
    python benchmarks/sim_10k.py --no-sweep --compiled  # timed run, pure and mypyc-compiled core

Prints: the sweep table (reliability after a simultaneous crash of 10% .. 95%, by cycle, next
to a random 5-regular graph with no repair), the overlay's figures before the crash next to the
random graph's, and for one whole run (joins, 10 cycles, crash of 50%, 4 healing cycles, 10
broadcasts per figure) its wall time, peak RSS and events per second. Timed runs go to a fresh
interpreter so that their peak memory is their own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ray_hyparview.sim.cli import sweep_table
from ray_hyparview.sim.scenario import TIMING_KEYS, Experiment, run_sweep


def timed_run(nodes: int, seed: int, *, compiled: bool = False) -> dict[str, Any]:
    """One whole run of the CLI in a child process; returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        argv = ["--nodes", str(nodes), "--seed", str(seed), "--fail", "0.5"]
        if compiled:
            argv.append("--compiled")
        subprocess.run(
            [sys.executable, "-m", "ray_hyparview.sim", *argv, "--json", str(out), "--no-plot"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def print_run(result: dict[str, Any]) -> None:
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in result["phase_seconds"].items())
    core = "compiled core" if result.get("compiled") else "interpreted core"
    print(
        f"{result['nodes']:,} nodes, 50% crash, {core}:"
        f" wall {result['wall_seconds']:.1f} s ({phases}),"
        f" CPU {result['cpu_seconds']:.1f} s,"
        f" peak RSS {result['peak_rss_mb']:.0f} MiB, {result['events']:,} events,"
        f" {result['events_per_second']:,.0f} events per CPU second;"
        f" first broadcast {100 * result['first_reliability']:.2f}%,"
        f" healed after {result['healing_cycles']} cycle(s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big", type=int, default=0, help="also time one run of this many nodes")
    parser.add_argument("--json", type=Path, help="write the sweep's JSON here")
    parser.add_argument("--plot", type=Path, help="draw the sweep here (needs matplotlib)")
    parser.add_argument("--no-sweep", action="store_true", help="only the timed runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 nodes")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time the run on the mypyc-compiled core (alternating with the interpreted"
        " one, twice each) and print the ratio",
    )
    args = parser.parse_args()
    if args.quick:
        args.nodes = 1000
        args.big = 0

    if not args.no_sweep:
        sweep = run_sweep(Experiment(nodes=args.nodes, seed=args.seed))
        before = sweep["before_crash"]
        base = sweep["baseline"]
        print(f"## Sweep, {args.nodes:,} nodes, seed {args.seed}\n")
        print(sweep_table(sweep))
        print()
        print("| before the crash | HyParView | random 5-regular |")
        print("|---|---:|---:|")
        for key in (
            "reliability",
            "connected_fraction",
            "symmetric_fraction",
            "clustering_coefficient",
            "avg_shortest_path",
            "last_delivery_hop",
            "rmr",
        ):
            print(f"| {key} | {before[key]:.4g} | {base[key]:.4g} |")
        print(
            f"\nsweep: {sweep['wall_seconds']:.1f} s wall, {sweep['events']:,} events,"
            f" CPU {sweep['cpu_seconds']:.1f} s, {sweep['events_per_second']:,.0f} events per CPU"
            f" second, peak RSS {sweep['peak_rss_mb']:.0f} MiB"
        )
        if args.json is not None:
            args.json.write_text(json.dumps(sweep, indent=2) + "\n")
        if args.plot is not None:
            from ray_hyparview.sim.plot import plot_sweep

            plot_sweep(sweep, args.plot)
        print()
    if args.compiled:
        # This machine's speed drifts over minutes: alternate the two builds, keep the best of
        # each, and compare within the same stretch of time. The first compiled run also
        # builds the compiled copy (cached), outside its own timing.
        timed_run(min(args.nodes, 200), args.seed, compiled=True)
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for _ in range(2):
            for compiled in (False, True):
                result = timed_run(args.nodes, args.seed, compiled=compiled)
                print_run(result)
                runs[compiled].append(result)
        pure = min(r["wall_seconds"] for r in runs[False])
        fast = min(r["wall_seconds"] for r in runs[True])
        same = all(
            {k: v for k, v in a.items() if k not in TIMING_KEYS and k != "compiled"}
            == {k: v for k, v in b.items() if k not in TIMING_KEYS and k != "compiled"}
            for a in runs[False]
            for b in runs[True]
        )
        print(
            f"best wall time: interpreted {pure:.1f} s, compiled {fast:.1f} s,"
            f" ratio {fast / pure:.2f}; target 30 s: {'met' if fast <= 30 else 'not met'}"
            f" by the compiled core; same results: {same}"
        )
    else:
        print_run(timed_run(args.nodes, args.seed))
    if args.big:
        print_run(timed_run(args.big, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
