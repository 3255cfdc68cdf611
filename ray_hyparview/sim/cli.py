"""``python -m ray_hyparview.sim``: run the paper's experiment and print, save and draw it.

With no arguments it builds a 1,000-node overlay, crashes half of it and prints the figures: a
quick look at what the protocol does, in a few seconds. It writes files only where asked:
``--plot PNG`` draws the run, ``--json PATH`` saves its figures. ``--json`` alone prints them to
stdout as JSON instead of the text summary (as ``--json`` does on every command), and
``--version`` prints the version.
``--sweep`` repeats the crash for every failure level from 10% to 95% on one overlay and prints
a markdown table (the one in the README's "How it behaves").

``python -m ray_hyparview.sim fuzz --seeds N [--seed S] [--json [PATH]]`` runs the fault-injection
fuzzer instead (:mod:`ray_hyparview.sim.fuzz_cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError
from ray_hyparview.sim.engine import (
    LatencyModel,
    LogNormalLatency,
    NetworkConfig,
    SimulationError,
    UniformLatency,
)
from ray_hyparview.sim.scenario import (
    SWEEP_FRACTIONS,
    Experiment,
    Progress,
    run_experiment,
    run_sweep,
)

__all__ = ["ProgressBar", "build_parser", "main", "sweep_table"]


class ProgressBar:
    """A one-line progress bar on a terminal's stderr; silent when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._enabled = self._stream.isatty()
        self._shown = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self._enabled or total <= 0:
            return
        filled = self._width * done // total
        bar = "#" * filled + "-" * (self._width - filled)
        self._stream.write(f"\r{phase:>7} [{bar}] {done:>7,}/{total:,}")
        self._stream.flush()
        self._shown = True

    def close(self) -> None:
        """End the bar's line so that later output starts clean."""
        if self._shown:
            self._stream.write("\r" + " " * (self._width + 30) + "\r")
            self._stream.flush()
            self._shown = False


def _latency(text: str) -> LatencyModel:
    """``uniform:LOW:HIGH`` or ``lognormal:MEDIAN:SIGMA``, in milliseconds (sigma unitless)."""
    kind, _, rest = text.partition(":")
    try:
        a, b = (float(x) for x in rest.split(":"))
        if kind == "uniform":
            return UniformLatency(low=a / 1000, high=b / 1000)
        if kind == "lognormal":
            return LogNormalLatency(median=a / 1000, sigma=b)
    except (ValueError, SimulationError) as exc:
        raise argparse.ArgumentTypeError(f"bad latency {text!r}: {exc}") from None
    raise argparse.ArgumentTypeError(
        f"bad latency {text!r}: use uniform:LOW_MS:HIGH_MS or lognormal:MEDIAN_MS:SIGMA"
    )


