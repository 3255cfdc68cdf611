"""One frame, one handler or one timer never stops an agent (issue 9).

Real agents over the in-memory transport. A ROUTE_UPDATE or SEQNO_REQUEST with seqno 2**64 - 1
from a neighbour used to make the router derive 2**64, whose ``EncodeError`` ended the agent's
TaskGroup. Now the router keeps the seqno on the wire (``test_wire_bounds``), and the agent
contains what a service still gets wrong: every failing step costs one count under
``errors.<where>`` and one rate-limited log line; the agent goes on answering.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from ray_hyparview.agent import node as agent_module
from ray_hyparview.agent.meshnode import MemoryDirectory, MeshNode
from ray_hyparview.agent.node import Agent, Event
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol import limits
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.messages import Join
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.testing.conditions import until
from ray_hyparview.testing.memory_mesh import MemoryMesh
from ray_hyparview.transport.memory import MemoryNetwork
from ray_hyparview.wire.codec import Codec, EncodeError
from ray_hyparview.wire.table import wire_codec

CONFIG = HyParViewConfig(
    active_view_size=3,
    passive_view_size=6,
    min_active_size=1,
    shuffle_interval=0.5,
    keepalive_interval=0.1,
    keepalive_timeout=0.5,
    neighbor_timeout=0.5,
)
ROUTING = rt.RoutingConfig(update_interval=0.5, route_expiry=2.0, request_interval=0.2)
TOP = limits.MAX_SEQNO
CODEC = wire_codec()


class Nodes(MemoryMesh):
    """Agents and meshes on one in-memory network, with this module's timings."""

    def __init__(self) -> None:
        super().__init__(CONFIG, routing=ROUTING)


@pytest_asyncio.fixture
async def nodes() -> AsyncIterator[Nodes]:
    n = Nodes()
    try:
        await n.add("a")
        await n.add("b", "a")
        await until(lambda: n.agents["a"].active_peer("b") is not None, limit=5)
        await until(lambda: "b" in n.meshes["a"].router.routes(), limit=5)
        yield n
    finally:
        await n.aclose()


def inject(nodes: Nodes, sender: str, target: str, message: object) -> None:
    """``sender`` (a real neighbour) sends ``message`` to ``target`` as is."""
    assert nodes.agents[sender].transport.send(nodes.agents[target].myself, CODEC.encode(message))


def counter(agent: Agent, name: str) -> int:
    value = agent.stats()["counters"].get(name, 0)
    assert isinstance(value, int)
    return value


def errors(agent: Agent) -> int:
    """Every error the agent counted, wherever it was contained."""
    counters = agent.stats()["counters"]
    return sum(v for k, v in counters.items() if k.startswith("agent.errors."))


async def settle_router(mesh: MeshNode, received: str, count: int) -> None:
    """Wait until the router took ``count`` messages of a kind and its timers ran past them."""
    await until(lambda: mesh.router.counters[received] >= count, limit=5)
    sent = mesh.router.counters["sent.RouteUpdate"]
    await until(lambda: mesh.router.counters["sent.RouteUpdate"] > sent, limit=5)


# --- the frames of issue 9, against the real stack ---------------------------------------------


def _top_updates() -> list[object]:
    # Modulo 2**64 a jump of 2**63 or more is older: climb to the top, then past it.
    return [rt.RouteUpdate(entries=(("a", s, 0),)) for s in (2**63 - 1, TOP - 2, TOP)]


