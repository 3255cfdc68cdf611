"""An in-process transport with the ZeroMQ transport's contract, for tests.

Theory of operation
-------------------
A :class:`MemoryNetwork` is a switchboard: each :class:`MemoryTransport` binds an endpoint
``mem://<name>`` on it, and ``send`` appends the frame straight to the receiver's bounded inbox
(same event loop, no copies beyond ``bytes(data)``). Faults are injected on the network:

* :meth:`MemoryNetwork.kill` crashes a node: its transport stops, and every transport with a link
  to it gets ``LinkFailed(DISCONNECTED)`` at once, as the ZeroMQ socket monitor reports a
  SIGKILLed peer within milliseconds.
* :meth:`MemoryNetwork.partition` / :meth:`MemoryNetwork.block` silently drop frames between
  nodes; links that cross the cut fail after ``failure_delay`` seconds, as ZMTP heartbeats
  notice a partition only after their timeout. :meth:`MemoryNetwork.heal` undoes it.
* A send to an endpoint where nobody listens fails the link with ``REFUSED``.

Link bookkeeping follows :mod:`.base`: pinned links (``open_link``) never expire; links opened by
``send`` are cached up to ``max_cached_links`` (least recently used evicted first).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable

from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.transport.base import (
    LinkEventBox,
    LinkFailed,
    LinkFailure,
    Quarantine,
    TransportClosed,
)

__all__ = ["MemoryNetwork", "MemoryTransport"]


class MemoryNetwork:
    """The shared in-memory network of one test. Not thread-safe: one event loop."""

    def __init__(self, *, failure_delay: float = 0.0) -> None:
        self.failure_delay = failure_delay
        """Seconds before a link across a partition or block is reported failed."""
        self._bound: dict[str, MemoryTransport] = {}
        self._blocked: set[tuple[NodeId, NodeId]] = set()
        self._names = itertools.count(1)

    def transport(self, node_id: NodeId, *, bind: str = "", **options: int) -> MemoryTransport:
        """A new, unstarted transport for ``node_id`` on this network."""
        return MemoryTransport(self, node_id, bind=bind, **options)

    def lookup(self, endpoint: str) -> MemoryTransport | None:
        return self._bound.get(endpoint)

    def kill(self, node_id: NodeId) -> None:
        """Crash every started transport of ``node_id``: peers see DISCONNECTED at once."""
        for transport in [t for t in self._bound.values() if t.node_id == node_id]:
            transport._crash()

    def block(self, a: NodeId, b: NodeId) -> None:
        """Drop traffic between ``a`` and ``b`` in both directions."""
        self._blocked.add((a, b))
        self._blocked.add((b, a))
        self._fail_blocked_links()

    def partition(self, side_a: Iterable[NodeId], side_b: Iterable[NodeId]) -> None:
        """Drop all traffic between the two sides."""
        bs = list(side_b)
        for a in side_a:
            for b in bs:
                self._blocked.add((a, b))
                self._blocked.add((b, a))
        self._fail_blocked_links()

    def heal(self) -> None:
        """Remove every block and partition."""
        self._blocked.clear()

    def is_blocked(self, a: NodeId, b: NodeId) -> bool:
        return (a, b) in self._blocked

    def _bind(self, transport: MemoryTransport, name: str) -> str:
        if not name or name == "*":
            name = f"auto-{next(self._names)}"
        endpoint = f"mem://{name}"
        if endpoint in self._bound:
            raise OSError(f"{endpoint} already bound")
        self._bound[endpoint] = transport
        return endpoint

    def _unbind(self, transport: MemoryTransport) -> None:
        if self._bound.get(transport.endpoint) is transport:
            del self._bound[transport.endpoint]
        for t in list(self._bound.values()):
            t._peer_gone(transport.node_id)

    def _fail_blocked_links(self) -> None:
        for t in list(self._bound.values()):
            for peer_id in list(t._links):
                if self.is_blocked(t.node_id, peer_id):
                    t._fail_later(peer_id, LinkFailure.DISCONNECTED, "partitioned")


class MemoryTransport:
    """One node's endpoint on a :class:`MemoryNetwork`; see :mod:`.base` for the contract."""

    def __init__(
        self,
        network: MemoryNetwork,
        node_id: NodeId,
        *,
        bind: str = "",
        inbox_size: int = 10_000,
        max_batch: int = 256,
        max_cached_links: int = 16,
    ) -> None:
        self._network = network
        self._node_id = node_id
        self._bind_name = bind.removeprefix("mem://")
        self._endpoint = ""
        self._inbox: deque[tuple[NodeId, bytes]] = deque()
        self._inbox_size = inbox_size
        self._max_batch = max_batch
        self._max_cached = max_cached_links
        self._inbox_ready = asyncio.Event()
        self._events = LinkEventBox()
        self._pinned: dict[NodeId, Peer] = {}
        self._links: OrderedDict[NodeId, Peer] = OrderedDict()
        self._timers: dict[NodeId, asyncio.TimerHandle] = {}
        self._closed = False
        self._counters: Counter[str] = Counter()
        self._quarantine = Quarantine()

    # -- the Transport protocol --------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def counters(self) -> Counter[str]:
        return self._counters

    @property
    def authenticated(self) -> bool:
        return False  # a test network: ids are taken as claimed

    async def start(self) -> str:
        if self._endpoint:
            raise RuntimeError("transport already started")
        if self._closed:
            raise TransportClosed("transport closed")
        self._endpoint = self._network._bind(self, self._bind_name)
        return self._endpoint

    def send(self, peer: Peer, data: bytes) -> bool:
        if self._closed:
            self._counters["send.dropped.closed"] += 1
            return False
        if peer.id not in self._links and not self._dial(peer):
            self._counters["send.dropped.failed"] += 1
            return False
        self._links.move_to_end(peer.id)
        if peer.endpoint and self._links[peer.id].endpoint != peer.endpoint:
            self._links[peer.id] = peer  # the node restarted elsewhere
        endpoint = self._links[peer.id].endpoint
        self._counters["sent.msgs"] += 1
        self._counters["sent.bytes"] += len(data)
        if self._network.is_blocked(self._node_id, peer.id):
            return True  # lost on the wire; the link fails after failure_delay
        target = self._network.lookup(endpoint)
        if target is not None:
            target._deliver(self._node_id, bytes(data))
        return True

    def open_link(self, peer: Peer) -> None:
        if self._closed:
            return
        self._pinned[peer.id] = peer
        if peer.id not in self._links:
            self._events.discard(peer.id)
            self._dial(peer)

    def close_link(self, peer_id: NodeId) -> None:
        self._pinned.pop(peer_id, None)
        self._drop_link(peer_id)

    def release_link(self, peer_id: NodeId) -> None:
        # A send delivers at once here: nothing is left to wait for.
        if peer_id in self._links:
            self._counters["link.released"] += 1
        self.close_link(peer_id)

    def quarantine(self, peer_id: NodeId, seconds: float) -> None:
        self._quarantine.add(peer_id, asyncio.get_running_loop().time() + seconds)

    def linked(self) -> frozenset[NodeId]:
        return frozenset(self._links)

    async def recv_batch(self) -> list[tuple[NodeId, bytes]]:
        while not self._inbox:
            if self._closed:
                raise TransportClosed("transport closed")
            self._inbox_ready.clear()
            await self._inbox_ready.wait()
        if self._closed:
            raise TransportClosed("transport closed")
        n = min(len(self._inbox), self._max_batch)
        batch = [self._inbox.popleft() for _ in range(n)]
        self._counters["recv.msgs"] += n
        self._counters["recv.bytes"] += sum(len(d) for _, d in batch)
        return batch

    async def link_events(self) -> list[LinkFailed]:
        return await self._events.get()

    async def aclose(self, *, linger: float = 0.0) -> None:
        # Frames are delivered synchronously by send(): nothing is left to linger for.
        if self._closed:
            return
        self._shutdown()

    # -- internals -----------------------------------------------------------------------------

    def _dial(self, peer: Peer) -> bool:
        """Create a link entry; report REFUSED (and return False) if nobody listens."""
        target = self._network.lookup(peer.endpoint) if peer.endpoint else None
        if target is None:
            cause = LinkFailure.REFUSED if peer.endpoint else LinkFailure.UNREACHABLE
            self._pinned.pop(peer.id, None)
            self._report(LinkFailed(peer.id, cause, peer.endpoint))
            return False
        self._links[peer.id] = peer
        self._counters["link.opened"] += 1
        if self._network.is_blocked(self._node_id, peer.id):
            self._fail_later(peer.id, LinkFailure.DIAL_TIMEOUT, "partitioned")
        unpinned = [pid for pid in self._links if pid not in self._pinned]
        while len(unpinned) > self._max_cached:
            self._drop_link(unpinned.pop(0))
            self._counters["link.evicted"] += 1
        return True

    def _drop_link(self, peer_id: NodeId) -> None:
        self._links.pop(peer_id, None)
        timer = self._timers.pop(peer_id, None)
        if timer is not None:
            timer.cancel()

    def _report(self, event: LinkFailed) -> None:
        self._counters[f"link.failed.{event.cause.value}"] += 1
        self._events.put(event)

    def _fail(self, peer_id: NodeId, cause: LinkFailure, detail: str) -> None:
        self._timers.pop(peer_id, None)
        if peer_id in self._links and not self._closed:
            self._drop_link(peer_id)
            self._pinned.pop(peer_id, None)
            self._report(LinkFailed(peer_id, cause, detail))

    def _fail_later(self, peer_id: NodeId, cause: LinkFailure, detail: str) -> None:
        if peer_id in self._timers:
            return
        delay = self._network.failure_delay
        if delay <= 0:
            self._fail(peer_id, cause, detail)
            return
        loop = asyncio.get_running_loop()
        self._timers[peer_id] = loop.call_later(delay, self._fail, peer_id, cause, detail)

    def _peer_gone(self, peer_id: NodeId) -> None:
        self._fail(peer_id, LinkFailure.DISCONNECTED, "peer closed")

    def _deliver(self, sender: NodeId, data: bytes) -> None:
        if self._closed:
            return
        if self._quarantine and self._quarantine.holds(sender, asyncio.get_running_loop().time()):
            self._counters["recv.dropped.quarantined"] += 1
            return
        if len(self._inbox) >= self._inbox_size:
            self._counters["recv.dropped.overflow"] += 1
            return
        self._inbox.append((sender, data))
        self._inbox_ready.set()

    def _shutdown(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._links.clear()
        self._pinned.clear()
        self._inbox.clear()
        self._events.close()
        self._inbox_ready.set()
        if self._endpoint:
            self._network._unbind(self)

    def _crash(self) -> None:
        self._shutdown()
