"""How long a Ray GCS takes to mark a killed node dead, with Ray's default settings.

What it measures
----------------
A local ``ray.cluster_utils.Cluster`` (a head node and, per trial, one added worker node, all
on this machine) runs with Ray's defaults. Each trial SIGKILLs the worker node's raylet and
polls ``ray.nodes()`` every 50 ms until the GCS reports that node ``Alive: False``; the figure
is the time from just before the kill to that poll. The GCS learns of a dead raylet through
its gRPC health checks (``health_check_initial_delay_ms``, ``health_check_period_ms``,
``health_check_timeout_ms``, ``health_check_failure_threshold`` in Ray's ``ray_config_def.h``),
so the expected delay is about period x threshold.

``--ours PATH`` reads the JSON written by ``benchmarks/failure_detection.py --json PATH`` and
prints both figures side by side.

Run: ``python benchmarks/gcs_detection.py [--quick] [--trials 5] [--ours fd.json]
[--json PATH]``. Ray starts several processes per node: on a busy 2-core machine one trial
takes tens of seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_hyparview.testing.agent_host import percentile

_CONFIG_KEYS = (
    "health_check_initial_delay_ms",
    "health_check_period_ms",
    "health_check_timeout_ms",
    "health_check_failure_threshold",
)


def ray_health_config() -> dict[str, Any]:
    """Ray's health-check settings as the running library sees them (best effort: these are
    private accessors, so a missing one is reported as unknown rather than failing)."""
    values: dict[str, Any] = {}
    try:
        from ray._raylet import Config  # type: ignore[import-not-found,attr-defined,unused-ignore]
    except ImportError:
        Config = None
    for key in _CONFIG_KEYS:
        getter = getattr(Config, key, None) if Config is not None else None
        try:
            values[key] = getter() if getter is not None else "unknown"
        except Exception:
            values[key] = "unknown"
    return values


def one_trial(cluster: Any, poll: float, limit: float) -> float:
    import ray
    from ray._private import ray_constants

    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    node_id = node.node_id
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    before = time.monotonic()
    os.kill(raylet.pid, signal.SIGKILL)
    try:
        deadline = before + limit
        while time.monotonic() < deadline:
            for entry in ray.nodes():  # type: ignore[no-untyped-call]
                if entry["NodeID"] == node_id and not entry["Alive"]:
                    return time.monotonic() - before
            time.sleep(poll)
        raise TimeoutError(f"the GCS did not mark node {node_id} dead within {limit} s")
    finally:
        cluster.remove_node(node, allow_graceful=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: one trial")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between polls")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per trial at most")
    parser.add_argument("--ours", metavar="PATH", help="failure_detection.py --json output")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = 1

    import ray
    from ray.cluster_utils import Cluster

    started = time.monotonic()
    delays: list[float] = []
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        config = ray_health_config()
        for index in range(args.trials):
            delay = one_trial(cluster, args.poll, args.limit)
            delays.append(delay)
            print(f"trial {index + 1}/{args.trials}: node marked dead after {delay:.2f} s")
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]

    ours: dict[str, Any] | None = None
    if args.ours:
        ours = json.loads(Path(args.ours).read_text())
    result = {
        "benchmark": "gcs_detection",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "ray_version": ray.__version__,
        "ray_health_check": config,
        "trials": len(delays),
        "gcs_dead_s": {
            "p50": percentile(delays, 50),
            "max": max(delays),
            "mean": statistics.fmean(delays),
            "samples": delays,
        },
        "ours": None if ours is None else {"kill9": ours["kill9"], "sigstop": ours["sigstop"]},
        "seconds": time.monotonic() - started,
    }
    print()
    print(f"Ray {ray.__version__} health checks: {config}")
    print(f"{'detector':<42} {'n':>4} {'p50 s':>8} {'max s':>8}")
    print(
        f"{'Ray GCS, raylet SIGKILL -> Alive=False':<42} {len(delays):>4}"
        f" {percentile(delays, 50):>8.2f} {max(delays):>8.2f}"
    )
    if ours is not None:
        for label, key in (("agent, kill -9 -> PeerDown", "kill9"), ("agent, SIGSTOP", "sigstop")):
            row = ours[key]
            if row.get("n"):
                print(
                    f"{label:<42} {row['n']:>4} {row['p50_ms'] / 1000:>8.3f}"
                    f" {row['max_ms'] / 1000:>8.3f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
