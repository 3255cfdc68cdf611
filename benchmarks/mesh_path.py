"""The whole path of a mesh message in one process, against raw pyzmq along the same sockets.

No Ray and no process wake-ups: what is left is the Python and libzmq work of every party, so
changes to the agent's own cost show here well before they show in ``ray_latency.py``.

* **mesh**: two whole agents linked over ZeroMQ TCP on loopback, each with its mesh service
  and its local path (:class:`~ray_hyparview.agent.localpath.LocalServer`, a Unix socket), a
  sending :class:`~ray_hyparview.mesh.Mesh` handle on one and a receiving handle on the other
  whose ``inbox()`` loop answers requests. ``m.send`` crosses the sender's local link, the
  agents' link, and comes back as an ACK and an outcome; the item is pushed to the receiver.
* **raw**: the same five hops as plain pyzmq sockets and msgpack lists, one ``zmq.asyncio``
  task per socket: client to its agent (ZeroMQ ``ipc://``), agent to agent (TCP), the
  receiving agent pushes to its client (``ipc://``) and acknowledges back (TCP), and the first
  agent answers its client (``ipc://``). For ``request`` the receiving client answers instead
  of the agent. (The mesh's local hops are not ZeroMQ since 2026-12-05; the raw path's still
  are, so the ratio includes the difference of the local wires.)

Both run on one event loop in alternating blocks, so their ratio compares like with like on a
busy machine. Reported: median and p99 wall time per operation and CPU time per operation of
the process (libzmq's I/O thread included).

    python benchmarks/mesh_path.py [--ops 2000] [--blocks 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import zmq
import zmq.asyncio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_hyparview.agent.localpath import LocalLink, LocalServer
from ray_hyparview.agent.meshnode import MemoryDirectory, MeshNode
from ray_hyparview.agent.node import Agent
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.mesh import Mesh, _link_error
from ray_hyparview.protocol.delivery import DeliveryConfig
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.testing.conditions import until

Op = Callable[[int], Awaitable[Any]]


class _NoRay:
    """The agent actor handle of a handle made outside Ray: nothing here may call it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name}: a Ray call on the measured path")


class MeshPath:
    async def start(self, directory: str, delivery: DeliveryConfig | None = None) -> None:
        names = MemoryDirectory()
        a_strategy = Strategy(local_peer=Peer("a", "tcp://127.0.0.1:0"))
        self.a = Agent(a_strategy, rng=random.Random(1))
        await self.a.start()
        b_strategy = Strategy(local_peer=Peer("b", "tcp://127.0.0.1:0"), contacts=(self.a.myself,))
        self.b = Agent(b_strategy, rng=random.Random(2))
        await self.b.start()
        self.meshes = (
            MeshNode(self.a, names, delivery=delivery, rng=random.Random(3)),
            MeshNode(self.b, names, delivery=delivery, rng=random.Random(4)),
        )
        self.servers = []
        for i, mesh in enumerate(self.meshes):
            os.makedirs(f"{directory}/{i}", exist_ok=True)
            server = LocalServer(mesh, directory=f"{directory}/{i}")
            await server.start()
            self.servers.append(server)
        ma, mb = self.meshes
        await until(lambda: "b" in ma.router.routes() and "a" in mb.router.routes(), limit=20)
        self.writer = await self._handle(0, "writer")
        self.reader = await self._handle(1, "reader")
        self._serving = asyncio.get_running_loop().create_task(self._serve())

    async def _handle(self, index: int, name: str) -> Mesh:
        mesh, server = self.meshes[index], self.servers[index]
        mesh.register(name)
        loop = asyncio.get_running_loop()
        link = LocalLink(server.endpoint, server.admit(name), loop=loop, error=_link_error)
        await link.open(timeout=5)
        return Mesh(name, mesh.node_id, _NoRay(), [], link)

    async def _serve(self) -> None:
        async for message in self.reader.inbox():
            if message.kind == "request":
                await message.reply(message.payload)

    async def send(self, i: int) -> None:
        await self.writer.send("reader", i, timeout=10)

    async def request(self, i: int) -> Any:
        return await self.writer.request("reader", i, timeout=10)

    async def aclose(self) -> None:
        self._serving.cancel()
        for handle in (self.writer, self.reader):
            if handle._link is not None:
                handle._link.close()
        for server in self.servers:
            await server.aclose()
        for mesh in self.meshes:
            await mesh.aclose()
        await self.a.aclose()
        await self.b.aclose()


