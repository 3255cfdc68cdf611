"""Round trip of a protocol message between two agents vs raw pyzmq, in the same run.

* **raw**: the baseline of ``roundtrip.py``: a ``zmq.asyncio`` DEALER sends a msgpack list
  shaped like a KEEPALIVE, a ROUTER unpacks it and answers on the same connection.
* **agents**: two whole :class:`~ray_hyparview.agent.node.Agent` objects, linked as HyParView
  neighbours over ZeroMQ (monitors and heartbeats on, keepalives flowing). Agent A sends a
  PING frame (a registered message type) with ``send_raw``; agent B's receive loop takes it in
  a batch, decodes it (header, limits, schema), dispatches it to a handler that answers PONG
  over B's own link to A, and A's receive loop resolves the waiting future. So every layer of
  the agent is in the measured path: codec, transport, batching and dispatch, both ways.

Both run in one process on one loop, in alternating blocks, so that the ratio compares like
with like even on a busy machine. Also reported: how many PING/PONG exchanges per second one
agent pair sustains with many in flight.

    python benchmarks/agent_roundtrip.py [--rounds 3000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from roundtrip import RawPair, summarize

from ray_hyparview.agent.node import Agent
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.wire.codec import Codec, IntField, Registry
from ray_hyparview.wire.table import TABLE


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """A benchmark probe (application tag range)."""

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    seq: int


# Application messages take tags 64-127: the package's table plus two rows of our own.
CODEC = Codec(
    Registry.from_table(
        (
            *TABLE,
            (120, Ping, {"seq": IntField(0, 2**63 - 1)}),
            (121, Pong, {"seq": IntField(0, 2**63 - 1)}),
        )
    )
)


class AgentPair:
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.seq = 0

    async def start(self) -> None:
        config = HyParViewConfig(shuffle_interval=30.0)
        self.a = Agent(
            Strategy(local_peer=Peer("bench-a", "tcp://127.0.0.1:0"), hyparview_config=config),
            rng=random.Random(1),
            codec=CODEC,
        )
        await self.a.start()
        self.b = Agent(
            Strategy(
                local_peer=Peer("bench-b", "tcp://127.0.0.1:0"),
                contacts=(self.a.myself,),
                hyparview_config=config,
            ),
            rng=random.Random(2),
            codec=CODEC,
        )
        await self.b.start()
        await self.a.wait_for_active(1, timeout=10)
        await self.b.wait_for_active(1, timeout=10)
        self.b.add_handler(Ping, self._on_ping)
        self.a.add_handler(Pong, self._on_pong)

    def _on_ping(self, sender: NodeId, message: Any) -> None:
        self.b.send_raw(self.a.myself, Pong(seq=message.seq))

    def _on_pong(self, sender: NodeId, message: Any) -> None:
        future = self.waiting.pop(message.seq, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _ping(self) -> asyncio.Future[None]:
        self.seq += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = future
        self.a.send_raw(self.b.myself, Ping(seq=self.seq))
        return future

    async def roundtrip(self) -> float:
        start = time.perf_counter()
        await asyncio.wait_for(self._ping(), 5.0)
        return time.perf_counter() - start

    async def throughput(self, messages: int, window: int = 256) -> float:
        start = time.perf_counter()
        inflight: list[asyncio.Future[None]] = []
        for _ in range(messages):
            inflight.append(self._ping())
            if len(inflight) >= window:
                await asyncio.wait_for(asyncio.gather(*inflight), 30.0)
                inflight.clear()
        await asyncio.wait_for(asyncio.gather(*inflight), 30.0)
        return messages / (time.perf_counter() - start)

    async def aclose(self) -> None:
        await self.b.aclose()
        await self.a.aclose()


async def run(rounds: int, warmup: int, messages: int) -> dict[str, Any]:
    raw = RawPair()
    pair = AgentPair()
    await pair.start()
    try:
        for _ in range(warmup):
            await raw.roundtrip()
            await pair.roundtrip()
        raw_samples: list[float] = []
        agent_samples: list[float] = []
        block = 100
        for _ in range(max(1, rounds // block)):  # alternate blocks: same conditions for both
            raw_samples += [await raw.roundtrip() for _ in range(block)]
            agent_samples += [await pair.roundtrip() for _ in range(block)]
        rate = await pair.throughput(messages)
    finally:
        await pair.aclose()
        await raw.aclose()
    raw_stats, agent_stats = summarize(raw_samples), summarize(agent_samples)
    return {
        "rounds": len(agent_samples),
        "raw": raw_stats,
        "agents": agent_stats,
        "median_ratio": agent_stats["median_us"] / raw_stats["median_us"],
        "p99_ratio": agent_stats["p99_us"] / raw_stats["p99_us"],
        "agent_exchanges_per_second": rate,
        "load_average": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20000, help="throughput run size")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500 rounds")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.messages = 500, 50, 2000
    result = asyncio.run(run(args.rounds, args.warmup, args.messages))
    raw, ours = result["raw"], result["agents"]
    print(f"{'path':<34} {'median us':>10} {'p99 us':>10}")
    for label, row in (("raw pyzmq DEALER/ROUTER + msgpack", raw), ("agent to agent", ours)):
        print(f"{label:<34} {row['median_us']:>10.1f} {row['p99_us']:>10.1f}")
    print(
        f"ratio agents / raw: median {result['median_ratio']:.2f} (target <= 1.5),"
        f" p99 {result['p99_ratio']:.2f}; {result['agent_exchanges_per_second']:,.0f} PING/PONG"
        f" exchanges per second per agent pair; load average {result['load_average']:.1f}"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
