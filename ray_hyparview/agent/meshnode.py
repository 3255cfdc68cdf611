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
  why a distance vector and not Partisan's relay along the broadcast tree). A relay passes a
  data frame on as its field values, its hop count raised (``Router.pass_on``, rule 8 of that
  module), without building, decoding or encoding the message.

When a peer goes down, direct channels to it close (the libcluster ``disconnect_nodes``): the
next message to that node is routed around the failure, or fails with a reason.

Delivery. Every rule of it (ids that carry the sender's incarnation, ACKs, retries until the
deadline, dedup by time, refusals, request/reply matching, idempotency keys, the inboxes and
their poll-and-ack hand-over) lives in the pure core :mod:`ray_hyparview.protocol.delivery`,
whose module comment states them and whose contract the README repeats. This shell only
resolves names, turns the core's actions into frames and futures, and moves bytes: a send ends
in its future's result, or in a :class:`DeliveryError` whose ``outcome`` says whether the
message was certainly *not delivered* or its fate is *unknown*.

Names. An actor registers a cluster-unique name; a :class:`Directory` maps names to nodes (the
Ray GCS key-value store in a cluster, a dict in tests). Lookups are cached briefly and the cache
entry is dropped when the target node says it no longer knows the name.

Failures of this node's own code: a handler or timer that raises costs one counted, logged
error (``errors.timer``, ``errors.handler``); the timer loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, Protocol

from ray_hyparview.agent.node import Agent, Event
from ray_hyparview.protocol import delivery as dl
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.delivery import DeliveryConfig, DeliveryUsageError, InboxItem, Outcome
from ray_hyparview.protocol.errors import HyParViewError
from ray_hyparview.protocol.messages import PeerDown, PeerUp
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.wire.codec import DecodeError
from ray_hyparview.wire.table import MeshAck, MeshPublish, MeshReply, MeshSend, wire_codec

__all__ = [
    "DeliveryConfig",
    "DeliveryError",
    "Directory",
    "DuplicateName",
    "InboxItem",
    "MemoryDirectory",
    "MeshNode",
    "PathKind",
    "Settle",
]

log = logging.getLogger("ray_hyparview.mesh")

PathKind = Literal["local", "direct", "routed"]

_NAME_CACHE_TTL = 2.0
_FRAMES_MAX = 50_000
_ERROR_PAUSE = 0.05


