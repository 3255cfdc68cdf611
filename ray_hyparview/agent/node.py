"""The asyncio shell around the HyParView core: one agent per node.

Theory of operation
===================

The agent owns three things the core must not: the clock, the sockets and the tasks. It runs
three loops in one :class:`asyncio.TaskGroup` (python-zeroconf and aioquic's ``asyncio/``
package are the models):

* *receive*: takes batches of frames from the transport, decodes them (garbage is counted and
  dropped, never raised), and feeds HyParView messages to ``core.receive``; other registered
  message types (Plumtree, routed mesh frames) go to their handlers, and each of their
  frames from an active peer is proof of that peer's life (``core.heard``). A layer may take
  frames of one type from active peers before they are decoded, as their raw field values
  (:meth:`Agent.add_pass_through`): the routed mesh passes a data frame that only goes
  through this node on that way, which spares each relay pass the typed decode and the
  encode;
* *links*: feeds the transport's ``LinkFailed`` events (socket monitor, failed dials) to
  ``core.link_failed``: the fast path for crashes;
* *timer*: sleeps until ``core.next_deadline()`` (or until an input changed it) and calls
  ``core.on_timer``; ``now`` never goes backwards (aioquic's rule). The core's keepalives and
  silence check run from here: the slow path that catches hung and partitioned peers.

Everything the core returns goes through :meth:`Agent._apply`: ``Send`` is encoded and handed
to the transport, ``PeerUp`` pins a monitored link and ``PeerDown`` releases it, and both are
published to subscribers, the gate and the log. Subscribers get a replay of the current active
view first, so no early ``PeerUp`` is missed (libcluster_hyparview's ``replay: true``).

Temporary links. A ``Send`` to a peer outside the active view (a JOIN, a NEIGHBOR, a shuffle
reply, a merge probe or its answer) dials a link for it, the paper's temporary connection. Once
that peer is neither active nor asked something by the core (``pending_ids``), the link is
released: after the ``Send``, after a message from that peer, and on each timer tick for an
ask that timed out. The transport closes it once what it carries has left, so a node holds
links to its active view, plus the few exchanges in flight.

Containment. One frame, one timer or one bug in a layer above must never stop the agent: an
exception that leaves a task of the TaskGroup ends every loop of the node. So each step that runs
code of a service or of a core (a handler or pass-through, a subscriber callback, the gate, one
received membership message, one link event, one timer tick, one ``Send`` to encode) runs inside
:meth:`Agent.contained` (a pass-through, on the hot path, inside the same ``try`` inline): an
``Exception`` there costs exactly one count under ``errors.<where>`` (in :meth:`Agent.stats` as
``agent.errors.<where>``) and one log line, rate limited to ``_ERROR_LOG_BURST`` lines per
``_ERROR_LOG_INTERVAL`` seconds (the rest are counted and summed up in one line), and the loop goes
on with the next step. A service loop started with :meth:`Agent.spawn` that dies of an exception is
counted under ``errors.service`` and logged; it is restarted (after a pause that doubles from
``_RESTART_MIN`` to ``_RESTART_MAX`` seconds) when it was given as a factory, a callable returning
a fresh coroutine, and not when it was given as a coroutine, which can only run once. Cancellation
is never swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, Protocol

from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol import limits
from ray_hyparview.protocol.errors import HyParViewError, StateError
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.messages import (
    MESSAGE_TYPES,
    Action,
    DownReason,
    PeerDown,
    PeerUp,
    Send,
)
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.transport.base import LinkFailed, Transport, TransportClosed, attach_receiver
from ray_hyparview.transport.ratelimit import LogRate
from ray_hyparview.wire.codec import Codec, DecodeError, EncodeError
from ray_hyparview.wire.table import wire_codec

__all__ = [
    "Agent",
    "AgentClosed",
    "Event",
    "EventsOverflow",
    "Gate",
    "make_transport",
    "next_incarnation",
]

log = logging.getLogger("ray_hyparview.agent")

Event = PeerUp | PeerDown
"""What subscribers see: a peer entered or left this node's active view."""

_HYPARVIEW_TYPES = MESSAGE_TYPES

