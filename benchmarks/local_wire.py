"""The local path's wire: a round trip between two processes on one machine, ZeroMQ ``ipc://``
against the framed Unix stream the local path uses
(:mod:`ray_hyparview.transport.localstream`).

Both ends are asyncio processes that read in the event loop's reader callback and answer at
once, as the agent and an actor do: for ZeroMQ a ROUTER (the agent's end) and a DEALER (the
actor's end) with non-blocking sends and ``EVENTS`` drains, as the local path was written
until 2026-12-05; for the stream a :class:`StreamServer` and a :class:`StreamClient`. The
client times ``--ops`` round trips of a ``--size``-byte message per block, the two wires in
alternating blocks, and prints medians, p99 and the ratio of the stream to ZeroMQ, for each of
``--pairs`` pairs of processes: whether the scheduler puts the two on one vCPU or on two moves
a round trip between about 20 and 80 us on the benchmarks' machine, for both wires alike, and
it stays put for a pair's life (``taskset -c 0`` runs both on one).

    python benchmarks/local_wire.py [--ops 2000] [--blocks 4] [--size 200] [--pairs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, cast

import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_hyparview.transport.localstream import StreamClient, StreamServer

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


class _ZmqEnd:
    """A ZeroMQ socket served in the loop's reader callback, as the local path served its
    sockets until 2026-12-05: non-blocking sends, ``EVENTS`` drains."""

    def __init__(self, sock: zmq.Socket[bytes], on_message: Callable[[list[bytes]], None]):
        sock.setsockopt(zmq.LINGER, 0)
        self.sock = sock
        self._on_message = on_message
        self._fd = int(sock.getsockopt(zmq.FD))
        asyncio.get_running_loop().add_reader(self._fd, self.drain)

    def drain(self) -> None:
        while cast(int, self.sock.get(_EVENTS)) & _POLLIN:
            self._on_message(self.sock.recv_multipart(_NOBLOCK))

    def send(self, frames: list[bytes]) -> None:
        for frame in frames[:-1]:
            self.sock.send(frame, _SNDMORE | _NOBLOCK)
        self.sock.send(frames[-1], _NOBLOCK)
        # The send may have taken the descriptor's edge: look again.
        if cast(int, self.sock.get(_EVENTS)) & _POLLIN:
            asyncio.get_running_loop().call_soon(self.drain)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        self.sock.close()


async def _serve(directory: str) -> None:
    """The answering end: both wires, each message sent straight back."""
    server: StreamServer | None = None
    router: _ZmqEnd | None = None

    def answer_zmq(frames: list[bytes]) -> None:
        assert router is not None
        router.send([frames[0], frames[-1]])

    def answer_stream(frames: list[bytes]) -> None:
        assert server is not None
        server.send(frames[0], frames[1:])

    router = _ZmqEnd(zmq.Context.instance().socket(zmq.ROUTER), answer_zmq)
    router.sock.bind(f"ipc://{directory}/zmq.sock")
    server = StreamServer(asyncio.get_running_loop(), answer_stream)
    server.bind(f"{directory}/stream.sock")
    print("ready", flush=True)  # the parent waits for this line
    await asyncio.get_running_loop().create_future()  # until killed


class _Client:
    def __init__(self, directory: str) -> None:
        loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._dealer = _ZmqEnd(zmq.Context.instance().socket(zmq.DEALER), self._answered)
        self._dealer.sock.connect(f"ipc://{directory}/zmq.sock")
        self._stream = StreamClient(f"ipc://{directory}/stream.sock", loop, self._answered)

    def _answered(self, _frames: list[bytes]) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def block(self, wire: str, ops: int, body: bytes) -> list[float]:
        end = self._dealer if wire == "zmq" else self._stream
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        samples = []
        for _ in range(ops):
            self._waiter = loop.create_future()
            start = clock()
            end.send([body])
            await self._waiter
            samples.append(clock() - start)
        return samples

    def close(self) -> None:
        self._stream.close()
        self._dealer.close()


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
        "ops": len(ordered),
    }


async def _measure(directory: str, ops: int, blocks: int, size: int) -> dict[str, Any]:
    client = _Client(directory)
    body = os.urandom(size)
    try:
        for wire in ("zmq", "stream"):  # warm-up
            await client.block(wire, 200, body)
        samples: dict[str, list[float]] = {"zmq": [], "stream": []}
        for _ in range(blocks):
            for wire in samples:
                samples[wire] += await client.block(wire, ops // blocks, body)
    finally:
        client.close()
    results: dict[str, Any] = {wire: _summary(s) for wire, s in samples.items()}
    results["median_ratio"] = results["stream"]["median_us"] / results["zmq"]["median_us"]
    return results


def _one_pair(ops: int, blocks: int, size: int) -> dict[str, Any] | None:
    """Both wires between this process and a new answering one."""
    with tempfile.TemporaryDirectory(prefix="hv-wire-") as directory:
        server = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", directory],
            stdout=subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            ready, _, _ = select.select([server.stdout], [], [], 30)
            if not ready or server.stdout.readline() != b"ready\n":
                print("the answering process did not start", file=sys.stderr)
                return None
            return asyncio.run(_measure(directory, ops, blocks, size))
        finally:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="round trips per wire")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks")
    parser.add_argument("--size", type=int, default=200, help="message bytes")
    parser.add_argument(
        "--pairs",
        type=int,
        default=5,
        help="pairs of processes, each measured anew: where the scheduler places the two "
        "processes (one vCPU or two) moves a round trip several times over",
    )
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve))
        return 0
    rounds = []
    for _ in range(args.pairs):
        result = _one_pair(args.ops, args.blocks, args.size)
        if result is None:
            return 1
        rounds.append(result)
    print(
        f"{args.pairs} pairs of processes, {args.ops} round trips of {args.size} bytes per wire "
        "in each"
    )
    for i, result in enumerate(rounds, 1):
        print(
            f"  pair {i}: ZeroMQ ipc:// DEALER/ROUTER median {result['zmq']['median_us']:6.1f} us, "
            f"Unix stream {result['stream']['median_us']:6.1f} us, "
            f"stream / ZeroMQ {result['median_ratio']:.2f}x"
        )
    ratios = sorted(r["median_ratio"] for r in rounds)
    results: dict[str, Any] = {"pairs": rounds, "median_ratio": statistics.median(ratios)}
    print(
        f"  stream / ZeroMQ: median over the pairs {results['median_ratio']:.2f}x "
        f"(range {ratios[0]:.2f}x to {ratios[-1]:.2f}x)"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"benchmark": "local_wire", "cpus": os.cpu_count(), **results}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
