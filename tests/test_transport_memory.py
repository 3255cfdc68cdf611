"""The in-memory transport keeps the transport contract of ``transport/base.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport import (
    LinkFailed,
    LinkFailure,
    MemoryNetwork,
    MemoryTransport,
    Quarantine,
    Transport,
    TransportClosed,
)

DEADLINE = 2.0


@pytest_asyncio.fixture
async def net() -> AsyncIterator[tuple[MemoryNetwork, dict[str, MemoryTransport]]]:
    network = MemoryNetwork()
    nodes = {name: network.transport(name, bind=name) for name in ("a", "b", "c")}
    for t in nodes.values():
        await t.start()
    yield network, nodes
    for t in nodes.values():
        await t.aclose()


def peer(t: MemoryTransport) -> Peer:
    return Peer(t.node_id, t.endpoint)


def test_memory_transport_satisfies_the_protocol() -> None:
    transport: Transport = MemoryTransport(MemoryNetwork(), "x")
    assert transport.endpoint == ""


@pytest.mark.asyncio
async def test_send_both_ways(net: tuple[MemoryNetwork, dict[str, MemoryTransport]]) -> None:
    _, n = net
    assert n["a"].endpoint == "mem://a"
    assert n["a"].send(peer(n["b"]), b"ping")
    assert await asyncio.wait_for(n["b"].recv_batch(), DEADLINE) == [("a", b"ping")]
    assert n["b"].send(peer(n["a"]), b"pong")
    assert await asyncio.wait_for(n["a"].recv_batch(), DEADLINE) == [("b", b"pong")]
    assert n["a"].counters["sent.msgs"] == 1
    assert n["a"].counters["recv.bytes"] == 4


@pytest.mark.asyncio
async def test_batches_are_bounded() -> None:
    network = MemoryNetwork()
    a = network.transport("a", max_batch=10)
    b = network.transport("b", inbox_size=25)
    await a.start()
    await b.start()
    for i in range(30):
        b.send(peer(a), bytes([i]))
        a.send(peer(b), bytes([i]))
    assert len(await a.recv_batch()) == 10
    assert b.counters["recv.dropped.overflow"] == 5
    await a.aclose()
    await b.aclose()


@pytest.mark.asyncio
async def test_kill_fails_links_at_once(
    net: tuple[MemoryNetwork, dict[str, MemoryTransport]],
) -> None:
    network, n = net
    n["a"].open_link(peer(n["b"]))
    n["c"].send(peer(n["b"]), b"x")  # a cached, unpinned link
    network.kill("b")
    assert await asyncio.wait_for(n["a"].link_events(), DEADLINE) == [
        LinkFailed("b", LinkFailure.DISCONNECTED, "peer closed")
    ]
    assert [e.cause for e in await n["c"].link_events()] == [LinkFailure.DISCONNECTED]
    assert n["a"].linked() == frozenset()
    assert not n["a"].send(peer(n["b"]), b"x")  # nobody listens any more
    assert await n["a"].link_events() == [LinkFailed("b", LinkFailure.REFUSED, "mem://b")]
    with pytest.raises(TransportClosed):
        await n["b"].recv_batch()


@pytest.mark.asyncio
async def test_partition_drops_and_fails_after_delay() -> None:
    network = MemoryNetwork(failure_delay=0.05)
    a, b = network.transport("a"), network.transport("b")
    await a.start()
    await b.start()
    a.open_link(peer(b))
    network.partition(["a"], ["b"])
    assert a.send(peer(b), b"lost")
    loop = asyncio.get_running_loop()
    start = loop.time()
    events = await asyncio.wait_for(a.link_events(), DEADLINE)
    assert loop.time() - start >= 0.04
    assert events == [LinkFailed("b", LinkFailure.DISCONNECTED, "partitioned")]
    network.heal()
    assert a.send(peer(b), b"found")
    assert await asyncio.wait_for(b.recv_batch(), DEADLINE) == [("a", b"found")]
    await a.aclose()
    await b.aclose()


@pytest.mark.asyncio
async def test_close_link_is_silent_and_cache_is_bounded() -> None:
    network = MemoryNetwork()
    a = network.transport("a", max_cached_links=2)
    others = [network.transport(f"p{i}") for i in range(4)]
    for t in (a, *others):
        await t.start()
    a.open_link(peer(others[0]))
    for t in others[1:]:
        a.send(peer(t), b"x")
    assert a.linked() == {"p0", "p2", "p3"}  # p0 pinned, p1 evicted as least recently used
    assert a.counters["link.evicted"] == 1
    a.close_link("p0")
    await others[0].aclose()
    assert a.linked() == {"p2", "p3"}
    waiter = asyncio.ensure_future(a.link_events())
    await asyncio.sleep(0)
    assert not waiter.done()  # no event for a link we closed ourselves
    await a.aclose()
    with pytest.raises(TransportClosed):
        await waiter
    for t in others:
        await t.aclose()


@pytest.mark.asyncio
async def test_aclose_is_idempotent_and_wakes_receivers() -> None:
    network = MemoryNetwork()
    a = network.transport("a")
    await a.start()
    receiver = asyncio.ensure_future(a.recv_batch())
    await asyncio.sleep(0)
    await a.aclose()
    await a.aclose()
    with pytest.raises(TransportClosed):
        await receiver
    assert not a.send(Peer("b", "mem://b"), b"x")
    assert network.lookup("mem://a") is None


@pytest.mark.asyncio
async def test_quarantine_drops_inbound_frames_for_a_while() -> None:
    network = MemoryNetwork()
    a, b = network.transport("a"), network.transport("b")
    await a.start()
    await b.start()
    b.quarantine("a", 0.05)
    assert a.send(peer(b), b"garbage")
    assert b.counters["recv.dropped.quarantined"] == 1
    await asyncio.sleep(0.06)  # let the quarantine run out
    assert a.send(peer(b), b"welcome back")
    assert await b.recv_batch() == [("a", b"welcome back")]
    await a.aclose()
    await b.aclose()


def test_quarantine_is_bounded() -> None:
    q = Quarantine(limit=3)
    for i in range(5):
        q.add(f"p{i}", until=10.0 + i)
    assert [q.holds(f"p{i}", now=0.0) for i in range(5)] == [False, False, True, True, True]
    q.add("p4", until=1.0)  # never shortened
    assert q.holds("p4", now=13.0)
    assert not q.holds("p4", now=14.0)


@pytest.mark.asyncio
async def test_release_keeps_what_was_sent_and_ends_the_link_without_an_event() -> None:
    network = MemoryNetwork()
    a, b, c = network.transport("a"), network.transport("b"), network.transport("c")
    for t in (a, b, c):
        await t.start()
    a.open_link(peer(b))
    assert a.send(peer(b), b"goodbye")
    assert a.send(peer(c), b"answer")
    a.release_link("b")  # pinned: released all the same
    a.release_link("c")
    a.release_link("nobody")
    assert a.linked() == frozenset()
    assert a.counters["link.released"] == 2
    assert await asyncio.wait_for(b.recv_batch(), DEADLINE) == [("a", b"goodbye")]
    assert await asyncio.wait_for(c.recv_batch(), DEADLINE) == [("a", b"answer")]
    await b.aclose()  # no link to b any more: nothing to report
    waiter = asyncio.ensure_future(a.link_events())
    await asyncio.sleep(0)
    assert not waiter.done()
    waiter.cancel()
    for t in (a, c):
        await t.aclose()
