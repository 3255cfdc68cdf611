"""The asyncio agent over the in-memory transport: lifecycle, events, gate, stats, garbage."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ray_hyparview.agent.control import (
    control_server,
    metrics_server,
    prometheus_text,
    query_status,
)
from ray_hyparview.agent.node import Agent
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.messages import DownReason, PeerDown, PeerUp
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.protocol.plumtree import IHave
from ray_hyparview.testing.conditions import until
from ray_hyparview.transport.memory import MemoryNetwork
from tests.conftest import MemoryAgentFactory


@pytest_asyncio.fixture
async def pair(
    memory_agent: MemoryAgentFactory,
) -> AsyncIterator[tuple[MemoryNetwork, Agent, Agent]]:
    net = MemoryNetwork()
    a = memory_agent(net, "a")
    b = memory_agent(net, "b", "a")
    await a.start()
    await b.start()
    try:
        yield net, a, b
    finally:
        await b.aclose()
        await a.aclose()


@pytest.mark.asyncio
async def test_two_agents_link_and_see_each_other(pair: tuple[MemoryNetwork, Agent, Agent]) -> None:
    _, a, b = pair
    await a.wait_for_active(1, timeout=5)
    await b.wait_for_active(1, timeout=5)
    assert [p.id for p in a.active_view] == ["b"]
    assert [p.id for p in b.active_view] == ["a"]
    assert b.myself.endpoint == "mem://b"


@pytest.mark.asyncio
async def test_events_replay_the_current_view_then_follow_changes(
    memory_agent: MemoryAgentFactory,
) -> None:
    net = MemoryNetwork()
    a, b, c = memory_agent(net, "a"), memory_agent(net, "b", "a"), memory_agent(net, "c", "a")
    await a.start()
    await b.start()
    try:
        await a.wait_for_active(1, timeout=5)
        seen: list[PeerUp | PeerDown] = []
        unsubscribe = a.subscribe(seen.append)
        events = a.events()
        first = await anext(events)
        assert first == PeerUp(Peer("b"))
        await c.start()
        second = await asyncio.wait_for(anext(events), 5)
        assert second == PeerUp(Peer("c"))
        await c.aclose()
        third = await asyncio.wait_for(anext(events), 5)
        assert third == PeerDown(Peer("c"), DownReason.LEFT)
        assert seen == [first, second, third]
        unsubscribe()
        await events.aclose()  # type: ignore[attr-defined]
    finally:
        await c.aclose()
        await b.aclose()
        await a.aclose()


class RecordingGate:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, DownReason | None]] = []

    def peer_up(self, peer: Peer) -> None:
        self.calls.append(("up", peer.id, None))

    def peer_down(self, peer: Peer, reason: DownReason) -> None:
        self.calls.append(("down", peer.id, reason))


@pytest.mark.asyncio
async def test_gate_hears_connect_and_disconnect_with_reason(
    memory_agent: MemoryAgentFactory,
) -> None:
    net = MemoryNetwork()
    gate = RecordingGate()
    a = memory_agent(net, "a", gate=gate)
    b = memory_agent(net, "b", "a")
    await a.start()
    await b.start()
    try:
        await until(lambda: ("up", "b", None) in gate.calls)
        await b.aclose(graceful=False)
        net.kill("b")
        await until(lambda: ("down", "b", DownReason.FAILED) in gate.calls)
    finally:
        await b.aclose()
        await a.aclose()


@pytest.mark.asyncio
async def test_silent_peer_is_declared_failed_by_keepalive_timeout(
    memory_agent: MemoryAgentFactory,
) -> None:
    net = MemoryNetwork()
    a, b = memory_agent(net, "a"), memory_agent(net, "b", "a")
    await a.start()
    await b.start()
    try:
        await a.wait_for_active(1, timeout=5)
        net.block("a", "b")  # frames vanish, no link event: only keepalives can tell
        loop = asyncio.get_running_loop()
        cut = loop.time()
        await until(lambda: not a.active_view, limit=5)
        assert loop.time() - cut < HyParViewConfig.local().keepalive_timeout + 1.0
        assert a.core.counters["keepalive.timeout"] + a.counters["link_failed.disconnected"] >= 1
    finally:
        await b.aclose()
        await a.aclose()


async def _ihave_pair(
    memory_agent: MemoryAgentFactory, a_config: HyParViewConfig, b_config: HyParViewConfig
) -> tuple[Agent, Agent, list[object]]:
    """Agents a and b (joining through a), started; the IHAVEs a handles are collected."""
    net = MemoryNetwork()
    a, b = memory_agent(net, "a", config=a_config), memory_agent(net, "b", "a", config=b_config)
    seen: list[object] = []
    a.add_handler(IHave, lambda sender, message: seen.append(message))
    await a.start()
    await b.start()
    return a, b, seen


@pytest.mark.asyncio
async def test_a_neighbour_whose_data_keeps_coming_is_not_failed_for_want_of_keepalives(
    memory_agent: MemoryAgentFactory,
) -> None:
    """Frames of the layers above (here Plumtree's IHAVE) prove a neighbour alive: under load
    its KEEPALIVEs wait behind them on the same link. b sends no KEEPALIVE at all."""
    watch = dataclasses.replace(HyParViewConfig.local(), shuffle_interval=1000.0)
    quiet = dataclasses.replace(watch, keepalive_interval=None)
    a, b, seen = await _ihave_pair(memory_agent, watch, quiet)
    try:
        await a.wait_for_active(1, timeout=5)
        timeout = watch.keepalive_timeout
        loop = asyncio.get_running_loop()
        until_time = loop.time() + 3 * timeout
        while loop.time() < until_time:
            b.send_raw(a.myself, IHave(announcements=()))
            await asyncio.sleep(timeout / 6)
        assert len(seen) >= 12
        assert a.core.counters["keepalive.timeout"] == 0
        assert [p.id for p in a.active_view] == ["b"]
        # Its frames stop: it is failed by the keepalive timeout, as a silent peer is.
        stopped = loop.time()
        await until(lambda: a.core.counters["keepalive.timeout"] >= 1, limit=3 * timeout)
        assert loop.time() - stopped >= timeout - 0.3  # not before its time
    finally:
        await b.aclose()
        await a.aclose()


@pytest.mark.asyncio
async def test_a_neighbour_still_sending_on_a_link_we_dropped_is_told_at_once(
    memory_agent: MemoryAgentFactory,
) -> None:
    """a dropped its link to b, b did not notice: b's frames are dropped at a, so a answers
    DISCONNECT with the first of them. Keepalives are off here, so nothing else would tell b
    (with them on, b learnt at its next KEEPALIVE, more than a second later under load)."""
    quiet = dataclasses.replace(
        HyParViewConfig.local(), shuffle_interval=1000.0, keepalive_interval=None
    )
    a, b, seen = await _ihave_pair(memory_agent, quiet, quiet)
    try:
        await a.wait_for_active(1, timeout=5)
        await b.wait_for_active(1, timeout=5)
        loop = asyncio.get_running_loop()
        a._apply(a.core.link_failed("b", now=loop.time()))  # a one-sided failure, as a timeout
        assert [p.id for p in b.active_view] == ["a"]
        for _ in range(3):
            b.send_raw(a.myself, IHave(announcements=()))
        # (a's merge rule may link the two again afterwards: what matters is that b was told.)
        await until(lambda: b.core.counters["peer_down.disconnected"] == 1, limit=2.0)
        assert a.core.counters["stray.told"] == 1, "one DISCONNECT for a run of frames"
        assert seen == [], "frames of a link a does not hold are not handled"
    finally:
        await b.aclose()
        await a.aclose()


@pytest.mark.asyncio
async def test_garbage_frames_are_counted_and_the_agent_keeps_serving(
    pair: tuple[MemoryNetwork, Agent, Agent],
) -> None:
    net, a, _ = pair
    await a.wait_for_active(1, timeout=5)
    mallory = net.transport("mallory", bind="mem://mallory")
    await mallory.start()
    try:
        rng = random.Random(5)
        for _ in range(2000):
            mallory.send(a.myself, rng.randbytes(rng.randrange(0, 200)))
            if rng.random() < 0.01:
                await asyncio.sleep(0)
        await until(
            lambda: sum(v for k, v in a.counters.items() if k.startswith("dropped.")) >= 2000
        )
        # The memory network proves no id: the claimed sender is not disconnected for it.
        assert a.counters["offender.unproved"] >= 1
        assert a.counters["offender.disconnected"] == 0
        # Still serving: the link with b stays up and keepalives flow.
        before = a.counters["received.KeepAlive"]
        await until(lambda: a.counters["received.KeepAlive"] > before)
        assert [p.id for p in a.active_view] == ["b"]
    finally:
        await mallory.aclose()


@pytest.mark.asyncio
async def test_aclose_is_idempotent_and_leaves_no_tasks(memory_agent: MemoryAgentFactory) -> None:
    net = MemoryNetwork()
    before = set(asyncio.all_tasks())
    a, b = memory_agent(net, "a"), memory_agent(net, "b", "a")
    await a.start()
    await b.start()
    await b.wait_for_active(1, timeout=5)
    await b.aclose()
    await b.aclose()
    await a.aclose()
    await a.aclose()
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not leftover, leftover
    assert a.closed
    assert b.closed


@pytest.mark.asyncio
async def test_stats_and_prometheus_text(pair: tuple[MemoryNetwork, Agent, Agent]) -> None:
    _, a, _ = pair
    await a.wait_for_active(1, timeout=5)
    stats = a.stats()
    assert stats["id"] == "a"
    assert stats["gauges"]["active_view_size"] == 1
    assert stats["counters"]["core.peer_up"] == 1
    assert stats["counters"]["agent.received.Join"] == 1
    text = prometheus_text(stats)
    assert 'ray_hyparview_active_view_size{node="a"} 1.0' in text
    assert 'ray_hyparview_peer_up_total{layer="core",node="a"} 1.0' in text


@pytest.mark.asyncio
async def test_control_endpoint_and_metrics_page_answer(
    pair: tuple[MemoryNetwork, Agent, Agent],
) -> None:
    _, a, _ = pair
    await a.wait_for_active(1, timeout=5)
    async with (
        control_server("tcp://127.0.0.1:0", a.stats) as control,
        metrics_server(0, a.stats) as port,
    ):
        assert control is not None
        assert port is not None
        status = await query_status(control)
        assert status["id"] == "a"
        assert status["active"] == ["b"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        await writer.drain()
        body = await reader.read()
        writer.close()
        assert body.startswith(b"HTTP/1.0 200 OK")
        assert b'ray_hyparview_active_view_size{node="a"} 1.0' in body


@pytest.mark.asyncio
async def test_control_endpoint_refuses_an_overlong_line_with_one_clean_error(
    pair: tuple[MemoryNetwork, Agent, Agent], caplog: pytest.LogCaptureFixture
) -> None:
    """A 70 KB line without a newline used to escape as two tracebacks; now it gets one JSON
    error line, is counted, and the endpoint keeps answering."""
    _, a, _ = pair
    counters: Counter[str] = Counter()
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
    async with control_server("tcp://127.0.0.1:0", a.stats, counters=counters) as control:
        assert control is not None
        host, port = control.removeprefix("tcp://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"x" * 70_000)
        await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.count(b"\n") == 1
        assert "longer than 1024 bytes" in json.loads(answer)["error"]
        assert counters["control.rejected.too_long"] == 1
        assert (await query_status(control))["id"] == "a"
    assert not loop_errors
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


@pytest.mark.asyncio
async def test_under_faults_a_node_links_only_to_its_view_and_to_the_peers_it_asked(
    memory_agent: MemoryAgentFactory,
) -> None:
    """The README's connection bound, as a checker under faults: in every sample, each live
    agent's links are its active view plus the peers it waits on (a JOIN, a NEIGHBOR, a merge
    probe). No temporary link outlives its exchange. Faults: a partition in halves, its heal,
    a node killed and one leaving."""
    config = HyParViewConfig.local(active_view_size=2, passive_view_size=6)
    net = MemoryNetwork(failure_delay=0.05)
    names = [f"n{i}" for i in range(8)]
    agents = {n: memory_agent(net, n, *([] if n == "n0" else ["n0"]), config=config) for n in names}
    for agent in agents.values():
        await agent.start()
    loop = asyncio.get_running_loop()
    gone: set[str] = set()
    extra_links: list[tuple[str, list[str]]] = []
    samples = 0

    async def watch(seconds: float) -> None:
        nonlocal samples
        end = loop.time() + seconds
        while loop.time() < end:
            for name, agent in agents.items():
                if name in gone:
                    continue
                core = agent.core
                extra = agent.transport.linked() - core.active_ids - core.pending_ids
                if extra:
                    extra_links.append((name, sorted(extra)))
            samples += 1
            await asyncio.sleep(0.02)

    await watch(1.5)
    net.partition(names[:4], names[4:])
    await watch(2.0)
    net.heal()
    await watch(2.0)
    gone.add("n5")
    net.kill("n5")
    await watch(1.5)
    gone.add("n6")
    await agents["n6"].aclose()
    await watch(1.5)
    assert samples >= 200
    assert not extra_links, extra_links[:5]
    live = [agent for name, agent in agents.items() if name not in gone]
    assert all(agent.active_view for agent in live)
    assert sum(agent.transport.counters["link.released"] for agent in live) > 0
