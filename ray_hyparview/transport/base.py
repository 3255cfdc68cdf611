"""The transport contract the asyncio agent drives.

Theory of operation
-------------------
A transport moves opaque frames (already encoded by :mod:`ray_hyparview.wire.codec`) between node
ids and reports links that fail. It makes no protocol decisions: it never retries a message,
never reorders, never decodes. The agent owns the protocol core and decides everything.

The contract, which both :mod:`.zmq` and :mod:`.memory` keep:

* ``await start()`` binds the inbound endpoint and returns the bound address, with ephemeral
  ports resolved (``tcp://127.0.0.1:0`` -> ``tcp://127.0.0.1:40123``). Call it once.
* ``send(peer, data)`` is synchronous and never blocks and never raises for a remote problem:
  it returns ``False`` when the frame was dropped locally (queue full, link failed, transport
  closed) and counts the drop. A ``True`` is no delivery promise (ZeroMQ gives none either);
  the protocol's replies and keepalives are the end-to-end check. If there is no link to the
  peer yet, one is dialled; frames sent while it dials wait in a small bounded queue. A
  transport may hold frames sent to one peer in the same loop turn and send them together at
  its end (ZeroMQ batches), in order; what it holds is bounded and counted if dropped.
* ``open_link(peer)`` pins a link (an active-view peer): it is dialled now, monitored, never
  expired. ``close_link(peer_id)`` drops it (no event). Links opened implicitly by ``send`` to a
  non-active peer (a SHUFFLE_REPLY, a NEIGHBOR to a passive peer) are cached, bounded in number
  and expired when idle. ``release_link(peer_id)`` says a link is no longer needed (the agent
  calls it once its exchange with a non-active peer is over): it closes, pinned or not, as
  soon as the frames sent on it are handed over, without an event; frames sent on it before
  are not lost to the release.
* Every failure of a link, pinned or cached, is reported once as :class:`LinkFailed`: the
  connection dropped (crash: at once; hang or partition: after the heartbeat timeout), the
  handshake was refused (CURVE), the dial was refused or timed out, or the peer is unreachable.
  After the event the link is gone; the next ``send`` dials afresh.
* ``await recv_batch()`` waits for at least one inbound frame and returns up to a bounded batch
  of ``(sender_id, data)``. ``sender_id`` is the id the transport authenticated (the ZeroMQ
  routing id, checked against the CURVE key when security is on); the agent still checks it
  against the message's own sender field.
* ``await link_events()`` waits for at least one :class:`LinkFailed` and returns all pending ones.
  Pending events are coalesced per peer, so the backlog is bounded by the number of links.
* Both transports also offer ``quarantine(peer_id, seconds)`` (not yet in the protocol below,
  so that existing wrappers keep type-checking): it drops a peer's inbound frames for a while.
  ``close_link`` closes only our outbound link; a repeat offender's connection to us is its
  own, and this is how to stop reading it.
* ``counters`` counts frames and bytes sent and received, drops by cause, link failures by
  cause. ``aclose()`` is idempotent; afterwards ``recv_batch``/``link_events`` raise
  :class:`TransportClosed` and ``send`` returns ``False``. ``aclose(linger=0.2)`` gives frames
  already sent (goodbyes) a bounded time to leave before the sockets go.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ray_hyparview.protocol.errors import HyParViewError
from ray_hyparview.protocol.peer import NodeId, Peer

__all__ = [
    "LinkEventBox",
    "LinkFailed",
    "Receiver",
    "attach_receiver",
    "LinkFailure",
    "Quarantine",
    "Transport",
    "TransportClosed",
]


class LinkFailure(enum.Enum):
    """Why a link failed; counted as ``link.failed.<value>``."""

    DISCONNECTED = "disconnected"
    """An established connection dropped: the peer crashed or closed, or heartbeats timed out."""

    HANDSHAKE_FAILED = "handshake_failed"
    """The connection was made but the ZMTP handshake failed (CURVE key refused, bad key)."""

    REFUSED = "refused"
    """Nothing listens at the endpoint (connection refused, no such in-memory endpoint)."""

    DIAL_TIMEOUT = "dial_timeout"
    """No completed handshake within the dial timeout (peer hung, blackholed or partitioned)."""

    UNREACHABLE = "unreachable"
    """The peer cannot be dialled at all: no or invalid endpoint, missing CURVE key."""


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """The link to ``peer_id`` failed; the agent feeds it to ``HyParView.link_failed``."""

    peer_id: NodeId
    cause: LinkFailure
    detail: str = ""


class TransportClosed(HyParViewError, RuntimeError):
    """The transport was closed (locally) while or before waiting on it."""


class Transport(Protocol):
    """What the agent needs from a transport; see the module docstring for the contract."""

    @property
    def node_id(self) -> NodeId:
        """The local node id; the sender id peers see for our frames."""
        ...

    @property
    def endpoint(self) -> str:
        """The bound endpoint after :meth:`start`, empty before."""
        ...

    @property
    def counters(self) -> Counter[str]:
        """Live counters (read them, do not write)."""
        ...

    @property
    def authenticated(self) -> bool:
        """True when the sender id of every received frame is proved (CURVE, a key bound to the
        id), False when it is only what the peer claims."""
        ...

    async def start(self) -> str:
        """Bind the inbound endpoint; return it with any ephemeral port resolved."""
        ...

    def send(self, peer: Peer, data: bytes) -> bool:
        """Queue ``data`` for ``peer`` without blocking; ``False`` if dropped locally."""
        ...

    def open_link(self, peer: Peer) -> None:
        """Pin and dial a monitored link to an active peer."""
        ...

    def close_link(self, peer_id: NodeId) -> None:
        """Drop the link to ``peer_id`` (pinned or cached) without an event."""
        ...

    def release_link(self, peer_id: NodeId) -> None:
        """Close the link to ``peer_id`` once what was sent on it has left, without an event."""
        ...

    def linked(self) -> frozenset[NodeId]:
        """Ids with a link right now (dialling or up, pinned or cached); for tests and stats."""
        ...

    async def recv_batch(self) -> list[tuple[NodeId, bytes]]:
        """Wait for inbound frames; return a non-empty bounded batch of ``(sender_id, data)``."""
        ...

    async def link_events(self) -> list[LinkFailed]:
        """Wait for link failures; return every pending one (coalesced per peer)."""
        ...

    async def aclose(self, *, linger: float = 0.0) -> None:
        """Close every socket and task; idempotent. With ``linger`` > 0, frames already sent
        on up links get that many seconds to leave (e.g. DISCONNECTs when leaving); frames
        still waiting for a dial are dropped."""
        ...


Receiver = Callable[[list[tuple[NodeId, bytes]]], None]
"""Takes one inbound batch, as :meth:`Transport.recv_batch` would return it; must not raise."""


def attach_receiver(transport: object, receiver: Receiver) -> bool:
    """Have ``transport`` push inbound batches to ``receiver`` from its descriptor's callback,
    if it can (``set_receiver``, an optional capability: the ZeroMQ transport has it, the
    in-memory one and wrappers need not). False: keep calling ``recv_batch``."""
    setter = getattr(transport, "set_receiver", None)
    return bool(setter(receiver)) if callable(setter) else False


class LinkEventBox:
    """Pending :class:`LinkFailed` events, coalesced per peer (the latest cause wins), plus a
    wake-up for one waiter. Bounded by the number of distinct peers with links, not by the
    number of events, so a flapping peer cannot grow it."""

    __slots__ = ("_closed", "_pending", "_wakeup")

    def __init__(self) -> None:
        self._pending: dict[NodeId, LinkFailed] = {}
        self._wakeup = asyncio.Event()
        self._closed = False

    def put(self, event: LinkFailed) -> None:
        if self._closed:
            return
        self._pending.pop(event.peer_id, None)
        self._pending[event.peer_id] = event
        self._wakeup.set()

    def discard(self, peer_id: NodeId) -> None:
        """Forget a pending event (the link was re-opened or closed deliberately)."""
        self._pending.pop(peer_id, None)

    async def get(self) -> list[LinkFailed]:
        while not self._pending:
            if self._closed:
                raise TransportClosed("transport closed")
            self._wakeup.clear()
            await self._wakeup.wait()
        events = list(self._pending.values())
        self._pending.clear()
        return events

    def close(self) -> None:
        self._closed = True
        self._pending.clear()
        self._wakeup.set()


class Quarantine:
    """Peers whose inbound frames are dropped until a deadline; at most ``limit`` entries (the
    one closest to release goes first), so a flood of offender ids cannot grow it."""

    __slots__ = ("_limit", "_until")

    def __init__(self, limit: int = 1024) -> None:
        self._until: dict[NodeId, float] = {}
        self._limit = limit

    def add(self, peer_id: NodeId, until: float) -> None:
        if peer_id not in self._until and len(self._until) >= self._limit:
            del self._until[min(self._until, key=self._until.__getitem__)]
        self._until[peer_id] = max(until, self._until.get(peer_id, until))

    def holds(self, peer_id: NodeId, now: float) -> bool:
        """True if frames from ``peer_id`` are to be dropped at ``now``."""
        until = self._until.get(peer_id)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[peer_id]
        return False

    def __bool__(self) -> bool:
        return bool(self._until)
