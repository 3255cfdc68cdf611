"""Latency of the actor mesh against plain Ray actor calls, between the same actors.

An embedded ``--nodes``-node (default 6) Ray cluster with ``--active`` (default 2) active links
per agent. The benchmark picks, from the converged overlay, a sender node that has a node one
hop away (a neighbour) and a node as far away as the overlay allows (2 or 3 hops), and pins a
sender actor and two receiver actors there. From inside the sender actor it then times, for
each receiver, in short blocks of one method each, rotated round by round (``--block``, see
``_Sender.measure``) so that all of them share the same background noise:

* ``m.send(name, i)``: one-way delivery, acknowledged end to end (the call returns when the
  target node's agent has put the message in the receiver's inbox and its ACK came back);
* ``m.request(name, i)``: a round trip to the receiver actor itself and back (the receiver's
  inbox loop answers it);
* ``handle.echo.remote(i)``: a plain Ray actor call to the same receiver actor;
* ``send_polled`` and ``request_polled``: the same two over handles joined with
  ``local=False``, the Ray-call path (each message crosses two more same-node Ray calls: the
  actor's call into its agent, and the receiving actor's long poll).

Reported per target: median and 99th percentile of each, and their ratios to the plain Ray
call. The route's hop count comes from the sender node's router. ``send`` and ``request`` use
the direct local path between an actor and its node's agent (:mod:`ray_hyparview.agent.localpath`):
frames on a node-local socket, deliveries pushed to the receiving actor.

    python benchmarks/ray_latency.py               # 6 nodes, 1000 samples per method
    python benchmarks/ray_latency.py --quick       # 4 nodes, 100 samples: a smoke run
    python benchmarks/ray_latency.py --json out.json
    python benchmarks/ray_latency.py --plot benchmarks/ray_latency.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_hyparview import cluster as plugin
from ray_hyparview import mesh
from ray_hyparview.cluster.local import connect, demo_config, embedded_cluster, stop
from ray_hyparview.config.models import AGENT_NICE

METHODS = ("send", "request", "ray", "send_polled", "request_polled")
_POLLED = "-polled"  # the name suffix of the handles that use Ray calls and polls


class _Receiver:
    """Answers mesh requests from its inbox and plain Ray calls."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.received = 0
        self._servers: list[asyncio.Task[None]] = []

    async def join(self, name: str) -> str:
        # One handle on the direct local path, one on the Ray-call path (local=False).
        for handle_name, local in ((name, True), (name + _POLLED, False)):
            m = await mesh.join(handle_name, local=local)
            self.handles.append(m)
            self._servers.append(asyncio.get_running_loop().create_task(self._serve(m)))
        return str(self.handles[0].node_id)

    async def _serve(self, m: Any) -> None:
        async for message in m.inbox():
            self.received += 1
            if message.kind == "request":
                await message.reply(message.payload)

    async def echo(self, item: Any) -> Any:
        return item

    async def leave(self) -> int:
        for server in self._servers:
            server.cancel()
        for m in self.handles:
            await m.leave()
        return self.received


