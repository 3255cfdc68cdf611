"""Three real agents with their mesh nodes over ZeroMQ on loopback, in this process, and the
tools of a hostile peer against them: transports and raw DEALERs claiming any id (with CURVE,
mallory's admitted key or fresh ones), crafted pickles, counters that say an attack was dealt
with. Used by ``tests/test_hostile_suite.py``; see its table of attacks.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from ray_hyparview.agent.meshnode import MemoryDirectory, MeshNode
from ray_hyparview.agent.node import Agent
from ray_hyparview.config.keys import generate_keypair
from ray_hyparview.config.strategy import Security, Strategy
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.delivery_values import DeliveryConfig, MeshSend
from ray_hyparview.protocol.messages import Join
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.testing.conditions import until
from ray_hyparview.transport.zmq import CurveConfig, ZmqOptions, ZmqTransport
from ray_hyparview.wire import wire_codec

IDS = ("n1", "n2", "n3")
CONFIG = HyParViewConfig.local(
    active_view_size=2, passive_view_size=8, min_active_size=1, keepalive_timeout=3.0
)
ROUTING = rt.RoutingConfig(update_interval=0.5, route_expiry=2.0, request_interval=0.2)
CACHE_BYTES = 2 * 1024 * 1024
INBOX_BYTES = 2 * 1024 * 1024
PLUMTREE = pt.PlumtreeConfig(payload_cache_bytes=CACHE_BYTES)
DELIVERY = DeliveryConfig(inbox_bytes=INBOX_BYTES)
CLIENT = ZmqOptions(dial_timeout=2.0)
CODEC = wire_codec()


# --- the overlay under attack -------------------------------------------------------------------


@dataclass
class Overlay:
    curve: bool
    agents: dict[NodeId, Agent]
    meshes: dict[NodeId, MeshNode]
    keys: dict[NodeId, tuple[str, str]]
    """Key pairs of n1..n3 and of ``mallory`` (admitted, bound to that id)."""
    stack: AsyncExitStack

    def peer(self, node_id: NodeId) -> Peer:
        return self.agents[node_id].myself

    def counter(self, node_id: NodeId, name: str) -> int:
        value = self.agents[node_id].stats()["counters"].get(name, 0)
        assert isinstance(value, int)
        return value

    def total(self, node_id: NodeId, *names: str) -> int:
        return sum(self.counter(node_id, name) for name in names)

    def active(self, node_id: NodeId) -> frozenset[NodeId]:
        return frozenset(p.id for p in self.agents[node_id].active_view)

    def whole(self) -> bool:
        """Every node holds the other two, at the endpoints they really have."""
        for node_id, agent in self.agents.items():
            if self.active(node_id) != frozenset(IDS) - {node_id}:
                return False
            known = agent.core._active_incarnation  # what a frame's incarnation is held to
            for peer in agent.active_view:
                if peer.endpoint != self.peer(peer.id).endpoint:
                    return False
                if known.get(peer.id) != self.agents[peer.id].incarnation:
                    return False
        return True

    async def client(self, claimed: NodeId, keypair: tuple[str, str] | None) -> ZmqTransport:
        """A transport that claims ``claimed``; with CURVE on, it dials with ``keypair``."""
        curve = None
        if self.curve:
            assert keypair is not None
            curve = CurveConfig(
                public_key=keypair[0],
                secret_key=keypair[1],
                node_keys={i: self.keys[i][0] for i in IDS},
            )
        transport = ZmqTransport(claimed, options=CLIENT, curve=curve)
        await transport.start()
        self.stack.push_async_callback(transport.aclose)
        return transport

    async def attacker(self, claimed: NodeId) -> ZmqTransport:
        """A hostile peer claiming ``claimed``: with CURVE it holds mallory's key."""
        return await self.client(claimed, self.keys["mallory"])

    def inject(self, source: ZmqTransport, target: NodeId, message: object) -> None:
        assert source.send(self.peer(target), CODEC.encode(message))

    async def still_whole(self) -> None:
        """The overlay is whole now, and still after every node heard a keepalive more from
        each neighbour (time enough for a forged leave or a stale incarnation to show)."""
        assert self.whole(), {n: sorted(self.active(n)) for n in IDS}
        refused = {n: self.total(n, *LOCKED_OUT) for n in IDS}
        heard = {n: self.counter(n, "agent.received.KeepAlive") for n in IDS}
        await until(
            lambda: all(self.counter(n, "agent.received.KeepAlive") >= heard[n] + 4 for n in IDS),
            limit=10,
        )
        assert self.whole(), {n: sorted(self.active(n)) for n in IDS}
        # The real nodes' own frames are still taken (not refused as from an older life).
        assert {n: self.total(n, *LOCKED_OUT) for n in IDS} == refused


LOCKED_OUT = ("core.dropped.stale_incarnation", "core.dropped.from_departed")
"""How a core refuses the frames of a real node that a forgery made look older or gone."""


