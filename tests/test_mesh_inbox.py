"""Hand-over from a node's inbox to the actor loses nothing (issue 9, finding 2): the actor API
:class:`~ray_hyparview.mesh.Mesh` over a real :class:`MeshNode`, with a stand-in for the Ray
actor handle of the node's agent (same calls, awaited in this process)."""

from __future__ import annotations

import pickle
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from ray_hyparview.agent.meshnode import DeliveryError, MemoryDirectory, MeshNode
from ray_hyparview.agent.node import Agent
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.mesh import Mesh
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.testing.memory_mesh import take
from ray_hyparview.transport.memory import MemoryNetwork


class _Method:
    """``handle.method.remote(*args)`` as Ray spells it, here a coroutine of this loop."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self._call = call

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self._call(*args)


class FakeAgent:
    """The agent actor's mesh calls that :class:`Mesh` makes, on a local MeshNode."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.lose_next_poll_reply = False
        self.mesh_poll = _Method(self._poll)
        self.mesh_unregister = _Method(self._unregister)

    async def _poll(self, name: str, wait: float, ack: int | None = None) -> list[Any]:
        if ack is None:
            items = await self.node.poll(name, wait=wait)
        else:
            items = await self.node.poll(name, wait=wait, ack=ack)
        if self.lose_next_poll_reply:  # the agent answered, the answer never arrived
            self.lose_next_poll_reply = False
            raise ConnectionError("the poll reply was lost")
        return items

    async def _unregister(self, name: str, ack: int | None = None) -> Any:
        if ack is None:
            return self.node.unregister(name)
        return self.node.unregister(name, ack=ack)


class Node:
    def __init__(self, agent: Agent, mesh: MeshNode, directory: MemoryDirectory) -> None:
        self.agent = agent
        self.mesh = mesh
        self.directory = directory
        self.fake = FakeAgent(mesh)
        mesh.register("reader")
        self.handle = Mesh("reader", agent.myself.id, self.fake, [])

    async def send(self, *values: int) -> None:
        for value in values:
            await self.mesh.send("writer", "reader", pickle.dumps(value), timeout=2)


@pytest_asyncio.fixture
async def node() -> AsyncIterator[Node]:
    net = MemoryNetwork()
    strategy = Strategy(local_peer=Peer("n0", "mem://n0"), transport="memory")
    agent = Agent(strategy, transport=net.transport("n0", bind="mem://n0"), rng=random.Random(0))
    await agent.start()
    directory = MemoryDirectory()
    mesh = MeshNode(agent, directory, rng=random.Random(1))
    try:
        yield Node(agent, mesh, directory)
    finally:
        await mesh.aclose()
        await agent.aclose()


@pytest.mark.asyncio
async def test_leaving_the_inbox_loop_early_loses_nothing(node: Node) -> None:
    await node.send(0, 1, 2, 3, 4)
    assert await take(node.handle, 2, limit=3) == [0, 1]  # one batch fetched all five
    assert await take(node.handle, 3, limit=3) == [2, 3, 4]


@pytest.mark.asyncio
async def test_a_lost_poll_reply_loses_nothing(node: Node) -> None:
    await node.send(0, 1, 2)
    node.fake.lose_next_poll_reply = True
    with pytest.raises(ConnectionError):
        await take(node.handle, 3, limit=3)
    assert await take(node.handle, 3, limit=3) == [0, 1, 2]


@pytest.mark.asyncio
async def test_leave_hands_back_what_was_never_yielded(node: Node) -> None:
    await node.send(0, 1, 2)
    assert await take(node.handle, 1, limit=3) == [0]
    await node.send(3, 4)  # still in the agent's inbox, never fetched
    left = await node.handle.leave()
    assert [m.payload for m in left] == [1, 2, 3, 4]
    assert node.directory.lookup("reader") is None
    assert await node.handle.leave() == []


@pytest.mark.asyncio
async def test_the_agent_forgets_items_only_once_the_actor_has_taken_them(node: Node) -> None:
    await node.send(0, 1, 2)
    assert await take(node.handle, 3, limit=3) == [0, 1, 2]
    assert node.mesh.core.pending("reader") == 3  # lent, not yet acknowledged
    await node.send(3)
    assert await take(node.handle, 1, limit=3) == [3]  # this poll acknowledged 0..2
    assert node.mesh.core.pending("reader") == 1
    assert node.mesh.stats()["delivery"]["inbox_items"] == {"reader": 1}


@pytest.mark.asyncio
async def test_a_handle_follows_its_agents_next_life(node: Node) -> None:
    await node.send(0, 1)
    assert await take(node.handle, 2, limit=3) == [0, 1]
    # The agent restarts (a new incarnation: seqs count from 1 again) and the handle is
    # pointed at it, as supervision does.
    net = MemoryNetwork()
    strategy = Strategy(local_peer=Peer("n0", "mem://n0"), transport="memory")
    agent = Agent(strategy, transport=net.transport("n0", bind="mem://n0"), incarnation=10**15)
    await agent.start()
    mesh = MeshNode(agent, MemoryDirectory(), rng=random.Random(2))
    try:
        mesh.register("reader")
        node.fake.node = mesh
        for value in (2, 3):
            await mesh.send("writer", "reader", pickle.dumps(value), timeout=2)
        assert await take(node.handle, 2, limit=3) == [2, 3]
    finally:
        await mesh.aclose()
        await agent.aclose()


def test_delivery_error_keeps_its_outcome_through_pickle() -> None:
    error = DeliveryError("timeout", "worker-7", "after 10 s", outcome="unknown")
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.target, again.detail, again.outcome) == (
        "timeout",
        "worker-7",
        "after 10 s",
        "unknown",
    )
    assert "outcome unknown" in str(again)
    assert DeliveryError("no_route").outcome == "not_delivered"