def _detection(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds or 'none': {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("detection delay must be > 0 (or 'none')")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {text!r}")
    return value


def version() -> str:
    """``ray_hyparview X.Y.Z``, as every command's ``--version`` prints it."""
    # The package root (which holds __version__) sits above the simulator's layer, and is
    # always imported before any of its modules: read it, do not import it.
    return f"ray_hyparview {getattr(sys.modules.get('ray_hyparview'), '__version__', '?')}"


STDOUT = "-"
"""``--json`` with no PATH (or ``--json -``): the JSON goes to stdout, in place of the text."""


def add_json(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """``--json [PATH]``: print ``what`` as JSON to stdout, or with PATH write it there."""
    parser.add_argument(
        "--json",
        nargs="?",
        const=STDOUT,
        default=None,
        metavar="PATH",
        help=f"print {what} as JSON to stdout instead of text; with PATH, write them there",
    )


def emit_json(data: object, target: str | None, *, indent: int = 2) -> None:
    """Print ``data`` as JSON (``target`` is :data:`STDOUT`) or write it to the file
    ``target`` and say so; nothing when ``target`` is None."""
    if target is None:
        return
    text = json.dumps(data, indent=indent) + "\n"
    if target == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    Path(target).write_text(text)
    print(f"wrote {target}")


def say(args: argparse.Namespace) -> TextIO:
    """Where the human-readable lines go: stderr while stdout carries the JSON."""
    return sys.stderr if args.json == STDOUT else sys.stdout


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--help`` lists every option with its default)."""
    parser = argparse.ArgumentParser(
        prog="python -m ray_hyparview.sim",
        description=(
            "Discrete-event simulation of a HyParView overlay (Leitao, Pereira, Rodrigues, "
            "DSN 2007): sequential joins, shuffle cycles, a simultaneous crash of a share of "
            "the nodes, then healing. Prints the paper's figures, optionally writes JSON and "
            "a plot. The protocol is the same core the agent runs."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version())
    run = parser.add_argument_group("experiment")
    run.add_argument("--nodes", type=int, default=1000, help="overlay size")
    run.add_argument("--seed", type=int, default=0, help="seed: same seed, same run")
    run.add_argument(
        "--fail", type=_fraction, default=0.5, help="share of nodes crashed at once, in [0, 1)"
    )
    run.add_argument(
        "--cycles", type=int, default=10, help="shuffle cycles between the joins and the crash"
    )
    run.add_argument("--heal-cycles", type=int, default=4, help="cycles measured after the crash")
    run.add_argument(
        "--broadcasts", type=int, default=10, help="flood broadcasts averaged per figure"
    )
    run.add_argument(
        "--sweep",
        action="store_true",
        help="crash each of "
        + ", ".join(f"{100 * f:g}%%" for f in SWEEP_FRACTIONS)
        + " on one overlay (ignores --fail); print a markdown table",
    )
    net = parser.add_argument_group("network model")
    net.add_argument(
        "--latency",
        type=_latency,
        default="uniform:1:5",
        metavar="MODEL",
        help="one-way latency: uniform:LOW_MS:HIGH_MS or lognormal:MEDIAN_MS:SIGMA",
    )
    net.add_argument("--loss", type=_fraction, default=0.0, help="message loss probability")
    net.add_argument(
        "--detection-delay",
        type=_detection,
        default=2.0,
        metavar="SECONDS",
        help="heartbeat timeout after which active neighbours notice a crash; 'none' = only"
        " failed sends reveal it",
    )
    net.add_argument(
        "--join-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="simulated time between joins (default: 3 ms, at most 10 cycles in all)",
    )
    proto = parser.add_argument_group("protocol (paper defaults)")
    defaults = HyParViewConfig()
    proto.add_argument("--active-view-size", type=int, default=defaults.active_view_size)
    proto.add_argument("--passive-view-size", type=int, default=defaults.passive_view_size)
    proto.add_argument(
        "--shuffle-interval",
        type=float,
        default=defaults.shuffle_interval,
        help="seconds per cycle",
    )
    out = parser.add_argument_group("output")
    add_json(out, "the results")
    out.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="draw the run into this PNG (nothing is drawn without it; needs the 'plot' extra)",
    )
    out.add_argument(
        "--no-plot", action="store_true", help="draw nothing (the default; kept for old scripts)"
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--compiled",
        action="store_true",
        help="run on the protocol core compiled with mypyc from the same source (compiled"
        " once into a cache; needs the 'fast' extra and a C compiler; not with --sweep)",
    )
    return parser


def _experiment(args: argparse.Namespace) -> Experiment:
    config = HyParViewConfig(
        active_view_size=args.active_view_size,
        passive_view_size=args.passive_view_size,
        shuffle_interval=args.shuffle_interval,
        keepalive_interval=None,
    )
    network = NetworkConfig(
        latency=args.latency, loss=args.loss, detection_delay=args.detection_delay
    )
    return Experiment(
        nodes=args.nodes,
        seed=args.seed,
        fail=args.fail,
        cycles=args.cycles,
        heal_cycles=args.heal_cycles,
        broadcasts=args.broadcasts,
        join_interval=args.join_interval,
        config=config,
        network=network,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _cost(result: dict[str, Any]) -> str:
    core = " (compiled core)" if result.get("compiled") else ""
    return (
        f"{result['events']:,} events{core} in {result['wall_seconds']:.1f} s wall,"
        f" {result['cpu_seconds']:.1f} s CPU ({result['events_per_second']:,.0f} events per"
        f" CPU second), peak RSS {result['peak_rss_mb']:.0f} MiB"
    )


def summary(result: dict[str, Any]) -> str:
    """A readable account of one run."""
    before = result["before_crash"]
    base = result["baseline"]
    fail = result["failed_fraction"]
    lines = [
        f"HyParView simulation: {result['nodes']:,} nodes, seed {result['seed']},"
        f" {result['cycles']} cycles, then {100 * fail:g}% crashed at once",
        "",
        f"{'':28} {'HyParView':>12} {'random 5-regular':>18}",
        f"{'before the crash':28}",
        f"{'  reliability':28} {_pct(before['reliability']):>12} {_pct(base['reliability']):>18}",
        f"{'  connected (largest comp.)':28} {_pct(before['connected_fraction']):>12}"
        f" {_pct(base['connected_fraction']):>18}",
        f"{'  symmetric active links':28} {_pct(before['symmetric_fraction']):>12}",
        f"{'  clustering coefficient':28} {before['clustering_coefficient']:>12.5f}"
        f" {base['clustering_coefficient']:>18.5f}",
        f"{'  average shortest path':28} {before['avg_shortest_path']:>12.2f}"
        f" {base['avg_shortest_path']:>18.2f}",
        f"{'  last delivery hop':28} {before['last_delivery_hop']:>12.1f}"
        f" {base['last_delivery_hop']:>18.1f}",
        f"{'  RMR':28} {before['rmr']:>12.2f} {base['rmr']:>18.2f}",
        f"after the crash ({result['alive']:,} alive)",
        f"{'  first broadcast':28} {_pct(result['first_reliability']):>12}"
        f" {_pct(base['reliability_after_crash'].get(f'{fail:g}')):>18}  (no repair)",
    ]
    for cycle, value in enumerate(result["reliability_by_cycle"], start=1):
        lines.append(f"{f'  after cycle {cycle}':28} {_pct(value):>12}")
    healing = result["healing_cycles"]
    lines += [
        f"{'  healed (reliability 100%)':28} "
        + ("not within the run" if healing is None else f"after {healing} cycle(s)"),
        f"{'  connected, symmetric':28} {_pct(result['connected_fraction'])},"
        f" {_pct(result['symmetric_fraction'])}",
        f"{'  dead ids in passive views':28} {_pct(result['dead_passive_fraction'])}",
        f"{'  in-degree histogram':28} {result['in_degree']}",
        "",
        _cost(result),
    ]
    return "\n".join(lines)


def sweep_table(result: dict[str, Any]) -> str:
    """The sweep as a markdown table: one row per failure level."""
    levels = result["levels"]
    cycles = max((len(level["reliability_by_cycle"]) for level in levels), default=0)
    head = ["crashed", "alive", "first broadcast"]
    head += [f"cycle {c}" for c in range(1, cycles + 1)]
    head += ["healed after", "random 5-regular, no repair"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    base = result["baseline"]["reliability_after_crash"]
    for level in levels:
        fail = level["failed_fraction"]
        healing = level["healing_cycles"]
        cells = [f"{100 * fail:g}%", f"{level['alive']:,}", _pct(level["first_reliability"])]
        cells += [_pct(v) for v in level["reliability_by_cycle"]]
        healed = "-" if healing is None else f"{healing} cycle" + ("" if healing == 1 else "s")
        cells += [healed, _pct(base.get(f"{fail:g}"))]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _sweep_summary(result: dict[str, Any]) -> str:
    before = result["before_crash"]
    base = result["baseline"]
    return "\n".join(
        [
            f"HyParView sweep: {result['nodes']:,} nodes, seed {result['seed']},"
            f" {result['cycles']} cycles before the crash",
            f"before the crash: reliability {_pct(before['reliability'])}, connected"
            f" {_pct(before['connected_fraction'])}, symmetric"
            f" {_pct(before['symmetric_fraction'])}, clustering"
            f" {before['clustering_coefficient']:.5f} (random 5-regular"
            f" {base['clustering_coefficient']:.5f}), average shortest path"
            f" {before['avg_shortest_path']:.2f} ({base['avg_shortest_path']:.2f})",
            "",
            sweep_table(result),
            "",
            _cost(result),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["fuzz"]:  # the fuzzer's subcommand; everything else is the experiment
        from ray_hyparview.sim import fuzz_cli

        return fuzz_cli.main(given[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        experiment = _experiment(args)
    except (ConfigError, ValueError, SimulationError) as exc:
        parser.error(str(exc))
    if args.compiled:
        if args.sweep:
            parser.error("--compiled runs single experiments only (a sweep pickles the core)")
        from ray_hyparview.sim import compiled

        rest = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--compiled"]
        try:
            return compiled.run(rest)
        except compiled.CompileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    plot_path: Path | None = None if args.no_plot else args.plot
    if plot_path is not None:
        from ray_hyparview.sim.plot import PlotUnavailable, _figure

        try:
            _figure(1.0, 1.0)
        except PlotUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    bar: Progress = ProgressBar() if not args.quiet else (lambda phase, done, total: None)
    try:
        # The random-graph baseline needs nothing from the run: with a second core, it is
        # computed there meanwhile.
        background = (os.cpu_count() or 1) > 1
        if args.sweep:
            result = run_sweep(experiment, progress=bar, background=background)
        else:
            result = run_experiment(experiment, progress=bar, background=background)
            from ray_hyparview.sim.compiled import running_compiled

            result["compiled"] = running_compiled()
    finally:
        if isinstance(bar, ProgressBar):
            bar.close()
    if args.json != STDOUT:
        print(_sweep_summary(result) if args.sweep else summary(result))
    emit_json(result, args.json)
    if plot_path is not None:
        from ray_hyparview.sim.plot import PlotUnavailable, plot_run, plot_sweep

        try:
            written = (plot_sweep if args.sweep else plot_run)(result, plot_path)
        except PlotUnavailable as exc:
            print(f"note: no plot drawn: {exc}", file=sys.stderr)
        else:
            print(f"wrote {written}", file=say(args))
    return 0
