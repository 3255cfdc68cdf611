"""Publish/subscribe fan-out over the HyParView overlay: one publisher, many subscribers.

Starts an embedded Ray cluster, the plugin with small active views, one publisher actor and
subscriber actors spread over every node. The publisher publishes numbered items on one topic;
every subscriber must receive every item exactly once. The fan-out rides on the overlay: the
publisher hands each item to its own node's agent once, and Plumtree (Leitao, Pereira,
Rodrigues, "Epidemic Broadcast Trees", SRDS 2007) carries it from agent to agent along a
spanning tree of active links (eager push), with IHAVE announcements on the other links. The
per-node counters printed at the end show that: each node receives each item about once, and
the publisher's node sends it only along its few active links, not once per subscriber.

    python examples/pubsub_fanout.py --nodes 4 --subscribers 12 --items 20

Exits 0 when every subscriber got every item exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_hyparview import cluster as plugin
from ray_hyparview import mesh
from ray_hyparview.cluster.local import connect, demo_config, embedded_cluster, stop

TOPIC = "prices"


class _Subscriber:
    """Joins the mesh, subscribes to the topic, and collects publications."""

    def __init__(self) -> None:
        self.m: Any = None

    async def join(self, name: str) -> str:
        self.m = await mesh.join(name)
        self.m.subscribe(TOPIC)
        # A send to ourselves goes through our agent after the subscription (Ray keeps one
        # caller's calls in order), so when it returns the agent is known to hold it.
        await self.m.send(name, "subscribed")
        return str(self.m.node_id)

    async def collect(self, count: int, limit: float, grace: float) -> list[int]:
        """Item numbers received, in order: stop ``grace`` s after the ``count``-th, so that a
        duplicate arriving late would still be seen; give up after ``limit`` s."""
        got: list[int] = []
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit) as deadline:
                async for message in self.m.inbox():
                    if message.kind == "publish" and message.topic == TOPIC:
                        got.append(int(message.payload["seq"]))
                        if len(got) == count:
                            deadline.reschedule(loop.time() + grace)
        return got


class _Publisher:
    def __init__(self) -> None:
        self.m: Any = None

    async def join(self, name: str) -> str:
        self.m = await mesh.join(name)
        return str(self.m.node_id)

    async def publish(self, items: int, pause: float) -> None:
        for seq in range(items):
            await self.m.publish(TOPIC, {"seq": seq, "price": 100.0 + seq})
            await asyncio.sleep(pause)


Subscriber: Any = ray.remote(num_cpus=0)(_Subscriber)
Publisher: Any = ray.remote(num_cpus=0)(_Publisher)


def place(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def mesh_counters(nodes: list[str]) -> dict[str, dict[str, int]]:
    """Every node's mesh counters (Plumtree, routing, delivery), from its agent."""
    stats = ray.get([plugin.get_agent(n).mesh_stats.remote() for n in nodes], timeout=30)
    return {n: dict(s["counters"]) for n, s in zip(nodes, stats, strict=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4, help="Ray nodes (default 4)")
    parser.add_argument("--subscribers", type=int, default=12, help="subscribers (default 12)")
    parser.add_argument("--items", type=int, default=20, help="publications (default 20)")
    parser.add_argument("--active", type=int, default=2, help="active view size (default 2)")
    args = parser.parse_args()
    if args.nodes < 2 or args.subscribers < 1 or args.items < 1 or args.active < 1:
        parser.error("use at least 2 nodes, 1 subscriber, 1 item and an active view of 1")
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)

    say(f"starting an embedded Ray cluster of {args.nodes} nodes ...")
    cluster = embedded_cluster()
    actors: list[Any] = []
    hv = None
    try:
        connect(cluster, args.nodes)
        config = demo_config(args.active)
        hv = plugin.start(config, bind_host="127.0.0.1")
        views = hv.wait_converged(timeout=90)
        nodes = sorted(views)
        say(f"overlay up: {len(nodes)} agents, {len(hv.topology())} links")
        print(plugin.views_summary(views))

        publisher = Publisher.options(scheduling_strategy=place(nodes[0])).remote()
        subscribers = [
            Subscriber.options(scheduling_strategy=place(nodes[i % len(nodes)])).remote()
            for i in range(args.subscribers)
        ]
        actors = [publisher, *subscribers]
        ray.get(publisher.join.remote("publisher"))
        homes = ray.get([s.join.remote(f"sub-{i}") for i, s in enumerate(subscribers)])
        per_node = {n: homes.count(n) for n in nodes}
        say(
            f"{args.subscribers} subscribers joined, per node: "
            + ", ".join(f"{n[:8]} {c}" for n, c in per_node.items())
        )

        before = mesh_counters(nodes)
        limit = 30.0 + 0.2 * args.items
        collecting = [s.collect.remote(args.items, limit, 1.0) for s in subscribers]
        t0 = time.monotonic()
        ray.get(publisher.publish.remote(args.items, 0.02))
        say(f"published {args.items} items on {TOPIC!r} in {time.monotonic() - t0:.2f}s")
        received = ray.get(collecting, timeout=limit + 30)
        after = mesh_counters(nodes)

        exact = sum(1 for got in received if sorted(got) == list(range(args.items)))
        dupes = sum(len(got) - len(set(got)) for got in received)
        missing = sum(len(set(range(args.items)) - set(got)) for got in received)
        say(
            f"{exact} of {args.subscribers} subscribers got every item exactly once "
            f"(duplicates {dupes}, missing {missing})"
        )

        def delta(node: str, key: str) -> int:
            return after[node].get(key, 0) - before[node].get(key, 0)

        print("per node (this run): items delivered to the node, Plumtree messages sent")
        print(
            f"  {'node':8}  {'subs':>4}  {'node rx':>7}  {'dup rx':>6}  {'eager':>5}  "
            f"{'ihave':>5}  {'graft':>5}  {'prune':>5}  {'inbox puts':>10}"
        )
        for n in nodes:
            print(
                f"  {n[:8]}  {per_node[n]:4d}  {delta(n, 'plumtree.delivered'):7d}  "
                f"{delta(n, 'plumtree.duplicate'):6d}  {delta(n, 'plumtree.sent.Gossip'):5d}  "
                f"{delta(n, 'plumtree.sent.IHave'):5d}  {delta(n, 'plumtree.sent.Graft'):5d}  "
                f"{delta(n, 'plumtree.sent.Prune'):5d}  "
                f"{delta(n, 'delivery.publish.delivered'):10d}"
            )
        eager = sum(delta(n, "plumtree.sent.Gossip") for n in nodes)
        say(
            f"fan-out: {args.items} items x {args.subscribers} subscribers = "
            f"{args.items * args.subscribers} deliveries from {eager} eager pushes between "
            f"agents ({eager / args.items:.1f} per item for {len(nodes)} nodes; "
            f"the publisher's node sent {delta(nodes[0], 'plumtree.sent.Gossip')})"
        )
        if exact != args.subscribers:
            say("ERROR: some subscriber missed an item or got one twice")
            return 1
        say("every publication reached every subscriber exactly once; done")
        return 0
    finally:
        for actor in actors:
            ray.kill(actor)
        stop(cluster, hv)


if __name__ == "__main__":
    sys.exit(main())
