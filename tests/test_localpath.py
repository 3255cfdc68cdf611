"""The direct local path (issue 12): :class:`~ray_hyparview.agent.localpath.LocalServer` on a real
:class:`MeshNode`, and :class:`~ray_hyparview.mesh.Mesh` handles talking to it over a Unix
socket (framed by :mod:`~ray_hyparview.transport.localstream`), from this loop (as an async actor
does) and from a thread of their own (as a sync actor does). No Ray: the Ray side is in
``tests/test_ray_localpath.py``."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import pytest_asyncio

from ray_hyparview import mesh as mesh_module
from ray_hyparview.agent.localpath import LinkClosed, LocalLink, LocalServer
from ray_hyparview.agent.meshnode import DeliveryError, MemoryDirectory, MeshNode
from ray_hyparview.agent.node import Agent
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.mesh import Mesh, _link_error
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.testing.conditions import until
from ray_hyparview.testing.memory_mesh import take
from ray_hyparview.transport.localstream import pack_message
from ray_hyparview.transport.memory import MemoryNetwork


class Node:
    def __init__(self, agent: Agent, mesh: MeshNode, server: LocalServer) -> None:
        self.agent = agent
        self.mesh = mesh
        self.server = server
        self.handles: list[Mesh] = []
        self.ray_calls: list[str] = []
        self.net = MemoryNetwork()

    async def join(self, name: str, *, thread: bool = False, window: int = 1024) -> Mesh:
        self.mesh.register(name)
        token = self.server.admit(name)
        link = await self.link(token, thread=thread, window=window)
        handle = Mesh(name, self.agent.myself.id, _NoRay(self), [], link)
        self.handles.append(handle)
        return handle

    async def link(self, token: bytes, *, thread: bool = False, window: int = 1024) -> LocalLink:
        loop = None if thread else asyncio.get_running_loop()
        link = LocalLink(self.server.endpoint, token, loop=loop, window=window, error=_link_error)
        await link.open(timeout=3)
        return link

    async def send(self, *values: int) -> None:
        for value in values:
            await self.mesh.send("writer", "reader", pickle.dumps(value), timeout=2)


class _NoRay:
    """The agent actor handle: the local path must not call it (only leave does)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def __getattr__(self, name: str) -> Any:
        if name == "mesh_unregister":
            return _Unregister(self._node)
        self._node.ray_calls.append(name)
        raise AssertionError(f"{name} went through a Ray call, not the local path")


class _Unregister:
    def __init__(self, node: Node) -> None:
        self._node = node

    def remote(self, name: str, ack: int | None = None) -> Any:
        async def unregister() -> list[Any]:
            self._node.server.forget(name)
            return self._node.mesh.unregister(name, ack=ack)

        return unregister()


@pytest_asyncio.fixture
async def node(tmp_path: Any) -> AsyncIterator[Node]:
    net = MemoryNetwork()
    strategy = Strategy(local_peer=Peer("n0", "mem://n0"), transport="memory")
    agent = Agent(strategy, transport=net.transport("n0", bind="mem://n0"), rng=random.Random(0))
    await agent.start()
    mesh = MeshNode(agent, MemoryDirectory(), rng=random.Random(1))
    server = LocalServer(mesh, directory=str(tmp_path))
    await server.start()
    made = Node(agent, mesh, server)
    made.net = net
    try:
        yield made
    finally:
        for handle in made.handles:
            if handle._link is not None:
                handle._link.close()
        await server.aclose()
        await mesh.aclose()
        await agent.aclose()


@pytest.mark.asyncio
async def test_the_socket_is_a_unix_socket_for_the_owner_only(node: Node, tmp_path: Any) -> None:
    assert node.server.endpoint.startswith(f"ipc://{tmp_path}")
    path = node.server.endpoint.removeprefix("ipc://")
    import os
    import stat

    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


@pytest.mark.asyncio
async def test_a_wrong_token_is_refused_counted_and_delivers_nothing(node: Node) -> None:
    reader = await node.join("reader")
    link = LocalLink(node.server.endpoint, b"x" * 32, loop=asyncio.get_running_loop())
    with pytest.raises(LinkClosed, match="refused"):
        await link.open(timeout=3)
    # A forged send that skips the hello: dropped, counted, never in the inbox.
    forger = LocalLink(node.server.endpoint, b"y" * 32, loop=asyncio.get_running_loop())
    with pytest.raises(LinkClosed):
        await forger.open(timeout=3)
    sneaky = LocalLink(node.server.endpoint, b"z" * 32, loop=asyncio.get_running_loop())
    sneaky._connect()
    sneaky.post(["S", 1, "reader", 2.0, ""], pickle.dumps("injected"))
    await until(lambda: node.server.counters["local.refused"] >= 3)
    sneaky.close()
    assert node.mesh.core.pending("reader") == 0
    assert node.mesh.stats()["delivery"]["in_flight"] == 0
    assert reader._link is not None
    assert not reader._link.closed


