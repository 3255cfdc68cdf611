"""Throughput of the actor mesh against plain Ray actor calls, between the same actors.

An embedded ``--nodes``-node (default 6) Ray cluster, ``--active`` (default 2) active links
per agent, ``--actors`` (default 16) actors spread round-robin over the nodes, each joined to
the mesh. Two patterns, each timed for the mesh and for plain Ray in the same run, alternating:

* **one-to-one**: actor 0 sends ``--messages`` messages to the actor on a node ``--hops``
  (default 2) hops away, or as near that as the overlay allows;
* **all-to-all**: every actor sends ``--messages / actors`` messages, round-robin over every
  other actor, all at once;
* **publish fan-out**: actor 0 publishes on a topic every actor subscribed to, against one
  plain call to each actor gathered; the time from the start until the last actor has it
  (wall clock of one machine), median and p99 over the rounds.

A mesh sender keeps up to ``--batch`` sends in flight (``asyncio.gather`` over a batch of
``m.send``: each returns when the target node has the message in the receiver's inbox); a Ray
sender does the same with fire-and-forget ``handle.deliver.remote(i)`` calls, awaited in
batches of the same size. A pattern ends when every receiver has *consumed* what was meant
for it (the mesh receiver's ``inbox()`` loop, the Ray receiver's method), so both count the
same work. Reported: messages per second, and CPU seconds per 10,000 messages over every
process of the cluster (actors, agents, raylets, GCS: read from ``/proc``), idle work
included (the same for both).

    python benchmarks/ray_throughput.py               # 6 nodes, 16 actors, 20,000 messages
    python benchmarks/ray_throughput.py --quick       # 4 nodes, 8 actors, 2,000 messages
    python benchmarks/ray_throughput.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_hyparview import cluster as plugin
from ray_hyparview import mesh
from ray_hyparview.cluster.local import connect, demo_config, embedded_cluster, stop
from ray_hyparview.config.models import AGENT_NICE

_TICK = os.sysconf("SC_CLK_TCK")


class _Peer:
    """Sends and receives over the mesh and over plain Ray calls."""

    def __init__(self) -> None:
        self.m: Any = None
        self.mesh_received = 0
        self.ray_received = 0
        self.arrivals: dict[str, dict[int, float]] = {"mesh": {}, "ray": {}}
        self._server: asyncio.Task[None] | None = None

    async def join(self, name: str) -> str:
        self.m = await mesh.join(name)
        self._server = asyncio.get_running_loop().create_task(self._serve())
        return str(self.m.node_id)

    async def _serve(self) -> None:
        async for message in self.m.inbox():
            if message.kind == "publish":
                self.arrivals["mesh"][message.payload] = time.time()
            else:
                self.mesh_received += 1

    async def deliver(self, item: Any) -> None:
        self.ray_received += 1

    async def deliver_at(self, item: int) -> None:
        self.arrivals["ray"][item] = time.time()

    async def subscribe(self, topic: str) -> None:
        self.m.subscribe(topic)

    async def arrived(self) -> dict[str, dict[int, float]]:
        return self.arrivals

    async def fan_out(self, way: str, handles: list[Any], rounds: int, gap: float) -> list[float]:
        """Publish ``rounds`` items (or call every handle for each), ``gap`` seconds apart;
        returns when each started (wall clock: the receivers note theirs on the same one)."""
        began: list[float] = []
        for i in range(rounds):
            began.append(time.time())
            if way == "mesh":
                await self.m.publish("fan-out", i)
            else:
                await asyncio.gather(*(h.deliver_at.remote(i) for h in handles))
            await asyncio.sleep(gap)
        return began

    async def counts(self) -> tuple[int, int]:
        return self.mesh_received, self.ray_received

    async def blast(self, way: str, targets: list[Any], count: int, batch: int) -> float:
        """Send ``count`` messages round-robin over ``targets`` (names or handles), ``batch``
        at a time; returns the seconds it took."""
        began = time.perf_counter()
        for start in range(0, count, batch):
            items = range(start, min(count, start + batch))
            if way == "mesh":
                calls = [self.m.send(targets[i % len(targets)], i, timeout=60.0) for i in items]
            else:
                calls = [targets[i % len(targets)].deliver.remote(i) for i in items]
            await asyncio.gather(*calls)
        return time.perf_counter() - began

    async def leave(self) -> None:
        if self._server is not None:
            self._server.cancel()
        await self.m.leave()


Peer: Any = ray.remote(num_cpus=0)(_Peer)


def cluster_cpu() -> float:
    """CPU seconds (user + system) of every process below this driver: the cluster."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                grew = True
    return sum(times[p] for p in mine)


