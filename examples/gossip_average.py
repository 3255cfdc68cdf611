"""Decentralised mean over the actor mesh: push-pull gossip averaging.

Every actor holds a number. In each round every actor picks a random other actor and the two
average their values with one mesh ``request`` (push-pull: the request carries the caller's
value, the reply carries the callee's). Nobody ever sees all the values, yet every value
converges to the true mean, exponentially fast in the number of rounds (Kempe, Dobra, Gehrke,
"Gossip-based computation of aggregate information", FOCS 2003; Jelasity, Montresor,
Babaoglu, "Gossip-based aggregation in large dynamic networks", ACM TOCS 2005).

The sum of all values is conserved exactly, even when an actor serves requests while its own
request is in flight: the callee moves its value by ``(x_caller - x_callee) / 2`` and the
caller moves its own *current* value by the opposite amount, ``(x_callee - x_sent) / 2``.
A request that fails (a :class:`~ray_hyparview.mesh.DeliveryError`) changes nothing at the
caller; only a reply lost after the callee applied its half would shift the sum, and the final
check would report that as a drifted mean.

    python examples/gossip_average.py --nodes 4 --actors 16 --rounds 15

Prints the spread (max - min) and the largest error against the true mean after each round,
and exits 0 when the spread fell by the requested factor with the mean unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_hyparview import cluster as plugin
from ray_hyparview import mesh
from ray_hyparview.cluster.local import connect, demo_config, embedded_cluster, stop


class _Averager:
    """Holds one value; averages it with random peers over the mesh and serves their requests."""

    def __init__(self, value: float, seed: int) -> None:
        self.value = value
        self.rng = random.Random(seed)
        self.m: Any = None
        self.peers: list[str] = []
        self.failed = 0
        self.served = 0
        self._server: asyncio.Task[None] | None = None

    async def join(self, name: str, peers: list[str]) -> str:
        self.m = await mesh.join(name)
        self.peers = [p for p in peers if p != name]
        self._server = asyncio.get_running_loop().create_task(self._serve())
        return str(self.m.node_id)

    async def _serve(self) -> None:
        async for message in self.m.inbox():
            if message.kind != "request":
                continue
            theirs = float(message.payload)
            mine = self.value
            # Read and write with no await in between: atomic on this actor's event loop.
            self.value = (mine + theirs) / 2
            self.served += 1
            with contextlib.suppress(mesh.DeliveryError):
                await message.reply(mine)

    async def gossip(self) -> str:
        """One push-pull exchange with a random peer; returns its channel kind or the error."""
        peer = self.rng.choice(self.peers)
        sent = self.value
        try:
            theirs = float(await self.m.request(peer, sent, timeout=5.0))
        except mesh.DeliveryError as exc:
            self.failed += 1
            return exc.reason
        self.value += (theirs - sent) / 2
        return str(self.m.channel(peer).kind)

    async def get(self) -> float:
        return self.value

    async def stop(self) -> tuple[int, int]:
        if self._server is not None:
            self._server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server
        await self.m.leave()
        return self.served, self.failed


Averager: Any = ray.remote(num_cpus=0)(_Averager)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4, help="Ray nodes (default 4)")
    parser.add_argument("--actors", type=int, default=16, help="averaging actors (default 16)")
    parser.add_argument("--rounds", type=int, default=15, help="gossip rounds (default 15)")
    parser.add_argument("--active", type=int, default=2, help="active view size (default 2)")
    parser.add_argument(
        "--target", type=float, default=100.0, help="required spread reduction (default 100x)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the initial values")
    args = parser.parse_args()
    if args.nodes < 2 or args.actors < 2 or args.rounds < 1:
        parser.error("use at least 2 nodes, 2 actors and 1 round")
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

        rng = random.Random(args.seed)
        values = [rng.uniform(0.0, 100.0) for _ in range(args.actors)]
        true_mean = sum(values) / len(values)
        names = [f"avg-{i}" for i in range(args.actors)]
        actors = [
            Averager.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    nodes[i % len(nodes)], soft=False
                )
            ).remote(values[i], args.seed * 1000 + i)
            for i in range(args.actors)
        ]
        ray.get([a.join.remote(n, names) for a, n in zip(actors, names, strict=True)])
        say(f"{args.actors} actors joined; true mean {true_mean:.6f} (nobody is told it)")

        first_spread = max(values) - min(values)
        print(f"  {'round':>5}  {'spread (max-min)':>16}  {'max |x - mean|':>14}  paths")
        print(f"  {0:5d}  {first_spread:16.6f}  {max(abs(v - true_mean) for v in values):14.6f}")
        spread = first_spread
        for r in range(1, args.rounds + 1):
            outcomes = ray.get([a.gossip.remote() for a in actors], timeout=60)
            values = ray.get([a.get.remote() for a in actors])
            spread = max(values) - min(values)
            error = max(abs(v - true_mean) for v in values)
            kinds = {k: outcomes.count(k) for k in sorted(set(outcomes))}
            paths = " ".join(f"{k}={v}" for k, v in kinds.items())
            print(f"  {r:5d}  {spread:16.6f}  {error:14.6f}  {paths}", flush=True)

        mean_now = sum(values) / len(values)
        totals = ray.get([a.stop.remote() for a in actors])
        failed = sum(f for _, f in totals)
        reduction = first_spread / spread if spread > 0 else float("inf")
        say(
            f"after {args.rounds} rounds: spread {spread:.3g} ({reduction:.3g}x smaller), "
            f"mean {mean_now:.9f} vs true {true_mean:.9f}, {failed} exchanges failed (reported)"
        )
        if abs(mean_now - true_mean) > 1e-6 * max(1.0, abs(true_mean)):
            say("ERROR: the mean drifted: an exchange was applied on one side only")
            return 1
        if reduction < args.target:
            say(f"ERROR: the spread fell only {reduction:.3g}x, wanted {args.target:g}x")
            return 1
        say("converged to the true mean without any central coordinator; done")
        return 0
    finally:
        for actor in actors:
            ray.kill(actor)
        stop(cluster, hv)


if __name__ == "__main__":
    sys.exit(main())
