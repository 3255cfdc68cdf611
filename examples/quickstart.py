"""ray_hyparview in two minutes, on one machine, with nothing to set up.

Starts an embedded Ray cluster of five nodes, starts one HyParView agent per node, runs an actor
mesh that sends, requests and publishes, prints the overlay and writes its picture, kills a node
and shows the overlay repair and that every message was either delivered or reported failed.

    pip install -e ".[plot]" && python examples/quickstart.py

Options: --nodes N (default 5), --actors N (default 10), --picture PATH.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_hyparview import cluster as plugin
from ray_hyparview import mesh
from ray_hyparview.cluster.local import connect, demo_config, embedded_cluster, stop


class _Worker:
    """A user actor: joins the mesh under a name, then sends, answers and listens."""

    def __init__(self) -> None:
        self.m: Any = None

    async def join(self, name: str) -> str:
        self.m = await mesh.join(name)
        self.m.subscribe("news")
        return str(self.m.node_id)

    async def send_all(self, names: list[str]) -> dict[str, str]:
        """Send to every name; the outcome of each: ok, why it was not delivered, or
        ``unknown/<reason>`` when it may have been (its acknowledgement lost)."""
        outcome = {}
        for name in names:
            try:
                await self.m.send(name, f"hello {name}, from {self.m.name}", timeout=6.0)
                outcome[name] = "ok"
            except mesh.DeliveryError as exc:
                known = exc.outcome == "not_delivered"
                outcome[name] = exc.reason if known else f"unknown/{exc.reason}"
        return outcome

    async def ask(self, name: str, question: str) -> Any:
        return await self.m.request(name, question, timeout=6.0)

    async def publish(self, text: str) -> None:
        await self.m.publish("news", text)

    async def serve(self, count: int) -> list[tuple[str, str]]:
        """Take ``count`` messages from the inbox, answering requests; return (kind, sender).
        Leaving the loop early loses nothing: the next ``inbox()`` starts where this one
        stopped."""
        seen = []
        async for message in self.m.inbox():
            if message.kind == "request":
                await message.reply(f"{self.m.name} says: {message.payload.upper()}")
            seen.append((message.kind, message.sender))
            if len(seen) >= count:
                break
        return seen

    def channels(self, targets: dict[str, str]) -> dict[str, str]:
        return {name: self.m.channel(name).kind for name in targets}


Worker: Any = ray.remote(num_cpus=0)(_Worker)


def short(node_id: str) -> str:
    return node_id[:8]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5, help="Ray nodes to start (default 5)")
    parser.add_argument("--actors", type=int, default=10, help="mesh actors (default 10)")
    parser.add_argument("--picture", default="hyparview-overlay.png", help="PNG to write")
    args = parser.parse_args()
    if args.nodes < 3 or args.actors < 2:
        parser.error("use at least 3 nodes and 2 actors")
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)

    say(f"starting an embedded Ray cluster of {args.nodes} nodes (about 30 s on 2 cores) ...")
    cluster = embedded_cluster()
    workers: list[Any] = []
    hv = None
    try:
        connect(cluster, args.nodes)

        # Two links per node: small on purpose, so that some messages must be routed.
        config = demo_config(2)
        hv = plugin.start(config, bind_host="127.0.0.1")
        views = hv.wait_converged(timeout=90)
        say(f"one agent per node, overlay connected and symmetric; {len(hv.topology())} links")
        say(f"(a full mesh of {len(views)} nodes would need {len(views) * (len(views) - 1) // 2})")
        print(plugin.views_summary(views))
        # No key was configured: each agent made its own pair and published it in the GCS.
        published = plugin.published_agents()
        keys = {published[n].get("public_key") for n in views if n in published} - {None}
        say(f"links authenticated (CURVE): {len(keys)} keys for {len(views)} nodes, one each")

        nodes = sorted(views)
        names = [f"worker-{i}" for i in range(args.actors)]
        workers = [
            Worker.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    nodes[i % len(nodes)], soft=False
                )
            ).remote()
            for i in range(args.actors)
        ]
        homes = dict(
            zip(
                names,
                ray.get([w.join.remote(n) for w, n in zip(workers, names, strict=True)]),
                strict=True,
            )
        )
        kinds = ray.get(workers[0].channels.remote(homes))
        say(
            f"{args.actors} actors joined the mesh; channels of worker-0: "
            + ", ".join(
                f"{k} {sum(1 for v in kinds.values() if v == k)}"
                for k in ("local", "direct", "routed")
            )
        )

        # Everyone sends to everyone; every send is acknowledged end to end.
        outcomes = ray.get(
            [
                w.send_all.remote([m for m in names if m != n])
                for w, n in zip(workers, names, strict=True)
            ]
        )
        delivered = sum(1 for o in outcomes for r in o.values() if r == "ok")
        say(f"all-to-all: {delivered} of {args.actors * (args.actors - 1)} messages delivered")
        ray.get([w.serve.remote(args.actors - 1) for w in workers], timeout=60)

        # Request/response and a broadcast.
        server = workers[-1].serve.remote(1)
        answer = ray.get(workers[0].ask.remote(names[-1], "are you there?"))
        ray.get(server)
        say(f"request worker-0 -> {names[-1]}: {answer!r}")
        ray.get(workers[1].publish.remote("a publication for every subscriber"))
        got = ray.get([w.serve.remote(1) for w in workers], timeout=60)
        say(f"publish: {sum(len(g) for g in got)} of {args.actors} subscribers got it, once each")

        hv.draw(args.picture)
        say(f"wrote {args.picture}")

        # Kill a node that is not the head, with its actors, and watch the repair.
        victim = cluster.list_all_nodes()[-1]  # type: ignore[no-untyped-call]
        victim_id = victim.node_id
        lost = [n for n in names if homes[n] == victim_id]
        say(f"killing node {short(victim_id)} (actors there: {', '.join(lost) or 'none'}) ...")
        killed = time.monotonic()
        cluster.remove_node(victim)
        while any(n["NodeID"] == victim_id and n["Alive"] for n in ray.nodes()):  # type: ignore[no-untyped-call]
            time.sleep(0.1)
        views = hv.wait_converged(timeout=60)
        say(
            f"overlay repaired {time.monotonic() - killed:.1f}s after the kill; "
            f"{len(views)} nodes, {len(hv.topology())} links"
        )
        print(plugin.views_summary(views))

        alive_workers = [
            (w, n) for w, n in zip(workers, names, strict=True) if homes[n] != victim_id
        ]
        outcomes = ray.get(
            [w.send_all.remote([m for m in names if m != n]) for w, n in alive_workers]
        )
        reported: dict[str, int] = {}
        for outcome in outcomes:
            for result in outcome.values():
                reported[result] = reported.get(result, 0) + 1
        total = sum(reported.values())
        failed = ", ".join(f"{k} {v}" for k, v in sorted(reported.items()) if k != "ok")
        say(
            f"after the kill: {reported.get('ok', 0)} delivered, "
            f"{total - reported.get('ok', 0)} reported failed ({failed or 'none'})"
        )
        expected = len(alive_workers) * (args.actors - 1)
        if total != expected:
            say(f"ERROR: {expected - total} sends unaccounted for")
            return 1
        say(f"every one of the {total} sends was delivered or reported: none lost silently")
        hv.draw(args.picture)
        say(f"updated {args.picture} (the dead node is crossed out); done")
        return 0
    finally:
        for worker in workers:
            ray.kill(worker)
        stop(cluster, hv)


if __name__ == "__main__":
    sys.exit(main())
