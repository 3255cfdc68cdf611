"""The node side of the actor mesh: gated channels, routed delivery with acknowledgements,
request/response, and Plumtree publish/subscribe, all riding on one agent's active links.

Theory of operation
===================

Actors never open a connection to another node. Each talks only to its own node's agent (a
same-node Ray call); the agents talk only over their active-view links. So the cross-node
connections a node holds are exactly its active view, whatever the actors do. That is the gate:

* a *local* channel reaches an actor on the same node (no network at all);
* a *direct* channel reaches an actor on a node in the active view: one hop over an open link;
* every other target gets a *routed* channel: hop by hop over active links, chosen by the
  distance-vector router in :mod:`ray_hyparview.protocol.routing` (its module comment explains
  why a distance vector and not Partisan's relay along the broadcast tree).

When a peer goes down, direct channels to it close (the libcluster ``disconnect_nodes``): the
next message to that node is routed around the failure, or fails with a reason.

Delivery. ``send`` is acknowledged end to end: the target node answers ACK (delivered), or a
NACK with the reason (``unknown_name``, ``inbox_full``); the router reports ``no_route`` or
``hop_limit``; silence becomes ``timeout``. The sender retries the same message id every
``retry_interval`` until the deadline, and the target remembers recent ids, so a message that
was delivered but whose ACK was lost is acknowledged again, never delivered twice: exactly once
while both ends live, and a :class:`DeliveryError` otherwise. Never a silent loss.

Names. An actor registers a cluster-unique name; a :class:`Directory` maps names to nodes (the
Ray GCS key-value store in a cluster, a dict in tests). Lookups are cached briefly and the cache
entry is dropped when the target node says it no longer knows the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ray_hyparview.agent import Agent, Event
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.errors import HyParViewError
from ray_hyparview.protocol.messages import PeerDown, PeerUp
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.wire import MeshAck, MeshPublish, MeshReply, MeshSend, wire_codec

__all__ = [
    "DeliveryError",
    "Directory",
    "DuplicateName",
    "InboxItem",
    "MemoryDirectory",
    "MeshNode",
    "PathKind",
]

log = logging.getLogger("ray_hyparview.mesh")

PathKind = Literal["local", "direct", "routed"]

_RETRY_INTERVAL = 0.5
_NAME_CACHE_TTL = 2.0
_SEEN_MAX = 50_000
_INBOX_MAX = 10_000
_MERGE_CHECK = 1.0
_MERGE_MAX_DELAY = 60.0


class DeliveryError(HyParViewError, RuntimeError):
    """A message could not be delivered; ``reason`` says why."""

    def __init__(self, reason: str, target: str = "", detail: str = "") -> None:
        self.reason = reason
        self.target = target
        self.detail = detail
        text = f"could not deliver to {target!r}: {reason}" if target else reason
        super().__init__(f"{text} ({detail})" if detail else text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (DeliveryError, (self.reason, self.target, self.detail))


class DuplicateName(HyParViewError, ValueError):
    """The name is already registered by another actor of the cluster."""


class Directory(Protocol):
    """Cluster-wide names -> node ids. ``claim`` must be atomic across the cluster."""

    def claim(self, name: str, node_id: NodeId) -> bool:
        """Take ``name`` for ``node_id``; False if another node holds it."""
        ...

    def lookup(self, name: str) -> NodeId | None: ...

    def release(self, name: str, node_id: NodeId) -> None: ...


class MemoryDirectory:
    """A :class:`Directory` shared by agents of one process (tests, the demo)."""

    def __init__(self) -> None:
        self._names: dict[str, NodeId] = {}

    def claim(self, name: str, node_id: NodeId) -> bool:
        return self._names.setdefault(name, node_id) == node_id

    def lookup(self, name: str) -> NodeId | None:
        return self._names.get(name)

    def release(self, name: str, node_id: NodeId) -> None:
        if self._names.get(name) == node_id:
            del self._names[name]


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One thing that arrived for an actor."""

    kind: Literal["send", "request", "publish"]
    sender: str
    """The sending actor's name (for ``publish``: the publisher's name)."""
    payload: bytes
    topic: str = ""
    request: tuple[NodeId, int] | None = None
    """For ``request``: where the reply goes (requester node, request id)."""
    sender_node: NodeId = ""