# Seconds the DISCONNECTs of a graceful leave get to leave the sockets.
_GOODBYE_PAUSE = 0.1
# Seconds a link to a non-active peer stays open without traffic (ZeroMQ dial timeout is 2 s).
_TEMPORARY_LINK_IDLE = 3.0
# Bounded event queue per subscriber; a subscriber this far behind is cut off, loudly.
_SUBSCRIBER_QUEUE = 10_000
# Decode errors from one sender in a row before its link is dropped.
_MAX_OFFENCES = 100
_MAX_OFFENDERS = 1024
"""Most senders whose bad frames are tallied at once (the oldest tally goes first)."""

_EARLY_BYTES = 256 * 1024
"""Bytes of frames held for senders that are not (yet) active neighbours, over all of them."""
_EARLY_HOLD = 2.0
"""Seconds such a frame waits for its sender to become an active neighbour."""
# Contained errors: at most this many log lines per interval (seconds); the rest are counted.
_ERROR_LOG_BURST = 10
_ERROR_LOG_INTERVAL = 60.0
# Pause before a failed service (spawned as a factory) is restarted: doubles up to the maximum,
# back to the minimum once it ran that long without failing.
_RESTART_MIN = 0.1
_RESTART_MAX = 30.0


class AgentClosed(HyParViewError, RuntimeError):
    """The agent is closed (or not started) and cannot do what was asked."""


class EventsOverflow(HyParViewError, RuntimeError):
    """A subscriber fell more than the queue bound behind and lost its place."""


class Gate(Protocol):
    """The connect/disconnect pair of libcluster: told whenever a link comes up or goes down.

    Called synchronously from the agent's loop; do not block in it.
    """

    def peer_up(self, peer: Peer) -> None: ...

    def peer_down(self, peer: Peer, reason: DownReason) -> None: ...


Handler = Callable[[NodeId, Any], None]

PassThrough = Callable[[NodeId, list[Any]], bool]
"""Takes a frame's field values, unchecked (see :meth:`Agent.add_pass_through`); True when it
handled the frame whole, False (leaving the values as they were) to have them decoded and
handled as usual."""

Service = Coroutine[Any, Any, None] | Callable[[], Coroutine[Any, Any, None]]
"""What :meth:`Agent.spawn` runs: a coroutine (runs once) or a factory of them (restarted)."""


class _ErrorLog:
    """Logs contained errors, at most ``burst`` lines per ``interval`` seconds; the lines it
    holds back are summed up in the first line of the next interval."""

    def __init__(self, burst: int = _ERROR_LOG_BURST, interval: float = _ERROR_LOG_INTERVAL):
        self.burst = burst
        self.interval = interval
        self._window_start = -float("inf")
        self._logged = 0
        self._suppressed = 0

    def error(self, node: str, where: str, what: str, exc: BaseException) -> bool:
        """Log one contained error unless over the rate; returns whether it was logged."""
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            if self._suppressed:
                log.error(
                    "%s: %d more contained errors were not logged in the last %.0f s",
                    node,
                    self._suppressed,
                    self.interval,
                )
            self._window_start = now
            self._logged = 0
            self._suppressed = 0
        if self._logged >= self.burst:
            self._suppressed += 1
            return False
        self._logged += 1
        log.error("%s: %s failed (%s), contained", node, what, where, exc_info=exc)
        return True


INCARNATION_FILE_ENV = "RAY_HYPARVIEW_INCARNATION_FILE"
"""Environment variable naming the incarnation file when the agent is not given one."""

_INCARNATION_MAX = 2**63 - 1  # what the wire's incarnation field carries