_FAN_OUT_COUNTERS = {
    "plumtree.received.Gossip": "GOSSIP received",
    "plumtree.duplicate": "duplicates",
    "plumtree.sent.Prune": "PRUNEs",
    "plumtree.prune.deferred": "PRUNEs deferred",
    "plumtree.received.IHave": "IHAVEs received",
    "plumtree.graft.timer": "GRAFTs on a missing message",
    "plumtree.graft.optimize": "GRAFTs to a shorter path",
}


_DELIVERY_COUNTERS = {
    "delivery.send.retried": "copies sent again",
    "delivery.send.held": "timed-out copies held for a probe's answer",
    "delivery.send.spurious": "messages whose first copy was answered after a second left",
    "delivery.deliver.duplicate": "copies that found their message delivered",
    "delivery.send.failed.unknown.timeout": "sends timed out",
}
"""Delivery counters printed for each mesh run: copies are work an overloaded path pays for."""

_CHURN_COUNTERS = {
    "core.keepalive.timeout": "neighbours failed on a keepalive timeout",
    "core.keepalive.paused": "late keepalive ticks credited",
    "core.merge.evicted": "evictions for a component merge",
    "routing.undeliverable.no_route": "copies with no route",
    "delivery.send.lost_early": "copies known lost sent again early",
    "agent.dropped.not_neighbor": "frames dropped on one-sided links",
    "core.stray.told": "one-sided links told at once",
}
"""Overlay churn printed for each mesh run (``core.*`` are the agents' membership counters):
a starved machine used to fail live neighbours, and the copies that found no route while the
overlay repaired waited out their retransmission timers."""


def overlay_counters(nodes: list[str]) -> Counter[str]:
    """The Plumtree, delivery and churn counters above, and failed links (``link_failed.*``), summed
    over the agents of ``nodes``: what a slow round did on the overlay."""
    total: Counter[str] = Counter()
    for node in nodes:
        agent = plugin.get_agent(node)
        mesh_stats, agent_stats = ray.get([agent.mesh_stats.remote(), agent.stats.remote()])
        for key in (*_FAN_OUT_COUNTERS, *_DELIVERY_COUNTERS, *_CHURN_COUNTERS):
            total[key] += mesh_stats["counters"].get(key, 0)
        for key, value in agent_stats["counters"].items():
            if key in _CHURN_COUNTERS:
                total[key] += value
            if key.startswith("agent.link_failed."):
                total["link_failed"] += value
    return total