@pytest.mark.asyncio
async def test_a_malformed_header_from_a_member_costs_only_its_own_operation(node: Node) -> None:
    reader = await node.join("reader")
    writer = await node.join("writer")
    assert writer._link is not None
    # Too few fields for a send, then a request with a key it must not have: each raised out of
    # the agent's reader callback and took the rest of the batch with it.
    writer._link.post(["S", 90, "reader"], pickle.dumps("short"))
    writer._link.post(["R", 91, "reader", 2.0, "key"], pickle.dumps("long"))
    await writer.send("reader", "after", timeout=2)
    assert await take(reader, 1) == ["after"]
    assert node.server.counters["local.dropped"] == 2
    assert not writer._link.closed


@pytest.mark.asyncio
@pytest.mark.parametrize("thread", [False, True], ids=["own-loop", "thread"])
async def test_sends_and_requests_go_over_the_link_and_deliveries_are_pushed(
    node: Node, thread: bool
) -> None:
    reader = await node.join("reader", thread=thread)
    writer = await node.join("writer", thread=thread)

    async def serve() -> None:
        async for message in reader.inbox():
            if message.kind == "request":
                await message.reply(("echo", message.payload))

    server = asyncio.create_task(serve())
    try:
        await writer.send("reader", "hello", timeout=2)
        assert await writer.request("reader", 7, timeout=2) == ("echo", 7)
    finally:
        server.cancel()
    # Pushed, not polled: the agent was never asked for a poll.
    assert node.server.counters["local.pushed"] >= 2
    assert node.server.counters["local.op.send"] == 1
    with pytest.raises(DeliveryError) as refused:
        await writer.send("nobody", 1, timeout=1)
    assert refused.value.reason == "unknown_name"
    assert refused.value.outcome == "not_delivered"


@pytest.mark.asyncio
async def test_a_lone_operation_leaves_at_once_and_a_burst_after_it_leaves_as_one_message(
    node: Node,
) -> None:
    reader = await node.join("reader")
    writer = await node.join("writer")
    link = writer._link
    assert link is not None
    before = link.counters["sends"]
    sends = [asyncio.ensure_future(writer.send("reader", i, timeout=2)) for i in range(20)]
    await asyncio.sleep(0)  # every send posts its frame in this turn
    # The first frame went to the socket as it was posted, the other 19 wait for the turn's end.
    assert link.counters["sends"] == before + 1
    await asyncio.gather(*sends)
    assert link.counters["sends"] == before + 2
    assert await take(reader, 20) == list(range(20))  # in order


@pytest.mark.asyncio
async def test_leaving_the_inbox_loop_early_loses_nothing(node: Node) -> None:
    reader = await node.join("reader")
    await node.send(0, 1, 2, 3, 4)
    assert await take(reader, 2) == [0, 1]
    assert await take(reader, 3) == [2, 3, 4]
    await until(lambda: node.mesh.core.pending("reader") == 0)


@pytest.mark.asyncio
async def test_lent_items_not_acknowledged_are_pushed_again_on_the_next_link(node: Node) -> None:
    node.mesh.register("reader")
    token = node.server.admit("reader")
    first = await node.link(token)
    await node.send(0, 1, 2)
    items: list[Any] = []
    async with asyncio.timeout(5):
        while len(items) < 3:
            items += await first.take(1.0)
    first.ack(items[0].seq)  # the actor had consumed one, then its link broke
    await until(lambda: node.mesh.core.pending("reader") == 2)
    first.close()
    second = await node.link(token)
    again: list[Any] = []
    async with asyncio.timeout(5):
        while len(again) < 2:
            again += await second.take(1.0)
    second.close()
    assert [pickle.loads(i.payload) for i in again] == [1, 2]
    assert [i.seq for i in again] == [i.seq for i in items[1:]]


@pytest.mark.asyncio
async def test_a_consumer_that_stops_reading_stops_the_pushes(node: Node) -> None:
    node.server.window = 4
    reader = await node.join("reader")
    await node.send(*range(10))
    assert reader._link is not None
    await until(lambda: node.server.counters["local.pushed"] == 4)
    await asyncio.sleep(0.05)
    assert node.server.counters["local.pushed"] == 4
    assert await take(reader, 10) == list(range(10))


@pytest.mark.asyncio
async def test_a_sender_beyond_its_window_waits_instead_of_failing(node: Node) -> None:
    reader = await node.join("reader")
    writer = await node.join("writer", window=2)
    await asyncio.gather(*(writer.send("reader", i, timeout=5) for i in range(20)))
    assert writer._link is not None
    assert writer._link.counters["window.waits"] > 0
    assert sorted(await take(reader, 20)) == list(range(20))


@pytest.mark.asyncio
async def test_leave_hands_back_what_was_pushed_but_never_yielded(node: Node) -> None:
    reader = await node.join("reader")
    await node.send(0, 1, 2)
    assert await take(reader, 1) == [0]
    left = await reader.leave()
    assert [m.payload for m in left] == [1, 2]