def next_incarnation(clock_us: int, path: str | os.PathLike[str] | None = None) -> int:
    """This life's incarnation: the clock in microseconds, but always above the last one.

    Incarnations must grow at every restart, or the peers that remember the previous life
    drop the new one's messages as stale (issue 9, finding 8). The wall clock alone breaks
    that when it steps back (NTP, a VM restored from a snapshot). With ``path``, the last
    incarnation is kept in that file and the new one is ``max(clock, last + 1)``; the file is
    replaced atomically. A missing or unreadable file counts as no previous life; a value
    beyond what the wire carries is ignored rather than trusted.
    """
    if path is None:
        return limits.next_incarnation(clock_us)
    try:
        with open(path, encoding="ascii") as f:
            last = int(f.read().strip() or "0")
    except (OSError, ValueError):
        last = 0
    if not 0 <= last < _INCARNATION_MAX:
        log.warning("ignoring incarnation %r read from %s: out of range", last, path)
        last = 0
    incarnation = limits.next_incarnation(clock_us, last)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{incarnation}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        log.warning("could not record incarnation %d in %s", incarnation, path, exc_info=True)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return incarnation


class Agent:
    """One HyParView node: ``async with Agent(strategy) as agent: ...``.

    On entry it binds, joins its contacts and starts its loops; on exit it leaves gracefully
    (DISCONNECT to every active peer, so that they repair at once) and closes everything.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        transport: Transport | None = None,
        gate: Gate | None = None,
        rng: random.Random | None = None,
        incarnation: int | None = None,
        incarnation_file: str | os.PathLike[str] | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.strategy = strategy
        self._transport = transport
        self._gate = gate
        self._rng = rng if rng is not None else random.Random()
        if incarnation is None:
            if incarnation_file is None:
                incarnation_file = os.environ.get(INCARNATION_FILE_ENV) or None
            incarnation = next_incarnation(time.time_ns() // 1000, incarnation_file)
        self._incarnation = incarnation
        self._codec = codec if codec is not None else wire_codec()
        self._core: HyParView | None = None
        self._handlers: dict[type, Handler] = {}
        # Frame prefix -> (message type, its pass-through, its received counter); every prefix
        # is _through_len long.
        self._through: dict[bytes, tuple[type, PassThrough, str]] = {}
        self._through_len = 0
        self._subscribers: list[_Subscriber] = []
        self._callbacks: list[Callable[[Event], None]] = []
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._offences: Counter[NodeId] = Counter()
        self._lost_services: list[str] = []
        # Frames for the services above membership from senders that are not active
        # neighbours yet, held until the link is confirmed (see _hold_early).
        self._early: dict[NodeId, list[tuple[float, int, object]]] = {}
        self._early_bytes = 0
        self.counters: Counter[str] = Counter()
        self._log_rate = LogRate(counters=self.counters)
        self._error_log = _ErrorLog()
        self._group: asyncio.TaskGroup | None = None
        self._spawned: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()
        self._closing = False
        self._closed = False
        self._started = False

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind, start the loops and join the contacts."""
        if self._started:
            raise StateError("the agent was already started")
        self._started = True
        strategy = self.strategy
        if self._transport is None:
            self._transport = make_transport(strategy)
        try:
            bound = await self._transport.start()
            myself = strategy.advertised_peer(bound)
            self._core = HyParView(
                myself, strategy.hyparview_config, rng=self._rng, incarnation=self._incarnation
            )
            for note in strategy.warnings():
                log.warning("%s: %s", myself.id, note)
            self._group = await self._stack.enter_async_context(asyncio.TaskGroup())
            if not attach_receiver(self._transport, self._receive):
                self._group.create_task(self._receive_loop(), name=f"hyparview-recv-{myself.id}")
            self._group.create_task(self._link_loop(), name=f"hyparview-links-{myself.id}")
            self._group.create_task(self._timer_loop(), name=f"hyparview-timer-{myself.id}")
            log.info("%s: listening on %s", myself.id, bound)
            self._apply(self._core.join(list(strategy.contacts), now=self._now()))
        except BaseException:
            await self._shutdown(graceful=False)
            raise

    async def aclose(self, *, graceful: bool = True) -> None:
        """Leave (if ``graceful``) and release every task and socket. Idempotent."""
        await self._shutdown(graceful=graceful)

    async def _shutdown(self, *, graceful: bool) -> None:
        if self._closing:
            return
        self._closing = True
        core = self._core
        if core is not None and graceful and not core.has_left:
            self._apply(core.leave(now=self._now()))
            # One short, bounded pause so that the goodbyes leave the sockets before linger=0.
            # (Not aclose(linger=...): it ends the context in an executor thread, a thread the
            # agent would leave behind. If a goodbye is lost all the same, the neighbour's
            # socket monitor reports the closed link and it repairs just as fast.)
            await asyncio.sleep(_GOODBYE_PAUSE)
        self._closed = True
        for task in self._spawned:
            task.cancel()
        for sub in self._subscribers:
            sub.close()
        self._changed.set()
        if self._transport is not None:
            await self._transport.aclose()
        self._wake.set()
        await self._stack.aclose()

    # ------------------------------------------------------------ views

    @property
    def core(self) -> HyParView:
        if self._core is None:
            raise AgentClosed("the agent has not been started")
        return self._core

    @property
    def myself(self) -> Peer:
        """This node, with its bound endpoint."""
        return self.core.myself

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise AgentClosed("the agent has not been started")
        return self._transport

    @property
    def active_view(self) -> tuple[Peer, ...]:
        return self.core.active_view

    @property
    def passive_view(self) -> tuple[Peer, ...]:
        return self.core.passive_view

    @property
    def started(self) -> bool:
        """True once :meth:`start` bound the transport and made the core."""
        return self._core is not None

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_for_active(self, n: int, *, timeout: float) -> tuple[Peer, ...]:
        """Wait until at least ``n`` peers are active; ``TimeoutError`` after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while len(self.core.active_view) < n:
                if self._closed:
                    raise AgentClosed("the agent closed while waiting")
                self._changed.clear()
                await self._changed.wait()
        return self.core.active_view

    # ------------------------------------------------------------ events

    def events(self) -> AsyncIterator[Event]:
        """Every PeerUp / PeerDown from now on, after a replay of the current active view."""
        sub = _Subscriber(self._replay())
        self._subscribers.append(sub)
        return sub.iterate(lambda: self._subscribers.remove(sub))

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for every event (after a replay); returns an unsubscribe function."""
        for event in self._replay():
            callback(event)
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def _replay(self) -> list[Event]:
        return [PeerUp(p) for p in self.core.active_view] if self._core is not None else []

    # ------------------------------------------------------------ extension points

    def add_handler(self, message_type: type, handler: Handler) -> None:
        """Route decoded messages of ``message_type`` (registered with the codec) to ``handler``
        instead of the membership core; used by Plumtree and the routed mesh."""
        if message_type in _HYPARVIEW_TYPES:
            raise ValueError(f"{message_type.__name__} belongs to the membership protocol")
        self._handlers[message_type] = handler

    def add_pass_through(self, message_type: type, handler: PassThrough) -> None:
        """Offer each frame of ``message_type`` from an active neighbour to ``handler`` as its
        field values before it is decoded (:meth:`~ray_hyparview.wire.codec.Codec.fields`: parsed
        under the codec's limits, not checked against the schema, in the message's field order).
        ``handler`` must check every value it uses by the rules of its core; when it returns False,
        leaving the values as they were, they are decoded (the frame is not parsed again) and go to
        the :meth:`add_handler` handler as usual. Counted as the handler's frames are; the routed
        mesh passes a data frame that only goes through this node on this way
        (:meth:`Router.pass_on`)."""
        if message_type in _HYPARVIEW_TYPES:
            raise ValueError(f"{message_type.__name__} belongs to the membership protocol")
        names = tuple(f.name for f in dataclasses.fields(message_type))
        if self._codec.field_names(message_type) != names:
            raise ValueError(f"the codec's fields of {message_type.__name__} are not in its order")
        prefix = self._codec.prefix(message_type)
        if self._through and len(prefix) != self._through_len:
            raise ValueError(f"{message_type.__name__}'s frames start unlike the others'")
        self._through[prefix] = (message_type, handler, "received." + message_type.__name__)
        self._through_len = len(prefix)

    def send_fields(self, peer: Peer, message_type: type, values: Sequence[Any]) -> bool:
        """Send a message given as its field values, without the schema's checks: for the
        values a pass-through handler read and checked (see :meth:`add_pass_through`)."""
        if self._closed:
            return False
        data = self._codec.encode_fields(message_type, values)
        self._count_send(message_type.__name__, len(data))
        return self.transport.send(peer, data)

    def spawn(self, service: Service, *, name: str) -> asyncio.Task[None]:
        """Run a service of a layer above membership in the agent's task group; it is cancelled
        when the agent closes, if its owner has not stopped it before.

        ``service`` is a coroutine, or a factory: a callable that returns a fresh coroutine. If
        it dies of an exception, that is counted (``errors.service``) and logged, never passed
        to the task group (which would stop the agent). A factory is then called again after a
        pause (doubling from 0.1 s to 30 s); a coroutine is not restarted (it can run once).
        The returned task ends when the service returns, or dies without restart."""
        if self._group is None or self._closing:
            if not callable(service):
                service.close()
            raise AgentClosed("the agent is not running")
        task = self._group.create_task(self._supervise(service, name), name=name)
        self._spawned.append(task)
        task.add_done_callback(self._spawned.remove)
        return task

    async def _supervise(self, service: Service, name: str) -> None:
        delay = _RESTART_MIN
        while True:
            coro = service() if callable(service) else service
            started = time.monotonic()
            try:
                await coro
                return
            except Exception as exc:
                self.report_error("service", f"service {name}", exc)
                if not callable(service) and not self._closing:
                    self._lost_services.append(name)  # it can run once: it is gone for good
            if not callable(service) or self._closing:
                return
            if time.monotonic() - started >= _RESTART_MAX:
                delay = _RESTART_MIN
            self.counters["service.restarted"] += 1
            await asyncio.sleep(delay)  # cancelled here when the agent closes meanwhile
            delay = min(delay * 2, _RESTART_MAX)

    @property
    def lost_services(self) -> tuple[str, ...]:
        """Services spawned as a coroutine that died of an exception: they cannot be restarted,
        so the agent no longer does all it should (a supervisor replaces such an agent)."""
        return tuple(self._lost_services)

    @contextlib.contextmanager
    def contained(self, where: str, what: str = "") -> Iterator[None]:
        """Run one step of a service so that an ``Exception`` in it costs one count under
        ``errors.<where>`` and one rate-limited log line, never the agent. ``where`` should be
        a fixed word (it names a counter); ``what`` says more in the log line."""
        try:
            yield
        except Exception as exc:
            self.report_error(where, what or where, exc)

    def report_error(self, where: str, what: str, exc: BaseException) -> None:
        """Count ``exc`` under ``errors.<where>`` and log it within the agent's rate limit: for
        services that catch their own failures (the mesh's timer loop)."""
        self.counters["errors." + where] += 1
        node = self._core.myself.id if self._core is not None else self.strategy.local_peer.id
        self._error_log.error(node, where, what, exc)

    def active_peer(self, peer_id: NodeId) -> Peer | None:
        """The active peer with id ``peer_id``, if it is one."""
        for peer in self.core.active_view:
            if peer.id == peer_id:
                return peer
        return None

    def send_raw(self, peer: Peer, message: object) -> bool:
        """Encode ``message`` and send it to ``peer``; for layers above membership."""
        if self._closed:
            return False
        data = self._codec.encode(message)
        self._count_send(type(message).__name__, len(data))
        return self.transport.send(peer, data)

    def add_passive(self, peers: Sequence[Peer]) -> None:
        """Tell the core about peers found by discovery (e.g. the Ray GCS)."""
        self._apply(self.core.learn(peers, now=self._now()))

    def probe(self, peer: Peer) -> None:
        """JOIN ``peer`` now (see :meth:`HyParView.probe`): merges two components of the
        overlay that a layer above knows to be apart."""
        self._apply(self.core.probe(peer, now=self._now()))

    def join_contacts(self, contacts: Sequence[Peer]) -> None:
        """Join through more contacts (a reconciler found new ones)."""
        self._apply(self.core.join(contacts, now=self._now()))

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Counters and gauges: the agent's, the core's and the transport's."""
        core = self.core
        return {
            "id": core.myself.id,
            "endpoint": core.myself.endpoint,
            "incarnation": self._incarnation,
            "active": [p.id for p in core.active_view],
            "passive": [p.id for p in core.passive_view],
            "gauges": {
                "active_view_size": len(core.active_view),
                "passive_view_size": len(core.passive_view),
                "reserve_size": len(core.reserve_ids),
                "links": len(self.transport.linked()),
            },
            "counters": {
                **{f"agent.{k}": v for k, v in sorted(self.counters.items())},
                **{f"core.{k}": v for k, v in sorted(core.counters.items())},
                **{f"transport.{k}": v for k, v in sorted(self.transport.counters.items())},
            },
        }

    # ------------------------------------------------------------ loops

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _receive_loop(self) -> None:
        """For a transport that cannot push its batches to :meth:`_receive` (the in-memory one)."""
        transport = self.transport
        while True:
            try:
                batch = await transport.recv_batch()
            except TransportClosed:
                return
            self._receive(batch)
            await asyncio.sleep(0)

    def _receive(self, batch: list[tuple[NodeId, bytes]]) -> None:
        """Decode and dispatch one inbound batch. Never raises: it runs in the transport's
        reader callback, where an exception would only be logged by the loop."""
        try:
            self._dispatch(batch)
        except Exception as exc:  # a bug outside every handler's containment
            self.report_error("receive", f"a batch of {len(batch)} frames", exc)

    def _dispatch(self, batch: list[tuple[NodeId, bytes]]) -> None:
        core = self.core
        heard: NodeId | None = None  # the last sender ``core.heard`` was told of, this batch
        through = self._through
        for sender, data in batch:
            taken = through.get(data[: self._through_len]) if through else None
            values = None
            if taken is not None and sender in core.active_ids:
                values = self._codec.fields(data, taken[0])
            if values is not None and taken is not None:
                if sender != heard:
                    heard = self._heard(sender)
                if self._pass_through(sender, taken, values, len(data)):
                    continue
                message = self._codec.decode_fields(taken[0], values)  # parsed once, not twice
            else:
                message = self._codec.decode(data)
            if isinstance(message, DecodeError):
                self._offence(sender, message.cause)
                continue
            self._offences.pop(sender, None)
            name = type(message).__name__
            self.counters["received." + name] += 1
            self.counters["received.bytes"] += len(data)
            handler = self._handlers.get(type(message))
            if handler is not None:
                if sender != heard:  # a batch is mostly one link's: once per run of it
                    heard = self._heard(sender)
                if sender not in core.active_ids:
                    self._hold_early(sender, len(data), message)
                    continue
                with self.contained("handler", f"handler for {name} from {sender}"):
                    handler(sender, message)
            elif isinstance(message, _HYPARVIEW_TYPES):
                with self.contained("core", f"membership {name} from {sender}"):
                    self._apply(core.receive(sender, message, now=self._now()))
                    self._release_unneeded((sender,))  # an answer may end what we asked
            else:
                self.counters["dropped.unhandled_type"] += 1

    def _heard(self, sender: NodeId) -> NodeId:
        """Tell the core a frame of another layer came from ``sender``: proof of its life, or
        of a one-sided link, whose sender is told DISCONNECT. Returns ``sender``."""
        told = self.core.heard(sender, now=self._now())
        if told:
            self._apply(told)
        return sender

    def _pass_through(
        self, sender: NodeId, taken: tuple[type, PassThrough, str], values: list[Any], size: int
    ) -> bool:
        """Offer ``values`` to the pass-through of their type; True when it took the frame
        (an exception in it costs the frame, as in a handler: counted, never the agent)."""
        message_type, handler, received = taken
        try:
            if not handler(sender, values):
                return False
        except Exception as exc:
            self.report_error(
                "handler", f"pass-through of {message_type.__name__} from {sender}", exc
            )
        self._offences.pop(sender, None)
        self.counters[received] += 1
        self.counters["received.bytes"] += size
        self.counters["passed_through"] += 1
        return True

    def _hold_early(self, sender: NodeId, size: int, message: object) -> None:
        """Routing, Plumtree and the mesh inside them take frames only from admitted active
        neighbours over their own link: nothing a stranger sends is routed, gossiped or
        delivered. A neighbour's first frames can overtake the message that confirms its link
        (the two ends learn of a new link one message apart, over two sockets), so frames from
        a sender outside the active view wait up to ``_EARLY_HOLD`` seconds, within
        ``_EARLY_BYTES`` in all, and are handed over if its link comes up; the rest are dropped
        and counted as ``dropped.not_neighbor``."""
        now = self._now()
        self._expire_early(now)
        if self._early_bytes + size > _EARLY_BYTES:
            self.counters["dropped.not_neighbor"] += 1
            return
        self._early.setdefault(sender, []).append((now + _EARLY_HOLD, size, message))
        self._early_bytes += size
        self.counters["early.held"] += 1
        self._wake.set()  # the timer loop expires it

    def _expire_early(self, now: float) -> None:
        for sender in list(self._early):
            held = self._early[sender]
            if held[-1][0] > now:
                continue  # one frame of this sender may still wait
            del self._early[sender]
            self._early_bytes -= sum(size for _, size, _m in held)
            self.counters["dropped.not_neighbor"] += len(held)

    def _replay_early(self, peer_id: NodeId) -> None:
        """The link to ``peer_id`` is up: hand its held frames over, in arrival order."""
        held = self._early.pop(peer_id, None)
        if not held:
            return
        self._early_bytes -= sum(size for _, size, _m in held)
        for _deadline, _size, message in held:
            handler = self._handlers.get(type(message))
            if handler is None:
                continue
            self.counters["early.replayed"] += 1
            with self.contained("handler", f"handler for {type(message).__name__}"):
                handler(peer_id, message)

    def _offence(self, sender: NodeId, cause: str) -> None:
        self.counters["dropped." + cause] += 1
        if sender not in self._offences and len(self._offences) >= _MAX_OFFENDERS:
            # Bounded: a flood of fresh ids forgets the oldest tallies, it cannot grow this.
            del self._offences[next(iter(self._offences))]
        self._offences[sender] += 1
        if self._offences[sender] < _MAX_OFFENCES:
            return
        del self._offences[sender]
        if not self.transport.authenticated:
            # Without CURVE the claimed id is no proof: dropping the link would let anyone who
            # sends garbage under a neighbour's id cut that neighbour off. Count only.
            self.counters["offender.unproved"] += 1
            return
        # A peer that sends nothing but garbage under its own key: drop our side of its link.
        self.counters["offender.disconnected"] += 1
        self.transport.close_link(sender)
        self._log_rate.warning(
            log, "%s: dropping link to %s after repeated bad frames", self.myself.id, sender
        )

    async def _link_loop(self) -> None:
        transport = self.transport
        core = self.core
        while True:
            try:
                events: list[LinkFailed] = await transport.link_events()
            except TransportClosed:
                return
            for event in events:
                self.counters["link_failed." + event.cause.value] += 1
                with self.contained("core", f"link failure of {event.peer_id}"):
                    self._apply(core.link_failed(event.peer_id, now=self._now()))

    async def _timer_loop(self) -> None:
        core = self.core
        last = self._now()
        while not self._closed:
            deadline = core.next_deadline()
            if self._early:
                soonest = min(held[-1][0] for held in self._early.values())
                deadline = soonest if deadline is None else min(deadline, soonest)
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - self._now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if self.closed:  # set by aclose() while we waited
                return
            # Never let time go backwards for the core (aioquic's rule).
            now = max(last, self._now())
            last = now
            with self.contained("timer", "membership timer"):
                due = core.next_deadline()
                if due is not None and due <= now:
                    self._apply(core.on_timer(now=now))
                    # An ask that timed out leaves a link nobody needs.
                    self._release_unneeded(self.transport.linked())
                self._expire_early(now)

    def _release_unneeded(self, peer_ids: Iterable[NodeId]) -> None:
        """Release the links to peers that are neither active nor asked something: their one
        exchange is over (the paper's temporary connection). The transport closes each once
        what was sent on it has left, so a reply or a DISCONNECT sent just before still goes."""
        core = self.core
        for peer_id in peer_ids:
            if peer_id not in core.active_ids and peer_id not in core.pending_ids:
                self.transport.release_link(peer_id)

    # ------------------------------------------------------------ actions

    def _count_send(self, name: str, size: int) -> None:
        self.counters["sent." + name] += 1
        self.counters["sent.bytes"] += size

    def _apply(self, actions: list[Action]) -> None:
        if not actions:
            return
        transport = self.transport
        sent_to: list[NodeId] = []
        for action in actions:
            match action:
                case Send(to=to, message=message):
                    sent_to.append(to.id)
                    try:
                        data = self._codec.encode(message)
                    except EncodeError as exc:
                        # Only this message is lost; the PeerUp/PeerDown after it still count.
                        self.report_error("encode", f"encoding {type(message).__name__}", exc)
                        continue
                    self._count_send(type(message).__name__, len(data))
                    if not transport.send(to, data):
                        self.counters["send.dropped"] += 1
                case PeerUp(peer=peer):
                    transport.open_link(peer)
                    log.info("%s: peer up %s", self.myself.id, peer)
                    self._publish(action)
                    self._replay_early(peer.id)
                case PeerDown(peer=peer, reason=reason):
                    if reason is DownReason.FAILED:
                        transport.close_link(peer.id)
                    else:  # the DISCONNECT just sent on it still leaves
                        transport.release_link(peer.id)
                    log.info("%s: peer down %s (%s)", self.myself.id, peer, reason.value)
                    self._publish(action)
        if sent_to:
            self._release_unneeded(sent_to)
        self._wake.set()

    def _publish(self, event: Event) -> None:
        self._changed.set()
        for sub in list(self._subscribers):
            sub.put(event)
        for callback in list(self._callbacks):
            with self.contained("callback", "event callback"):
                callback(event)
        gate = self._gate
        if gate is not None:
            with self.contained("gate", "gate"):
                if isinstance(event, PeerUp):
                    gate.peer_up(event.peer)
                else:
                    gate.peer_down(event.peer, event.reason)


