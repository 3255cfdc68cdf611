"""Soak: no false PeerDown(FAILED) in steady state while every core is busy.

What it measures
----------------
``--agents`` agents (default 50) run in ``--processes`` hosts
(``ray_hyparview.testing.agent_host``) with the production defaults (keepalive every 0.5 s, 2 s of
silence is a failure; ZMTP heartbeats every 0.5 s, 1.5 s timeout). Once the overlay is connected
and symmetric, one CPU burner per core (a ``while True: pass`` process) starts, and for
``--duration`` seconds every ``PeerDown`` any agent reports is collected. No agent fails or leaves
during the run, so every ``PeerDown(FAILED)`` is a false alarm: the target (issue 3, section 7) is
zero. EVICTED and DISCONNECTED are reported too (they are protocol moves between live nodes, not
alarms), as are the core's keepalive timeouts and the transport's dropped links. At the end the
overlay must still be connected and symmetric.

Run: ``python benchmarks/soak.py [--quick] [--agents 50] [--duration 300] [--json PATH]``;
``--quick`` runs 20 s. Every process it starts (hosts and burners) is killed by pid at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_hyparview.protocol.overlay import overlay_problems
from ray_hyparview.testing.agent_host import Host, collect_views, start_hosts


def start_burners(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 s")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of steady state")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2, help="CPU burners")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between collections")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 20.0
    per_process = max(1, args.agents // args.processes)
    hosts: list[Host] = []
    burners: list[subprocess.Popen[bytes]] = []
    downs: Counter[str] = Counter()
    failed: list[list[Any]] = []
    slowest_reply = 0.0
    started = time.monotonic()
    problems: list[str] = []
    try:
        start_hosts(hosts, args.processes, per_process, "s", start_timeout=120)
        deadline = time.monotonic() + 120
        while overlay_problems(collect_views(hosts, timeout=30)):
            if time.monotonic() > deadline:
                raise TimeoutError("the overlay did not converge before the soak")
            time.sleep(0.2)
        for host in hosts:
            host.command("events")
        before = {h.prefix: h.command("stats") for h in hosts}
        burners = start_burners(args.burners)
        soak_start = time.monotonic()
        end = soak_start + args.duration
        while time.monotonic() < end:
            time.sleep(min(args.poll, max(0.0, end - time.monotonic())))
            for host in hosts:
                asked = time.monotonic()
                log = host.command("events", timeout=60)
                slowest_reply = max(slowest_reply, time.monotonic() - asked)
                for node, entries in log.items():
                    for entry in entries:
                        if entry[1] == "down":
                            downs[entry[3]] += 1
                            if entry[3] == "failed":
                                failed.append([node, *entry])
            elapsed = time.monotonic() - soak_start
            print(f"{elapsed:6.0f} s: PeerDown so far {dict(downs) or 'none'}", flush=True)
        for burner in burners:
            burner.kill()
            burner.wait()
        burners = []
        after = {h.prefix: h.command("stats") for h in hosts}
        problems = overlay_problems(collect_views(hosts, timeout=30))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        for host in hosts:
            host.kill()

    def total(stats: dict[str, Any], key: str) -> int:
        return sum(
            int(s["counters"].get(key, 0))
            for per_host in stats.values()
            for node, s in per_host.items()
            if not node.startswith("_")
        )

    keepalive_timeouts = total(after, "core.keepalive.timeout") - total(
        before, "core.keepalive.timeout"
    )
    link_failures = total(after, "agent.link_failed.disconnected") - total(
        before, "agent.link_failed.disconnected"
    )
    n_agents = per_process * args.processes
    result = {
        "benchmark": "soak",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "agents": n_agents,
        "processes": args.processes,
        "burners": args.burners,
        "duration_s": args.duration,
        "peer_down_by_reason": dict(downs),
        "false_failed": len(failed),
        "failed_events": failed[:50],
        "keepalive_timeouts": keepalive_timeouts,
        "links_dropped_by_transport": link_failures,
        "slowest_host_reply_s": slowest_reply,
        "overlay_ok_at_end": not problems,
        "overlay_problems": problems[:10],
        "seconds": time.monotonic() - started,
    }
    ok = not failed and not problems
    print()
    print(f"{'figure':<44} {'value':>10}")
    for name, value in (
        ("agents / processes / CPU burners", f"{n_agents}/{args.processes}/{args.burners}"),
        ("steady state, seconds", f"{args.duration:.0f}"),
        ("false PeerDown(FAILED) (target 0)", f"{len(failed)}"),
        ("PeerDown(EVICTED/DISCONNECTED/LEFT)", f"{sum(downs.values()) - len(failed)}"),
        ("core keepalive timeouts", f"{keepalive_timeouts}"),
        ("links dropped by the transport", f"{link_failures}"),
        ("slowest host reply, s", f"{slowest_reply:.2f}"),
        ("overlay connected and symmetric at the end", f"{not problems}"),
        ("result", "ok" if ok else "FAILED"),
    ):
        print(f"{name:<44} {value:>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