@dataclass(slots=True)
class _Endpoint:
    name: str
    inbox: asyncio.Queue[InboxItem] = field(
        default_factory=lambda: asyncio.Queue(maxsize=_INBOX_MAX)
    )
    topics: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Outgoing:
    message: MeshSend
    target_node: NodeId
    future: asyncio.Future[str]
    last_reason: str = "timeout"


class MeshNode:
    """The mesh service of one agent. Create it after the agent started; :meth:`aclose` it
    before the agent closes."""

    def __init__(
        self,
        agent: Agent,
        directory: Directory,
        *,
        routing: rt.RoutingConfig | None = None,
        plumtree: pt.PlumtreeConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.agent = agent
        self.directory = directory
        self.node_id = agent.myself.id
        rng = rng if rng is not None else random.Random()
        self.router = rt.Router(
            self.node_id, routing, rng=random.Random(rng.random()), incarnation=agent.incarnation
        )
        self.tree = pt.Plumtree(
            self.node_id, plumtree, rng=random.Random(rng.random()), incarnation=agent.incarnation
        )
        self.counters: Counter[str] = Counter()
        self._codec = wire_codec()
        self._endpoints: dict[str, _Endpoint] = {}
        self._names: dict[str, tuple[NodeId, float]] = {}
        self._outgoing: dict[int, _Outgoing] = {}
        self._frames: dict[int, int] = {}  # router frame id -> mesh message id
        self._requests: dict[int, asyncio.Future[bytes]] = {}
        self._seen: OrderedDict[tuple[NodeId, int], str] = OrderedDict()
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._closed = False
        self._unreachable: dict[NodeId, float] = {}
        self._next_merge_check = asyncio.get_running_loop().time() + _MERGE_CHECK
        self._next_merge = 0.0
        self._merge_delay = _MERGE_CHECK
        for routing_type in (rt.RouteUpdate, rt.SeqnoRequest, rt.DataFrame, rt.RouteError):
            agent.add_handler(routing_type, self._on_routing)
        for tree_type in (pt.Gossip, pt.IHave, pt.Graft, pt.Prune):
            agent.add_handler(tree_type, self._on_plumtree)
        self._unsubscribe = agent.subscribe(self._on_membership)
        self._task = agent.spawn(self._timer_loop(), name=f"mesh-timer-{self.node_id}")

    # ------------------------------------------------------------------ names

    def register(self, name: str) -> None:
        """Register an actor under a cluster-unique ``name``."""
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValueError(f"a mesh name is a non-empty string of at most 200 chars: {name!r}")
        if name in self._endpoints or not self.directory.claim(name, self.node_id):
            raise DuplicateName(f"the name {name!r} is already registered in the cluster")
        self._endpoints[name] = _Endpoint(name)

    def unregister(self, name: str) -> None:
        if self._endpoints.pop(name, None) is not None:
            self.directory.release(name, self.node_id)

    def _resolve(self, name: str, now: float) -> NodeId:
        cached = self._names.get(name)
        if cached is not None and cached[1] > now:
            return cached[0]
        node = self.directory.lookup(name)
        if node is None:
            raise DeliveryError("unknown_name", name)
        self._names[name] = (node, now + _NAME_CACHE_TTL)
        return node

    # ------------------------------------------------------------------ gate

    def allowed(self, node_id: NodeId) -> bool:
        """May an actor here hold a direct channel to ``node_id``? Same node or active view."""
        return node_id == self.node_id or node_id in self.agent.core.active_ids

    def path_kind(self, name: str) -> PathKind:
        """The kind of channel ``name`` gets from here right now."""
        node = self._resolve(name, self._now())
        if node == self.node_id:
            return "local"
        return "direct" if self.allowed(node) else "routed"

    # ------------------------------------------------------------------ sending

    async def send(
        self, src: str, dst: str, payload: bytes, *, timeout: float = 10.0, kind: str = "send"
    ) -> PathKind:
        """Deliver ``payload`` to actor ``dst`` exactly once or raise :class:`DeliveryError`.
        Returns the kind of path it took."""
        return (await self._send(src, dst, payload, timeout=timeout, kind=kind))[0]

    async def request(self, src: str, dst: str, payload: bytes, *, timeout: float = 10.0) -> bytes:
        """Send a request and wait for the reply (both within ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        request_id = next(self._ids)
        future: asyncio.Future[bytes] = loop.create_future()
        self._requests[request_id] = future
        try:
            await self._send(src, dst, payload, timeout=timeout, kind="request", rid=request_id)
            remaining = max(0.0, deadline - loop.time())
            try:
                async with asyncio.timeout(remaining):
                    return await future
            except TimeoutError:
                raise DeliveryError("timeout", dst, "no reply") from None
        finally:
            self._requests.pop(request_id, None)

    async def reply(self, request: tuple[NodeId, int], payload: bytes) -> None:
        """Answer a request (routed back to the requester's node; not acknowledged)."""
        node, request_id = request
        message = MeshReply(request_id=request_id, payload=payload)
        if node == self.node_id:
            self._on_reply(message)
            return
        self._route(node, self._codec.encode(message))

    async def _send(
        self, src: str, dst: str, payload: bytes, *, timeout: float, kind: str, rid: int = 0
    ) -> tuple[PathKind, str]:
        if self._closed:
            raise DeliveryError("closed", dst)
        loop = asyncio.get_running_loop()
        node = self._resolve(dst, loop.time())
        path = self.path_kind(dst)
        self.counters[f"send.{path}"] += 1
        message = MeshSend(
            msg_id=next(self._ids),
            src_name=src,
            dst_name=dst,
            kind=kind,
            payload=payload,
            request_id=rid,
        )
        if node == self.node_id:
            status = self._deliver(self.node_id, message)
            if status != "ok":
                raise DeliveryError(status, dst)
            return path, status
        data = self._codec.encode(message)  # raises EncodeError when too large: local misuse
        outgoing = _Outgoing(message, node, loop.create_future())
        self._outgoing[message.msg_id] = outgoing
        deadline = loop.time() + timeout
        try:
            while True:
                self._route(node, data, message.msg_id)
                wait = min(_RETRY_INTERVAL, deadline - loop.time())
                if wait <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        status = await asyncio.shield(outgoing.future)
                        if status == "ok":
                            return path, status
                        if status == "unknown_name":
                            self._names.pop(dst, None)
                        raise DeliveryError(status, dst)
                if loop.time() >= deadline:
                    break
                self.counters["send.retried"] += 1
            raise DeliveryError(outgoing.last_reason, dst, f"after {timeout:g} s")
        finally:
            self._outgoing.pop(message.msg_id, None)
            if not outgoing.future.done():
                outgoing.future.cancel()

    def _route(self, node: NodeId, data: bytes, msg_id: int = 0) -> None:
        frame_id, actions = self.router.route(node, data, now=self._now())
        if msg_id:
            self._frames[frame_id] = msg_id
            while len(self._frames) > _SEEN_MAX:
                self._frames.pop(next(iter(self._frames)))
        self._apply_routing(actions)

    # ------------------------------------------------------------------ receiving

    def _deliver(self, src_node: NodeId, message: MeshSend) -> str:
        """Put a message in the target's inbox once; the same id again gets the same answer."""
        key = (src_node, message.msg_id)
        seen = self._seen.get(key)
        if seen is not None:
            self.counters["deliver.duplicate"] += 1
            return seen
        endpoint = self._endpoints.get(message.dst_name)
        if endpoint is None:
            status = "unknown_name"
        else:
            item = InboxItem(
                kind="request" if message.kind == "request" else "send",
                sender=message.src_name,
                payload=message.payload,
                request=(src_node, message.request_id) if message.kind == "request" else None,
                sender_node=src_node,
            )
            try:
                endpoint.inbox.put_nowait(item)
                status = "ok"
            except asyncio.QueueFull:
                status = "inbox_full"
        self.counters[f"deliver.{status}"] += 1
        if status != "inbox_full":  # a full inbox may have room at the retry
            self._seen[key] = status
            while len(self._seen) > _SEEN_MAX:
                self._seen.popitem(last=False)
        return status

    def _on_arrived(self, source: NodeId, payload: bytes) -> None:
        message = self._codec.decode(payload)
        match message:
            case MeshSend():
                status = self._deliver(source, message)
                ack = MeshAck(msg_id=message.msg_id, status=status)
                self._route(source, self._codec.encode(ack))
            case MeshAck():
                outgoing = self._outgoing.get(message.msg_id)
                if outgoing is not None and not outgoing.future.done():
                    outgoing.future.set_result(message.status)
            case MeshReply():
                self._on_reply(message)
            case _:
                self.counters["dropped.bad_envelope"] += 1

    def _on_reply(self, message: MeshReply) -> None:
        future = self._requests.get(message.request_id)
        if future is not None and not future.done():
            future.set_result(message.payload)
        else:
            self.counters["reply.late"] += 1

    # ------------------------------------------------------------------ inbox and topics

    async def poll(self, name: str, *, wait: float, limit: int = 100) -> list[InboxItem]:
        """Up to ``limit`` items for ``name``, waiting up to ``wait`` s for the first."""
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise DeliveryError("unknown_name", name, "not registered on this node")
        items: list[InboxItem] = []
        if endpoint.inbox.empty():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    items.append(await endpoint.inbox.get())
        while len(items) < limit and not endpoint.inbox.empty():
            items.append(endpoint.inbox.get_nowait())
        return items

    def subscribe(self, name: str, topic: str) -> None:
        self._endpoint(name).topics.add(topic)

    def unsubscribe(self, name: str, topic: str) -> None:
        self._endpoint(name).topics.discard(topic)

    def publish(self, name: str, topic: str, payload: bytes) -> None:
        """Broadcast to every subscriber of ``topic`` in the cluster, once each (Plumtree)."""
        data = self._codec.encode(MeshPublish(src_name=name, payload=payload))
        _, actions = self.tree.broadcast(data, topic=topic, now=self._now())
        self.counters["publish"] += 1
        self._apply_plumtree(actions)  # includes the local delivery

    def _deliver_topic(self, origin: NodeId, topic: str, data: bytes) -> None:
        message = self._codec.decode(data)
        if not isinstance(message, MeshPublish):
            self.counters["dropped.bad_envelope"] += 1
            return
        for endpoint in self._endpoints.values():
            if topic in endpoint.topics:
                item = InboxItem(
                    kind="publish",
                    sender=message.src_name,
                    payload=message.payload,
                    topic=topic,
                    sender_node=origin,
                )
                try:
                    endpoint.inbox.put_nowait(item)
                    self.counters["publish.delivered"] += 1
                except asyncio.QueueFull:
                    self.counters["publish.inbox_full"] += 1
                    log.warning(
                        "%s: inbox of %s full, publication dropped", self.node_id, endpoint.name
                    )

    def _endpoint(self, name: str) -> _Endpoint:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise DeliveryError("unknown_name", name, "not registered on this node")
        return endpoint

    # ------------------------------------------------------------------ drivers

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_membership(self, event: Event) -> None:
        now = self._now()
        match event:
            case PeerUp(peer=peer):
                self._apply_routing(self.router.link_up(peer.id, now=now))
                self._apply_plumtree(self.tree.neighbor_up(peer.id, now=now))
            case PeerDown(peer=peer):
                self.counters["channels.closed"] += 1
                self._apply_routing(self.router.link_down(peer.id, now=now))
                self._apply_plumtree(self.tree.neighbor_down(peer.id, now=now))

    def _on_routing(self, sender: NodeId, message: Any) -> None:
        self._apply_routing(self.router.receive(sender, message, now=self._now()))

    def _on_plumtree(self, sender: NodeId, message: Any) -> None:
        self._apply_plumtree(self.tree.receive(sender, message, now=self._now()))

    def _apply_routing(self, actions: list[rt.Action]) -> None:
        for action in actions:
            match action:
                case rt.SendTo(peer_id=peer_id, message=message):
                    peer = self.agent.active_peer(peer_id)
                    sent = peer is not None and self.agent.send_raw(peer, message)
                    if not sent and isinstance(message, rt.DataFrame | rt.RouteError):
                        again = self.router.forward_failed(message, peer_id, now=self._now())
                        self._apply_routing(again)
                case rt.Arrived(source=source, payload=payload):
                    self._on_arrived(source, payload)
                case rt.Undeliverable(frame_id=frame_id, reason=reason):
                    msg_id = self._frames.pop(frame_id, None)
                    outgoing = None if msg_id is None else self._outgoing.get(msg_id)
                    if outgoing is not None:
                        # Keep retrying until the deadline: routes may come back.
                        outgoing.last_reason = reason
        self._wake.set()

    def _apply_plumtree(self, actions: list[pt.Action]) -> None:
        for action in actions:
            match action:
                case pt.SendTo(peer_id=peer_id, message=message):
                    peer = self.agent.active_peer(peer_id)
                    if peer is not None:
                        self.agent.send_raw(peer, message)
                case pt.Deliver(topic=topic, payload=payload, origin=origin):
                    self._deliver_topic(origin, topic, payload)
        self._wake.set()

    def _merge_check(self, now: float) -> None:
        """Link up components of the overlay that HyParView alone would leave apart.

        With every active view full, two components can both be stable (two triangles when
        the view holds 2), and no rule of the paper joins them. The router knows better: a
        passive peer (alive when we last heard of it) that stays unreachable over the overlay
        for three route-update periods is in another component, or dead. We JOIN it; a dead
        one costs a failed dial. Joins are spaced with a doubling delay, reset once every
        passive peer is reachable again.
        """
        self._next_merge_check = now + _MERGE_CHECK
        routes = self.router.routes()
        active = self.agent.core.active_ids
        cut_off = [p for p in self.agent.passive_view if p.id not in routes and p.id not in active]
        for peer_id in [p for p in self._unreachable if p not in {q.id for q in cut_off}]:
            del self._unreachable[peer_id]
        if not cut_off:
            self._merge_delay = _MERGE_CHECK
            return
        patience = 3 * self.router.config.update_interval
        for peer in cut_off:
            since = self._unreachable.setdefault(peer.id, now)
            if now - since >= patience and now >= self._next_merge:
                self.counters["merge.join"] += 1
                log.info("%s: %s is alive but unreachable: joining it", self.node_id, peer.id)
                self.agent.probe(peer)
                del self._unreachable[peer.id]
                self._next_merge = now + self._merge_delay
                self._merge_delay = min(self._merge_delay * 2, _MERGE_MAX_DELAY)
                break

    async def _timer_loop(self) -> None:
        while not self._closed:
            deadlines = [d for d in (self.router.next_deadline(), self.tree.next_deadline()) if d]
            deadlines.append(self._next_merge_check)
            self._wake.clear()
            timeout = max(0.0, min(deadlines) - self._now()) if deadlines else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            now = self._now()
            due = self.router.next_deadline()
            if due is not None and due <= now:
                self._apply_routing(self.router.on_timer(now=now))
            due = self.tree.next_deadline()
            if due is not None and due <= now:
                self._apply_plumtree(self.tree.on_timer(now=now))
            if now >= self._next_merge_check:
                self._merge_check(now)

    async def aclose(self) -> None:
        """Stop the timers, fail what is waiting, release every name. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        self._wake.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for outgoing in self._outgoing.values():
            if not outgoing.future.done():
                outgoing.future.set_result("closed")
        for future in self._requests.values():
            if not future.done():
                future.set_exception(DeliveryError("closed"))
        for name in list(self._endpoints):
            self.unregister(name)

    def stats(self) -> dict[str, Any]:
        return {
            "names": sorted(self._endpoints),
            "routes": {d: list(r) for d, r in self.router.routes().items()},
            "counters": {
                **{f"mesh.{k}": v for k, v in sorted(self.counters.items())},
                **{f"routing.{k}": v for k, v in sorted(self.router.counters.items())},
                **{f"plumtree.{k}": v for k, v in sorted(self.tree.counters.items())},
            },
        }
