"""Round trip and throughput: raw pyzmq DEALER/ROUTER + msgpack vs our transport + codec.

Both run in the same process, on the same asyncio loop, on loopback, in alternating blocks, so
the ratio compares like with like on whatever machine runs it, even a busy one.

* **raw**: a ``zmq.asyncio`` DEALER sends a msgpack-packed list of the same shape as a
  KEEPALIVE; the ROUTER unpacks it and answers on the same connection; the DEALER unpacks the
  answer. Throughput: the DEALER sends N frames, the ROUTER drains them in batches (NOBLOCK
  until ``zmq.Again``) and unpacks each.
* **transport**: two :class:`ZmqTransport` (one DEALER each way, monitors, heartbeats on) and
  the full codec (header, limits, schema validation, dataclass construction) at both ends.

Run: ``python benchmarks/roundtrip.py [--rounds 5000] [--messages 50000] [--curve] [--json]``.
Throughput is always measured in plain text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from ray_hyparview.protocol.messages import KeepAlive
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport.zmq import CurveConfig, ZmqTransport
from ray_hyparview.wire import table as codec

INCARNATION = 1_764_300_000_000_000


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
        "mean_us": statistics.fmean(ordered) * 1e6,
    }


class RawPair:
    """A DEALER and a ROUTER; the ROUTER answers on the same connection."""

    def __init__(self, curve: bool = False) -> None:
        self.ctx = zmq.asyncio.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.dealer = self.ctx.socket(zmq.DEALER)
        for s in (self.router, self.dealer):
            s.setsockopt(zmq.LINGER, 0)
        if curve:  # encryption only: raw CURVE without a ZAP handler admits any client key
            server_public, server_secret = zmq.curve_keypair()
            client_public, client_secret = zmq.curve_keypair()
            self.router.setsockopt(zmq.CURVE_SERVER, 1)
            self.router.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
            self.dealer.setsockopt(zmq.CURVE_SERVERKEY, server_public)
            self.dealer.setsockopt(zmq.CURVE_PUBLICKEY, client_public)
            self.dealer.setsockopt(zmq.CURVE_SECRETKEY, client_secret)
        self.router.bind("tcp://127.0.0.1:*")
        self.dealer.connect(self.router.getsockopt_string(zmq.LAST_ENDPOINT))
        self.body = [8, ["node-a", "tcp://127.0.0.1:7000"], INCARNATION]
        self.reply = [8, ["node-b", "tcp://127.0.0.1:7001"], INCARNATION]
        self.server = asyncio.ensure_future(self.serve())

    async def serve(self) -> None:
        while True:
            rid, data = await self.router.recv_multipart()
            msgpack.unpackb(data)
            await self.router.send_multipart([rid, msgpack.packb(self.reply)])

    async def roundtrip(self) -> float:
        start = time.perf_counter()
        await self.dealer.send(msgpack.packb(self.body))
        msgpack.unpackb(await self.dealer.recv())
        return time.perf_counter() - start

    async def aclose(self) -> None:
        self.server.cancel()
        await asyncio.gather(self.server, return_exceptions=True)
        self.router.close(linger=0)
        self.dealer.close(linger=0)
        self.ctx.term()


async def raw_throughput(messages: int) -> float:
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 1000)
    router.bind("tcp://127.0.0.1:*")
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    body = [8, ["node-a", "tcp://127.0.0.1:7000"], INCARNATION]
    shadow: zmq.Socket[bytes] = zmq.Socket.shadow(router.underlying)

    async def produce() -> None:
        for i in range(messages):
            await dealer.send(msgpack.packb(body))
            if i % 64 == 0:
                await asyncio.sleep(0)

    try:
        await dealer.send(msgpack.packb(body))  # connect before timing
        await router.recv_multipart()
        start = time.perf_counter()
        producer = asyncio.ensure_future(produce())
        got = 0
        while got < messages:
            frames = await router.recv_multipart()
            msgpack.unpackb(frames[1])
            got += 1
            while got < messages:
                try:
                    frames = shadow.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msgpack.unpackb(frames[1])
                got += 1
        elapsed = time.perf_counter() - start
        await producer
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()
    return messages / elapsed


def curve_configs() -> tuple[CurveConfig, CurveConfig]:
    keys = {name: zmq.curve_keypair() for name in ("node-a", "node-b")}
    bound = {name: public for name, (public, _) in keys.items()}
    return tuple(  # type: ignore[return-value]
        CurveConfig(public_key=keys[n][0], secret_key=keys[n][1], node_keys=bound)
        for n in ("node-a", "node-b")
    )


async def transport_pair(
    ctx: zmq.asyncio.Context | None = None, curve: bool = False
) -> tuple[ZmqTransport, ZmqTransport, Peer, Peer]:
    if curve:  # CURVE transports need their own contexts (one ZAP handler each)
        ca, cb = curve_configs()
        a, b = ZmqTransport("node-a", curve=ca), ZmqTransport("node-b", curve=cb)
    else:
        a, b = ZmqTransport("node-a", context=ctx), ZmqTransport("node-b", context=ctx)
    pa, pb = Peer("node-a", await a.start()), Peer("node-b", await b.start())
    return a, b, pa, pb


class TransportPair:
    """Two transports with the full codec at both ends; b answers every KEEPALIVE."""

    async def start(self, curve: bool = False) -> None:
        # One context (one I/O thread) for both ends, as the raw pair has.
        self.ctx = zmq.asyncio.Context()
        self.a, self.b, self.pa, self.pb = await transport_pair(self.ctx, curve)
        self.ping = KeepAlive(sender=self.pa, incarnation=INCARNATION)
        self.pong = KeepAlive(sender=self.pb, incarnation=INCARNATION)
        self.server = asyncio.ensure_future(self.serve())

    async def serve(self) -> None:
        while True:
            for sender, data in await self.b.recv_batch():
                message = codec.decode(data)
                if not isinstance(message, KeepAlive) or message.sender.id != sender:
                    raise RuntimeError(f"bad reply {message!r}")
                self.b.send(self.pa, codec.encode(self.pong))

    async def roundtrip(self) -> float:
        start = time.perf_counter()
        self.a.send(self.pb, codec.encode(self.ping))
        for _sender, data in await self.a.recv_batch():
            if not isinstance(codec.decode(data), KeepAlive):
                raise RuntimeError("bad reply")
        return time.perf_counter() - start

    async def aclose(self) -> None:
        self.server.cancel()
        await asyncio.gather(self.server, return_exceptions=True)
        await self.a.aclose()
        await self.b.aclose()
        self.ctx.term()


async def roundtrips(
    rounds: int, warmup: int, blocks: int = 20, curve: bool = False
) -> tuple[list[float], list[float]]:
    """Alternate blocks of raw and transport round trips, so that load from anything else on
    the machine falls on both alike."""
    raw, ours = RawPair(curve), TransportPair()
    await ours.start(curve)
    raw_samples: list[float] = []
    our_samples: list[float] = []
    try:
        for _ in range(warmup):
            await raw.roundtrip()
            await ours.roundtrip()
        per_block = max(1, rounds // blocks)
        for _ in range(blocks):
            for _ in range(per_block):
                raw_samples.append(await raw.roundtrip())
            for _ in range(per_block):
                our_samples.append(await ours.roundtrip())
    finally:
        await raw.aclose()
        await ours.aclose()
    return raw_samples, our_samples


async def transport_throughput(messages: int) -> float:
    ctx = zmq.asyncio.Context()
    a, b, pa, pb = await transport_pair(ctx)
    ping = KeepAlive(sender=pa, incarnation=INCARNATION)

    async def produce() -> None:
        sent = 0
        while sent < messages:
            if a.send(pb, codec.encode(ping)):
                sent += 1
                if sent % 64 == 0:
                    await asyncio.sleep(0)  # let the receiver run, as an agent loop would
            else:
                await asyncio.sleep(0)  # HWM reached: the receiver must drain first

    try:
        a.send(pb, codec.encode(ping))  # dial before timing
        await b.recv_batch()
        start = time.perf_counter()
        producer = asyncio.ensure_future(produce())
        got = 0
        while got < messages:
            for _sender, data in await b.recv_batch():
                codec.decode(data)
                got += 1
        elapsed = time.perf_counter() - start
        await producer
    finally:
        await a.aclose()
        await b.aclose()
        ctx.term()
    return messages / elapsed


async def run(rounds: int, warmup: int, messages: int, curve: bool = False) -> dict[str, Any]:
    raw_samples, our_samples = await roundtrips(rounds, warmup, curve=curve)
    raw, ours = summarize(raw_samples), summarize(our_samples)
    raw_rate = await raw_throughput(messages)
    our_rate = await transport_throughput(messages)
    return {
        "rounds": rounds,
        "curve": curve,
        "messages": messages,
        "raw": {**raw, "msgs_per_s": raw_rate},
        "transport": {**ours, "msgs_per_s": our_rate},
        "median_ratio": ours["median_us"] / raw["median_us"],
        "p99_ratio": ours["p99_us"] / raw["p99_us"],
        "throughput_ratio": our_rate / raw_rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5000, help="timed round trips")
    parser.add_argument("--warmup", type=int, default=500, help="untimed round trips first")
    parser.add_argument("--messages", type=int, default=50_000, help="frames for throughput")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--curve", action="store_true", help="round trips over CURVE on both sides")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.rounds, args.warmup, args.messages, args.curve))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    security = "CURVE" if args.curve else "plain text"
    print(f"round trip of a KEEPALIVE-sized message, {args.rounds} rounds, loopback, {security}")
    print(f"{'':12}{'median us':>12}{'p99 us':>12}{'msgs/s':>12}")
    for name in ("raw", "transport"):
        r = result[name]
        print(f"{name:12}{r['median_us']:12.1f}{r['p99_us']:12.1f}{r['msgs_per_s']:12.0f}")
    print(
        f"ratio (transport / raw): median {result['median_ratio']:.2f},"
        f" p99 {result['p99_ratio']:.2f}, throughput {result['throughput_ratio']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
