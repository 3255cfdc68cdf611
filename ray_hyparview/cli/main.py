"""``python -m ray_hyparview.agent``: run, status, check, keygen and demo.

``run`` is the standalone agent an operator starts on each node (or, with ``--ray-address``, as
a sidecar next to ``ray start``, with the same configuration: :mod:`ray_hyparview.cli.sidecar`);
``status`` asks a running agent over its local control endpoint; ``check``
validates a strategy file without starting anything; ``keygen`` writes a CURVE key pair;
``demo`` starts a small overlay on loopback, kills part of it and shows the repair.

Conventions shared by every command: ``--json`` prints JSON to stdout instead of text (one
object; for ``run``, the line that says the agent is up), ``--version`` prints the version, and
an operator's mistake (an invalid strategy, a bad or busy bind address, an unreadable key file,
no agent at the control endpoint) ends in one line on stderr and exit status 1, never a
traceback. Exit status 2 is a usage error, as argparse reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from ray_hyparview import __version__
from ray_hyparview.agent.control import control_server, metrics_server, query_status
from ray_hyparview.agent.metrics import MetricsUnavailable
from ray_hyparview.agent.node import Agent
from ray_hyparview.agent.priority import Priority, process_stats, raise_priority
from ray_hyparview.config.strategy import Strategy, StrategyError, apply_env
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.overlay import overlay_problems
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport.ratelimit import LogRate, RateLimitFilter

__all__ = ["main"]

log = logging.getLogger("ray_hyparview.cli")


VERSION = f"ray_hyparview {__version__}"


def _common() -> argparse.ArgumentParser:
    """The options every command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON to stdout, not text")
    common.add_argument("--version", action="version", version=VERSION)
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="python -m ray_hyparview.agent",
        description="The ray_hyparview agent: HyParView membership over ZeroMQ, one per node.",
    )
    parser.add_argument("--version", action="version", version=VERSION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run an agent until SIGINT/SIGTERM, then leave gracefully",
        description="Run one agent. Take the strategy from --config (TOML) and/or flags; "
        "RAY_HYPARVIEW_* environment variables override the file. Flags override both.",
    )
    run.add_argument("--config", metavar="FILE", help="strategy file (TOML)")
    run.add_argument("--id", dest="node_id", help="this node's id")
    run.add_argument("--endpoint", help="endpoint the others reach this node at (tcp://host:port)")
    run.add_argument("--bind", help="endpoint to bind (default: the endpoint); port 0 = any")
    run.add_argument(
        "--contact",
        action="append",
        default=[],
        metavar="ID=ENDPOINT",
        help="a node to join through; repeat for more",
    )
    run.add_argument("--control", help="local control endpoint for `status` (tcp:// or ipc://)")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    run.add_argument(
        "--metrics-host",
        help="address /metrics binds (default 127.0.0.1; 0.0.0.0 for a Prometheus elsewhere)",
    )
    run.add_argument(
        "--ray-address",
        help="run as a sidecar of a Ray node: find the node id and peers through the GCS "
        "(`auto` for the local node)",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="with --ray-address: plain-text links (default: CURVE, a key per node, published"
        " in and admitted from the GCS)",
    )
    run.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    run.add_argument(
        "--nice",
        type=int,
        default=None,
        help="nice value the agent's process asks for (default -10; 0 leaves it alone)",
    )

    status = sub.add_parser(
        "status",
        parents=[common],
        help="ask a running agent for its views and counters",
        description="Ask a running agent over its control endpoint.",
    )
    status.add_argument("--control", help="the agent's control endpoint")
    status.add_argument("--config", metavar="FILE", help="read the control endpoint from here")

    check = sub.add_parser(
        "check",
        parents=[common],
        help="validate a strategy file without starting anything",
        description="Validate a strategy file (and RAY_HYPARVIEW_* overrides); exit 1 if invalid.",
    )
    check.add_argument("--config", metavar="FILE", required=True, help="strategy file (TOML)")

    keygen = sub.add_parser(
        "keygen",
        parents=[common],
        help="write a CURVE key pair",
        description="Write NAME.key (public) and NAME.key_secret (secret, mode 0600) into DIR.",
    )
    keygen.add_argument("--out", default=".", metavar="DIR", help="directory (default: .)")
    keygen.add_argument("--name", default="node", help="file name stem (default: node)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="start N agents on loopback, kill some, show the repair, exit 0",
        description="Start N agents on 127.0.0.1 in this process, wait for a connected "
        "symmetric overlay, kill a share of them without goodbye, and show the survivors repair.",
    )
    demo.add_argument("--agents", type=int, default=12, help="how many agents (default 12)")
    demo.add_argument(
        "--kill", type=float, default=0.25, help="share of agents to kill (default 0.25)"
    )
    demo.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    demo.add_argument("--timeout", type=float, default=60.0, help="give up after this many s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    match args.command:
        case "run":
            return _cmd_run(args)
        case "status":
            return _cmd_status(args)
        case "check":
            return _cmd_check(args)
        case "keygen":
            return _cmd_keygen(args)
        case "demo":
            return _cmd_demo(args)
    return 2  # argparse rejects unknown commands before this


# ------------------------------------------------------------------------------------ run


def strategy_data(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None, str]:
    """The strategy as a mapping, before it is checked: the ``--config`` file, then
    ``RAY_HYPARVIEW_*`` variables over it, then the flags over both. Also the directory that
    relative key paths are taken from and the name errors give as the source. ``run`` and the
    sidecar (``run --ray-address``) both start from this."""
    data: dict[str, Any] = {}
    base_dir: Path | None = None
    if args.config:
        path = Path(args.config)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise StrategyError(
                "", str(path), "a readable TOML strategy file", hint=str(exc)
            ) from None
        base_dir = path.resolve().parent
    data = apply_env(data, os.environ)
    node: dict[str, Any] = dict(data.get("node", {}))
    if args.node_id:
        node["id"] = args.node_id
    if args.endpoint:
        node["endpoint"] = args.endpoint
    if args.bind:
        node["bind"] = args.bind
        if not args.ray_address:
            node.setdefault("endpoint", args.bind)
    if args.contact:
        node["contacts"] = list(args.contact)
    data["node"] = node
    agent_section: dict[str, Any] = dict(data.get("agent", {}))
    if args.control:
        agent_section["control"] = args.control
    if args.metrics_port is not None:
        agent_section["metrics_port"] = args.metrics_port
    if args.metrics_host:
        agent_section["metrics_host"] = args.metrics_host
    if args.log_level:
        agent_section["log_level"] = args.log_level
    if getattr(args, "nice", None) is not None:
        agent_section["nice"] = args.nice
    if agent_section:
        data["agent"] = agent_section
    return data, base_dir, args.config or "command line"


def _strategy_from_args(args: argparse.Namespace) -> Strategy:
    """Flags override RAY_HYPARVIEW_* variables, which override the file."""
    data, base_dir, source = strategy_data(args)
    return Strategy.from_mapping(data, base_dir=base_dir, source=source)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.ray_address:
        from ray_hyparview.cli.sidecar import cmd_sidecar

        return cmd_sidecar(args)
    if args.insecure:
        print("run: --insecure needs --ray-address (without it, omit [security])", file=sys.stderr)
        return 1
    try:
        strategy = _strategy_from_args(args)
    except StrategyError as exc:
        print(f"run: invalid strategy: {exc}", file=sys.stderr)
        return 1
    setup_logging(strategy)
    # This process exists to run the agent: ask for the priority that keeps it timely
    # (``ray_hyparview.agent.priority``), before libzmq's threads exist, so they inherit it.
    priority = raise_priority(strategy.nice)
    try:
        return asyncio.run(run_agent(strategy, json_line=args.json, priority=priority))
    except CannotStart as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 1


def setup_logging(strategy: Strategy) -> None:
    """The process's logging, for ``run`` and the sidecar (programs, not library code): the
    strategy's level on the root logger, warnings rate-limited."""
    logging.basicConfig(
        level=getattr(logging, strategy.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A flood of bad frames must not become a flood of log lines: N warnings of each kind per
    # interval, the rest counted (``process.log.suppressed`` in the agent's status).
    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimitFilter(_LOG_RATE))


class CannotStart(Exception):
    """The agent, its control endpoint or its metrics page could not start (a bad or busy
    address, a missing ``prometheus_client``): the operator's to fix, said in one line."""


@contextlib.asynccontextmanager
async def _starting(what: str, where: object) -> AsyncIterator[None]:
    """Turn a failure while ``what`` starts into :class:`CannotStart`; later failures pass."""
    try:
        yield
    except MetricsUnavailable as exc:
        raise CannotStart(str(exc)) from None
    except (OSError, zmq.ZMQError) as exc:
        raise CannotStart(f"cannot bind {what} {where}: {exc.strerror or exc}") from None


_LOG_RATE = LogRate()
"""The warning rate of this process's log handlers (installed by ``run``)."""


async def run_agent(
    strategy: Strategy,
    *,
    ready: asyncio.Event | None = None,
    json_line: bool = True,
    open_agent: Callable[[], contextlib.AbstractAsyncContextManager[Agent]] | None = None,
    priority: Priority | None = None,
) -> int:
    """Run one agent with its control and metrics servers until SIGINT or SIGTERM.

    ``open_agent`` starts the agent and stops it on exit; by default ``Agent(strategy)``
    (the sidecar passes one that also publishes it in the GCS and discovers its peers there).
    ``priority`` is what the process got when it asked for one (:func:`raise_priority`); the
    status reports it with the process id.

    Once all are up it prints one line to stdout: JSON (id, endpoint, control, metrics_port,
    pid) with ``json_line``, else a sentence. Raises :class:`CannotStart` when one of them
    cannot bind."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    process: Counter[str] = Counter()

    def stats() -> dict[str, Any]:
        """The agent's stats plus what this process counts itself (suppressed log lines,
        refused control requests) as ``process.*`` counters, its ``pid`` and ``priority``."""
        result = {**agent.stats(), **process_stats(priority)}
        counted = process + _LOG_RATE.counters
        result["counters"] = {
            **result.get("counters", {}),
            **{f"process.{k}": v for k, v in sorted(counted.items())},
        }
        return result

    opening = open_agent() if open_agent is not None else Agent(strategy)
    async with contextlib.AsyncExitStack() as stack:
        async with _starting("the agent at", strategy.bind or strategy.local_peer.endpoint):
            agent = await stack.enter_async_context(opening)
        async with _starting("the control endpoint", strategy.control):
            control = await stack.enter_async_context(
                control_server(strategy.control, stats, counters=process)
            )
        async with _starting(
            "the metrics page at", f"{strategy.metrics_host}:{strategy.metrics_port}"
        ):
            metrics_port = await stack.enter_async_context(
                metrics_server(strategy.metrics_port, stats, host=strategy.metrics_host)
            )
        log.info(
            "%s: agent running at %s (control %s, metrics port %s)",
            agent.myself.id,
            agent.myself.endpoint,
            control,
            metrics_port,
        )
        if json_line:
            line = json.dumps(
                {
                    "id": agent.myself.id,
                    "endpoint": agent.myself.endpoint,
                    "control": control,
                    "metrics_port": metrics_port,
                    "pid": os.getpid(),
                }
            )
        else:
            metrics = "off" if metrics_port is None else f"{strategy.metrics_host}:{metrics_port}"
            line = (
                f"{agent.myself.id}: running at {agent.myself.endpoint}"
                f" (control {control or 'off'}, metrics {metrics}, pid {os.getpid()})"
            )
        print(line, flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("%s: leaving", agent.myself.id)
    return 0


# --------------------------------------------------------------------------------- status


def _cmd_status(args: argparse.Namespace) -> int:
    endpoint = args.control
    if endpoint is None and args.config:
        try:
            endpoint = Strategy.from_file(args.config, environ=os.environ).control
        except StrategyError as exc:
            print(f"status: invalid strategy: {exc}", file=sys.stderr)
            return 1
    if endpoint is None:
        print(
            "status: give --control ENDPOINT or --config FILE with [agent] control", file=sys.stderr
        )
        return 2
    try:
        status = asyncio.run(query_status(endpoint))
    except (OSError, TimeoutError, ValueError) as exc:
        print(
            f"status: no agent answers at {endpoint}: {exc or type(exc).__name__}", file=sys.stderr
        )
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render_status(status))
    return 0


# ---------------------------------------------------------------------------- check, keygen


def _cmd_check(args: argparse.Namespace) -> int:
    from ray_hyparview.config.strategy import cmd_check, describe

    if not args.json:
        return cmd_check(args.config, environ=os.environ)
    try:
        strategy = Strategy.from_file(args.config, environ=os.environ)
    except StrategyError as exc:
        print(json.dumps({"ok": False, "config": args.config, "error": str(exc)}))
        print(f"{args.config}: invalid: {exc}", file=sys.stderr)
        return 1
    report = {
        "ok": True,
        "config": args.config,
        "summary": describe(strategy),  # what `check` prints; no secret key in it
        "warnings": list(strategy.warnings()),
    }
    print(json.dumps(report, sort_keys=True))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from ray_hyparview.config.keys import KeyFileError, cmd_keygen, write_keypair

    if not args.json:
        return cmd_keygen(args.out, args.name, overwrite=args.force)
    try:
        files = write_keypair(args.out, args.name, overwrite=args.force)
    except KeyFileError as exc:
        print(f"keygen: {exc}", file=sys.stderr)
        return 1
    written = {
        "public_key": files.public_key,
        "public_file": str(files.public_file),
        "secret_file": str(files.secret_file),
    }
    print(json.dumps(written, sort_keys=True))
    return 0


def render_status(status: dict[str, Any]) -> str:
    """A readable table of one agent's status."""
    lines = [
        f"node      {status.get('id')}",
        f"endpoint  {status.get('endpoint')}",
        f"active    {len(status.get('active', []))}: {', '.join(status.get('active', []))}",
        f"passive   {len(status.get('passive', []))}: {', '.join(status.get('passive', []))}",
        "",
        f"{'counter':<48} {'value':>10}",
    ]
    for key, value in sorted(status.get("counters", {}).items()):
        lines.append(f"{key:<48} {value:>10}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.agents < 3:
        print("demo: --agents must be at least 3", file=sys.stderr)
        return 2
    if not 0.0 < args.kill < 1.0:
        print("demo: --kill must be between 0 and 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        report: dict[str, Any] = {}
        say: Callable[[str], None] = (lambda _line: None) if args.json else print
        status = asyncio.run(
            _demo(args.agents, args.kill, args.seed, args.timeout, say=say, report=report)
        )
        if args.json:
            print(json.dumps(report, sort_keys=True))
        return status
    except TimeoutError:
        print("demo: the overlay did not converge in time", file=sys.stderr)
        return 1


def overlay_report(agents: Sequence[Any], *, min_active: int = 0) -> tuple[list[str], int]:
    """(what keeps the agents' active views from being a connected, symmetric overlay of
    exactly these agents, links) -- :func:`ray_hyparview.protocol.overlay.overlay_problems`."""
    views = {a.myself.id: [p.id for p in a.active_view] for a in agents}
    links = sum(len(v) for v in views.values()) // 2
    return overlay_problems(views, min_active=min_active), links


async def _demo(
    n: int,
    kill_share: float,
    seed: int,
    limit: float,
    *,
    say: Callable[[str], None] = print,
    report: dict[str, Any] | None = None,
) -> int:
    """The demo; progress goes to ``say``, the figures into ``report`` (``demo --json``)."""
    report = {} if report is None else report

    rng = random.Random(seed)
    size = max(2, min(5, round(math.log10(n)) + 2))
    config = HyParViewConfig(
        active_view_size=size,
        passive_view_size=4 * size,
        shuffle_interval=1.0,
        keepalive_interval=0.25,
        keepalive_timeout=1.0,
    )
    agents: list[Agent] = []
    started = time.monotonic()
    say(f"starting {n} agents on 127.0.0.1 (active view {size}) ...")
    try:
        for i in range(n):
            contacts: tuple[Peer, ...] = ()
            if agents:
                picks = rng.sample(agents, min(2, len(agents)))
                contacts = tuple(a.myself for a in picks)
            strategy = Strategy(
                local_peer=Peer(f"agent-{i:03d}", "tcp://127.0.0.1:0"),
                contacts=contacts,
                hyparview_config=config,
                heartbeat_interval=0.25,
                heartbeat_timeout=1.0,
            )
            agent = Agent(strategy, rng=random.Random(rng.random()))
            await agent.start()
            agents.append(agent)
        async with asyncio.timeout(limit):
            while True:
                problems, links = overlay_report(agents, min_active=1)
                if not problems:
                    break
                await asyncio.sleep(0.2)
        took = time.monotonic() - started
        say(f"converged in {took:.1f}s: connected, symmetric, {links} links")
        report.update(agents=n, converged_s=round(took, 3), links=links)
        say(f"  (a full mesh of {n} nodes would hold {n * (n - 1) // 2})")
        _print_views(agents, say)
        # Let the overlay shuffle before the crash, as the paper's runs do. Right after the joins
        # the passive views are nearly empty: the first agent, which has no contacts, could know
        # only the victims and be known by no survivor, and nothing could bring it back.
        settle = 2 * config.shuffle_interval
        say(f"\nletting the overlay shuffle for {settle:.0f} s (passive views fill up) ...")
        await asyncio.sleep(settle)
        victims = rng.sample(agents, max(1, int(n * kill_share)))
        say(
            f"killing {len(victims)} agents without goodbye: "
            f"{', '.join(a.myself.id for a in victims)}"
        )
        report["killed"] = sorted(a.myself.id for a in victims)
        killed_at = time.monotonic()
        for victim in victims:
            await victim.aclose(graceful=False)
        survivors = [a for a in agents if a not in victims]
        async with asyncio.timeout(limit):
            while True:
                # A dead agent still in a survivor's view is a problem too.
                problems, links = overlay_report(survivors)
                if not problems:
                    break
                await asyncio.sleep(0.05)
        say(
            f"repaired in {time.monotonic() - killed_at:.2f}s: {len(survivors)} survivors, "
            f"connected, symmetric, no dead peer in any active view, {links} links"
        )
        report.update(
            repaired_s=round(time.monotonic() - killed_at, 3),
            survivors=len(survivors),
            survivor_links=links,
            views={a.myself.id: sorted(p.id for p in a.active_view) for a in survivors},
        )
        _print_views(survivors, say)
        return 0
    finally:
        for agent in agents:
            await agent.aclose()


def _print_views(agents: Sequence[Any], say: Callable[[str], None] = print) -> None:
    for agent in agents:
        say(f"  {agent.myself.id}: {' '.join(sorted(p.id for p in agent.active_view))}")
