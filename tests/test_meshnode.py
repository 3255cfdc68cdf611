"""The mesh service over in-memory agents: gating, routed delivery, acks, requests, Plumtree."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ray_hyparview.agent import Agent
from ray_hyparview.meshnode import DeliveryError, DuplicateName, MemoryDirectory, MeshNode
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.routing import RoutingConfig
from ray_hyparview.transport.memory import MemoryNetwork
from tests.conditions import until
from tests.conftest import MemoryAgentFactory

CONFIG = HyParViewConfig.local(active_view_size=2, passive_view_size=6, min_active_size=1)
ROUTING = RoutingConfig(update_interval=0.5, route_expiry=2.0, request_interval=0.2)
N = 6


class Overlay:
    def __init__(self, make: MemoryAgentFactory) -> None:
        self.make = make
        self.net = MemoryNetwork()
        self.directory = MemoryDirectory()
        self.agents: dict[str, Agent] = {}
        self.meshes: dict[str, MeshNode] = {}

    async def add(self, name: str, *contacts: str) -> None:
        agent = self.make(self.net, name, *contacts, config=CONFIG)
        await agent.start()
        self.agents[name] = agent
        self.meshes[name] = MeshNode(
            agent, self.directory, routing=ROUTING, rng=random.Random(name + "/mesh")
        )

    async def kill(self, name: str) -> None:
        await self.meshes.pop(name).aclose()
        await self.agents.pop(name).aclose(graceful=False)
        self.net.kill(name)

    def routes_complete(self) -> bool:
        return all(set(m.router.routes()) >= set(self.meshes) - {n} for n, m in self.meshes.items())

    async def aclose(self) -> None:
        for mesh in self.meshes.values():
            await mesh.aclose()
        for agent in self.agents.values():
            await agent.aclose()


@pytest_asyncio.fixture
async def overlay(memory_agent: MemoryAgentFactory) -> AsyncIterator[Overlay]:
    o = Overlay(memory_agent)
    try:
        await o.add("n0")
        for i in range(1, N):
            await o.add(f"n{i}", "n0")
        await until(lambda: all(a.active_view for a in o.agents.values()), limit=10)
        await until(o.routes_complete, limit=15)
        for name, mesh in o.meshes.items():
            mesh.register(f"actor-{name}")
            mesh.subscribe(f"actor-{name}", "news")
        yield o
    finally:
        await o.aclose()


@pytest.mark.asyncio
async def test_active_views_are_bounded_and_every_actor_reaches_every_other(
    overlay: Overlay,
) -> None:
    assert all(len(a.active_view) <= 2 for a in overlay.agents.values())
    kinds: set[str] = set()
    for src, dst in itertools.permutations(overlay.meshes, 2):
        kind = await overlay.meshes[src].send(f"actor-{src}", f"actor-{dst}", b"hi", timeout=5)
        kinds.add(kind)
    assert kinds <= {"direct", "routed"}
    assert "routed" in kinds  # with 6 nodes and 2 links each, some targets are 2+ hops away
    for name, mesh in overlay.meshes.items():
        items = await mesh.poll(f"actor-{name}", wait=1.0)
        assert sorted(i.sender for i in items) == sorted(
            f"actor-{n}" for n in overlay.meshes if n != name
        )
        assert all(i.kind == "send" and i.payload == b"hi" for i in items)


@pytest.mark.asyncio
async def test_gate_allows_only_self_and_active_view(overlay: Overlay) -> None:
    mesh = overlay.meshes["n0"]
    active = set(overlay.agents["n0"].core.active_ids)
    for node in overlay.meshes:
        assert mesh.allowed(node) == (node == "n0" or node in active)


@pytest.mark.asyncio
async def test_request_reply_across_the_overlay(overlay: Overlay) -> None:
    async def server() -> None:
        [item] = await overlay.meshes["n5"].poll("actor-n5", wait=5.0)
        assert item.kind == "request"
        assert item.request is not None
        await overlay.meshes["n5"].reply(item.request, item.payload.upper())

    task = asyncio.create_task(server())
    answer = await overlay.meshes["n1"].request("actor-n1", "actor-n5", b"ping", timeout=5)
    await task
    assert answer == b"PING"


@pytest.mark.asyncio
async def test_publish_reaches_every_subscriber_exactly_once(overlay: Overlay) -> None:
    for i in range(5):
        overlay.meshes["n2"].publish("actor-n2", "news", f"m{i}".encode())
    for name, mesh in overlay.meshes.items():
        got: list[bytes] = []
        async with asyncio.timeout(5):
            while len(got) < 5:
                got += [i.payload for i in await mesh.poll(f"actor-{name}", wait=1.0)]
        await asyncio.sleep(0.2)
        got += [i.payload for i in await mesh.poll(f"actor-{name}", wait=0.0)]
        assert sorted(got) == [f"m{i}".encode() for i in range(5)], name


@pytest.mark.asyncio
async def test_errors_are_reported_never_silent(overlay: Overlay) -> None:
    with pytest.raises(DuplicateName):
        overlay.meshes["n3"].register("actor-n1")
    with pytest.raises(DeliveryError) as info:
        await overlay.meshes["n1"].send("actor-n1", "nobody", b"x", timeout=1)
    assert info.value.reason == "unknown_name"
    await overlay.kill("n4")
    with pytest.raises(DeliveryError) as info:
        await overlay.meshes["n1"].send("actor-n1", "actor-n4", b"x", timeout=2)
    assert info.value.reason in {"no_route", "timeout", "unknown_name"}
    # Live nodes still reach each other once routes heal around the dead one.
    for src, dst in itertools.permutations(overlay.meshes, 2):
        await overlay.meshes[src].send(f"actor-{src}", f"actor-{dst}", b"again", timeout=10)


@pytest.mark.asyncio
async def test_two_full_components_are_merged_through_routing_reachability(
    memory_agent: MemoryAgentFactory,
) -> None:
    # Two triangles with an active view of 2: every node is full, so HyParView alone never
    # links them again (LOW requests are refused, nobody is short of links). The mesh sees
    # that passive peers stay unreachable and JOINs one of them.
    o = Overlay(memory_agent)
    try:
        for group in (("a0", "a1", "a2"), ("b0", "b1", "b2")):
            await o.add(group[0])
            for name in group[1:]:
                await o.add(name, group[0])
        await until(lambda: all(len(a.active_view) == 2 for a in o.agents.values()), limit=10)
        a_side = {"a0", "a1", "a2"}
        assert all(set(o.agents[n].core.active_ids) <= a_side for n in a_side)
        for name in a_side:
            o.agents[name].add_passive([o.agents[f"b{name[1]}"].myself])
        await until(o.routes_complete, limit=30)
        assert sum(m.counters["merge.join"] for m in o.meshes.values()) >= 1
        assert all(len(a.active_view) <= 2 for a in o.agents.values())
    finally:
        await o.aclose()