class DeliveryError(HyParViewError, RuntimeError):
    """A message was not delivered, or its fate cannot be known; ``outcome`` says which.

    * ``outcome == "not_delivered"``: no copy reached the target actor and none ever will
      (``reason``: ``unknown_name``, ``no_route`` or ``hop_limit`` before any copy left,
      ``inbox_full``, ``busy`` when the target node refused, ``closed``). Retrying is safe.
    * ``outcome == "unknown"``: the deadline passed after a copy left; it may have been
      delivered and only its acknowledgement lost (``reason``: ``timeout``; ``no_reply`` for a
      request that was delivered but not answered; ``closed``). No protocol can tell these apart
      (the two generals' problem). Retry with the same idempotency key (``send(..., key=)``)
      to make sure the message is in the inbox at most once.
    """

    def __init__(
        self,
        reason: str,
        target: str = "",
        detail: str = "",
        outcome: Outcome = "not_delivered",
    ) -> None:
        self.reason = reason
        self.target = target
        self.detail = detail
        self.outcome: Outcome = outcome
        text = f"could not deliver to {target!r}: {reason}" if target else reason
        if outcome == "unknown":
            text += ", outcome unknown"
        super().__init__(f"{text} ({detail})" if detail else text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (DeliveryError, (self.reason, self.target, self.detail, self.outcome))


Settle = Callable[[bytes | None, DeliveryError | None], None]
"""The outcome of an operation started with :meth:`MeshNode.start`: ``(reply, None)`` (a send's
reply is None) or ``(None, error)``."""


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
        delivery: DeliveryConfig | None = None,
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
        self.core = dl.Delivery(
            self.node_id, delivery, rng=random.Random(rng.random()), incarnation=agent.incarnation
        )
        self.counters: Counter[str] = Counter()
        self._codec = wire_codec()
        self._names: dict[str, tuple[NodeId, float]] = {}
        self._waiting: dict[int, tuple[Settle, str]] = {}
        self._frames: dict[int, tuple[int, int]] = {}  # router frame id -> (ref, attempt)
        self._ready: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._armed = -math.inf  # the deadline the timer loop sleeps until (-inf: awake)
        self._poke_due = False  # a _poke_now is scheduled for the end of this turn
        self._closed = False
        self.on_inbox: Callable[[str], None] | None = None
        """Called with an actor's name when an item arrives in its inbox (the local path
        pushes it from there, :mod:`ray_hyparview.agent.localpath`)."""
        for routing_type in (rt.RouteUpdate, rt.SeqnoRequest, rt.DataFrame, rt.RouteError):
            agent.add_handler(routing_type, self._on_routing)
        agent.add_pass_through(rt.DataFrame, self._pass_on)
        for tree_type in (pt.Gossip, pt.IHave, pt.Graft, pt.Prune):
            agent.add_handler(tree_type, self._on_plumtree)
        self._unsubscribe = agent.subscribe(self._on_membership)
        self._task = agent.spawn(self._timer_loop, name=f"mesh-timer-{self.node_id}")

    # ------------------------------------------------------------------ names

    def register(self, name: str) -> None:
        """Register an actor under a cluster-unique ``name``."""
        if not isinstance(name, str) or not name or len(name) > dl.MAX_NAME_LEN:
            raise ValueError(f"a mesh name is a non-empty string of at most 200 chars: {name!r}")
        if self.core.registered(name) or not self.directory.claim(name, self.node_id):
            raise DuplicateName(f"the name {name!r} is already registered in the cluster")
        try:
            self.core.register(name)
        except DeliveryUsageError:
            self.directory.release(name, self.node_id)
            raise

    def unregister(self, name: str, *, ack: int | None = None) -> list[InboxItem]:
        """Give ``name`` back. Returns what its inbox still held beyond ``ack`` (the last seq
        the actor consumed; ``None``: nothing was lent out): never dropped silently."""
        if not self.core.registered(name):
            return []
        if ack is not None:
            self.core.ack(name, ack)
        left = self.core.unregister(name)
        self.directory.release(name, self.node_id)
        ready = self._ready.pop(name, None)
        if ready is not None:
            ready.set()
        return left

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
        self,
        src: str,
        dst: str,
        payload: bytes,
        *,
        timeout: float = 10.0,
        kind: str = "send",
        key: str = "",
    ) -> PathKind:
        """Deliver ``payload`` to actor ``dst`` at most once; returns the kind of path it took
        once the target node acknowledged it, or raises :class:`DeliveryError` (its ``outcome``
        says *not delivered* or *unknown*). ``key``: an idempotency key; a send with a key seen
        before (from ``src`` to ``dst``, within the target's ``key_retention``) gets the first
        outcome again without a second delivery, so an *unknown* outcome can be retried
        safely."""
        path = self.path_kind(dst) if not self._closed else "routed"
        await self._operate(src, dst, payload, timeout=timeout, kind=kind, key=key)
        self.counters[f"send.{path}"] += 1
        return path

    async def request(self, src: str, dst: str, payload: bytes, *, timeout: float = 10.0) -> bytes:
        """Send a request and wait for the reply (both within ``timeout``)."""
        reply = await self._operate(src, dst, payload, timeout=timeout, kind="request", key="")
        assert reply is not None
        return reply

    async def reply(self, request: tuple[NodeId, int, int], payload: bytes) -> None:
        """Answer a request (routed back to the requester's node; not acknowledged)."""
        self.reply_nowait(request, payload)

    def reply_nowait(self, request: tuple[NodeId, int, int], payload: bytes) -> None:
        """:meth:`reply`, from synchronous code."""
        try:
            actions = self.core.reply(tuple(request), payload, now=self._now())  # type: ignore[arg-type]
        except DeliveryUsageError as exc:
            raise ValueError(str(exc)) from None
        self._apply(actions)

    async def _operate(
        self, src: str, dst: str, payload: bytes, *, timeout: float, kind: str, key: str
    ) -> bytes | None:
        return await self.begin(src, dst, payload, timeout=timeout, kind=kind, key=key)

    def begin(
        self,
        src: str,
        dst: str,
        payload: bytes,
        *,
        timeout: float,
        kind: str = "send",
        key: str = "",
    ) -> asyncio.Future[bytes | None]:
        """Start a send (``kind="send"``) or request and return the future of its outcome
        (the reply, None for a send, or :class:`DeliveryError`), without a task per message.
        Cancelling the future stops waiting for the outcome, not the delivery. The local path
        (:mod:`ray_hyparview.agent.localpath`) uses :meth:`start`, which needs no future."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def settle(reply: bytes | None, error: DeliveryError | None) -> None:
            if not future.done():
                if error is None:
                    future.set_result(reply)
                else:
                    future.set_exception(error)

        ref = self.start(src, dst, payload, settle, timeout=timeout, kind=kind, key=key)
        future.add_done_callback(lambda _: self._waiting.pop(ref, None))
        return future

    def start(
        self,
        src: str,
        dst: str,
        payload: bytes,
        settle: Settle,
        *,
        timeout: float,
        kind: str = "send",
        key: str = "",
    ) -> int:
        """:meth:`begin` without a future: ``settle(reply, None)`` or ``settle(None, error)``
        is called once, from inside the event that settles it (the local path answers its
        actor in the same loop turn as the ACK or reply arrives, not one turn later). Returns
        the operation's ref (for :meth:`abandon`)."""
        if self._closed:
            raise DeliveryError("closed", dst)
        now = self._now()
        node = self._resolve(dst, now)
        try:
            ref, actions = self.core.send(
                src, dst, node, payload, now=now, timeout=timeout, kind=kind, key=key
            )
        except DeliveryUsageError as exc:
            raise ValueError(str(exc)) from None
        self._waiting[ref] = (settle, dst)
        self._apply(actions)
        return ref

    def abandon(self, ref: int) -> None:
        """Stop waiting for ``ref``'s outcome (not its delivery): its callback is not called."""
        self._waiting.pop(ref, None)

    def _route(self, node: NodeId, data: bytes, ref: int = 0, attempt: int = 0) -> None:
        frame_id, actions = self.router.route(node, data, now=self._now())
        if ref:
            self._frames[frame_id] = (ref, attempt)
            while len(self._frames) > _FRAMES_MAX:
                # A forgotten frame's failure is not reported: the core then counts the copy
                # as possibly delivered, which errs on the side of "unknown".
                self._frames.pop(next(iter(self._frames)))
        self._apply_routing(actions)

    def _apply(self, actions: list[dl.Action]) -> None:
        ready_names: list[str] = []
        for action in actions:
            match action:
                case dl.Route(node=node, message=message, ref=ref, attempt=attempt):
                    self._route(node, self._codec.encode(message), ref, attempt)
                case dl.Completed(ref=ref, reply=reply):
                    waiting = self._waiting.pop(ref, None)
                    if waiting is not None:
                        waiting[0](reply, None)
                case dl.Failed(ref=ref, outcome=outcome, reason=reason):
                    waiting = self._waiting.pop(ref, None)
                    if waiting is not None:
                        settle, dst = waiting
                        if reason == "unknown_name":
                            self._names.pop(dst, None)
                        settle(None, DeliveryError(reason, dst, outcome=outcome))
                case dl.InboxReady(name=name):
                    ready_names.append(name)
                case dl.Missed(name=name, topic=topic, origin=origin):
                    log.warning(
                        "%s: inbox of %s full, publication on %r from %s missed",
                        self.node_id,
                        name,
                        topic,
                        origin,
                    )
        # Inboxes are told last: the ACK a delivery owes its sender leaves before the item is
        # pushed to the local actor (the sender waits for that ACK; the actor does not).
        for name in ready_names:
            ready = self._ready.get(name)
            if ready is not None:
                ready.set()
            if self.on_inbox is not None:
                self.on_inbox(name)
        self._poke()

    def _poke(self) -> None:
        """Wake the timer loop only if a core's next deadline moved before the one it sleeps
        until: waking it for every message cost more than the message itself. The check runs
        once, at the end of this loop turn, however many messages the turn handles (it was
        seven calls per message, each asking all three cores)."""
        if self._poke_due or self._armed == -math.inf:
            return  # already due this turn; or awake: it reads the deadlines before it sleeps
        self._poke_due = True
        asyncio.get_running_loop().call_soon(self._poke_now)

    def _poke_now(self) -> None:
        self._poke_due = False
        if self._closed or self._armed == -math.inf:
            return
        cores = (self.router.next_deadline(), self.tree.next_deadline(), self.core.next_deadline())
        due = min((d for d in cores if d is not None), default=math.inf)
        if due < self._armed:
            self._wake.set()

    # ------------------------------------------------------------------ receiving

    def _on_arrived(self, source: NodeId, payload: bytes) -> None:
        message = self._codec.decode(payload)
        match message:
            case MeshSend() | MeshAck() | MeshReply():
                self._apply(self.core.receive(source, message, now=self._now()))
            case DecodeError(cause=cause):
                self.counters["dropped.bad_envelope"] += 1
                self.counters["dropped.envelope." + cause] += 1
            case _:
                self.counters["dropped.bad_envelope"] += 1

    # ------------------------------------------------------------------ inbox and topics

    async def poll(
        self, name: str, *, wait: float, limit: int = 100, ack: int | None = None
    ) -> list[InboxItem]:
        """Up to ``limit`` items for ``name``, waiting up to ``wait`` s for the first.

        With ``ack`` (poll-and-ack): first remove every item up to seq ``ack`` (what the actor
        consumed), then lend the next ones; they stay in the inbox until a later poll
        acknowledges them, so a reply lost on its way to the actor is lent again. Without
        ``ack`` the returned items are removed at once (for callers in this process)."""
        if not self.core.registered(name):
            raise DeliveryError("unknown_name", name, "not registered on this node")
        if ack is not None:
            self.core.ack(name, ack)
        if self.core.pending(name) == 0 and wait > 0:
            ready = self._ready.setdefault(name, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while self.core.pending(name) == 0 and self.core.registered(name):
                        ready.clear()
                        await ready.wait()
        items = self.core.take(name, limit=limit)
        if ack is None and items:
            self.core.ack(name, items[-1].seq)
        return items

    def subscribe(self, name: str, topic: str) -> None:
        self._endpoint(name)
        self.core.subscribe(name, topic)

    def unsubscribe(self, name: str, topic: str) -> None:
        self._endpoint(name)
        self.core.unsubscribe(name, topic)

    def publish(self, name: str, topic: str, payload: bytes) -> None:
        """Broadcast to every subscriber of ``topic`` in the cluster, at most once each
        (Plumtree); a subscriber whose inbox is full misses it, counted and logged."""
        data = self._codec.encode(MeshPublish(src_name=name, payload=payload))
        _, actions = self.tree.broadcast(data, topic=topic, now=self._now())
        self.counters["publish"] += 1
        self._apply_plumtree(actions)  # includes the local delivery

    def _deliver_topic(self, origin: NodeId, topic: str, data: bytes) -> None:
        message = self._codec.decode(data)
        if not isinstance(message, MeshPublish):
            self.counters["dropped.bad_envelope"] += 1
            return
        self._apply(
            self.core.publication(origin, topic, message.src_name, message.payload, now=self._now())
        )

    def _endpoint(self, name: str) -> None:
        if not self.core.registered(name):
            raise DeliveryError("unknown_name", name, "not registered on this node")

    # ------------------------------------------------------------------ drivers

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_membership(self, event: Event) -> None:
        try:
            now = self._now()
            match event:
                case PeerUp(peer=peer):
                    self._apply_routing(self.router.link_up(peer.id, now=now))
                    self._apply_plumtree(self.tree.neighbor_up(peer.id, now=now))
                case PeerDown(peer=peer):
                    self.counters["channels.closed"] += 1
                    self._apply_routing(self.router.link_down(peer.id, now=now))
                    self._apply_plumtree(self.tree.neighbor_down(peer.id, now=now))
        except Exception:
            self._error("handler", "membership event")

    def _pass_on(self, sender: NodeId, values: list[Any]) -> bool:
        """A data frame that only passes through this node goes on as its field values, its
        hop count raised, never built, checked by the codec's schema or encoded as a message
        (:meth:`Router.pass_on` checks it, by :meth:`Router.receive`'s rules). False: it
        needs more than that, and goes to :meth:`_on_routing` decoded."""
        hop = self.router.pass_on(sender, values, now=self._now())
        if hop is None:
            return False
        peer = self.agent.active_peer(hop)
        if peer is None or not self.agent.send_fields(peer, rt.DataFrame, values):
            # As _apply_routing does with a send that fails: another route, or a ROUTE_ERROR.
            onward = rt.data_frame(values)
            self._apply_routing(self.router.forward_failed(onward, hop, now=self._now()))
        return True

    def _on_routing(self, sender: NodeId, message: Any) -> None:
        try:
            self._apply_routing(self.router.receive(sender, message, now=self._now()))
        except Exception:
            self._error("handler", type(message).__name__)

    def _on_plumtree(self, sender: NodeId, message: Any) -> None:
        try:
            self._apply_plumtree(self.tree.receive(sender, message, now=self._now()))
        except Exception:
            self._error("handler", type(message).__name__)

    def _error(self, where: str, what: str) -> None:
        """Count the exception being handled here and log it within the agent's rate limit."""
        self.counters["errors." + where] += 1
        exc = sys.exc_info()[1]
        if exc is not None:
            self.agent.report_error("mesh." + where, what, exc)

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
                    copy = self._frames.pop(frame_id, None)
                    if copy is not None:
                        # The core keeps retrying until the deadline: routes may come back.
                        ref, attempt = copy
                        self._apply(self.core.route_failed(ref, attempt, reason, now=self._now()))
        self._poke()

    def _apply_plumtree(self, actions: list[pt.Action]) -> None:
        for action in actions:
            match action:
                case pt.SendTo(peer_id=peer_id, message=message):
                    peer = self.agent.active_peer(peer_id)
                    if peer is not None:
                        self.agent.send_raw(peer, message)
                case pt.Deliver(topic=topic, payload=payload, origin=origin):
                    self._deliver_topic(origin, topic, payload)
        self._poke()

    async def _timer_loop(self) -> None:
        while not self._closed:
            try:
                await self._timer_round()
            except Exception:
                # One failing timer costs one counted, logged error, never the loop (and a
                # short pause, so that a timer that keeps failing cannot spin the CPU).
                self._error("timer", "timer round")
                await asyncio.sleep(_ERROR_PAUSE)

    async def _timer_round(self) -> None:
        cores = (self.router.next_deadline(), self.tree.next_deadline(), self.core.next_deadline())
        deadlines = [d for d in cores if d is not None]
        self._wake.clear()
        timeout = max(0.0, min(deadlines) - self._now()) if deadlines else None
        self._armed = min(deadlines) if deadlines else math.inf
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        finally:
            self._armed = -math.inf
        now = self._now()
        due = self.router.next_deadline()
        if due is not None and due <= now:
            self._apply_routing(self.router.on_timer(now=now))
        due = self.tree.next_deadline()
        if due is not None and due <= now:
            self._apply_plumtree(self.tree.on_timer(now=now))
        due = self.core.next_deadline()
        if due is not None and due <= now:
            self._apply(self.core.on_timer(now=now))

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
        self._apply(self.core.close(now=self._now()))
        for name in self.core.names():
            left = self.unregister(name)
            if left:
                self.counters["closed.inbox_items"] += len(left)
                log.warning(
                    "%s: %s left %d items in its inbox at close", self.node_id, name, len(left)
                )

    def stats(self) -> dict[str, Any]:
        return {
            "names": self.core.names(),
            "routes": {d: list(r) for d, r in self.router.routes().items()},
            "missed_publications": {n: self.core.missed(n) for n in self.core.names()},
            "delivery": {
                "remembered_ids": self.core.remembered(),
                "in_flight": self.core.in_flight(),
                "inbox_items": {n: self.core.pending(n) for n in self.core.names()},
            },
            "counters": {
                **{f"mesh.{k}": v for k, v in sorted(self.counters.items())},
                **{f"delivery.{k}": v for k, v in sorted(self.core.counters.items())},
                **{f"routing.{k}": v for k, v in sorted(self.router.counters.items())},
                **{f"plumtree.{k}": v for k, v in sorted(self.tree.counters.items())},
            },
        }
