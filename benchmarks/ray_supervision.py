"""How long a node is without its agent after the agent actor is killed, and how long its actors
are without their mesh.

An embedded ``--nodes``-node (default 3) Ray cluster, the plugin with its default reconcile
interval (1 s) and ``active_view_size=2``. Actor ``a`` joins the mesh on a worker node, actor
``b`` on the head node. Each of ``--rounds`` rounds (default 10) ``ray.kill``s the agent of
``a``'s node and times, from the kill:

* ``serving``: the replacement agent answers with a higher incarnation;
* ``reattached``: ``a``'s ``Mesh`` handle has moved to it and claimed its name again;
* ``first_ack``: ``b``'s first ``send`` to ``a`` acknowledged (a send that fails is retried);
* ``converged``: the overlay is connected, symmetric and routed again (``wait_converged``).

Every message ``b`` had acknowledged must reach ``a``; a round where one does not counts as
lost. Reported: median and maximum of each time.

    python benchmarks/ray_supervision.py               # 3 nodes, 10 rounds
    python benchmarks/ray_supervision.py --quick       # 3 nodes, 2 rounds
    python benchmarks/ray_supervision.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from ray_hyparview import cluster as plugin
from ray_hyparview.cluster.local import connect, demo_config, embedded_cluster, stop
from ray_hyparview.testing.ray_actors import incarnation, on, reattached

TIMES = ("serving", "reattached", "first_ack", "converged")


def _wait(predicate: Callable[[], bool], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {limit} s")
        time.sleep(0.02)


def _newer(node_id: str, old: int) -> bool:
    return incarnation(node_id) > old


def run(nodes: int, rounds: int) -> dict[str, Any]:
    cluster = embedded_cluster()
    hv = None
    try:
        connect(cluster, nodes=nodes)
        hv = plugin.start(demo_config(active_view_size=2), bind_host="127.0.0.1")
        head = ray.get_runtime_context().get_node_id()
        victim = sorted(n for n in hv.views() if n != head)[0]
        a = on(victim)
        b = on(head)
        ray.get([a.join.remote("bench-a"), b.join.remote("bench-b")], timeout=60)
        samples: dict[str, list[float]] = {name: [] for name in TIMES}
        lost = 0
        for r in range(rounds):
            hv.wait_converged(timeout=60)
            old = incarnation(victim)
            ray.kill(plugin.get_agent(victim))
            killed = time.monotonic()
            _wait(functools.partial(_newer, victim, old))
            samples["serving"].append(time.monotonic() - killed)
            _wait(functools.partial(reattached, a, r + 1))
            samples["reattached"].append(time.monotonic() - killed)
            i = 0
            while ray.get(b.send.remote("bench-a", (r, i), 2.0)) != "ok":
                i += 1
            samples["first_ack"].append(time.monotonic() - killed)
            try:
                ray.get(a.receive_until.remote((r, i)), timeout=10)
            except ray.exceptions.GetTimeoutError:
                lost += 1
            hv.wait_converged(timeout=60)
            samples["converged"].append(time.monotonic() - killed)
            print(
                f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items()),
                flush=True,
            )
        for actor in (a, b):
            ray.kill(actor)
        return {
            "nodes": nodes,
            "rounds": rounds,
            "lost_after_ack": lost,
            **{
                name: {"median": statistics.median(v), "max": max(v), "samples": v}
                for name, v in samples.items()
            },
        }
    finally:
        stop(cluster, hv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 rounds: a smoke run")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    # Ray workers import the package from this checkout, wherever this runs from.
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    result = run(args.nodes, 2 if args.quick else args.rounds)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    summary = ", ".join(
        f"{name} median {result[name]['median']:.2f} s max {result[name]['max']:.2f} s"
        for name in TIMES
    )
    print(f"ray_supervision: {result['rounds']} kills, {summary}, lost {result['lost_after_ack']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
