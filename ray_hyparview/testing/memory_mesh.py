"""Real agents, each with its mesh service, on one in-memory network: the harness of the tests
that drive agents and meshes back to back without sockets (``test_meshnode``,
``test_agent_containment``, ``test_neighbor_gate``)."""

from __future__ import annotations

import asyncio
import itertools
import random
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ray_hyparview.agent.meshnode import MemoryDirectory, MeshNode
from ray_hyparview.agent.node import Agent
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.protocol.routing import RoutingConfig
from ray_hyparview.testing.conditions import until
from ray_hyparview.transport.memory import MemoryNetwork

if TYPE_CHECKING:
    from ray_hyparview.mesh import Mesh

__all__ = ["MemoryMesh", "take"]


class MemoryMesh:
    """Agents at ``mem://<name>`` on one :class:`MemoryNetwork`, each seeded by its name and
    (unless told otherwise) with a :class:`MeshNode` over one shared :class:`MemoryDirectory`.
    ``aclose()`` (or leaving ``async with``) closes every mesh, then every agent."""

    def __init__(self, config: HyParViewConfig, routing: RoutingConfig | None = None) -> None:
        self.config = config
        self.routing = routing
        self.net = MemoryNetwork()
        self.directory = MemoryDirectory()
        self.agents: dict[NodeId, Agent] = {}
        self.meshes: dict[NodeId, MeshNode] = {}
        self._probes = itertools.count(1)

    async def add(self, name: NodeId, *contacts: NodeId, mesh: bool = True) -> Agent:
        """Start an agent ``name`` joining through ``contacts`` (and its mesh, with ``mesh``)."""
        strategy = Strategy(
            local_peer=Peer(name, f"mem://{name}"),
            contacts=tuple(Peer(c, f"mem://{c}") for c in contacts),
            transport="memory",
            hyparview_config=self.config,
        )
        agent = Agent(
            strategy,
            transport=self.net.transport(name, bind=f"mem://{name}"),
            rng=random.Random(name),
        )
        await agent.start()
        self.agents[name] = agent
        if mesh:
            self.meshes[name] = MeshNode(
                agent, self.directory, routing=self.routing, rng=random.Random(name + "/mesh")
            )
        return agent

    async def kill(self, name: NodeId) -> None:
        """Crash ``name``: no goodbye, and its address stops answering."""
        mesh = self.meshes.pop(name, None)
        if mesh is not None:
            await mesh.aclose()
        await self.agents.pop(name).aclose(graceful=False)
        self.net.kill(name)

    def routes_complete(self) -> bool:
        """Every mesh has a route to every other."""
        return all(set(m.router.routes()) >= set(self.meshes) - {n} for n, m in self.meshes.items())

    async def answers(self, name: NodeId, *, limit: float = 5.0) -> None:
        """A new node joins through ``name`` and the two become neighbours: its receive loop,
        its membership core and its timers all still run."""
        target = self.agents[name]
        assert not target.closed
        newcomer = await self.add(f"probe{next(self._probes)}", name, mesh=False)
        await until(lambda: target.active_peer(newcomer.myself.id) is not None, limit=limit)

    async def aclose(self) -> None:
        for mesh in self.meshes.values():
            await mesh.aclose()
        for agent in self.agents.values():
            await agent.aclose()

    async def __aenter__(self) -> MemoryMesh:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def take(handle: Mesh, count: int, *, limit: float = 5.0) -> list[Any]:
    """The payloads of the next ``count`` messages from ``handle.inbox()``, leaving the loop
    early as a consumer would; ``TimeoutError`` after ``limit`` seconds."""
    got: list[Any] = []
    async with asyncio.timeout(limit):
        async for message in handle.inbox():
            got.append(message.payload)
            if len(got) == count:
                break
    return got
