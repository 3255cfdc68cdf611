"""Only admitted neighbours may route, gossip or deliver (issue 10).

A stranger (an id that never joined, or one the node has no active link with) used to get its
DATA frames routed and delivered and its GOSSIP delivered to every subscriber: with a crafted
pickle as payload, that ran code in actors. The agent now hands frames for the services above
membership only from active neighbours over their own link; a stranger's are held briefly (a
new neighbour's first frames can overtake the confirmation of its link), then dropped and
counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.delivery_values import MeshPublish, MeshSend
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.testing.conditions import until
from ray_hyparview.transport.memory import MemoryTransport
from tests.test_agent_containment import CODEC, Nodes, counter


@pytest_asyncio.fixture
async def gated() -> AsyncIterator[tuple[Nodes, MemoryTransport]]:
    nodes = Nodes()
    mallory = nodes.net.transport("mallory", bind="mem://mallory")
    try:
        await nodes.add("a")
        await nodes.add("b", "a")
        await until(lambda: nodes.agents["a"].active_peer("b") is not None, limit=5)
        await mallory.start()
        nodes.meshes["a"].register("victim")
        nodes.meshes["a"].subscribe("victim", "news")
        yield nodes, mallory
    finally:
        await mallory.aclose()
        await nodes.aclose()


def _send_envelope() -> bytes:
    return CODEC.encode(
        MeshSend(
            msg_id=1,
            incarnation=1,
            attempt=1,
            horizon_ms=10_000,
            src_name="mallory-actor",
            dst_name="victim",
            kind="send",
            key="",
            payload=b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.",  # what would reach pickle
        )
    )


@pytest.mark.asyncio
async def test_a_stranger_cannot_deliver_to_an_actor(
    gated: tuple[Nodes, MemoryTransport],
) -> None:
    nodes, mallory = gated
    a = nodes.agents["a"]
    frame = rt.DataFrame(
        source="mallory", destination="a", frame_id=1, hops=1, hop_limit=8, payload=_send_envelope()
    )
    assert mallory.send(a.myself, CODEC.encode(frame))
    await until(lambda: counter(a, "agent.dropped.not_neighbor") >= 1, limit=10)
    assert await nodes.meshes["a"].poll("victim", wait=0.0) == []
    assert nodes.meshes["a"].router.counters["arrived"] == 0


@pytest.mark.asyncio
async def test_a_stranger_cannot_gossip_to_subscribers(
    gated: tuple[Nodes, MemoryTransport],
) -> None:
    nodes, mallory = gated
    a = nodes.agents["a"]
    gossip = pt.Gossip(
        msg_id=("mallory", 1, 1),
        round=0,
        topic="news",
        payload=CODEC.encode(MeshPublish(src_name="mallory-actor", payload=b"x")),
    )
    assert mallory.send(a.myself, CODEC.encode(gossip))
    await until(lambda: counter(a, "agent.dropped.not_neighbor") >= 1, limit=10)
    assert await nodes.meshes["a"].poll("victim", wait=0.0) == []


@pytest.mark.asyncio
async def test_a_stranger_cannot_route_through_a_node(
    gated: tuple[Nodes, MemoryTransport],
) -> None:
    """Not even as a relay: a frame for b sent to a by a stranger does not go on to b."""
    nodes, mallory = gated
    a, b = nodes.agents["a"], nodes.agents["b"]
    frame = rt.DataFrame(
        source="mallory", destination="b", frame_id=1, hops=1, hop_limit=8, payload=b"x"
    )
    before = nodes.meshes["a"].router.counters["forward.direct"]
    assert mallory.send(a.myself, CODEC.encode(frame))
    await until(lambda: counter(a, "agent.dropped.not_neighbor") >= 1, limit=10)
    assert nodes.meshes["a"].router.counters["forward.direct"] == before
    assert nodes.meshes["b"].router.counters["arrived"] == 0
    assert b.active_peer("mallory") is None


@pytest.mark.asyncio
async def test_a_neighbours_frames_still_flow(gated: tuple[Nodes, MemoryTransport]) -> None:
    nodes, _mallory = gated
    await nodes.meshes["b"].send("sender", "victim", b"hello", timeout=5.0)
    items = await nodes.meshes["a"].poll("victim", wait=1.0)
    assert [i.payload for i in items] == [b"hello"]
    assert Peer("b", "mem://b") in nodes.agents["a"].active_view
