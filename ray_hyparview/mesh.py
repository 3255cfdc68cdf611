"""The actor-mesh limiter: the API actors use.

From inside any Ray actor (sync or async methods; the calls are coroutines)::

    m = await ray_hyparview.mesh.join("worker-3")       # cluster-unique name
    await m.send("worker-7", {"any": "picklable"})      # delivered once, or DeliveryError
    answer = await m.request("worker-7", query, timeout=5.0)
    m.subscribe("news"); await m.publish("news", item)  # Plumtree broadcast
    async for message in m.inbox(): ...                 # sends, requests, publications
    m.allowed(node_id); m.channel("worker-7").kind      # the gate: local, direct or routed
    left = await m.leave()                              # what the inbox still held

Everything goes through the agent actor of the caller's own node (a same-node call); agents
carry it over their active-view links only. See :mod:`ray_hyparview.meshnode` for how delivery,
acknowledgement and routing work, and why this keeps a node's cross-node connections at its
active-view size, and :mod:`ray_hyparview.protocol.delivery` for the delivery rules; the README's
"Delivery contract" states what is promised under which faults.

Hand-over to this actor loses nothing: the agent lends inbox items (numbered) and removes them
only when a later poll acknowledges the last one this handle actually yielded. Items fetched but
not yet yielded (a consumer that ``break``s out of :meth:`Mesh.inbox`) stay in the handle, where
the next ``inbox()`` yields them first; :meth:`Mesh.leave` returns whatever is still undelivered.
One consumer per handle: two concurrent ``inbox()`` loops would each see the same items.

Payloads are pickled here and unpickled at the receiving actor (as Ray itself does for actor
calls); a pickled payload may be at most :data:`~ray_hyparview.wire.MAX_PAYLOAD` bytes (48 KiB):
for bulk data pass a Ray object reference instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import ray
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from ray_hyparview.cluster import NAMESPACE, agent_actor_name
from ray_hyparview.meshnode import DeliveryError, DuplicateName, InboxItem, PathKind
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.wire import MAX_PAYLOAD

__all__ = ["Channel", "DeliveryError", "DuplicateName", "Mesh", "Message", "join"]

log = logging.getLogger("ray_hyparview.mesh")

_VIEW_REFRESH = 0.5
_POLL_WAIT = 1.0


def _dump(payload: Any) -> bytes:
    data = pickle.dumps(payload, protocol=5)
    if len(data) > MAX_PAYLOAD:
        raise ValueError(
            f"payload pickles to {len(data)} bytes, over the mesh limit of {MAX_PAYLOAD};"
            " send a ray.put() reference instead"
        )
    return data


def _clean(exc: DeliveryError) -> DeliveryError:
    """A plain DeliveryError, without Ray's task-error wrapping around it."""
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
        await self._mesh._agent.mesh_reply.remote(self._request, _dump(payload))


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

    def __init__(self, name: str, node_id: NodeId, agent: Any, view: list[NodeId]) -> None:
        self.name = name
        self.node_id = node_id
        self._agent = agent
        self._view = frozenset(view)
        self._left = False
        self._refresher: asyncio.Task[None] | None = None
        self._buffer: deque[InboxItem] = deque()  # fetched, not yet yielded
        self._consumed = 0  # seq of the last item yielded: what the next poll acknowledges
        self._life = 0  # the agent life those seqs count in (they restart with the agent)

    # --------------------------------------------------------------- the gate

    def allowed(self, node_id: NodeId) -> bool:
        """May this actor hold a direct channel to ``node_id``: its own node, or a node in its
        node's active view (as of the last refresh, at most half a second old)."""
        return node_id == self.node_id or node_id in self._view

    @property
    def active_view(self) -> frozenset[NodeId]:
        """This node's active view, as of the last refresh."""
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
            with contextlib.suppress(Exception):
                self._view = frozenset(await self._agent.mesh_view.remote())
            await asyncio.sleep(_VIEW_REFRESH)

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
        try:
            await self._agent.mesh_send.remote(self.name, name, _dump(payload), timeout, key or "")
        except DeliveryError as exc:
            raise _clean(exc) from None

    async def request(self, name: str, payload: Any, *, timeout: float = 10.0) -> Any:
        """Send a request to ``name`` and return its reply; :class:`DeliveryError` otherwise.
        The request is delivered at most once; an ``unknown`` outcome (``timeout``, or
        ``no_reply`` when it was delivered but the reply did not come back in time) may mean
        the target has handled it."""
        self._check()
        try:
            data = await self._agent.mesh_request.remote(self.name, name, _dump(payload), timeout)
        except DeliveryError as exc:
            raise _clean(exc) from None
        return pickle.loads(data)

    def subscribe(self, topic: str) -> None:
        """Receive publications on ``topic`` in :meth:`inbox` (applied before any later call
        of this actor reaches the agent: Ray keeps one caller's actor calls in order)."""
        self._check()
        self._agent.mesh_subscribe.remote(self.name, topic)

    def unsubscribe(self, topic: str) -> None:
        self._check()
        self._agent.mesh_unsubscribe.remote(self.name, topic)

    async def publish(self, topic: str, payload: Any) -> None:
        """Broadcast to every subscriber of ``topic`` in the cluster, at most once each. Not
        acknowledged: a subscriber cut off by a partition misses it, and one whose inbox is full
        misses it with a count (``delivery.publish.inbox_full``, ``missed_publications`` in the
        agent's mesh stats) and a logged warning."""
        self._check()
        await self._agent.mesh_publish.remote(self.name, topic, _dump(payload))

    async def inbox(self) -> AsyncIterator[Message]:
        """Everything that arrives for this actor, in arrival order, until :meth:`leave`.

        Leaving the loop early loses nothing: the rest of a fetched batch stays in this handle
        and the next ``inbox()`` yields it first; the agent forgets an item only when a later
        poll acknowledges it as yielded. A failed poll is raised here and its items come again
        with the next poll."""
        while not self._left:
            if not self._buffer:
                items: list[InboxItem] = await self._agent.mesh_poll.remote(
                    self.name, _POLL_WAIT, self._consumed
                )
                if items and items[0].life != self._life:  # a restarted agent's inbox
                    self._life, self._consumed = items[0].life, 0
                self._buffer.extend(i for i in items if i.seq > self._consumed)
            while self._buffer and not self._left:
                item = self._buffer.popleft()
                self._consumed = item.seq
                yield self._message(item)

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
        seen = {(i.life, i.seq) for i in left}
        left += [
            i
            for i in rest or []
            if (i.life != self._life or i.seq > self._consumed) and (i.life, i.seq) not in seen
        ]
        return [self._message(i) for i in left]

    def _check(self) -> None:
        if self._left:
            raise RuntimeError(f"mesh member {self.name!r} has left")

    def __repr__(self) -> str:
        return f"Mesh({self.name!r}, node={self.node_id[:8]}, view={len(self._view)})"