class Consumer:
    """An inbox loop of ``reader`` in a task of its own, keeping what it yielded in ``seen``;
    ``stop()`` cancels it (leaving the loop, which acknowledges what it yielded)."""

    def __init__(self, reader: Mesh) -> None:
        self.seen: list[Any] = []
        self.task = asyncio.get_running_loop().create_task(self._consume(reader))

    async def _consume(self, reader: Mesh) -> None:
        async for message in reader.inbox():
            self.seen.append(message.payload)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.mark.asyncio
async def test_a_handle_that_caught_up_acknowledges_once_for_many_items(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Acknowledged at once, each item of a steady stream cost the agent one more local
    # message and wake-up. Now a handle that caught up waits (here: longer than the test).
    monkeypatch.setattr(mesh_module, "_ACK_DELAY", 600.0, raising=False)
    consumer = Consumer(await node.join("reader"))
    try:
        for i in range(10):
            await node.send(i)
            count = i + 1
            await until(lambda: len(consumer.seen) == count)  # noqa: B023 - awaited in this turn
        assert node.server.counters["local.op.ack"] == 0
        assert node.mesh.core.pending("reader") == 10, "lent, not yet acknowledged"
    finally:
        await consumer.stop()
    # Leaving the loop acknowledges everything it yielded, in one message.
    await until(lambda: node.mesh.core.pending("reader") == 0)
    assert node.server.counters["local.op.ack"] == 1
    assert consumer.seen == list(range(10))


@pytest.mark.asyncio
async def test_a_delayed_ack_comes_without_further_traffic(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mesh_module, "_ACK_DELAY", 0.05, raising=False)
    consumer = Consumer(await node.join("reader"))
    try:
        await node.send(0, 1, 2)
        await until(lambda: len(consumer.seen) == 3)
        await until(lambda: node.mesh.core.pending("reader") == 0)
        assert not consumer.task.done()
        assert 1 <= node.server.counters["local.op.ack"] <= 3
    finally:
        await consumer.stop()


@pytest.mark.asyncio
async def test_an_inbox_loop_whose_link_closes_raises_instead_of_spinning(node: Node) -> None:
    reader = await node.join("reader")
    consumer = Consumer(reader)
    await node.send(0)
    await until(lambda: consumer.seen == [0])
    assert reader._link is not None
    reader._link.close()  # not by leave(): the handle still expects items
    with pytest.raises(LinkClosed):
        async with asyncio.timeout(5):
            await consumer.task


@pytest.mark.asyncio
async def test_a_body_that_is_not_one_msgpack_array_of_ops_costs_only_itself(node: Node) -> None:
    reader = await node.join("reader")
    node.mesh.register("raw")
    token = node.server.admit("raw")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(node.server.endpoint.removeprefix("ipc://"))
    try:
        send = msgpack.packb([["S", 1, "reader", 2.0, ""], pickle.dumps("ok")])
        for message in (
            [token, b"\xc1 not msgpack"],
            [token, msgpack.packb({"S": 1})],  # not an array
            [token, msgpack.packb([["S", 2, "reader", 2.0, ""]])],  # a header without data
            [token, send, b"a third frame"],
            [token, msgpack.packb([[7], b"", "text", b""])],  # op not a string, header not a list
        ):
            raw.sendall(pack_message(message))
        raw.sendall(pack_message([token, send]))
        assert await take(reader, 1) == ["ok"]
        assert node.server.counters["local.dropped"] == 6
        assert node.server.counters["local.errors"] == 0
    finally:
        raw.close()


@pytest.mark.asyncio
async def test_the_active_view_is_pushed_and_an_idle_handle_asks_ray_nothing(node: Node) -> None:
    reader = await node.join("reader")
    assert reader._link is not None
    assert reader.active_view == frozenset(), "the hello's answer carries the (empty) view"
    # A Ray call every half second used to keep the view (and to notice a replaced agent);
    # now the agent pushes its view, and an idle handle pings its agent on the link instead.
    reader._refresher = asyncio.get_running_loop().create_task(reader._refresh())
    peer_strategy = Strategy(
        local_peer=Peer("n1", "mem://n1"), contacts=(node.agent.myself,), transport="memory"
    )
    transport = node.net.transport("n1", bind="mem://n1")
    peer = Agent(peer_strategy, transport=transport, rng=random.Random(2))
    try:
        await peer.start()
        await until(lambda: reader.active_view == frozenset({"n1"}))
        assert reader.allowed("n1")
        await peer.aclose()
        await until(lambda: reader.active_view == frozenset())
        assert not reader.allowed("n1")
        await until(lambda: node.server.counters["local.op.ping"] >= 1, limit=10)
    finally:
        reader._refresher.cancel()
        if not peer.closed:
            await peer.aclose()
    assert node.ray_calls == []
    assert node.server.counters["local.views"] >= 2