class RawPath:
    """The same hops as plain sockets: msgpack lists, one task per receiving socket."""

    async def start(self, directory: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self._sockets: list[zmq.asyncio.Socket] = []
        a_local = self._socket(zmq.ROUTER, bind=f"ipc://{directory}/raw-a")
        b_local = self._socket(zmq.ROUTER, bind=f"ipc://{directory}/raw-b")
        a_in = self._socket(zmq.ROUTER, bind="tcp://127.0.0.1:*")
        b_in = self._socket(zmq.ROUTER, bind="tcp://127.0.0.1:*")
        a_out = self._socket(zmq.DEALER, connect=b_in.getsockopt_string(zmq.LAST_ENDPOINT))
        b_out = self._socket(zmq.DEALER, connect=a_in.getsockopt_string(zmq.LAST_ENDPOINT))
        self.client_a = self._socket(zmq.DEALER, connect=f"ipc://{directory}/raw-a")
        self.client_b = self._socket(zmq.DEALER, connect=f"ipc://{directory}/raw-b")
        await self.client_b.send(msgpack.packb(["H"]))
        b_client_id, _ = await b_local.recv_multipart()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = iter(range(1, 1 << 62))
        self._tasks = [
            asyncio.get_running_loop().create_task(t)
            for t in (
                self._agent_a(a_local, a_out, a_in),
                self._agent_b(b_in, b_out, b_local, b_client_id),
                self._client_a(),
                self._client_b(),
            )
        ]

    def _socket(self, kind: int, *, bind: str = "", connect: str = "") -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if bind:
            sock.bind(bind)
        else:
            sock.connect(connect)
        self._sockets.append(sock)
        return sock

    async def _agent_a(
        self, local: zmq.asyncio.Socket, out: zmq.asyncio.Socket, inbound: zmq.asyncio.Socket
    ) -> None:
        clients: dict[int, bytes] = {}

        async def from_client() -> None:
            while True:
                identity, body = await local.recv_multipart()
                op = msgpack.unpackb(body)
                clients[op[1]] = identity
                await out.send(msgpack.packb(op))

        async def from_peer() -> None:
            while True:
                _, body = await inbound.recv_multipart()
                answer = msgpack.unpackb(body)
                await local.send_multipart([clients.pop(answer[1]), msgpack.packb(answer)])

        await asyncio.gather(from_client(), from_peer())

    async def _agent_b(
        self,
        inbound: zmq.asyncio.Socket,
        out: zmq.asyncio.Socket,
        local: zmq.asyncio.Socket,
        client: bytes,
    ) -> None:
        async def from_peer() -> None:
            while True:
                _, body = await inbound.recv_multipart()
                op = msgpack.unpackb(body)
                if op[0] == "S":
                    await out.send(msgpack.packb(["D", op[1]]))
                await local.send_multipart([client, msgpack.packb(op)])

        async def from_client() -> None:
            while True:
                _, body = await local.recv_multipart()
                await out.send(body)  # a reply, already ["D", id, payload]

        await asyncio.gather(from_peer(), from_client())

    async def _client_a(self) -> None:
        while True:
            answer = msgpack.unpackb(await self.client_a.recv())
            future = self._pending.pop(answer[1], None)
            if future is not None and not future.done():
                future.set_result(answer[2] if len(answer) > 2 else None)

    async def _client_b(self) -> None:
        while True:
            op = msgpack.unpackb(await self.client_b.recv())
            if op[0] == "R":
                await self.client_b.send(msgpack.packb(["D", op[1], op[2]]))

    async def _call(self, kind: str, i: int) -> Any:
        op_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[op_id] = future
        await self.client_a.send(msgpack.packb([kind, op_id, i]))
        return await future

    async def send(self, i: int) -> None:
        await self._call("S", i)

    async def request(self, i: int) -> Any:
        return await self._call("R", i)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        self.ctx.term()


async def _block(op: Op, ops: int) -> tuple[list[float], float]:
    samples = []
    clock = time.perf_counter
    cpu = time.process_time()
    for i in range(ops):
        t0 = clock()
        await op(i)
        samples.append(clock() - t0)
    return samples, time.process_time() - cpu


def _summary(samples: list[float], cpu: float) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
        "cpu_us_per_op": cpu / len(samples) * 1e6,
        "ops": len(samples),
    }


async def run(ops: int, blocks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hv-path-") as directory:
        mesh, raw = MeshPath(), RawPath()
        await mesh.start(directory)
        await raw.start(directory)
        try:
            paths: dict[str, MeshPath | RawPath] = {"mesh": mesh, "raw": raw}
            for path in paths.values():  # warm-up
                for i in range(100):
                    await path.send(i)
                    await path.request(i)
            results: dict[str, dict[str, Any]] = {}
            for method in ("send", "request"):
                samples: dict[str, list[float]] = {"mesh": [], "raw": []}
                cpu = {"mesh": 0.0, "raw": 0.0}
                for _ in range(blocks):
                    for name, path in paths.items():
                        block, spent = await _block(getattr(path, method), ops // blocks)
                        samples[name] += block
                        cpu[name] += spent
                results[method] = {n: _summary(samples[n], cpu[n]) for n in paths}
                m, r = results[method]["mesh"], results[method]["raw"]
                results[method]["median_ratio"] = m["median_us"] / r["median_us"]
                results[method]["cpu_ratio"] = m["cpu_us_per_op"] / r["cpu_us_per_op"]
            return results
        finally:
            await mesh.aclose()
            await raw.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per method and path")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.ops, args.blocks))
    print(f"one process, {args.ops} operations per method and path, {args.blocks} blocks")
    print(f"  {'method':8} {'path':5} {'median us':>10} {'p99 us':>9} {'cpu us/op':>10}")
    for method, table in results.items():
        for name in ("mesh", "raw"):
            row = table[name]
            print(
                f"  {method:8} {name:5} {row['median_us']:10.1f} {row['p99_us']:9.1f} "
                f"{row['cpu_us_per_op']:10.1f}"
            )
        print(
            f"  {method:8} mesh / raw: median {table['median_ratio']:.2f}x, "
            f"CPU {table['cpu_ratio']:.2f}x"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"benchmark": "mesh_path", "cpus": os.cpu_count(), **results}, handle, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
