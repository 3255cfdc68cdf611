"""The actor-mesh limiter: the API actors use.

From inside any Ray actor (sync or async methods; the calls are coroutines)::

    m = await ray_hyparview.mesh.join("worker-3")       # cluster-unique name
    await m.send("worker-7", {"any": "picklable"})      # delivered once, or DeliveryError
    answer = await m.request("worker-7", query, timeout=5.0)
    m.subscribe("news"); await m.publish("news", item)  # Plumtree broadcast
    async for message in m.inbox(): ...                 # sends, requests, publications
    m.allowed(node_id); m.channel("worker-7").kind      # the gate: local, direct or routed
    left = await m.leave()                              # what the inbox still held

Everything goes through the agent of the caller's own node; agents carry it over their
active-view links only. Between an actor and its agent, messages take the direct local path
(:mod:`ray_hyparview.agent.localpath`): frames on a node-local socket, authenticated by a token the
agent hands out at join, and deliveries pushed to the actor. Ray actor calls remain for
setup: join, leave and the half-second view refresh. ``join(name, local=False)`` keeps the
older path, where every operation is a Ray call into the agent and the inbox polls it.

See :mod:`ray_hyparview.agent.meshnode` for how delivery, acknowledgement and routing work, and why
this keeps a node's cross-node connections at its active-view size, and
:mod:`ray_hyparview.protocol.delivery` for the delivery rules; the README's
"Delivery contract" states what is promised under which faults.

Hand-over to this actor loses nothing: the agent lends inbox items (numbered: pushed over the
link, or returned by a poll) and removes them only when this handle acknowledges the last one
it actually yielded (over the link: every 64 items, whenever it waits for more, and when the
loop is left; by polling: with the next poll). Items fetched but
not yet yielded (a consumer that ``break``s out of :meth:`Mesh.inbox`) stay in the handle, where
the next ``inbox()`` yields them first; :meth:`Mesh.leave` returns whatever is still undelivered.
One consumer per handle: two concurrent ``inbox()`` loops would each see the same items.

If the node's agent dies (``ray.kill``, a crash, memory), the cluster plugin starts a new one
on the node within seconds, and every :class:`Mesh` of the node re-attaches to it by itself:
its next call (or its view refresh, every half second) fails with Ray's actor error, it finds
the replacement by name, claims its name again and renews its subscriptions. A send, request or
publish that the dead agent held raises ``DeliveryError("agent_restarted")`` with an *unknown*
outcome: it may have been delivered before the agent died, or never have left. Calls that carry
no message (polls, view refreshes, replies, subscriptions) are simply made again on the new
agent. Items that the dead agent had queued for this actor and not yet handed over died with it.

Payloads are pickled here and unpickled only at the receiving actor, never in an agent; agents
hand over frames only from admitted neighbours, so what reaches ``pickle.loads`` came from an
admitted node (which can therefore run code in the actors it sends to: see the README's trust
model). A payload that pickles to more than :data:`LARGE_PAYLOAD` bytes (32 KiB) goes through
Ray's object store instead, and only its reference travels on the mesh; the receiver resolves
it before :meth:`Mesh.inbox` yields it (cost model: :class:`ByReference`). So ``send``,
``request``, replies and ``publish`` take any picklable value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import ray
from ray.exceptions import ActorDiedError, RayActorError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from ray_hyparview.agent.localpath import LinkClosed, LocalLink
from ray_hyparview.agent.meshnode import DeliveryError, DuplicateName, InboxItem, PathKind
from ray_hyparview.cluster.plugin import NAMESPACE, agent_actor_name
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.wire.table import MAX_PAYLOAD

__all__ = [
    "LARGE_PAYLOAD",
    "ByReference",
    "Channel",
    "DeliveryError",
    "DuplicateName",
    "Mesh",
    "Message",
    "join",
]

log = logging.getLogger("ray_hyparview.mesh")

_VIEW_REFRESH = 0.5
_POLL_WAIT = 1.0
_REATTACH_WAIT = 30.0
_LINK_GRACE = 5.0  # beyond an operation's own deadline, for the agent's answer to come back
_ACK_EVERY = 64  # yielded items acknowledged together over the link
_ACK_DELAY = 0.02
"""Seconds a handle that has caught up waits before it acknowledges what it yielded (unless
``_ACK_EVERY`` items are due first). One ACK then covers every item of a steady stream that
arrived meanwhile, instead of costing the agent a local message and a wake-up per item (the
delayed ACK of TCP, RFC 1122 4.2.3.2, for the same reason). Until then the items stay lent in
the agent's inbox, counted against its bounds."""

