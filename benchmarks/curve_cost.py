"""The cost of CURVE: round trip and throughput of our transport, CURVE against plain text.

Two pairs of :class:`ZmqTransport` live side by side in one process, on one asyncio loop, on
loopback: one pair in plain text, one with CURVE on both ends (key->id binding and the ZAP
handler, as an agent runs it). Measurements alternate between the pairs in blocks, and the
order inside each block alternates too, so that load from anything else on the machine falls
on both alike; the figures are medians over the blocks and the ratio CURVE / plain.

* **round trip**: node-a sends a frame of the given size, node-b answers with a frame of the
  same size, node-a awaits it. KEEPALIVE-sized frames go through the full codec both ways.
* **throughput**: node-a sends N frames of the given size as fast as the link takes them
  (retrying when the send queue is full), node-b drains them in batches; frames per second
  and MB per second at the receiver.

Run: ``python benchmarks/curve_cost.py [--blocks 10] [--rounds 200] [--messages 5000]
[--sizes 0,1024,16384,60000] [--json] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import zmq

from ray_hyparview.protocol.messages import KeepAlive
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport.zmq import CurveConfig, ZmqTransport
from ray_hyparview.wire import table as codec

INCARNATION = 1_764_300_000_000_000
KEEPALIVE = 0
"""The size given for a KEEPALIVE encoded by the codec (about 60 bytes)."""


def curve_configs() -> tuple[CurveConfig, CurveConfig]:
    keys = {name: zmq.curve_keypair() for name in ("node-a", "node-b")}
    bound = {name: public for name, (public, _) in keys.items()}
    a, b = (
        CurveConfig(public_key=keys[n][0], secret_key=keys[n][1], node_keys=bound)
        for n in ("node-a", "node-b")
    )
    return a, b


class Pair:
    """node-a and node-b; node-b echoes every frame back (the same bytes)."""

    def __init__(self, curve: bool) -> None:
        self.curve = curve
        # Each transport has a context (an I/O thread) of its own in both modes, as agents in
        # separate processes have: a CURVE transport needs one anyway (one ZAP handler each).
        if curve:
            ca, cb = curve_configs()
            self.a, self.b = ZmqTransport("node-a", curve=ca), ZmqTransport("node-b", curve=cb)
        else:
            self.a, self.b = ZmqTransport("node-a"), ZmqTransport("node-b")
        self.echo = True
        self.received = 0
        self.received_bytes = 0
        self.target = 0
        self.reached = asyncio.Event()

    async def start(self) -> None:
        self.pa = Peer("node-a", await self.a.start())
        self.pb = Peer("node-b", await self.b.start())
        self.server = asyncio.ensure_future(self.serve())
        await self.roundtrip(KEEPALIVE)  # both links dialled and up before any timing

    async def serve(self) -> None:
        while True:
            for _sender, data in await self.b.recv_batch():
                self.received += 1
                self.received_bytes += len(data)
                if self.received == self.target:
                    self.reached.set()
                if self.echo:
                    self.b.send(self.pa, data)

    async def roundtrip(self, size: int) -> float:
        if size == KEEPALIVE:
            frame = codec.encode(KeepAlive(sender=self.pa, incarnation=INCARNATION))
        else:
            frame = b"x" * size
        start = time.perf_counter()
        self.a.send(self.pb, frame)
        async with asyncio.timeout(10):
            for _sender, data in await self.a.recv_batch():
                if size == KEEPALIVE and not isinstance(codec.decode(data), KeepAlive):
                    raise RuntimeError("bad reply")
        return time.perf_counter() - start

    async def throughput(self, size: int, messages: int) -> tuple[float, float]:
        """(frames per second, MB per second) received by node-b."""
        frame = b"x" * size
        self.echo = False
        first, first_bytes = self.received, self.received_bytes
        self.target = first + messages
        self.reached.clear()
        start = time.perf_counter()
        sent = 0
        async with asyncio.timeout(120):
            while sent < messages:
                if self.a.send(self.pb, frame):
                    sent += 1
                    if sent % 64 == 0:
                        await asyncio.sleep(0)
                else:
                    await asyncio.sleep(0)  # the send queue is full: let node-b drain
            await self.reached.wait()
        elapsed = time.perf_counter() - start
        self.echo = True
        return messages / elapsed, (self.received_bytes - first_bytes) / elapsed / 1e6

    async def aclose(self) -> None:
        self.server.cancel()
        await asyncio.gather(self.server, return_exceptions=True)
        await self.a.aclose()
        await self.b.aclose()


async def run(blocks: int, rounds: int, messages: int, sizes: list[int]) -> dict[str, Any]:
    pairs = {"plain": Pair(curve=False), "curve": Pair(curve=True)}
    rtt: dict[str, dict[int, list[float]]] = {m: {s: [] for s in sizes} for m in pairs}
    rate: dict[str, dict[int, list[tuple[float, float]]]] = {
        m: {s: [] for s in sizes} for m in pairs
    }
    try:
        for pair in pairs.values():
            await pair.start()
        for block in range(blocks):
            order = ["plain", "curve"] if block % 2 == 0 else ["curve", "plain"]
            for size in sizes:
                for mode in order:
                    pair = pairs[mode]
                    rtt[mode][size] += [await pair.roundtrip(size) for _ in range(rounds)]
                for mode in order:
                    rate[mode][size].append(await pairs[mode].throughput(size, messages))
    finally:
        for pair in pairs.values():
            await pair.aclose()
    results: dict[str, Any] = {"blocks": blocks, "rounds": rounds, "messages": messages}
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"size": "keepalive" if size == KEEPALIVE else size}
        for mode in pairs:
            row[f"{mode}_rtt_median_us"] = statistics.median(rtt[mode][size]) * 1e6
            row[f"{mode}_msgs_per_s"] = statistics.median(r[0] for r in rate[mode][size])
            row[f"{mode}_mb_per_s"] = statistics.median(r[1] for r in rate[mode][size])
        row["rtt_ratio"] = row["curve_rtt_median_us"] / row["plain_rtt_median_us"]
        row["throughput_ratio"] = row["curve_msgs_per_s"] / row["plain_msgs_per_s"]
        rows.append(row)
    results["sizes"] = rows
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks")
    parser.add_argument("--rounds", type=int, default=200, help="round trips per block and size")
    parser.add_argument("--messages", type=int, default=5000, help="frames per throughput block")
    parser.add_argument(
        "--sizes",
        default="0,1024,16384,60000",
        help="frame sizes in bytes, comma-separated; 0 is a KEEPALIVE through the codec",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.rounds, args.messages = 2, 50, 1000
    sizes = [int(s) for s in args.sizes.split(",")]
    result = asyncio.run(run(args.blocks, args.rounds, args.messages, sizes))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"CURVE against plain text, loopback, {args.blocks} alternating blocks of"
        f" {args.rounds} round trips and {args.messages} frames; medians"
    )
    head = ("size", "rtt plain", "rtt CURVE", "ratio", "msg/s plain", "msg/s CURVE", "ratio")
    print("".join(f"{h:>12}" for h in head) + f"{'MB/s plain':>12}{'MB/s CURVE':>12}")
    for row in result["sizes"]:
        print(
            f"{row['size']!s:>12}{row['plain_rtt_median_us']:10.0f}us"
            f"{row['curve_rtt_median_us']:10.0f}us{row['rtt_ratio']:12.2f}"
            f"{row['plain_msgs_per_s']:12.0f}{row['curve_msgs_per_s']:12.0f}"
            f"{row['throughput_ratio']:12.2f}{row['plain_mb_per_s']:12.2f}"
            f"{row['curve_mb_per_s']:12.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
