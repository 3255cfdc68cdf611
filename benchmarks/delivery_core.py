"""The cost of the mesh's delivery rules: the pure core alone, and sends between two agents.

    python benchmarks/delivery_core.py            # 50,000 core messages, 4,000 agent sends
    python benchmarks/delivery_core.py --quick    # a tenth of that
    python benchmarks/delivery_core.py --json out.json

Core: two :class:`~ray_hyparview.protocol.delivery.Delivery` objects back to back, no codec,
one send + its delivery + its ACK per message, the inbox drained every 5,000; CPU time of the
process. Agents: two in-memory agents (``MemoryNetwork``) with their mesh, one link, sends of
100 bytes from n1 to an actor on n0, sequential and 500 at a time, wall-clock time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_hyparview.agent.meshnode import MemoryDirectory, MeshNode
from ray_hyparview.agent.node import Agent
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.delivery import Delivery, Route
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport.memory import MemoryNetwork


def core(messages: int) -> float:
    """Microseconds of CPU per message (send, deliver, ACK) between two cores."""
    a = Delivery("a", rng=random.Random(0), incarnation=1)
    b = Delivery("b", rng=random.Random(1), incarnation=1)
    b.register("B")
    payload = b"x" * 100
    started = time.process_time()
    for i in range(messages):
        now = i * 1e-4
        _, actions = a.send("A", "B", "b", payload, now=now, timeout=10)
        for action in actions:
            assert isinstance(action, Route)
            for answer in b.receive("a", action.message, now=now):
                if isinstance(answer, Route):
                    a.receive("b", answer.message, now=now)
        if i % 5000 == 4999:
            b.ack("B", b.take("B", limit=5000)[-1].seq)
    assert a.counters["send.ok"] == messages
    return (time.process_time() - started) / messages * 1e6


async def agents(sends: int) -> tuple[float, float]:
    """Sends per second from n1 to n0: sequential, and 500 concurrent at a time."""
    net = MemoryNetwork()
    directory = MemoryDirectory()
    nodes: list[tuple[Agent, MeshNode]] = []
    for name, contacts in (("n0", ()), ("n1", (Peer("n0", "mem://n0"),))):
        strategy = Strategy(
            local_peer=Peer(name, f"mem://{name}"), contacts=contacts, transport="memory"
        )
        agent = Agent(strategy, transport=net.transport(name, bind=f"mem://{name}"))
        await agent.start()
        nodes.append((agent, MeshNode(agent, directory, rng=random.Random(name))))
    try:
        (agent0, mesh0), (_, mesh1) = nodes
        await agent0.wait_for_active(1, timeout=10)
        async with asyncio.timeout(10):
            while "n0" not in mesh1.router.routes():  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.01)
        mesh0.register("a0")
        mesh1.register("a1")
        payload = b"x" * 100
        started = time.perf_counter()
        for _ in range(sends):
            await mesh1.send("a1", "a0", payload, timeout=10)
        sequential = sends / (time.perf_counter() - started)
        await mesh0.poll("a0", wait=0, limit=10**6)
        batch = min(500, sends)
        started = time.perf_counter()
        for _ in range(sends // batch):
            await asyncio.gather(
                *(mesh1.send("a1", "a0", payload, timeout=10) for _ in range(batch))
            )
        concurrent = (sends // batch * batch) / (time.perf_counter() - started)
        await mesh0.poll("a0", wait=0, limit=10**6)
        return sequential, concurrent
    finally:
        for agent, mesh in nodes:
            await mesh.aclose()
            await agent.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the work")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    result: dict[str, Any] = {"core_us_per_message": round(core(50_000 // scale), 1)}
    sequential, concurrent = asyncio.run(agents(4000 // scale))
    result["agent_sends_per_s_sequential"] = round(sequential)
    result["agent_sends_per_s_500_concurrent"] = round(concurrent)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(
        f"delivery core: {result['core_us_per_message']} us CPU per message; two agents: "
        f"{result['agent_sends_per_s_sequential']:,} sends/s one at a time, "
        f"{result['agent_sends_per_s_500_concurrent']:,} sends/s 500 at a time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