LARGE_PAYLOAD = 32 * 1024
"""Pickled payloads larger than this go through Ray's object store (see :class:`ByReference`)."""
LARGE_HOLD = 600.0
"""Seconds the sender keeps a large payload in the object store for its receiver."""


def _dump(payload: Any) -> bytes:
    """Pickle ``payload``; one that pickles to more than :data:`LARGE_PAYLOAD` bytes goes into
    Ray's object store and only its reference travels (:class:`ByReference`)."""
    data = pickle.dumps(payload, protocol=5)
    if len(data) <= LARGE_PAYLOAD:
        return data
    ref = ray.put(payload)
    # Ray's pickler, so that the reference carries its owner's address (a plain pickle of
    # an ObjectRef cannot be resolved elsewhere); it also pins the object in this process.
    dumps: Any = ray.cloudpickle.dumps
    small: bytes = dumps(ByReference(ref), protocol=5)
    _hold(ref)
    if len(small) > MAX_PAYLOAD:  # pragma: no cover - a reference pickles to a few hundred bytes
        raise ValueError(f"a reference pickles to {len(small)} bytes, over {MAX_PAYLOAD}")
    return small


_HELD: deque[tuple[float, Any]] = deque()


def _hold(ref: Any) -> None:
    """Keep a reference that left through pickle for :data:`LARGE_HOLD` seconds, then let
    Ray free the object (released lazily, at the next large payload of this process)."""
    now = time.monotonic()
    while _HELD and _HELD[0][0] <= now:
        _, old = _HELD.popleft()
        worker: Any = ray._private.worker.global_worker
        with contextlib.suppress(Exception):
            worker.core_worker.remove_object_ref_reference(old)
    _HELD.append((now + LARGE_HOLD, ref))


async def _load(data: bytes) -> Any:
    payload = pickle.loads(data)
    if isinstance(payload, ByReference):
        return await payload.resolve()
    return payload


class ByReference:
    """A payload too large for the mesh: it went through Ray's object store (``ray.put`` by
    the sender) and the receiver resolves it.

    The cost model: at most :data:`LARGE_PAYLOAD` bytes pickled, a payload rides the mesh
    (copied through the sender's agent, the agents on the way and the receiver's agent). Above
    it, the mesh carries only the reference (about 200 bytes) and the receiver fetches the
    object from the store of the sender's node: one ``ray.put`` (a copy into shared memory),
    one transfer between object stores when the nodes differ, and one ``ray.get``. That is a
    direct connection between the two nodes' object managers, outside the active view: Ray
    holds those anyway. The object is owned by the sending actor: it is lost if that actor
    dies before the receiver resolved it, and the sender keeps it for :data:`LARGE_HOLD`
    seconds (10 minutes) after sending, the time a receiver has to take it from its inbox;
    a receiver that takes longer gets Ray's ``ObjectLostError`` from :meth:`Mesh.inbox`.
    So a sender that streams large payloads holds up to ``LARGE_HOLD`` seconds' worth of them
    in its node's object store (spilled to disk beyond its size, as Ray does)."""

    __slots__ = ("ref", "shared")

    def __init__(self, ref: Any, shared: bool = False) -> None:
        self.ref = ref
        self.shared = shared

    async def resolve(self) -> Any:
        # ref.future(), not ``await ref``: the latter needs the loop of an async actor, and a
        # sync actor's inbox runs on a loop of its own (asyncio.run).
        return await asyncio.wrap_future(self.ref.future())