def _top_requests() -> list[object]:
    return [
        rt.SeqnoRequest(destination="a", seqno=s, origin="b", hop_limit=4)
        for s in (2**63 - 1, TOP - 1, TOP)
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frames", "kind"),
    [(_top_updates, "received.RouteUpdate"), (_top_requests, "received.SeqnoRequest")],
    ids=["route_update", "seqno_request"],
)
async def test_a_top_seqno_frame_leaves_the_agent_running(
    nodes: Nodes, frames: Callable[[], list[object]], kind: str
) -> None:
    a, mesh = nodes.agents["a"], nodes.meshes["a"]
    await nodes.add("c", "a")
    await until(lambda: "c" in mesh.router.links, limit=5)
    before = mesh.router.counters[kind]
    for frame in frames():
        inject(nodes, "b", "a", frame)
    await settle_router(mesh, kind, before + 3)
    # A link change raises our seqno once more: past 2**64 - 1 it wraps to 0.
    await nodes.meshes.pop("c").aclose()
    await nodes.agents.pop("c").aclose(graceful=False)
    nodes.net.kill("c")
    await until(lambda: "c" not in mesh.router.links, limit=5)
    seqno = mesh.router.seqno
    await until(lambda: nodes.meshes["b"].router.routes().get("a") is not None, limit=5)
    await nodes.answers("a")
    assert 0 <= seqno <= TOP
    assert not any(k.startswith("agent.errors.") for k in a.stats()["counters"])
    nodes.meshes["a"].register("actor-a")
    nodes.meshes["b"].register("actor-b")
    assert await nodes.meshes["b"].send("actor-b", "actor-a", b"hi", timeout=5) == "direct"
    assert await nodes.meshes["a"].send("actor-a", "actor-b", b"hi", timeout=5) == "direct"


