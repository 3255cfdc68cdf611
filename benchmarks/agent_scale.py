"""100 agents in 4 processes: convergence time, memory and open sockets per agent.

What it measures
----------------
``--processes`` hosts (``ray_hyparview.testing.agent_host``) of ``--per-process`` agents
each start one after the other on loopback; agents of a host join the host's first agent and two
agents of earlier hosts. Then:

* **convergence**: seconds from the moment the last host reported all its agents bound (their
  JOINs are sent) until the union of the active views is a connected, symmetric graph with no
  unknown peer, polled every 0.1 s;
* **memory**: resident set size (``VmRSS`` from ``/proc/PID/status``) of each host divided by
  its agents, and the marginal cost: (RSS of a host - RSS of a host with no agent) / agents;
* **sockets**: for every agent, its TCP sockets: 1 listening + inbound connections (entries of
  ``/proc/net/tcp`` whose local port is the agent's port) + outbound connections (its DEALER
  links, the ``links`` gauge of ``agent.stats()``). The bound to check is
  ``2 x active view + 1 + cached links``: one DEALER out and one connection in per active
  link, the listener, and the few links opened for a SHUFFLE_REPLY or a NEIGHBOR to a passive
  peer while that exchange is in flight (the agent releases each once it is over; the
  transport bounds them by ``max_cached_links`` and ``idle_timeout``). File descriptors per
  process (``/proc/PID/fd``) are reported too: libzmq adds an eventfd per socket and per
  monitor, asyncio a self-pipe.

``--own-context`` gives each agent its own ZeroMQ context (one I/O thread each), as when every
agent runs in its own process; the default shares one context per process.

Run: ``python benchmarks/agent_scale.py [--quick] [--processes 4] [--per-process 25]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.overlay import overlay_problems
from ray_hyparview.testing.agent_host import Host, collect_views

_ESTABLISHED = "01"
_LISTEN = "0A"


def tcp_local_ports() -> dict[int, int]:
    """Local port -> established IPv4 connections on it (``/proc/net/tcp``)."""
    counts: dict[int, int] = {}
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] != _ESTABLISHED:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            counts[port] = counts.get(port, 0) + 1
    return counts


def process_figures(pid: int) -> dict[str, int]:
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                sockets += 1
        except OSError:
            continue
    rss_kb = threads = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return {"fds": len(fds), "socket_fds": sockets, "rss_kb": rss_kb, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 x 5 agents")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--per-process", type=int, default=25)
    parser.add_argument("--own-context", action="store_true")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds to converge")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before counting")
    parser.add_argument("--log-dir", metavar="DIR", help="keep each host's stderr here")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_process, args.settle = 5, 2.0
    config = HyParViewConfig()
    hosts: list[Host] = []
    started = time.monotonic()
    try:
        baseline = Host("base", 0)
        hosts.append(baseline)
        base_rss = int(baseline.command("fds")["rss_kb"])  # answers once it is fully up
        first: Host | None = None
        for index in range(args.processes):
            contacts = []
            if first is not None:
                contacts = [first.agents[index % args.per_process], hosts[-1].agents[-1]]
            host = Host(
                f"h{index}",
                args.per_process,
                contacts=contacts,
                own_context=args.own_context,
                seed=index,
                start_timeout=120,
                log_path=Path(args.log_dir) / f"h{index}.log" if args.log_dir else None,
            )
            hosts.append(host)
            first = first or host
        last_start = time.monotonic()
        agents = [h for h in hosts if h is not baseline]
        problems: list[str] = ["not polled"]
        polls = 0
        while problems and time.monotonic() - last_start < args.limit:
            problems = overlay_problems(collect_views(agents, timeout=60))
            polls += 1
            if problems:
                time.sleep(0.1)
        converge = time.monotonic() - last_start
        if problems:
            print(f"did not converge in {args.limit} s: {problems[:5]}", file=sys.stderr)
        time.sleep(args.settle)  # let cached links from the joins expire or settle
        ports = tcp_local_ports()
        per_agent: list[dict[str, Any]] = []
        per_process: list[dict[str, Any]] = []
        for host in agents:
            stats = host.command("stats", timeout=30)
            figures = process_figures(host.pid)
            figures["agents"] = len(host.agents)
            per_process.append(figures)
            for info in host.agents:
                s = stats[info.id]
                port = int(info.endpoint.rsplit(":", 1)[1])
                inbound = ports.get(port, 0)
                outbound = s["gauges"]["links"]
                active = s["gauges"]["active_view_size"]
                per_agent.append(
                    {
                        "id": info.id,
                        "active": active,
                        "links": outbound,
                        "inbound": inbound,
                        "tcp_sockets": 1 + inbound + outbound,
                    }
                )
    finally:
        for host in hosts:
            host.kill()

    n = len(per_agent)
    rss_per_agent = [p["rss_kb"] / p["agents"] for p in per_process]
    marginal = [(p["rss_kb"] - base_rss) / p["agents"] for p in per_process]
    fds_per_agent = [p["fds"] / p["agents"] for p in per_process]
    excess = [a["tcp_sockets"] - (2 * a["active"] + 1) for a in per_agent]
    cached = [a["links"] - a["active"] for a in per_agent]
    worst = max(per_agent, key=lambda a: a["tcp_sockets"] - 2 * a["active"])
    result = {
        "benchmark": "agent_scale",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "agents": n,
        "processes": len(per_process),
        "own_context": args.own_context,
        "active_view_size": config.active_view_size,
        "converged": not problems,
        "converge_s": converge,
        "polls": polls,
        "rss_kb_per_agent_mean": statistics.fmean(rss_per_agent),
        "rss_kb_marginal_per_agent_mean": statistics.fmean(marginal),
        "rss_kb_empty_host": base_rss,
        "fds_per_agent_mean": statistics.fmean(fds_per_agent),
        "tcp_sockets_per_agent_mean": statistics.fmean(a["tcp_sockets"] for a in per_agent),
        "tcp_sockets_per_agent_max": max(a["tcp_sockets"] for a in per_agent),
        "active_mean": statistics.fmean(a["active"] for a in per_agent),
        "sockets_over_2x_active_plus_1_max": max(excess),
        "cached_links_max": max(cached),
        "worst_agent": worst,
        "per_process": per_process,
        "seconds": time.monotonic() - started,
    }
    bound = 2 * config.active_view_size + 1
    print()
    print(f"{'figure':<46} {'value':>12}")
    rows = [
        ("agents / processes", f"{n} / {len(per_process)}"),
        ("converged (connected, symmetric)", str(not problems)),
        ("seconds from last start to converged", f"{converge:.2f}"),
        ("RSS per agent, KiB (process RSS / agents)", f"{result['rss_kb_per_agent_mean']:.0f}"),
        ("RSS per agent, KiB (marginal over empty host)", f"{statistics.fmean(marginal):.0f}"),
        ("RSS of a host with no agent, KiB", f"{base_rss}"),
        ("fds per agent (process fds / agents)", f"{result['fds_per_agent_mean']:.1f}"),
        ("active view size, mean", f"{result['active_mean']:.2f}"),
        ("TCP sockets per agent, mean", f"{result['tcp_sockets_per_agent_mean']:.2f}"),
        ("TCP sockets per agent, max", f"{result['tcp_sockets_per_agent_max']}"),
        (f"bound 2 x active ({config.active_view_size}) + 1", f"{bound}"),
        ("max sockets above 2 x own active + 1", f"{max(excess)}"),
        ("DEALER links beyond the active view, max", f"{max(cached)}"),
    ]
    for name, value in rows:
        print(f"{name:<46} {value:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