class _Subscriber:
    """A bounded queue of events for one ``events()`` iterator."""

    def __init__(self, replay: list[Event]) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=_SUBSCRIBER_QUEUE)
        self._overflowed = False
        for event in replay:
            self._queue.put_nowait(event)

    def put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._overflowed = True

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def iterate(self, done: Callable[[], None]) -> AsyncIterator[Event]:
        try:
            while True:
                if self._overflowed and self._queue.empty():
                    raise EventsOverflow("subscriber fell too far behind; events were lost")
                event = await self._queue.get()
                if event is None:
                    return
                yield event
        finally:
            with contextlib.suppress(ValueError):
                done()


def make_transport(strategy: Strategy, *, context: Any = None) -> Transport:
    """The transport a strategy names, as the agent builds it for itself; only ZeroMQ can be
    built from a strategy alone. ``context`` shares one ``zmq.asyncio.Context`` between agents
    of one process (plain text only)."""
    if strategy.transport != "zmq":
        raise StateError(
            f"transport {strategy.transport!r} needs a transport object: pass transport=..."
        )
    from ray_hyparview.transport.zmq import CurveConfig, ZmqOptions, ZmqTransport

    options = ZmqOptions(
        # The [transport] limits: queued bytes per connection, connection caps, strangers.
        **strategy.limits.options(),
        # A link to a peer outside the active view carries one-off membership messages (JOIN,
        # NEIGHBOR, SHUFFLE_REPLY, a merge probe: the paper's "temporary connection"). The
        # agent releases it once the exchange is over (_release_unneeded); the idle timeout
        # is the backstop for one it missed, soon after the dial timeout.
        idle_timeout=_TEMPORARY_LINK_IDLE,
        heartbeat_ivl=strategy.heartbeat_interval,
        heartbeat_timeout=strategy.heartbeat_timeout,
    )
    curve = None
    security = strategy.security
    if security is not None:
        curve = CurveConfig(
            public_key=security.public_key,
            secret_key=security.secret_key,
            node_keys=dict(security.allowed_keys),
            allow_list=frozenset(security.allow_list),
            default_server_key=security.default_server_key,
        )
    return ZmqTransport(
        strategy.local_peer.id, strategy.bind, options=options, curve=curve, context=context
    )