async def join(name: str, *, agent_wait: float = 30.0) -> Mesh:
    """Register the calling actor under ``name`` with its node's agent.

    Raises :class:`DuplicateName` if another actor holds the name, and ``RuntimeError`` if no
    agent runs on this node within ``agent_wait`` seconds (call
    ``ray_hyparview.cluster.start()`` first).
    """
    node_id = ray.get_runtime_context().get_node_id()
    # An actor may start on a node that joined a moment ago, before the reconciler has put an
    # agent there: wait for it a while, backing off, before giving up.
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(ValueError),
        stop=stop_after_delay(agent_wait),
        wait=wait_exponential_jitter(initial=0.1, max=2.0),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                agent: Any = ray.get_actor(agent_actor_name(node_id), namespace=NAMESPACE)
    except ValueError:
        raise RuntimeError(
            f"no ray_hyparview agent on this node after {agent_wait:g} s: "
            "call ray_hyparview.cluster.start() first"
        ) from None
    try:
        view = await agent.mesh_register.remote(name)
    except DuplicateName as exc:
        raise DuplicateName(str(exc).splitlines()[-1]) from None
    mesh = Mesh(name, node_id, agent, view)
    mesh._refresher = asyncio.get_running_loop().create_task(mesh._refresh())
    return mesh