class _Sender:
    """Times the three ways of reaching each receiver, interleaved."""

    def __init__(self) -> None:
        self.m: Any = None
        self.polled: Any = None

    async def join(self, name: str) -> str:
        self.m = await mesh.join(name)
        self.polled = await mesh.join(name + _POLLED, local=False)
        return str(self.m.node_id)

    async def measure(
        self, targets: dict[str, Any], samples: int, warmup: int, block: int
    ) -> dict[str, dict[str, list[float]]]:
        """``{target: {method: [seconds, ...]}}``; ``targets`` maps mesh names to handles.

        Rounds of blocks: each round times ``block`` calls of every (target, method) pair in
        turn, in an order rotated by one pair per round. Within a block every call follows a
        call of its own kind, so none pays for the tail of another kind's work (a Ray-call path
        request leaves its receiver polling its agent, which the call after it would share the
        cores with); rotating the order and taking many short rounds spreads the machine's
        drift over all pairs alike. ``block=1`` interleaves call by call."""
        out: dict[str, dict[str, list[float]]] = {t: {m: [] for m in METHODS} for t in targets}
        pairs = [(name, method) for name in targets for method in METHODS]
        clock = time.perf_counter
        for name, method in pairs:
            for i in range(warmup):
                await self._call(method, name, targets[name], i)
        rounds = -(-samples // block)
        for r in range(rounds):
            count = min(block, samples - r * block)
            shift = r % len(pairs)
            for name, method in pairs[shift:] + pairs[:shift]:
                timings = out[name][method]
                handle = targets[name]
                for i in range(count):
                    t0 = clock()
                    await self._call(method, name, handle, i)
                    timings.append(clock() - t0)
        return out

    async def _call(self, method: str, name: str, handle: Any, i: int) -> None:
        if method == "send":
            await self.m.send(name, i, timeout=10.0)
        elif method == "request":
            await self.m.request(name, i, timeout=10.0)
        elif method == "send_polled":
            await self.polled.send(name + _POLLED, i, timeout=10.0)
        elif method == "request_polled":
            await self.polled.request(name + _POLLED, i, timeout=10.0)
        else:
            await handle.echo.remote(i)

    async def channel_kinds(self, names: list[str]) -> dict[str, str]:
        return {n: str(self.m.channel(n).kind) for n in names}

    async def leave(self) -> None:
        await self.m.leave()
        await self.polled.leave()


Receiver: Any = ray.remote(num_cpus=0)(_Receiver)
Sender: Any = ray.remote(num_cpus=0)(_Sender)


def distances(edges: Iterable[tuple[str, str]], source: str) -> dict[str, int]:
    """Hop counts from ``source`` over the overlay's active links (breadth first)."""
    adjacent: dict[str, set[str]] = {}
    for a, b in edges:
        adjacent.setdefault(a, set()).add(b)
        adjacent.setdefault(b, set()).add(a)
    hops = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for peer in adjacent.get(node, ()):
            if peer not in hops:
                hops[peer] = hops[node] + 1
                queue.append(peer)
    return hops


def choose(edges: set[tuple[str, str]], nodes: list[str]) -> tuple[str, str, str | None, int]:
    """(sender node, neighbour node, far node or None, far hops): the sender with the farthest
    reachable node, preferring 2-3 hops."""
    best: tuple[int, str, str, str | None] | None = None
    for source in nodes:
        hops = distances(edges, source)
        neighbours = sorted(n for n, h in hops.items() if h == 1)
        if not neighbours:
            continue
        far = max((n for n in hops if n != source), key=lambda n: (min(hops[n], 3), n))
        score = min(hops[far], 3)
        if best is None or score > best[0]:
            best = (score, source, neighbours[0], far if score >= 2 else None)
    if best is None:
        raise RuntimeError("no node has a neighbour: the overlay is not connected")
    return best[1], best[2], best[3], best[0]


def wait_settled(
    topology: Callable[[], set[tuple[str, str]]], quiet: float, timeout: float
) -> tuple[set[tuple[str, str]], float]:
    """The overlay's links once none changed for ``quiet`` seconds (or after ``timeout``), and
    how long they had held. ``wait_converged`` returns once every node has a link and a route;
    a node below its active view size goes on taking links from its passive view after that,
    and such a link, added while the benchmark times, changes a target's hop count under its
    figures (seen here: a target chosen at 4 hops was 2 hops away for most of its samples)."""
    edges = topology()
    since = start = time.monotonic()
    while (now := time.monotonic()) - since < quiet and now - start < timeout:
        time.sleep(0.2)
        current = topology()
        if current != edges:
            edges, since = current, time.monotonic()
    return edges, time.monotonic() - since


def _hops(n: int) -> str:
    return f"{n} hop" if n == 1 else f"{n} hops"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarise(samples: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for method, values in samples.items():
        out[method] = {
            "median_ms": statistics.median(values) * 1e3,
            "p99_ms": percentile(values, 99) * 1e3,
            "mean_ms": statistics.fmean(values) * 1e3,
            "samples": len(values),
        }
    ray_call = out["ray"]
    for method in METHODS:
        out[method]["median_ratio"] = out[method]["median_ms"] / ray_call["median_ms"]
        out[method]["p99_ratio"] = out[method]["p99_ms"] / ray_call["p99_ms"]
    return out


def plot(raw: Mapping[str, Mapping[str, list[float]]], hops: Mapping[str, int], path: str) -> None:
    """The distribution (share of calls at or under each latency) of every method, one panel
    per target, mesh against the plain Ray call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "send": ("m.send (local path)", "tab:blue", "-"),
        "request": ("m.request (local path)", "tab:green", "-"),
        "ray": ("plain Ray actor call", "black", "-"),
        "send_polled": ("m.send (Ray-call path)", "tab:blue", ":"),
        "request_polled": ("m.request (Ray-call path)", "tab:green", ":"),
    }
    figure, axes = plt.subplots(1, len(raw), figsize=(6 * len(raw), 4), squeeze=False)
    for ax, (target, samples) in zip(axes[0], raw.items(), strict=True):
        for method, values in samples.items():
            label, colour, line = styles[method]
            ordered = sorted(v * 1e3 for v in values)
            shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, shares, where="post", label=label, color=colour, linestyle=line)
        ax.set_xscale("log")
        ax.set_xlabel("latency from inside the sending actor, ms (log)")
        ax.set_ylabel("share of calls")
        ax.set_title(f"{target}: {_hops(hops[target])} away")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--active", type=int, default=2, help="active view size (default 2)")
    parser.add_argument("--samples", type=int, default=1000, help="timed calls per method")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--block",
        type=int,
        default=50,
        help="calls of one method in a row, in rotated rounds (default 50; 1 interleaves)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds the overlay's links must stay unchanged before timing (default 5)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=AGENT_NICE,
        help=f"nice value of the agents' processes (default {AGENT_NICE}; 0: Ray's default)",
    )
    parser.add_argument("--quick", action="store_true", help="4 nodes, 100 samples")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="also draw the latency distributions")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.samples, args.warmup, args.block = 4, 100, 10, 10
    if args.nodes < 3:
        parser.error("use at least 3 nodes")
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
        hv = plugin.start(config, bind_host="127.0.0.1", nice=args.nice)
        nodes = sorted(hv.wait_converged(timeout=120))
        edges, held = wait_settled(hv.topology, args.settle, 60.0)
        views = hv.views()
        say(f"overlay up: {len(nodes)} agents, {len(edges)} links, unchanged for {held:.1f}s")
        print(plugin.views_summary(views))
        source, near, far, far_hops = choose(edges, nodes)
        if far is None:
            say("no node is 2 or more hops from any other: measuring the neighbour only")

        def place(node: str) -> NodeAffinitySchedulingStrategy:
            return NodeAffinitySchedulingStrategy(node, soft=False)

        sender = Sender.options(scheduling_strategy=place(source)).remote()
        receivers = {"near": Receiver.options(scheduling_strategy=place(near)).remote()}
        if far is not None:
            receivers["far"] = Receiver.options(scheduling_strategy=place(far)).remote()
        actors = [sender, *receivers.values()]
        ray.get(sender.join.remote("sender"))
        ray.get([r.join.remote(name) for name, r in receivers.items()])
        route_table = ray.get(plugin.get_agent(source).mesh_stats.remote())["routes"]
        hops = {"near": 1}
        placed = {"near": near}
        if far is not None:
            hops["far"] = int(route_table.get(far, [None, far_hops])[1])
            placed["far"] = far
        kinds = ray.get(sender.channel_kinds.remote(list(receivers)))
        say(
            f"sender on {source[:8]}; near receiver on {near[:8]} ({kinds['near']}, {_hops(1)})"
            + (
                f"; far receiver on {far[:8]} ({kinds['far']}, {_hops(hops['far'])})"
                if far is not None
                else ""
            )
        )
        say(f"timing {args.samples} calls per method and target (after {args.warmup} warm-up)")
        t0 = time.monotonic()
        raw = ray.get(
            sender.measure.remote(receivers, args.samples, args.warmup, max(1, args.block)),
            timeout=900,
        )
        say(f"measured in {time.monotonic() - t0:.1f}s")
        before, after = distances(edges, source), distances(hv.topology(), source)
        moved = {t: after.get(n) for t, n in placed.items() if after.get(n) != before[n]}
        if moved:
            say(
                "WARNING: the overlay changed during the timing, so the figures mix hop counts: "
                + ", ".join(f"{t} is now {h} hops away" for t, h in moved.items())
                + ". Run again."
            )
        results = {target: summarise(samples) for target, samples in raw.items()}

        print()
        print(f"latency from inside an actor, {args.nodes} nodes, active_view_size={args.active}")
        print(
            f"  {'target':12}  {'method':23}  {'median ms':>9}  {'p99 ms':>8}  "
            f"{'median/ray':>10}  {'p99/ray':>8}"
        )
        labels = {
            "send": "m.send",
            "request": "m.request",
            "ray": "ray call",
            "send_polled": "send (Ray-call path)",
            "request_polled": "request (Ray-call path)",
        }
        for target, table in results.items():
            for method in METHODS:
                row = table[method]
                print(
                    f"  {f'{target} ({_hops(hops[target])})':12}  {labels[method]:23}  "
                    f"{row['median_ms']:9.3f}  {row['p99_ms']:8.3f}  "
                    f"{row['median_ratio']:10.2f}  {row['p99_ratio']:8.2f}"
                )
        print()
        for target, table in results.items():
            for method in ("send", "request"):
                say(
                    f"summary {target} ({_hops(hops[target])}): m.{method} median "
                    f"{table[method]['median_ms']:.2f} ms = {table[method]['median_ratio']:.2f}x "
                    f"the Ray call ({table['ray']['median_ms']:.2f} ms); p99 "
                    f"{table[method]['p99_ms']:.2f} ms = {table[method]['p99_ratio']:.2f}x"
                )
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(
                    {
                        "benchmark": "ray_latency",
                        "nodes": args.nodes,
                        "active_view_size": args.active,
                        "samples": args.samples,
                        "block": max(1, args.block),
                        "cpus": os.cpu_count(),
                        "hops": hops,
                        "hops_changed": moved,
                        "channel_kinds": kinds,
                        "results": results,
                    },
                    handle,
                    indent=2,
                )
            say(f"wrote {args.json}")
        if args.plot:
            plot(raw, hops, args.plot)
            say(f"wrote {args.plot}")
        return 0
    finally:
        for actor in actors:
            ray.kill(actor)
        stop(cluster, hv)


if __name__ == "__main__":
    sys.exit(main())