def run_pattern(
    way: str,
    plan: list[tuple[Any, list[Any], int]],
    receivers: list[Any],
    batch: int,
    before: list[tuple[int, int]],
) -> dict[str, float]:
    """One timed run: ``plan`` is ``[(sender, targets, count)]``."""
    expected = sum(count for _, _, count in plan)
    cpu0, t0 = cluster_cpu(), time.monotonic()
    ray.get([s.blast.remote(way, targets, count, batch) for s, targets, count in plan])
    index = 0 if way == "mesh" else 1
    deadline = time.monotonic() + 300
    while True:
        now = ray.get([r.counts.remote() for r in receivers])
        got = sum(n[index] - b[index] for n, b in zip(now, before, strict=True))
        if got >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    elapsed, cpu = time.monotonic() - t0, cluster_cpu() - cpu0
    return {
        "messages": expected,
        "seconds": elapsed,
        "per_second": expected / elapsed,
        "cpu_per_10k": cpu / expected * 10_000,
        "consumed": got,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--active", type=int, default=2)
    parser.add_argument("--actors", type=int, default=16)
    parser.add_argument("--messages", type=int, default=20_000, help="per pattern and way")
    parser.add_argument("--batch", type=int, default=100, help="sends in flight per sender")
    parser.add_argument(
        "--hops", type=int, default=2, help="one-to-one distance to pick where the overlay has it"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per pattern")
    parser.add_argument(
        "--nice",
        type=int,
        default=AGENT_NICE,
        help=f"nice value of the agents' processes (default {AGENT_NICE}; 0: Ray's default)",
    )
    parser.add_argument("--quick", action="store_true", help="4 nodes, 8 actors, 2,000")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.actors, args.messages, args.rounds = 4, 8, 2_000, 1
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)

    say(f"starting an embedded Ray cluster of {args.nodes} nodes ...")
    cluster = embedded_cluster()
    hv = None
    peers: list[Any] = []
    try:
        connect(cluster, args.nodes)
        hv = plugin.start(demo_config(args.active), bind_host="127.0.0.1", nice=args.nice)
        nodes = sorted(hv.wait_converged(timeout=120))
        for i in range(args.actors):
            place = NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=False)
            peers.append(Peer.options(scheduling_strategy=place).remote())
        names = [f"peer-{i}" for i in range(len(peers))]
        ray.get([p.join.remote(n) for p, n in zip(peers, names, strict=True)], timeout=120)
        say(f"{len(peers)} actors joined on {len(nodes)} nodes")
        # One-to-one figures depend on how far apart the two actors are: the receiver is the
        # actor on a node --hops away from actor 0's node (the nearest distance to it that the
        # overlay has), so that runs on different overlays compare like with like.
        others = nodes[1 : len(peers)]
        deadline = time.monotonic() + 60
        while True:  # every route, not the first few learnt: else a far node looks absent
            routes = ray.get(plugin.get_agent(nodes[0]).mesh_stats.remote())["routes"]
            if all(n in routes for n in others):
                break
            if time.monotonic() > deadline:
                missing = [n[:8] for n in others if n not in routes]
                raise RuntimeError(f"{nodes[0][:8]} has no route to {missing} after 60 s")
            time.sleep(0.2)
        distance = {n: int(routes[n][1]) for n in others}
        far = min(distance, key=lambda n: (abs(distance[n] - args.hops), n))
        receiver = nodes.index(far)  # actors are placed round-robin: actor i on nodes[i]
        one_to_one_hops = distance[far]
        say(
            f"one-to-one: actor 0 on {nodes[0][:8]}, actor {receiver} on {far[:8]}, "
            f"{one_to_one_hops} hop(s) apart"
        )

        def plan(way: str, pattern: str) -> list[tuple[Any, list[Any], int]]:
            def target(i: int) -> Any:
                return names[i] if way == "mesh" else peers[i]

            if pattern == "one-to-one":
                return [(peers[0], [target(receiver)], args.messages)]
            each = args.messages // len(peers)
            return [
                (p, [target(j) for j in range(len(peers)) if j != i], each)
                for i, p in enumerate(peers)
            ]

        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        for pattern in ("one-to-one", "all-to-all"):
            receivers = [peers[receiver]] if pattern == "one-to-one" else peers
            results[pattern] = {"mesh": [], "ray": []}
            # Warm up both ways (connections, name caches), then alternate.
            for way in ("mesh", "ray"):
                small = [(s, t, min(c, 200)) for s, t, c in plan(way, pattern)]
                before = ray.get([r.counts.remote() for r in receivers])
                run_pattern(way, small, receivers, args.batch, before)
            for _ in range(args.rounds):
                for way in ("mesh", "ray"):
                    counted = overlay_counters(nodes) if way == "mesh" else None
                    before = ray.get([r.counts.remote() for r in receivers])
                    row = run_pattern(way, plan(way, pattern), receivers, args.batch, before)
                    results[pattern][way].append(row)
                    say(
                        f"{pattern:10} {way:4}: {row['per_second']:8,.0f} msg/s, "
                        f"{row['cpu_per_10k']:6.2f} CPU s per 10k"
                    )
                    if counted is not None:
                        spent = overlay_counters(nodes) - counted
                        row.update(
                            {k: float(spent[k]) for k in (*_DELIVERY_COUNTERS, *_CHURN_COUNTERS)}
                        )
                        say(
                            "  delivery: "
                            + ", ".join(f"{spent[k]} {t}" for k, t in _DELIVERY_COUNTERS.items())
                        )
                        say(
                            "  overlay: "
                            + ", ".join(f"{spent[k]} {t}" for k, t in _CHURN_COUNTERS.items())
                        )

        # Publish fan-out: one publication to every actor (all subscribed), against one plain
        # call to each; the time until the last one received it.
        ray.get([p.subscribe.remote("fan-out") for p in peers])
        time.sleep(1.0)  # subscriptions are applied before the next frame; the tree settles
        fan_rounds = max(20, args.rounds * 50)
        fan: dict[str, dict[str, float]] = {}
        fan_out_overlay: dict[str, int] = {}
        for way in ("mesh", "ray"):
            counted = overlay_counters(nodes) if way == "mesh" else None
            began = ray.get(peers[0].fan_out.remote(way, peers, fan_rounds, 0.02), timeout=300)
            time.sleep(0.5)
            arrived = [a[way] for a in ray.get([p.arrived.remote() for p in peers])]
            spans = [
                max(a.get(i, float("inf")) for a in arrived) - t0 for i, t0 in enumerate(began)
            ]
            complete = sorted(x for x in spans if x != float("inf"))
            fan[way] = {
                "median_ms": complete[len(complete) // 2] * 1e3 if complete else float("nan"),
                "p99_ms": complete[min(len(complete) - 1, int(len(complete) * 0.99))] * 1e3
                if complete
                else float("nan"),
                "complete_rounds": len(complete),
                "rounds": len(spans),
            }
            say(
                f"fan-out to {len(peers)} {way:4}: median {fan[way]['median_ms']:.2f} ms, "
                f"p99 {fan[way]['p99_ms']:.2f} ms ({len(complete)}/{len(spans)} reached all)"
            )
            if counted is not None:
                # A slow round says why: publications pulled with IHAVE and GRAFT (the tree
                # was broken), or links that failed meanwhile.
                spent = overlay_counters(nodes) - counted
                fan_out_overlay = {k: spent[k] for k in (*_FAN_OUT_COUNTERS, "link_failed")}
                say(
                    "  overlay during the mesh fan-out: "
                    + ", ".join(f"{spent[k]} {text}" for k, text in _FAN_OUT_COUNTERS.items())
                    + f", {spent['link_failed']} failed links"
                )

        print()
        print(
            f"throughput, {args.nodes} nodes, {len(peers)} actors, batches of {args.batch}, "
            f"best of {args.rounds}, agents at nice {args.nice}"
        )
        print(f"  {'pattern':10}  {'way':4}  {'msg/s':>9}  {'CPU s/10k':>9}  {'x ray':>6}")
        summary: dict[str, dict[str, float]] = {}
        for pattern, ways in results.items():
            best = {w: max(rows, key=lambda r: r["per_second"]) for w, rows in ways.items()}
            ratio = best["mesh"]["per_second"] / best["ray"]["per_second"]
            summary[pattern] = {
                "mesh_per_second": best["mesh"]["per_second"],
                "ray_per_second": best["ray"]["per_second"],
                "ratio": ratio,
                "mesh_cpu_per_10k": best["mesh"]["cpu_per_10k"],
                "ray_cpu_per_10k": best["ray"]["cpu_per_10k"],
            }
            for way in ("mesh", "ray"):
                row = best[way]
                print(
                    f"  {pattern:10}  {way:4}  {row['per_second']:9,.0f}  "
                    f"{row['cpu_per_10k']:9.2f}  {(ratio if way == 'mesh' else 1.0):6.2f}"
                )
        for pattern, row in summary.items():
            say(
                f"summary {pattern}: mesh {row['mesh_per_second']:,.0f} msg/s = "
                f"{row['ratio']:.2f}x plain Ray ({row['ray_per_second']:,.0f} msg/s)"
            )
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(
                    {
                        "benchmark": "ray_throughput",
                        "nodes": args.nodes,
                        "one_to_one_hops": one_to_one_hops,
                        "actors": len(peers),
                        "active_view_size": args.active,
                        "batch": args.batch,
                        "nice": args.nice,
                        "messages": args.messages,
                        "cpus": os.cpu_count(),
                        "results": results,
                        "summary": summary,
                        "fan_out": fan,
                        "fan_out_overlay": fan_out_overlay,
                    },
                    handle,
                    indent=2,
                )
            say(f"wrote {args.json}")
        return 0
    finally:
        for peer in peers:
            ray.kill(peer)
        stop(cluster, hv)


if __name__ == "__main__":
    sys.exit(main())