def _clean(exc: DeliveryError) -> DeliveryError:
    """A plain DeliveryError, without Ray's task-error wrapping around it."""
    if type(exc) is DeliveryError:
        return exc  # raised here, not by the agent (agent_restarted)
    return DeliveryError(exc.reason, exc.target, exc.detail, exc.outcome)


@dataclass(frozen=True, slots=True)
class Message:
    """Something that arrived for this actor."""

    kind: Literal["send", "request", "publish"]
    sender: str
    """The sending actor's mesh name."""
    payload: Any
    topic: str = ""
    """For ``publish``: the topic."""
    sender_node: NodeId = ""
    _mesh: Mesh | None = field(default=None, repr=False, compare=False)
    _request: tuple[NodeId, int, int] | None = field(default=None, repr=False, compare=False)

    async def reply(self, payload: Any) -> None:
        """Answer a ``request`` (routed back to the requester; a lost reply shows up there as
        a timeout)."""
        if self.kind != "request" or self._request is None or self._mesh is None:
            raise ValueError(f"only requests can be answered, this is a {self.kind!r}")
        await self._mesh._reply(self._request, _dump(payload))


class Channel:
    """A channel to one actor. Its ``kind`` follows the gate: ``local`` on the same node,
    ``direct`` while the target's node is in this node's active view (one hop over an open
    link), ``routed`` otherwise. A direct channel closes when its node leaves the active view
    and may open again when it comes back."""

    def __init__(self, mesh: Mesh, target: str, node_id: NodeId) -> None:
        self._mesh = mesh
        self.target = target
        self.node_id = node_id

    @property
    def kind(self) -> PathKind:
        if self.node_id == self._mesh.node_id:
            return "local"
        return "direct" if self._mesh.allowed(self.node_id) else "routed"

    async def send(self, payload: Any, *, timeout: float = 10.0) -> None:
        await self._mesh.send(self.target, payload, timeout=timeout)

    async def request(self, payload: Any, *, timeout: float = 10.0) -> Any:
        return await self._mesh.request(self.target, payload, timeout=timeout)

    def __repr__(self) -> str:
        return f"Channel({self.target!r}, node={self.node_id[:8]}, kind={self.kind})"


