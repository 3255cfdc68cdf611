"""More sends than a path can carry at once: the retry rule against the fixed interval it replaced.

Two whole agents in one process (the set-up of ``mesh_path.py``: ZeroMQ TCP between them, each
with its local path), and one handle that starts ``--sends`` sends at once to a handle on the
other agent. The local link lets at most 1,024 of them into its agent at a time, so each waits
in the agents' queues for longer than the first retry timeout (0.5 s) and copies are sent
while the first copy is still on its way.

Two rules, in alternating rounds, each round on a fresh pair of agents (no round-trip estimate
carried over):

* **fixed**: the rule before, a copy every ``retry_interval`` (0.5 s) until answered
  (``retry_max_interval`` set equal to it);
* **adaptive**: the delivery core's rule: RFC 6298's retransmission timeout from the answers'
  round trips, doubled for each copy still unanswered, between 0.5 and 10 s.

Reported per rule: the time for all sends, messages per second, copies sent again per message,
copies the receiver found already delivered, the outcomes, and the latency of a send. The last
line is the ratio of the two rules' throughput.

    python benchmarks/overload.py [--sends 20000] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mesh_path import MeshPath

from ray_hyparview.protocol.delivery import DeliveryConfig

RULES = {
    "fixed": DeliveryConfig(retry_interval=0.5, retry_max_interval=0.5),
    "adaptive": DeliveryConfig(),
}


async def _timed_send(path: MeshPath, i: int, timeout: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    try:
        await path.writer.send("reader", i, timeout=timeout)
    except Exception as exc:
        return time.perf_counter() - t0, f"{type(exc).__name__}:{getattr(exc, 'reason', '')}"
    return time.perf_counter() - t0, "ok"


async def one_round(config: DeliveryConfig, sends: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hv-overload-") as directory:
        path = MeshPath()
        await path.start(directory, delivery=config)
        try:
            for i in range(50):  # warm-up: links up, names resolved
                await path.send(i)
            sender, receiver = (m.core.counters for m in path.meshes)
            retried, duplicates = sender["send.retried"], receiver["deliver.duplicate"]
            t0 = time.perf_counter()
            done = await asyncio.gather(*(_timed_send(path, i, timeout) for i in range(sends)))
            elapsed = time.perf_counter() - t0
            latency = sorted(t for t, _ in done)
            return {
                "seconds": elapsed,
                "msgs_per_s": sends / elapsed,
                "copies_per_msg": (sender["send.retried"] - retried) / sends,
                "duplicates_per_msg": (receiver["deliver.duplicate"] - duplicates) / sends,
                "outcomes": dict(Counter(outcome for _, outcome in done)),
                "p50_s": statistics.median(latency),
                "p99_s": latency[int(len(latency) * 0.99)],
                "max_s": latency[-1],
            }
        finally:
            await path.aclose()


async def run(sends: int, rounds: int, timeout: float) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in RULES}
    for r in range(rounds):
        order = list(RULES) if r % 2 == 0 else list(reversed(RULES))
        for name in order:
            row = await one_round(RULES[name], sends, timeout)
            results[name].append(row)
            print(
                f"  round {r + 1} {name:8} {row['seconds']:6.2f} s  {row['msgs_per_s']:7.0f} msg/s"
                f"  copies/msg {row['copies_per_msg']:5.2f}  dup/msg "
                f"{row['duplicates_per_msg']:5.2f}  p50 {row['p50_s']:.2f} s  p99 "
                f"{row['p99_s']:.2f} s  max {row['max_s']:.2f} s  {row['outcomes']}",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=20_000, help="sends started at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each rule")
    parser.add_argument("--timeout", type=float, default=60.0, help="each send's timeout, s")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.sends < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--sends and --rounds must be at least 1, --timeout above 0")
    print(f"{args.sends} sends at once through two agents in one process, {args.rounds} rounds")
    results = asyncio.run(run(args.sends, args.rounds, args.timeout))
    rate = {n: statistics.median(r["msgs_per_s"] for r in rows) for n, rows in results.items()}
    copies = {
        n: statistics.median(r["copies_per_msg"] for r in rows) for n, rows in results.items()
    }
    for name in RULES:
        print(f"  {name:8} median {rate[name]:7.0f} msg/s, {copies[name]:.2f} copies per message")
    print(f"  adaptive / fixed throughput: {rate['adaptive'] / rate['fixed']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sends": args.sends, "rounds": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