@pytest.mark.asyncio
async def test_the_old_encode_error_in_the_mesh_timer_is_contained(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the protocol fix (the router's unbounded seqno arithmetic put back) the frame
    makes the mesh timer raise ``EncodeError``: counted errors, the agent and the timer go on."""
    monkeypatch.setattr(rt, "seqno_add", lambda s, n=1: s + n)
    monkeypatch.setattr(rt, "seqno_newer", lambda x, y: x > y)
    a, mesh = nodes.agents["a"], nodes.meshes["a"]
    inject(nodes, "b", "a", rt.RouteUpdate(entries=(("a", TOP, 0),)))
    await until(lambda: counter(a, "agent.errors.mesh.timer") >= 1)
    assert mesh.router.seqno == TOP + 1  # the bug is back: the seqno left the wire's range
    before = errors(a)
    await nodes.answers("a")
    # The mesh timer contains each failing round (it is never ended, so never restarted).
    # Every later step that announces the out-of-range seqno fails too, each one counted:
    # here the PeerUp of the newcomer.
    assert counter(a, "agent.errors.service") == 0
    assert errors(a) > before


# --- containment paths, one by one ------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_raising_handler_costs_one_count_per_message_and_few_log_lines(
    nodes: Nodes, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = nodes.agents["a"]
    monkeypatch.setattr(a, "_error_log", agent_module._ErrorLog(burst=2, interval=60.0))
    calls: list[NodeId] = []

    def boom(sender: NodeId, message: object) -> None:
        calls.append(sender)
        raise RuntimeError("handler bug")

    a.add_handler(rt.DataFrame, boom)
    frame = rt.DataFrame(source="b", destination="a", frame_id=1, hops=1, hop_limit=4, payload=b"")
    with caplog.at_level(logging.ERROR, logger="ray_hyparview.agent"):
        for _ in range(5):
            inject(nodes, "b", "a", frame)
        await until(lambda: len(calls) == 5)
    assert counter(a, "agent.errors.handler") == 5
    assert len([r for r in caplog.records if "handler" in r.getMessage()]) == 2
    await nodes.answers("a")


@pytest.mark.asyncio
async def test_a_raising_pass_through_costs_one_count_per_frame(nodes: Nodes) -> None:
    """A pass-through runs before the frame is decoded, in the same containment as a handler:
    its exception costs that frame and one count, never the rest of the batch."""
    a = nodes.agents["a"]
    calls: list[list[object]] = []

    def boom(sender: NodeId, values: list[object]) -> bool:
        calls.append(values)
        raise RuntimeError("pass-through bug")

    a.add_pass_through(rt.DataFrame, boom)
    frame = rt.DataFrame(source="b", destination="a", frame_id=1, hops=1, hop_limit=4, payload=b"")
    for _ in range(3):
        inject(nodes, "b", "a", frame)
    await until(lambda: len(calls) == 3)
    assert calls[0] == ["b", "a", 1, 1, 4, b""]
    assert counter(a, "agent.errors.handler") == 3
    assert counter(a, "agent.passed_through") == 3
    await nodes.answers("a")
    with pytest.raises(ValueError, match="membership"):
        a.add_pass_through(Join, boom)


@pytest.mark.asyncio
async def test_a_raising_subscriber_callback_is_contained(nodes: Nodes) -> None:
    a = nodes.agents["a"]
    seen: list[Event] = []

    def callback(event: Event) -> None:
        if event.peer.id.startswith("probe"):
            seen.append(event)
            raise ValueError("subscriber bug")

    a.subscribe(callback)
    await nodes.answers("a")
    await nodes.answers("a")
    assert len(seen) >= 2
    assert counter(a, "agent.errors.callback") == len(seen)


@pytest.mark.asyncio
async def test_a_failing_membership_step_is_contained(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = nodes.agents["a"]
    core = a.core
    real = core.on_timer
    failures = 0

    def on_timer(*, now: float) -> list[object]:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise RuntimeError("timer bug")
        return real(now=now)  # type: ignore[return-value]

    monkeypatch.setattr(core, "on_timer", on_timer)
    await until(lambda: failures == 3)
    assert counter(a, "agent.errors.timer") == 3
    await nodes.answers("a")


@pytest.mark.asyncio
async def test_a_failing_membership_message_is_contained(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = nodes.agents["a"]
    core = a.core
    real = core.receive
    failures = 0

    def receive(sender: NodeId, message: Any, *, now: float) -> list[Any]:
        nonlocal failures
        if failures < 2 and type(message).__name__ == "KeepAlive":
            failures += 1
            raise RuntimeError("core bug")
        return real(sender, message, now=now)

    monkeypatch.setattr(core, "receive", receive)
    await until(lambda: failures == 2)
    assert counter(a, "agent.errors.core") == 2
    await nodes.answers("a")


@pytest.mark.asyncio
async def test_a_raising_gate_is_contained() -> None:
    class Gate:
        calls = 0

        def peer_up(self, peer: Peer) -> None:
            Gate.calls += 1
            raise RuntimeError("gate bug")

        def peer_down(self, peer: Peer, reason: object) -> None:
            raise RuntimeError("gate bug")

    net = MemoryNetwork()
    a = Agent(
        Strategy(local_peer=Peer("a", "mem://a"), transport="memory", hyparview_config=CONFIG),
        transport=net.transport("a", bind="mem://a"),
        gate=Gate(),
        rng=random.Random(1),
    )
    b = Agent(
        Strategy(
            local_peer=Peer("b", "mem://b"),
            contacts=(Peer("a", "mem://a"),),
            transport="memory",
            hyparview_config=CONFIG,
        ),
        transport=net.transport("b", bind="mem://b"),
        rng=random.Random(2),
    )
    async with a, b:
        await a.wait_for_active(1, timeout=5)
        await until(lambda: counter(a, "agent.errors.gate") == Gate.calls > 0)
        await b.wait_for_active(1, timeout=5)


@pytest.mark.asyncio
async def test_an_unencodable_send_of_the_core_loses_that_message_only(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = nodes.agents["a"]
    refused = 0

    class Refusing(Codec):
        def encode(self, message: object) -> bytes:
            nonlocal refused
            if refused < 2 and type(message).__name__ == "KeepAlive":
                refused += 1
                raise EncodeError("refused for the test")
            return super().encode(message)

    monkeypatch.setattr(a, "_codec", Refusing(CODEC.registry))
    await until(lambda: refused == 2)
    assert counter(a, "agent.errors.encode") == 2
    await nodes.answers("a")


@pytest.mark.asyncio
async def test_a_dying_service_coroutine_is_counted_not_restarted(nodes: Nodes) -> None:
    a = nodes.agents["a"]
    runs = 0

    async def service() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)
        raise RuntimeError("service bug")

    assert not a.lost_services
    task = a.spawn(service(), name="dies-once")
    await asyncio.wait_for(task, timeout=5)
    assert runs == 1
    assert counter(a, "agent.errors.service") == 1
    assert counter(a, "agent.service.restarted") == 0
    assert a.lost_services == ("dies-once",)  # what a supervisor reads to replace the agent
    await nodes.answers("a")


@pytest.mark.asyncio
async def test_a_dying_service_factory_is_restarted(nodes: Nodes) -> None:
    a = nodes.agents["a"]
    runs = 0

    async def service() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise EncodeError("a frame the codec cannot carry")
        await asyncio.Event().wait()  # the third life runs until cancelled

    task = a.spawn(service, name="restarted")
    await until(lambda: runs == 3)
    assert counter(a, "agent.errors.service") == 2
    assert counter(a, "agent.service.restarted") == 2
    assert a.lost_services == ()
    await nodes.answers("a")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_error_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    error_log = agent_module._ErrorLog(burst=3, interval=3600.0)
    with caplog.at_level(logging.ERROR, logger="ray_hyparview.agent"):
        logged = [error_log.error("n", "x", "step", RuntimeError("e")) for _ in range(10)]
    assert logged == [True] * 3 + [False] * 7
    assert len(caplog.records) == 3


# --- the same frames over real ZeroMQ sockets on 127.0.0.1 -------------------------------------


def _zmq_strategy(name: str, *contacts: Peer) -> Strategy:
    return Strategy(
        local_peer=Peer(name, "tcp://127.0.0.1:0"), contacts=contacts, hyparview_config=CONFIG
    )


@pytest.mark.asyncio
async def test_a_top_seqno_request_over_zmq_leaves_the_agent_running() -> None:
    directory = MemoryDirectory()
    agents: list[Agent] = []
    meshes: list[MeshNode] = []

    async def start(name: str, *contacts: Peer) -> tuple[Agent, MeshNode]:
        agent = Agent(_zmq_strategy(name, *contacts), rng=random.Random(name))
        agents.append(agent)
        await agent.start()
        mesh = MeshNode(agent, directory, routing=ROUTING, rng=random.Random(name))
        meshes.append(mesh)
        return agent, mesh

    try:
        a, mesh_a = await start("a")
        b, mesh_b = await start("b", a.myself)
        c, mesh_c = await start("c", a.myself)
        await until(lambda: {"b", "c"} <= set(mesh_a.router.links), limit=10)
        # Climb from wherever a's seqno is to the top in steps under 2**63 (modular "newer").
        start_seqno = mesh_a.router.seqno
        before = mesh_a.router.counters["received.SeqnoRequest"]
        for k in (1, 2, 3, 4):
            seqno = start_seqno + k * (TOP - start_seqno) // 4
            request = rt.SeqnoRequest(destination="a", seqno=seqno, origin="b", hop_limit=4)
            assert b.transport.send(a.myself, CODEC.encode(request))
        await settle_router(mesh_a, "received.SeqnoRequest", before + 4)
        assert mesh_a.router.counters["seqno.raised"] >= 4
        await mesh_c.aclose()
        await c.aclose()  # a graceful leave: a's router loses a link and raises its seqno
        await until(lambda: "c" not in mesh_a.router.links, limit=10)
        assert 0 <= mesh_a.router.seqno <= TOP  # announced without an EncodeError
        await start("d", a.myself)
        await until(lambda: a.active_peer("d") is not None, limit=10)
        mesh_a.register("actor-a")
        mesh_b.register("actor-b")
        assert await mesh_b.send("actor-b", "actor-a", b"hi", timeout=5) == "direct"
        assert not a.closed
        assert not any(k.startswith("agent.errors.") for k in a.stats()["counters"])
    finally:
        for mesh in meshes:
            await mesh.aclose()
        for agent in agents:
            await agent.aclose()