class Mesh:
    """This actor's membership of the mesh; made by :func:`join`."""

    def __init__(
        self,
        name: str,
        node_id: NodeId,
        agent: Any,
        view: list[NodeId],
        link: LocalLink | None = None,
    ) -> None:
        self.name = name
        self.node_id = node_id
        self._agent = agent
        self._view = frozenset(view)
        self._left = False
        self._refresher: asyncio.Task[None] | None = None
        self._topics: set[str] = set()
        self._attaching = asyncio.Lock()
        self.reattached = 0
        """How many times this handle moved to a replacement of its node's agent."""
        self._buffer: deque[InboxItem] = deque()  # fetched, not yet yielded
        self._consumed = 0  # seq of the last item yielded: what the next poll acknowledges
        self._life = 0  # the agent life those seqs count in (they restart with the agent)
        self._link = link  # the direct local path; None: Ray calls and polls
        self._acked = 0  # the last seq acknowledged over the link
        self._ack_timer: asyncio.TimerHandle | None = None
        self._probed = -_VIEW_REFRESH  # when _probe last asked the agent (monotonic)

    # --------------------------------------------------------------- the gate

    def allowed(self, node_id: NodeId) -> bool:
        """May this actor hold a direct channel to ``node_id``: its own node, or a node in its
        node's active view (as the agent last pushed it over the local path, or, over Ray
        calls, as of the last refresh, at most half a second old)."""
        return node_id == self.node_id or node_id in self.active_view

    @property
    def active_view(self) -> frozenset[NodeId]:
        """This node's active view: pushed by the agent over the local path, or refreshed by
        a Ray call every half second without one."""
        link = self._link
        if link is not None and link.view is not None:
            return link.view
        return self._view

    def channel(self, name: str) -> Channel:
        """A channel to actor ``name`` (one GCS look-up of its node)."""
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(f"name/{name}".encode(), namespace=NAMESPACE)
        if not raw:
            raise DeliveryError("unknown_name", name)
        return Channel(self, name, raw.decode())

    async def _refresh(self) -> None:
        while not self._left:
            await self._ask_agent()
            await asyncio.sleep(_VIEW_REFRESH)

    async def _ask_agent(self) -> None:
        """Without a local link: refresh the view with a Ray call. With one, the agent pushes
        its view; ask Ray (which re-attaches this handle if its agent died) only when the agent
        has not answered on the link for ``_VIEW_REFRESH`` seconds. A Ray call's submission
        blocks the actor's event loop for a millisecond or more, in the middle of its sends."""
        link = self._link
        if link is not None and await link.alive(_VIEW_REFRESH):
            return
        with contextlib.suppress(Exception):
            self._view = frozenset(await self._call("mesh_view"))

    # --------------------------------------------------------------- messaging

    async def send(
        self, name: str, payload: Any, *, timeout: float = 10.0, key: str | None = None
    ) -> None:
        """Deliver ``payload`` to actor ``name``: returns once the target's node put it in the
        target's inbox (at most once), or raises :class:`DeliveryError`:

        * ``outcome == "not_delivered"``: it was not and will not be delivered
          (``unknown_name``, ``no_route``, ``hop_limit``, ``inbox_full``, ``busy``, ``closed``);
        * ``outcome == "unknown"``: the deadline passed after a copy left; it may have been
          delivered and the acknowledgement lost (``timeout``). Nothing can tell (the two
          generals' problem): retry with the same ``key``.

        ``key``: an idempotency key (at most 128 printable chars). The target's node remembers
        the first outcome of ``(sender, target, key)`` for ``key_retention`` (10 minutes by
        default) and answers every later send with that key the same way, never delivering it
        twice; a key that was refused stays refused (use a new key to try again)."""
        self._check()
        data = _dump(payload)
        if self._link is not None:
            await self._via_link(["S", name, timeout, key or ""], data, timeout, name)
            return
        try:
            await self._call("mesh_send", self.name, name, data, timeout, key or "", carries=name)
        except DeliveryError as exc:
            raise _clean(exc) from None

    async def request(self, name: str, payload: Any, *, timeout: float = 10.0) -> Any:
        """Send a request to ``name`` and return its reply; :class:`DeliveryError` otherwise.
        The request is delivered at most once; an ``unknown`` outcome (``timeout``, or
        ``no_reply`` when it was delivered but the reply did not come back in time) may mean
        the target has handled it."""
        self._check()
        if self._link is not None:
            data = await self._via_link(["R", name, timeout], _dump(payload), timeout, name)
            return await _load(data)
        try:
            data = await self._call(
                "mesh_request", self.name, name, _dump(payload), timeout, carries=name
            )
        except DeliveryError as exc:
            raise _clean(exc) from None
        return await _load(data)

    def subscribe(self, topic: str) -> None:
        """Receive publications on ``topic`` in :meth:`inbox` (applied before any later call
        of this actor reaches the agent: Ray keeps one caller's actor calls in order)."""
        self._check()
        self._topics.add(topic)  # subscribed again on a replacement agent
        if self._link is not None:
            self._link.post(["T", topic, 1])  # ordered with this handle's later frames
        else:
            self._agent.mesh_subscribe.remote(self.name, topic)

    def unsubscribe(self, topic: str) -> None:
        self._check()
        self._topics.discard(topic)
        if self._link is not None:
            self._link.post(["T", topic, 0])
        else:
            self._agent.mesh_unsubscribe.remote(self.name, topic)

    async def publish(self, topic: str, payload: Any) -> None:
        """Broadcast to every subscriber of ``topic`` in the cluster, at most once each. Not
        acknowledged: a subscriber cut off by a partition misses it, and one whose inbox is full
        misses it with a count (``delivery.publish.inbox_full``, ``missed_publications`` in the
        agent's mesh stats) and a logged warning."""
        self._check()
        data = _dump(payload)
        if self._link is not None:
            await self._via_link(["B", topic], data, 10.0, topic)
            return
        await self._call("mesh_publish", self.name, topic, data, carries=topic)

    async def inbox(self) -> AsyncIterator[Message]:
        """Everything that arrives for this actor, in arrival order, until :meth:`leave`.

        Leaving the loop early loses nothing: the rest of a fetched (or pushed) batch stays in
        this handle and the next ``inbox()`` yields it first; the agent forgets an item only
        when this handle acknowledges it as yielded. A failed poll is raised here and its items
        come again with the next poll. A payload that came through the object store is
        resolved before it is yielded."""
        try:
            while not self._left:
                if not self._buffer:
                    items: list[InboxItem]
                    link = self._link
                    if link is not None:
                        if self._consumed - self._acked >= _ACK_EVERY:
                            self._ack_link()
                        elif self._consumed > self._acked and self._ack_timer is None:
                            self._ack_timer = asyncio.get_running_loop().call_later(
                                _ACK_DELAY, self._ack_link
                            )
                        items = await link.take(_POLL_WAIT)
                        if not items and link.closed and link is self._link and not self._left:
                            # Only leave() and a re-attach close a handle's link; anything else
                            # is an error to raise, not an empty take to loop on.
                            raise LinkClosed("the local link to this node's agent was closed")
                        if not items:
                            await self._probe()
                    else:
                        items = await self._call("mesh_poll", self.name, _POLL_WAIT, self._consumed)
                    if items and items[0].life != self._life:  # a restarted agent's inbox
                        self._life, self._consumed = items[0].life, 0
                    # A link pushes lent items again after a reconnection: drop those consumed.
                    self._buffer.extend(i for i in items if i.seq > self._consumed)
                while self._buffer and not self._left:
                    item = self._buffer.popleft()
                    if item.life == self._life:  # not an item fetched from a dead agent
                        self._consumed = item.seq
                    message = await self._resolved(item)
                    if self._consumed - self._acked >= _ACK_EVERY:
                        self._ack_link()
                    yield message
        finally:
            self._ack_link()  # what was yielded before the loop was left

    def _ack_link(self) -> None:
        """Acknowledge over the link what this handle has yielded (the agent then removes it
        from the inbox and pushes more)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        link = self._link
        if link is not None and self._consumed > self._acked and self._life == link.life:
            link.ack(self._consumed)
            self._acked = self._consumed

    async def _resolved(self, item: InboxItem) -> Message:
        message = self._message(item)
        if isinstance(message.payload, ByReference):
            payload = await message.payload.resolve()
            message = Message(
                kind=message.kind,
                sender=message.sender,
                payload=payload,
                topic=message.topic,
                sender_node=message.sender_node,
                _mesh=self,
                _request=message._request,
            )
        return message

    def _message(self, item: InboxItem) -> Message:
        return Message(
            kind=item.kind,
            sender=item.sender,
            payload=pickle.loads(item.payload),
            topic=item.topic,
            sender_node=item.sender_node,
            _mesh=self,
            _request=item.request,
        )

    async def leave(self) -> list[Message]:
        """Give the name back and stop. Returns the messages that arrived for this actor but
        were never yielded by :meth:`inbox` (their senders were told they were delivered, so
        they are handed over here rather than dropped; requests among them can still be
        answered). Idempotent: a second call returns ``[]``."""
        if self._left:
            return []
        self._left = True
        if self._link is not None:
            self._link.wake()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        left: list[InboxItem] = list(self._buffer)
        self._buffer.clear()
        try:
            rest = await self._agent.mesh_unregister.remote(self.name, self._consumed)
        except Exception:
            log.warning("mesh member %s: could not give its name back", self.name, exc_info=True)
            rest = []
        if self._link is not None:
            self._link.close()
        seen = {(i.life, i.seq) for i in left}
        left += [
            i
            for i in rest or []
            if (i.life != self._life or i.seq > self._consumed) and (i.life, i.seq) not in seen
        ]
        return [self._message(i) for i in left]

    # --------------------------------------------------------------- the agent and its successors

    async def _via_link(self, header: list[Any], data: bytes, timeout: float, target: str) -> bytes:
        """One operation over the local link: the agent's answer, or the DeliveryError (or
        ValueError) it gave; a link closed under it (the agent was replaced) makes the outcome
        unknown."""
        await self._probe()
        link = self._link
        assert link is not None
        try:
            return await link.call(header, data, timeout=timeout + _LINK_GRACE)
        except LinkClosed as exc:
            if self._left:
                raise DeliveryError("closed", target, "the handle left") from None
            raise _agent_restarted(target, f"the local link closed holding it ({exc})") from None
        except TimeoutError:
            raise DeliveryError("timeout", target, "no outcome from the agent", "unknown") from None

    async def _probe(self) -> None:
        """Refresh the view (and re-attach if the agent died) at most every half second, for
        a handle whose refresher is gone: a sync actor's, whose every call runs on a loop of
        its own (``asyncio.run``). Over the local path nothing else would tell it that its
        agent was replaced: the socket stays quiet."""
        if self._refresher is not None and not self._refresher.done():
            return
        now = time.monotonic()
        if now - self._probed < _VIEW_REFRESH or self._left:
            return
        self._probed = now
        await self._ask_agent()

    async def _reply(self, request: tuple[NodeId, int, int], data: bytes) -> None:
        if self._link is not None:
            self._link.post(["P", *request], data)
        else:
            await self._call("mesh_reply", request, data)

    async def _call(self, method: str, *args: Any, carries: str = "") -> Any:
        """Call ``method`` of this node's agent. If the agent is dead, attach to the one the
        plugin started in its place (claiming the name again) first; then a call that
        ``carries`` a message for that target raises ``DeliveryError("agent_restarted")``,
        any other call is made again on the new agent."""
        agent = self._agent
        try:
            return await getattr(agent, method).remote(*args)
        except ActorDiedError as exc:  # not ActorUnavailableError: that one may come back
            died = exc
        try:
            await self._reattach(agent)
        except Exception as exc:
            if carries:
                raise _agent_restarted(carries, f"and no new agent: {exc}") from None
            raise
        if carries:
            # The outcome is unknown, not "not delivered": the dead agent may have sent the
            # message (and it may have been delivered, even acknowledged) before it died, or it
            # may never have left. Retrying may deliver a second copy.
            raise _agent_restarted(carries, f"the agent died holding it ({type(died).__name__})")
        return await getattr(self._agent, method).remote(*args)

    async def _reattach(self, dead: Any) -> None:
        """Move to the replacement of the dead agent ``dead`` (once, however many calls saw it
        die): wait for it, claim the name again (the directory lets the same node re-claim),
        subscribe to the same topics."""
        async with self._attaching:
            if self._agent is not dead or self._left:
                return  # another call has re-attached already
            loop = asyncio.get_running_loop()
            began = loop.time()
            old = self._link
            agent, view, link = await _attach(
                self.node_id, self.name, _REATTACH_WAIT, dead, local=old is not None
            )
            if old is not None:
                old.close(LinkClosed("the agent was replaced"))
            self._agent = agent
            self._view = frozenset(view)
            self._link = link
            self._acked = 0
            # The new agent numbers its inbox from 1 again: acknowledge nothing of it yet
            # (items still buffered from the dead one are yielded all the same).
            self._life, self._consumed = 0, 0
            for topic in sorted(self._topics):
                if link is not None:
                    link.post(["T", topic, 1])
                else:
                    agent.mesh_subscribe.remote(self.name, topic)
            self.reattached += 1
            log.warning(
                "%s: the agent of node %s was replaced; re-attached in %.2f s",
                self.name,
                self.node_id[:8],
                loop.time() - began,
            )

    def _check(self) -> None:
        if self._left:
            raise RuntimeError(f"mesh member {self.name!r} has left")

    def __repr__(self) -> str:
        return f"Mesh({self.name!r}, node={self.node_id[:8]}, view={len(self._view)})"


async def join(name: str, *, agent_wait: float = 30.0, local: bool = True) -> Mesh:
    """Register the calling actor under ``name`` with its node's agent.

    ``local``: carry messages over the direct local path to the agent
    (:mod:`ray_hyparview.agent.localpath`: frames on a node-local socket, deliveries pushed). With
    ``local=False``, or an agent that offers no local endpoint, every operation is a Ray call
    to the agent and the inbox polls it (the slower path, kept as the fallback).

    Raises :class:`DuplicateName` if another actor holds the name, and ``RuntimeError`` if no
    agent runs on this node within ``agent_wait`` seconds (call
    ``ray_hyparview.cluster.start()`` first).
    """
    node_id = ray.get_runtime_context().get_node_id()
    agent, view, link = await _attach(node_id, name, agent_wait, local=local)
    mesh = Mesh(name, node_id, agent, view, link)
    mesh._refresher = asyncio.get_running_loop().create_task(mesh._refresh())
    return mesh


def _async_actor() -> bool:
    """Is this an async actor (whose event loop outlives each call)?"""
    try:
        worker: Any = ray._private.worker.global_worker
        return bool(worker.core_worker.current_actor_is_asyncio())
    except Exception:
        return False


async def _open_link(info: dict[str, Any]) -> LocalLink | None:
    endpoint, token = info.get("endpoint"), info.get("token")
    if not endpoint or not isinstance(token, bytes):
        return None
    # An async actor's loop owns the socket; a sync actor's calls run on short-lived loops
    # (asyncio.run), so its socket lives on a loop in a thread of its own.
    loop = asyncio.get_running_loop() if _async_actor() else None
    link = LocalLink(endpoint, token, loop=loop, error=_link_error)
    await link.open()
    return link


def _link_error(header: list[Any]) -> Exception:
    _, _, reason, target, detail, outcome = header
    if outcome == "usage":
        return ValueError(detail)
    return DeliveryError(reason, target, detail, outcome)


async def _attach(
    node_id: NodeId, name: str, wait: float, dead: Any = None, *, local: bool = True
) -> tuple[Any, list[NodeId], LocalLink | None]:
    """Find the agent of ``node_id`` (not ``dead``) and register ``name`` with it; returns the
    agent, its active view and the local link (None: use Ray calls). ``RuntimeError`` if no
    agent serves within ``wait`` seconds."""
    dead_id = None if dead is None else dead._actor_id
    # An actor may start on a node that joined a moment ago, before the reconciler has put an
    # agent there, or its agent may be being replaced: wait for one a while, backing off.
    retrying = AsyncRetrying(
        retry=retry_if_exception_type((_NoAgent, RayActorError)),
        stop=stop_after_delay(wait),
        wait=wait_exponential_jitter(initial=0.05, max=0.5),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                try:
                    agent: Any = ray.get_actor(agent_actor_name(node_id), namespace=NAMESPACE)
                except ValueError:
                    raise _NoAgent from None
                if agent._actor_id == dead_id:
                    raise _NoAgent  # the name still points at the dead one
                try:
                    if local:
                        info = await agent.mesh_join_local.remote(name)
                        link = await _open_link(info)
                        return agent, list(info["view"]), link
                    view: list[NodeId] = await agent.mesh_register.remote(name)
                except DuplicateName as exc:
                    raise DuplicateName(str(exc).splitlines()[-1]) from None
                except RayActorError:
                    raise
                except RuntimeError:  # not started yet
                    raise _NoAgent from None
                return agent, view, None
    except (_NoAgent, RayActorError):
        pass
    raise RuntimeError(
        f"no ray_hyparview agent on this node after {wait:g} s: "
        "call ray_hyparview.cluster.start() first"
    )


class _NoAgent(Exception):
    """No agent serves this node (yet)."""


def _agent_restarted(target: str, detail: str) -> DeliveryError:
    # Outcome unknown (see Mesh._call): it may have been delivered before the agent died.
    return DeliveryError("agent_restarted", target, detail, "unknown")