@asynccontextmanager
async def overlay(curve: bool) -> AsyncIterator[Overlay]:
    keys = {i: generate_keypair() for i in (*IDS, "mallory")}
    async with AsyncExitStack() as stack:
        o = Overlay(curve, {}, {}, keys, stack)
        directory = MemoryDirectory()
        for node_id in IDS:
            security = None
            if curve:
                public, secret = keys[node_id]
                bound = {i: k[0] for i, k in keys.items() if i != node_id}
                security = Security(public_key=public, secret_key=secret, allowed_keys=bound)
            contacts = (o.peer("n1"),) if node_id != "n1" else ()
            agent = Agent(
                Strategy(
                    local_peer=Peer(node_id, "tcp://127.0.0.1:0"),
                    contacts=contacts,
                    hyparview_config=CONFIG,
                    security=security,
                ),
                rng=random.Random(node_id),
            )
            await agent.start()
            stack.push_async_callback(agent.aclose)
            o.agents[node_id] = agent
            mesh = MeshNode(
                agent,
                directory,
                routing=ROUTING,
                plumtree=PLUMTREE,
                delivery=DELIVERY,
                rng=random.Random(node_id + "/mesh"),
            )
            stack.push_async_callback(mesh.aclose)
            o.meshes[node_id] = mesh
        await until(o.whole, limit=15)
        # Every router has heard each neighbour announce the third node.
        await until(
            lambda: (
                all(len(m.router.routes()) == 2 for m in o.meshes.values())
                and all(
                    len(m.router._rib.get(other, {})) == 2
                    for n, m in o.meshes.items()
                    for other in IDS
                    if other != n
                )
            ),
            limit=15,
        )
        yield o


# --- pickles ------------------------------------------------------------------------------------


class _Touch:
    """Unpickling this creates ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def crafted(path: Path) -> bytes:
    return pickle.dumps(_Touch(path))


def envelope(payload: bytes, dst_name: str) -> bytes:
    return CODEC.encode(
        MeshSend(
            msg_id=1,
            incarnation=1,
            attempt=1,
            horizon_ms=10_000,
            src_name="mallory-actor",
            dst_name=dst_name,
            kind="send",
            key="",
            payload=payload,
        )
    )


def victims(o: Overlay, *nodes: NodeId, topic: str = "") -> None:
    """Register an actor ``victim-<node>`` on each node (subscribed to ``topic``, if given)."""
    for node_id in nodes:
        o.meshes[node_id].register(f"victim-{node_id}")
        if topic:
            o.meshes[node_id].subscribe(f"victim-{node_id}", topic)


async def consume(o: Overlay) -> list[object]:
    """What the victim actors find in their inboxes, unpickled as an actor would."""
    found = []
    for node_id, mesh in o.meshes.items():
        name = f"victim-{node_id}"
        if mesh.core.registered(name):
            for item in await mesh.poll(name, wait=0.0):
                found.append(pickle.loads(item.payload))  # what a receiving actor does
    return found


async def raw_joins(
    o: Overlay,
    target: NodeId,
    ids: list[NodeId],
    *,
    rounds: int,
    fresh_keys: bool,
    plain_text: bool = False,
) -> list[zmq.asyncio.Socket]:
    """One DEALER per id, each sending ``rounds`` JOINs under its id to ``target``. With
    CURVE: a fresh key each (``fresh_keys``), or mallory's key for all; or no CURVE at all
    (``plain_text``)."""
    ctx = zmq.asyncio.Context()
    o.stack.callback(ctx.term)
    socks: list[zmq.asyncio.Socket] = []
    for node_id in ids:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, node_id.encode() + b"\0" + os.urandom(6))
        if o.curve and not plain_text:
            public, secret = generate_keypair() if fresh_keys else o.keys["mallory"]
            sock.setsockopt(zmq.CURVE_SERVERKEY, o.keys[target][0].encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public.encode())
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret.encode())
        sock.connect(o.peer(target).endpoint)
        o.stack.callback(sock.close, 0)
        socks.append(sock)
    for round_ in range(rounds):
        for node_id, sock in zip(ids, socks, strict=True):
            join = Join(sender=Peer(node_id, "tcp://127.0.0.1:9"), incarnation=1 + round_)
            await sock.send(CODEC.encode(join))
    return socks


def links_lost(o: Overlay) -> dict[NodeId, int]:
    """Real links each node lost so far: evicted by it, or dropped by the other end."""
    return {n: o.total(n, "core.peer_down.evicted", "core.peer_down.disconnected") for n in IDS}


def dealt_with(o: Overlay, node_id: NodeId) -> int:
    """JOINs the victim read, plus frames and connections it refused for an unproved id, an
    unknown key or a cap: once this grew by what was sent, every frame was dealt with."""
    return o.total(
        node_id,
        "agent.received.Join",
        "transport.recv.dropped.impersonation",
        "transport.zap.denied",
        "transport.zap.refused.connections",
        "transport.recv.dropped.stranger_cap",
    )


def garbage(o: Overlay, node_id: NodeId) -> int:
    counters = o.agents[node_id].stats()["counters"]
    return sum(
        v
        for k, v in counters.items()
        if k.startswith("agent.dropped.") and k != "agent.dropped.not_neighbor"
    )
