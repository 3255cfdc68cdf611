"""Every node broadcasts at once: Plumtree's delivery under a burst, in the simulator.

    python benchmarks/plumtree_burst.py                      # 100 nodes, seeds 0-4
    python benchmarks/plumtree_burst.py --seeds 0 1 2 --json out.json
    python benchmarks/plumtree_burst.py --ihave-timeout 1.0 --graft-timeout 0.5 \\
        --flush 0.05 --prune-grace 0 --optimization 3     # the timers and rules before issue 9

What it runs (``ray_hyparview.sim.burst.run``): a HyParView overlay of ``--nodes`` nodes (paper
parameters, sequential joins, 3 shuffle periods, the simulator's 1-5 ms uniform latency), with
Plumtree stacked on it as the agent stacks it. ``--warmup`` single broadcasts settle the tree,
then (``--crash F``: a fraction F of the nodes crashes at once, just before) ``--bursts``
bursts in which every node broadcasts at the same instant, each watched for
``--horizon`` simulated seconds, then ``--singles`` single broadcasts from random nodes (2 s
apart), whose redundancy is the settled tree's. Per burst: deliveries missing at the horizon (of
nodes x (nodes - 1)), delivery latency p50/p90/p99/max, LDH (largest hop count of a delivery,
and its mean over the messages), RMR (GOSSIP received / deliveries - 1), GRAFT sent.

Timer flags left out take ``PlumtreeConfig``'s defaults, so that the same script runs against an
older tree whose config lacks a field.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ray_hyparview.protocol.plumtree import PlumtreeConfig
from ray_hyparview.sim import burst


def _config(args: argparse.Namespace) -> PlumtreeConfig:
    overrides: dict[str, Any] = {}
    for flag, name in (
        ("ihave_timeout", "ihave_timeout"),
        ("graft_timeout", "graft_timeout"),
        ("flush", "lazy_flush_interval"),
        ("prune_grace", "prune_grace"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[name] = value
    if args.optimization is not None:
        overrides["optimization_threshold"] = args.optimization or None
    return PlumtreeConfig(**overrides)


def _ms(seconds: float) -> str:
    return "never" if seconds == float("inf") else f"{1000 * seconds:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--warmup", type=int, default=3, help="single broadcasts before")
    parser.add_argument(
        "--crash", type=float, default=0.0, help="fraction of nodes crashed before the bursts"
    )
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--horizon", type=float, default=5.0, help="seconds watched per burst")
    parser.add_argument("--singles", type=int, default=5, help="single broadcasts after")
    parser.add_argument("--ihave-timeout", type=float)
    parser.add_argument("--graft-timeout", type=float)
    parser.add_argument("--flush", type=float, help="IHAVE flush interval (seconds)")
    parser.add_argument("--prune-grace", type=float)
    parser.add_argument("--optimization", type=int, help="section 3.8 threshold, 0 = off")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    config = _config(args)
    print(f"{args.nodes} nodes, {config}")
    print()
    print(
        "| seed | burst | missing | p50 ms | p90 ms | p99 ms | max ms | LDH | mean LDH | RMR |"
        " GRAFT |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in args.seeds:
        result = burst.run(
            args.nodes,
            seed,
            tree_config=config,
            warmup=args.warmup,
            crash=args.crash,
            bursts=args.bursts,
            horizon=args.horizon,
            singles=args.singles,
        )
        for i, b in enumerate(result.bursts):
            row = {
                "seed": seed,
                "burst": i,
                "missing": b.missing,
                "expected": b.expected,
                "duplicates": b.duplicates,
                "p50": b.percentile(0.5),
                "p90": b.percentile(0.9),
                "p99": b.percentile(0.99),
                "max": b.latencies[-1] if b.missing == 0 and b.latencies else float("inf"),
                "ldh": b.last_hop,
                "mean_ldh": b.mean_last_hop,
                "rmr": b.rmr,
                "graft": b.graft,
            }
            out.append(row)
            print(
                f"| {seed} | {i} | {b.missing}/{b.expected} | {_ms(row['p50'])} |"
                f" {_ms(row['p90'])} | {_ms(row['p99'])} | {_ms(row['max'])} | {b.last_hop} |"
                f" {b.mean_last_hop:.1f} | {b.rmr:.2f} | {b.graft} |"
            )
        singles = ", ".join(f"{s.rmr:.2f}" for s in result.singles)
        reached = min((s.delivered for s in result.singles), default=0)
        print(f"| {seed} | singles after | RMR {singles} | fewest reached {reached} |")
        out.append({"seed": seed, "singles_rmr": [s.rmr for s in result.singles]})
    rows = [r for r in out if "burst" in r]
    missing = sum(r["missing"] for r in rows)
    worst_p99 = max(r["p99"] for r in rows)
    print()
    print(
        f"{len(args.seeds)} seeds x {args.bursts} bursts: {missing} deliveries missing,"
        f" worst p99 {_ms(worst_p99)} ms, burst RMR {min(r['rmr'] for r in rows):.2f}-"
        f"{max(r['rmr'] for r in rows):.2f}; wall {time.perf_counter() - started:.1f} s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"config": repr(config), "rows": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
