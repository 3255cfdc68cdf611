"""``python -m ray_hyparview.sim fuzz``: run many seeded worlds, shrink and print what fails.

``--seeds N --seed S`` runs the worlds S .. S+N-1 (in ``--workers`` processes); every failing
seed is shrunk to its shortest fault list and printed with the trace tail before its first
finding, and with the command that replays it. ``--json PATH`` writes every figure and finding;
``--json`` alone prints them to stdout instead of the text report.
The exit status is 1 when a seed failed a check that is on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ray_hyparview.sim import history as hs
from ray_hyparview.sim.cli import STDOUT, add_json, emit_json, version
from ray_hyparview.sim.fuzz import DEFAULT_KNOWN, FuzzConfig, SeedResult, run_seed, shrink

__all__ = ["Failure", "Summary", "explain", "main", "run_seeds"]

_TRACE_TAIL = 25


@dataclass(slots=True)
class Failure:
    """A failing seed, shrunk."""

    seed: int
    finding: hs.Finding
    faults: tuple[Any, ...]
    trace: list[str]
    runs: int


@dataclass(slots=True)
class Summary:
    """What a batch of seeds found."""

    seeds: int
    seconds: float
    events: int
    failed: dict[int, list[hs.Finding]]
    known: dict[str, list[int]]
    unknown: int
    digests: dict[int, str]

    @property
    def per_seed_ms(self) -> float:
        return 1000 * self.seconds / self.seeds if self.seeds else 0.0


def _one(args: tuple[int, FuzzConfig]) -> SeedResult:
    seed, config = args
    return run_seed(seed, config)


def run_seeds(seeds: Iterable[int], config: FuzzConfig, *, workers: int = 1) -> Summary:
    """Run every seed; with ``workers > 1`` in that many processes (results in seed order)."""
    seeds = list(seeds)
    start = time.perf_counter()
    jobs = [(seed, config) for seed in seeds]
    if workers > 1 and len(seeds) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            # Small chunks: one slow last chunk would leave the other workers idle.
            results = pool.map(_one, jobs, chunksize=max(1, min(25, len(jobs) // (workers * 8))))
    else:
        results = [_one(job) for job in jobs]
    failed: dict[int, list[hs.Finding]] = {}
    known: dict[str, list[int]] = {}
    unknown = events = 0
    for result in results:
        events += result.events
        unknown += result.unknown
        if result.findings:
            failed[result.seed] = result.findings
        for finding in result.known:
            seeds_of = known.setdefault(finding.check, [])
            if not seeds_of or seeds_of[-1] != result.seed:
                seeds_of.append(result.seed)
    return Summary(
        len(seeds),
        time.perf_counter() - start,
        events,
        failed,
        known,
        unknown,
        {r.seed: r.digest for r in results},
    )


def explain(seed: int, finding: hs.Finding, config: FuzzConfig, *, budget: int = 200) -> Failure:
    """Shrink ``seed``'s fault list for ``finding``'s check and keep the trace that shows it."""
    faults, runs = shrink(seed, finding.check, config, budget=budget)
    result = run_seed(seed, config, faults=faults, keep_trace=True)
    first = next((f for f in result.findings if f.check == finding.check), finding)
    marker = f"FINDING [{first.check}]"
    cut = next((i for i, line in enumerate(result.trace) if marker in line), len(result.trace))
    mentioned = {first.node, *first.detail.replace(",", " ").replace("'", " ").split()}
    tail = [
        line
        for line in result.trace[:cut]
        if "fault" in line
        or "end " in line
        or any(n and f" {n} " in f" {line} " for n in mentioned)
    ]
    return Failure(seed, first, faults, tail[-_TRACE_TAIL:] + result.trace[cut : cut + 1], runs)


def checks_on(config: FuzzConfig) -> list[str]:
    """The checks that fail a seed (a family partly off says so)."""
    out = []
    for check in hs.CHECKS:
        if check in config.known:
            continue
        partly = any(k.startswith(check + ".") for k in config.known)
        out.append(f"{check} (but the types listed off)" if partly else check)
    return out


def report(summary: Summary, failures: Sequence[Failure], config: FuzzConfig) -> str:
    lines = [
        f"fuzz: {summary.seeds} seeds, {len(summary.failed)} failed,"
        f" {summary.seconds:.1f} s ({summary.per_seed_ms:.0f} ms/seed,"
        f" {summary.events / max(1, summary.seeds):.0f} events/seed)",
        f"unknown outcomes (counted, not failed): {summary.unknown}",
        "checks on: " + ", ".join(checks_on(config)),
    ]
    if config.known:
        lines.append("checks off (known findings, issue item):")
        lines += [f"  {check}: {DEFAULT_KNOWN.get(check, 'off')}" for check in sorted(config.known)]
    if summary.known:
        lines.append("known findings seen (check: seeds):")
    for check, seeds in sorted(summary.known.items()):
        shown = ", ".join(str(s) for s in seeds[:12])
        more = f" (+{len(seeds) - 12} more)" if len(seeds) > 12 else ""
        why = (
            ""
            if check in DEFAULT_KNOWN or check.split(".")[0] in DEFAULT_KNOWN
            else (" [a consequence of a known finding in the same seed]")
        )
        lines.append(f"  {check}: {len(seeds)} seeds: {shown}{more}{why}")
    counts = Counter(f.check for findings in summary.failed.values() for f in findings[:1])
    for check, count in counts.most_common():
        seeds = [s for s, fs in summary.failed.items() if fs[0].check == check]
        lines.append(f"FAILED {check}: {count} seeds, e.g. {seeds[:10]}")
    for failure in failures:
        lines += [
            "",
            f"seed {failure.seed} FAILED {failure.finding}",
            f"  replay: python -m ray_hyparview.sim fuzz --seeds 1 --seed {failure.seed}",
            f"  shortest fault schedule ({len(failure.faults)} faults, {failure.runs} runs):",
            *(f"    {fault}" for fault in failure.faults),
            "  trace before it:",
            *(f"    {line}" for line in failure.trace),
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ray_hyparview.sim fuzz",
        description="Seeded fault-injection worlds over the whole stack, with a history checker.",
    )
    parser.add_argument("--seeds", type=int, default=100, help="how many worlds")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--version", action="version", version=version())
    add_json(parser, "the results")
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument(
        "--all-checks", action="store_true", help="turn the known findings' checks on too"
    )
    parser.add_argument("--explain", type=int, default=3, help="failing seeds to shrink")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = FuzzConfig()
    if args.all_checks:
        config = replace(config, known=frozenset())
    summary = run_seeds(range(args.seed, args.seed + args.seeds), config, workers=args.workers)
    failures = [
        explain(seed, findings[0], config)
        for seed, findings in list(summary.failed.items())[: args.explain]
    ]
    if args.json != STDOUT:
        print(report(summary, failures, config))
    if args.json is not None:
        data = {
            "seeds": summary.seeds,
            "first_seed": args.seed,
            "seconds": summary.seconds,
            "ms_per_seed": summary.per_seed_ms,
            "events": summary.events,
            "unknown": summary.unknown,
            "checks_on": checks_on(config),
            "known": {c: DEFAULT_KNOWN.get(c, "") for c in sorted(config.known)},
            "known_seeds": summary.known,
            "failed": {
                str(seed): [str(f) for f in findings] for seed, findings in summary.failed.items()
            },
            "shrunk": [
                {
                    "seed": f.seed,
                    "finding": str(f.finding),
                    "faults": [str(x) for x in f.faults],
                    "trace": f.trace,
                }
                for f in failures
            ],
            "digests": {str(s): d for s, d in summary.digests.items()},
        }
        emit_json(data, args.json)
    return 1 if summary.failed else 0
