"""The ZeroMQ transport: one ROUTER in, one DEALER out per peer, driven from the asyncio loop.

Theory of operation
-------------------
**Sockets.** Each agent binds one ROUTER socket for everything inbound and opens one DEALER
socket per peer it sends to. We never send on the ROUTER. The reasons for this arrangement:

* Every outbound link is its own socket, so every link has its own socket monitor: a
  ``DISCONNECTED`` event names exactly one peer, which is what ``link_failed`` needs. A ROUTER
  multiplexes many peers on one socket and its monitor events carry no routing id.
* The DEALER's routing id tells the receiving ROUTER who is sending, with no hello message.
  It is ``node_id + b"\\0" + 6 random bytes``: the receiver strips the tag to get the node id.
  The tag makes each connection's routing id unique. libzmq silently drops every message of a
  connection whose routing id is already taken on the ROUTER (``ROUTER_HANDOVER=0``, measured
  here: the handshake succeeds, sends succeed, nothing arrives), which would black-hole a
  re-dial racing the teardown of the previous connection, or a restarted node whose old
  half-open connection the peer has not yet timed out. ``ROUTER_HANDOVER`` stays off: with
  handover a second connection claiming an id steals the route.
* The cost is two TCP connections per active link (one each way): still O(active view).
* ``ROUTER_MANDATORY`` (which turns a send to a vanished routing id into ``EHOSTUNREACH``) is
  not needed: the ROUTER never sends, and a DEALER's monitor reports a vanished peer itself.

**The hot path.** Sends are plain non-blocking sends on each DEALER (a shadow of the
``zmq.asyncio`` socket, which only the link's monitor is awaited through). Inbound, the
ROUTER's file descriptor is watched with ``loop.add_reader``: the callback reads ``EVENTS``
(which clears libzmq's edge-triggered signal, so the level-triggered reader does not spin) and
drains with ``NOBLOCK`` until ``EVENTS`` shows nothing more or the batch is full. The agent
registers a receiver (``set_receiver``), and the callback hands it the batch in the same loop
turn; without one, the callback completes the future ``recv_batch`` waits on, which costs the
waiting task's wake-up, one more loop turn per hop (about 50-120 us inside a Ray actor on the
benchmark machine). zmq.asyncio's receive (a future, pyzmq
enum flag arithmetic and extra loop turns per message) cost more per message than the socket
calls themselves. Flags are plain ints for the same reason.

**Batches.** Frames sent to one peer within one loop turn after the first are held on the
link and leave at the end of the turn as one *batch frame* (:mod:`.batch` describes the wire
format: ``0xC1 0x42 0x01`` then length-prefixed frames), so a burst costs one ZeroMQ message
instead of one per frame while a lone send goes out at once. A batch is one ZeroMQ frame of at
most ``batch_bytes`` (at most the peers' ``max_msg_size``) and ``max_batch`` frames, so
``RCVHWM x MAXMSGSIZE`` still bounds what one connection queues at the receiver; a frame too
large to share a batch goes alone, in order. The receiver unpacks a batch into its frames
(counted one by one in ``recv.msgs``/``recv.bytes``, and once in ``recv.batches``), drops a
malformed one whole as ``recv.dropped.bad_batch``, and never returns more than ``max_batch``
frames from one ``recv_batch`` (the rest of an overrunning batch comes first next time).
``send`` returns ``True`` for a frame it holds for a batch; if the batch then meets a full
queue (``SNDHWM``) its frames are dropped and counted as ``send.dropped.hwm`` (like any frame
lost after ``send``, the protocol's end-to-end checks cover it), and frames held for a link
that closes count as ``send.dropped.link_closed``. ``aclose`` sends what the closing turn
holds first (goodbyes). Receivers older than the batch format count batches as undecodable
frames: run a mixed-version cluster with ``batch_bytes=0``. Multipart ZeroMQ messages stay
refused (``recv.dropped.multipart``): libzmq bounds the size of each part, not of a message.

**Who sent this?** The routing id is only a claim. Without CURVE it is trusted, as is the
network (the transport warns when it binds a non-loopback address in plain text). With CURVE
the ROUTER is a CURVE server whose ZAP handler (pyzmq's ``AsyncioAuthenticator`` with an
allow-list callback on our ZAP domain; CURVE alone encrypts but admits any client key) refuses
unknown client keys during the handshake, so their frames never reach us. For each received
frame we then read the ``User-Id`` property that ZAP attached (the client's z85 public key) and
require that the claimed node id is the one bound to that key (``CurveConfig.node_keys``), or,
for keys in the unbound allow-list, that the claimed id is not bound to another key. Frames that
fail are dropped and counted as ``recv.dropped.impersonation``. The agent then checks that the
message's own ``sender`` equals this id. The binding may change while the transport runs
(:meth:`ZmqTransport.set_node_keys`: the Ray plugin's keys published in the GCS); with a
``refresh`` callback, an unknown key that knocks and a dial to an id without a key first wait
for one refresh of the binding (the callback bounds how often that reads its source).

**Failure detection.** Each DEALER has a socket monitor read by the link's task:
``HANDSHAKE_SUCCEEDED`` marks it up (``CONNECTED`` does not: the kernel accepts connections for
a frozen process), ``CONNECT_RETRIED`` while dialling means refused, ``HANDSHAKE_FAILED_*`` means
a refused key, ``DISCONNECTED`` on an up link means the peer crashed (within milliseconds) or
left data sent to it unacknowledged for ``heartbeat_timeout`` (``TCP_MAXRT``: a vanished host or
a partition, found while anything is sent, and the agent's keepalives keep something in flight).
No handshake within ``dial_timeout`` is ``DIAL_TIMEOUT``. A peer whose process is frozen, or
whose loop is stuck, still has a kernel that acknowledges: the agent's application keepalives
catch it. Each failure is reported once as ``LinkFailed`` and the link is torn down; the next
``send`` dials afresh. Inbound connections whose host vanished end by TCP keepalive.

**No ZMTP heartbeats.** libzmq 4.3.5 (the one pyzmq 27.3 bundles) aborts the process,
``Assertion failed: !_io_error`` (``stream_engine_base.cpp:310``; libzmq issues 3937 and 4364),
when a connection fails while its input is stopped on a full queue (``RCVHWM``) and the engine
then writes a heartbeat: at its own heartbeat interval, or answering a peer's PING that was
still in its read buffer, which it decodes once the application reads again. A busy agent
whose peer went away met both under load, and a peer can provoke it at will (fill the queue,
reset). No socket here sends PINGs or sets a heartbeat interval, so no engine writes one.

**Bounds.** ``SNDHWM`` bounds what we queue for a peer. Inbound, libzmq keeps one queue per
connection: ``RCVHWM`` (``recv_hwm`` frames) times ``MAXMSGSIZE`` (``max_msg_size``; a larger
frame makes libzmq drop that connection) bounds its bytes, by default 16 x 64 KiB = 1 MiB. The
number of connections is bounded by the ZAP handler (for the NULL mechanism too): beyond
``max_connections`` open, a new one is refused at the handshake (``zap.refused.connections``),
except, with CURVE, one of a key bound to a node id. Links already up are never cut. Frames from
more than ``max_strangers`` distinct ids we hold no link to (per ``stranger_timeout``) are
dropped unread as ``recv.dropped.stranger_cap``, so that a swarm of fresh ids cannot fill the
agent's tables. After a burst of inbound
bytes (``trim_after_bytes``) the C heap is handed back to the system (``malloc_trim``), so
that memory returns to its baseline once a flood ends. Warnings are rate-limited per kind
(``log_lines`` per ``log_interval``; the rest count as ``log.suppressed``) and blame only what
was authenticated: a CURVE key, never a claimed id alone. Frames sent while a link
dials wait in a per-link queue of ``pending_limit``; links opened implicitly by ``send`` (not
``open_link``) are cached at most ``max_cached_links`` and expire after ``idle_timeout``; a
receive batch is at most ``max_batch`` frames; link events coalesce per peer. ``IMMEDIATE=1``
on DEALERs: nothing is queued for a peer that is not connected, so stale frames cannot reach a
later incarnation bound at the same endpoint. Every socket closes with ``linger=0``, except
DEALERs of ``aclose(linger=...)`` (a bounded time to send goodbyes) and of ``release_link``: a
released link ends once its dial is done and its frames are handed to libzmq, and its DEALER
lingers 250 ms so that they still leave (without linger libzmq would drop them). Monitors
are disabled before their socket closes, and monitor sockets are read until then (libzmq stops
making connections if they fill up). Facts from ``/work/shared/DESIGN.md``, measured with
pyzmq 27.3 and libzmq 4.3.5.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.transport import batch as batches
from ray_hyparview.transport.admission import KeyRule
from ray_hyparview.transport.base import (
    LinkEventBox,
    LinkFailed,
    LinkFailure,
    Quarantine,
    Receiver,
    TransportClosed,
)
from ray_hyparview.transport.endpoints import SCHEMES, is_loopback_endpoint
from ray_hyparview.transport.ratelimit import DEFAULT_LOG_INTERVAL, DEFAULT_LOG_LINES, LogRate
from ray_hyparview.wire.codec import DEFAULT_MAX_SIZE, MAX_PEER_ID_BYTES

__all__ = ["CurveConfig", "ZmqOptions", "ZmqTransport"]

log = logging.getLogger(__name__)

ZAP_DOMAIN: Final = "ray_hyparview"
_TAG_LEN: Final = 6
_HANDSHAKE_BACKSTOP_MS: Final = 1000
"""How much later than ``dial_timeout`` libzmq's own handshake timer ends a dial."""
_RELEASE_LINGER_MS: Final = 250
"""How long libzmq may go on delivering what a released link was given after its socket closed.
A link is released only once its handshake is done and every frame is handed over, so on a live
connection the frames are written at once; this bounds the case of a peer that stalls then."""
_LINK_EVENTS: Final = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HANDSHAKE_FAILED: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}
_ROUTER_EVENTS: Final[dict[int, str]] = {
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed_no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
}
_STALE_KEY: Final = frozenset(
    {LinkFailure.HANDSHAKE_FAILED, LinkFailure.DIAL_TIMEOUT, LinkFailure.DISCONNECTED}
)
_ID_CACHE_MAX: Final = 4096
# Plain ints: pyzmq's enum flags cost an enum construction per operation on the hot path.
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_NOBLOCK: Final = int(zmq.NOBLOCK)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere. Freed frames leave the C heap fragmented
    and glibc keeps it; trimming returns the free pages to the system."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    result: Callable[[int], int] = trim
    return result


_TRIM: Final = _malloc_trim()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True, slots=True, kw_only=True)
class ZmqOptions:
    """Socket and bookkeeping limits. Defaults suit a LAN or loopback cluster."""

    hwm: int = 1000
    """SNDHWM of each DEALER, in frames: what we queue for one peer."""

    recv_hwm: int = 16
    """RCVHWM of the ROUTER, in frames, per inbound connection. With ``max_msg_size`` it bounds
    the bytes libzmq queues for one connection: 16 x 64 KiB = 1 MiB by default."""

    max_msg_size: int = DEFAULT_MAX_SIZE
    """MAXMSGSIZE of the ROUTER: a larger inbound frame makes libzmq drop that connection."""

    max_connections: int = 128
    """Most inbound connections open at once, enforced by the ZAP handler at the handshake;
    more are refused and counted as ``zap.refused.connections``. With CURVE, keys bound to a
    node id are always admitted; in plain text every connection counts (who it is is not known
    before its first frame) unless the transport shares its context (then there is no cap)."""

    max_strangers: int = 256
    """Most distinct sender ids we hold no link to (and, with CURVE, that no key is bound to)
    whose frames are taken at once; frames of further ones are dropped unread and counted as
    ``recv.dropped.stranger_cap``."""

    stranger_timeout: float = 5.0
    """Seconds after its last frame that a stranger stops counting against ``max_strangers``."""

    log_lines: int = DEFAULT_LOG_LINES
    """Warnings of one kind written per ``log_interval``; the rest count as ``log.suppressed``."""

    log_interval: float = DEFAULT_LOG_INTERVAL
    """Seconds of one warning-rate interval."""

    trim_after_bytes: int = 64 << 20
    """Inbound bytes after which the C heap is trimmed (``malloc_trim``, glibc only) once a
    second while they keep coming, so that a flood's memory goes back to the system."""

    heartbeat_ivl: float = 0.5
    """Seconds between the kernel's TCP keepalive probes on an idle inbound connection, and
    its idle time before the first one; rounded up to whole seconds (the kernel's unit). No
    ZMTP heartbeats are sent (see "Failure detection" in the module's doc)."""

    heartbeat_timeout: float = 1.5
    """Seconds data sent on a link may stay unacknowledged before the kernel ends the
    connection (``TCP_MAXRT``, Linux's ``TCP_USER_TIMEOUT``) and the link is reported failed;
    on inbound connections, about how long unanswered keepalive probes last before it ends."""

    dial_timeout: float = 2.0
    """Seconds from dial to completed handshake before ``LinkFailed(DIAL_TIMEOUT)``."""

    reconnect_ivl: float = 0.1
    """libzmq's reconnect interval while dialling (a refused dial fails the link at once)."""

    pending_limit: int = 128
    """Frames held per link while it dials; more are dropped and counted."""

    max_cached_links: int = 32
    """Most links kept that were opened by ``send`` rather than ``open_link``."""

    idle_timeout: float = 30.0
    """Seconds an unpinned link may stay unused before it is closed."""

    max_batch: int = 256
    """Most inbound ZeroMQ messages read by one ``recv_batch``, and most frames in one batch
    frame, sent or received (:mod:`.batch`)."""

    turn_frames: int = 32
    """Most inbound frames handed to a receiver (:meth:`ZmqTransport.set_receiver`) in one loop
    turn. The rest wait a turn, after the frames this turn sent left as their batches, so a
    burst flows on to the next hop while this node reads the rest of it: a relay pipelines
    instead of reading a whole burst before it forwards any of it."""

    batch_bytes: int = DEFAULT_MAX_SIZE
    """Largest batch frame sent (:mod:`.batch`), at most the peers' ``max_msg_size``; 0 turns
    batching off (every frame is its own ZeroMQ message, as before batches existed)."""

    def __post_init__(self) -> None:
        for name in (
            "hwm",
            "recv_hwm",
            "max_msg_size",
            "max_connections",
            "max_strangers",
            "pending_limit",
            "max_cached_links",
            "max_batch",
            "turn_frames",
            "trim_after_bytes",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"ZmqOptions.{name} must be a positive int, got {value!r}")
        if type(self.batch_bytes) is not int or self.batch_bytes < 0:
            raise ValueError(
                f"ZmqOptions.batch_bytes must be an int >= 0, got {self.batch_bytes!r}"
            )
        if type(self.log_lines) is not int or self.log_lines < 0:
            raise ValueError(f"ZmqOptions.log_lines must be an int >= 0, got {self.log_lines!r}")
        for name in (
            "heartbeat_ivl",
            "heartbeat_timeout",
            "dial_timeout",
            "reconnect_ivl",
            "idle_timeout",
            "stranger_timeout",
            "log_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"ZmqOptions.{name} must be a positive number, got {value!r}")


def _z85_key(value: str | bytes, what: str) -> str:
    text = value.decode("ascii") if isinstance(value, bytes) else value
    try:
        raw = z85.decode(text.encode("ascii"))
    except (ValueError, UnicodeError, IndexError):
        raise ValueError(f"{what} is not a z85 CURVE key: {text!r}") from None
    if len(raw) != 32:
        raise ValueError(f"{what} must be a 40-character z85 key, got {text!r}")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class CurveConfig:
    """CURVE encryption and authentication for one node.

    Keys are 40-character z85 strings (or their ASCII bytes), as ``zmq.curve_keypair()`` makes.
    """

    public_key: str | bytes
    """This node's public key: the server key peers dial us with."""

    secret_key: str | bytes
    """This node's secret key."""

    node_keys: Mapping[NodeId, str | bytes] = field(default_factory=dict)
    """Node id -> that node's public key. A listed key may speak only as its node id, a listed
    id only with its key; dials to a listed id use its key as the server key."""

    allow_list: frozenset[str | bytes] = frozenset()
    """Extra client keys admitted without an id binding (e.g. one key shared by a cluster).
    Such a client may claim any id that is not bound in ``node_keys``. The same name, and
    meaning, as ``Security.allow_list`` (see :mod:`~ray_hyparview.transport.admission`)."""

    default_server_key: str | bytes | None = None
    """Server key for dialling ids absent from ``node_keys`` (e.g. a shared cluster key);
    without it such dials fail as ``UNREACHABLE``."""

    def __post_init__(self) -> None:
        _z85_key(self.public_key, "public_key")
        _z85_key(self.secret_key, "secret_key")
        for node_id, key in self.node_keys.items():
            _z85_key(key, f"node_keys[{node_id!r}]")
        for key in self.allow_list:
            _z85_key(key, "allow_list entry")
        if self.default_server_key is not None:
            _z85_key(self.default_server_key, "default_server_key")


class _Auth:
    """The allow-list and key->id binding derived from a :class:`CurveConfig`."""

    def __init__(
        self, curve: CurveConfig, counters: Counter[str], rate: LogRate, max_connections: int
    ) -> None:
        self.public = _z85_key(curve.public_key, "public_key").encode()
        self.secret = _z85_key(curve.secret_key, "secret_key").encode()
        self._allow_list = frozenset(_z85_key(k, "key") for k in curve.allow_list)
        self.rule = KeyRule({}, self._allow_list)
        """The admission rule over the current binding (:meth:`bind` replaces it)."""
        self.bind(curve.node_keys)
        self.refresh: Callable[[], Awaitable[None]] | None = None
        default = curve.default_server_key
        self.default_server = None if default is None else _z85_key(default, "key").encode()
        self._counters = counters
        self._rate = rate
        self._max_connections = max_connections
        self.connections: Callable[[], int] = lambda: 0
        """Inbound connections open now (the transport sets it)."""

    def bind(self, node_keys: Mapping[NodeId, str | bytes]) -> None:
        """Replace the id <-> key binding (and so the allow-list of bound keys)."""
        id_to_key = {i: _z85_key(k, "key") for i, k in node_keys.items()}
        try:
            self.rule = KeyRule(id_to_key, self._allow_list)
        except ValueError:
            raise ValueError("CurveConfig.node_keys binds one key to two node ids") from None

    def _admits(self, domain: str, text: str) -> bool:
        """Allowed, and within the connection cap: keys bound to a node id always pass; others
        only while fewer than ``max_connections`` inbound connections are open."""
        if domain != ZAP_DOMAIN or not self.rule.admits(text):
            return False
        # The asking connection is usually counted already (the monitor reported it accepted),
        # hence ">": at most one more slips in when the handshake overtakes that report.
        if not self.rule.is_bound(text) and self.connections() > self._max_connections:
            self._counters["zap.refused.connections"] += 1
            self._rate.warning(
                log,
                "refused a connection of CURVE key %s: %d inbound connections open",
                text,
                self.connections(),
            )
            return False
        return True

    def callback(self, domain: str, key: bytes) -> bool | Awaitable[bool]:
        """ZAP allow-list: called by the authenticator with the client's z85 key, which the
        client has proved it holds. With a ``refresh`` an unknown key waits for one
        (rate-limited) refresh of the binding."""
        text = key.decode("ascii", "replace")
        if self._admits(domain, text):
            self._counters["zap.allowed"] += 1
            return True
        if self.refresh is not None and domain == ZAP_DOMAIN and not self.rule.is_bound(text):
            return self._after_refresh(domain, text)
        return self._deny(text)

    async def _after_refresh(self, domain: str, text: str) -> bool:
        assert self.refresh is not None
        try:
            await self.refresh()
        except Exception as exc:  # the source failed: refuse, the client will try again
            self._counters["zap.refresh_failed"] += 1
            log.debug("refreshing the CURVE keys failed: %r", exc)
        if self._admits(domain, text):
            self._counters["zap.allowed"] += 1
            return True
        return self._deny(text)

    def _deny(self, text: str) -> bool:
        self._counters["zap.denied"] += 1
        self._rate.warning(log, "refused CURVE client key %s", text)
        return False

    def server_key_for(self, peer_id: NodeId) -> bytes | None:
        key = self.rule.node_keys.get(peer_id)
        return key.encode() if key is not None else self.default_server

    def may_claim(self, node_id: NodeId, user_id: str | None) -> bool:
        """Whether frames of the CURVE key ``user_id`` may claim ``node_id``
        (:meth:`KeyRule.may_claim`)."""
        return self.rule.may_claim(node_id, user_id)


class _Gate(AsyncioAuthenticator):
    """The ZAP handler: CURVE keys go through :class:`_Auth`'s allow-list callback (configured
    by the caller); plain-text (NULL) connections are admitted while ``admit_null()`` says so.
    pyzmq's authenticator decides NULL by IP address only, hence the override."""

    def __init__(self, context: zmq.asyncio.Context, admit_null: Callable[[], bool]) -> None:
        super().__init__(context=context)
        self._admit_null = admit_null

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6 and msg[0] == b"1.0" and msg[5] == b"NULL":
            if self._admit_null():
                self._send_zap_reply(msg[1], b"200", b"OK")
            else:
                self._send_zap_reply(msg[1], b"400", b"too many connections")
            return
        await super().handle_zap_message(msg)


class _Link:
    """One outbound DEALER, its monitor, and its dial state."""

    __slots__ = (
        "last_used",
        "mon",
        "outbox",
        "outbox_bytes",
        "peer",
        "pending",
        "pinned",
        "release",
        "shadow",
        "sock",
        "task",
        "turn",
        "up",
    )

    def __init__(self, peer: Peer, sock: zmq.asyncio.Socket, mon: zmq.asyncio.Socket) -> None:
        self.peer = peer
        self.sock = sock
        self.shadow: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self.mon = mon
        self.up = False
        self.pinned = False
        self.release = False
        """Close once the dial is done and the queued frames are handed to libzmq."""
        self.pending: deque[bytes] = deque()
        self.last_used = 0.0
        self.task: asyncio.Task[None] | None = None
        self.turn = False
        """A frame went to this link in the current loop turn: further ones join ``outbox``."""
        self.outbox: list[bytes] = []
        """Frames waiting for the end of the turn, to leave as one batch frame."""
        self.outbox_bytes = 0
        """Their size in a batch (lengths plus prefixes)."""

    def drop_held(self) -> int:
        """Forget the frames waiting for a dial or for the turn's end; how many there were."""
        held = len(self.pending) + len(self.outbox)
        self.pending.clear()
        self.outbox = []
        self.outbox_bytes = 0
        return held


class ZmqTransport:
    """The production transport; see the module docstring and :mod:`.base` for the contract."""

    def __init__(
        self,
        node_id: NodeId,
        bind: str = "tcp://127.0.0.1:0",
        *,
        options: ZmqOptions | None = None,
        curve: CurveConfig | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        """``context``: share one ZeroMQ context (one I/O thread) among the plain-text
        transports of a process; the caller terminates it. A CURVE transport needs a context
        of its own, because the ZAP handler is bound once per context."""
        raw_id = node_id.encode("utf-8") if isinstance(node_id, str) else b""
        if not raw_id or not node_id.isprintable() or len(raw_id) > MAX_PEER_ID_BYTES:
            raise ValueError(
                f"node id must be a printable string of 1..{MAX_PEER_ID_BYTES} UTF-8 bytes,"
                f" got {node_id!r}"
            )
        if not bind.startswith(SCHEMES):
            raise ValueError(f"bind endpoint must start with one of {SCHEMES}, got {bind!r}")
        self._node_id = node_id
        self._raw_id = raw_id
        self._bind_addr = bind
        self._opts = options or ZmqOptions()
        self._counters: Counter[str] = Counter()
        self._rate = LogRate(self._opts.log_lines, self._opts.log_interval, counters=self._counters)
        self._auth = (
            None
            if curve is None
            else _Auth(curve, self._counters, self._rate, self._opts.max_connections)
        )
        self._endpoint = ""
        if context is not None and curve is not None:
            raise ValueError("a CURVE transport needs its own context (one ZAP handler each)")
        self._shared_ctx = context
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._router_shadow: zmq.Socket[bytes] | None = None
        self._router_mon: zmq.asyncio.Socket | None = None
        self._authenticator: AsyncioAuthenticator | None = None
        self._links: OrderedDict[NodeId, _Link] = OrderedDict()
        self._events = LinkEventBox()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open_sockets: set[zmq.Socket[Any]] = set()
        self._ids: dict[bytes, NodeId] = {}
        self._strangers: OrderedDict[NodeId, float] = OrderedDict()
        """Sender ids we hold no link to, oldest first, with the time of their last frame."""
        self._inbound: set[int] = set()
        """File descriptors of the ROUTER's open connections (accepted, not yet dropped),
        handshakes in progress included, so that a burst cannot slip past the cap."""
        self._trimmed_at = 0
        self._quarantine = Quarantine()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._router_fd: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        """The future ``recv_batch`` waits on; the router's reader callback completes it."""
        self._carry: list[tuple[NodeId, bytes]] = []
        """Frames of a batch frame that did not fit in the last batch read (fewer than
        ``max_batch``): the next read returns them first."""
        self._receiver: Receiver | None = None
        """Set by :meth:`set_receiver`: takes each inbound batch from the reader callback."""
        self._touched: list[_Link] = []
        """Links sent to in this loop turn; ``_end_turn`` flushes their outboxes."""
        self._turn_scheduled = False
        self._started = False
        self._closed = False
        self._linger_ms = 0

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
        return self._auth is not None

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun."""
        return self._closed

    @property
    def open_sockets(self) -> int:
        """Sockets this transport holds open (ROUTER, DEALERs, monitors): for leak tests."""
        return sum(1 for s in self._open_sockets if not s.closed)

    def set_node_keys(
        self,
        node_keys: Mapping[NodeId, str | bytes],
        *,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Replace ``CurveConfig.node_keys`` of a running CURVE transport, for a key directory
        that changes (the Ray plugin's GCS): keys no longer listed are refused from now on.
        ``refresh``, if given, is awaited (it must be bounded and rate-limited) when an unknown
        key knocks or an id without a key is dialled, before the binding is looked at again."""
        if self._auth is None:
            raise ValueError("set_node_keys needs a CURVE transport")
        self._auth.bind(node_keys)
        if refresh is not None:
            self._auth.refresh = refresh

    async def start(self) -> str:
        if self._started:
            raise RuntimeError("transport already started")
        if self._closed:
            raise TransportClosed("transport closed")
        self._started = True
        opts = self._opts
        # Own context per transport unless one is shared: the ZAP handler is per context, and
        # tests run several agents, each with its own key set, in one process.
        self._ctx = ctx = self._shared_ctx or zmq.asyncio.Context()
        router = self._socket(zmq.ROUTER)
        router.setsockopt(zmq.RCVHWM, opts.recv_hwm)
        router.setsockopt(zmq.MAXMSGSIZE, opts.max_msg_size)
        router.setsockopt(zmq.ROUTER_HANDOVER, 0)
        router.setsockopt(zmq.HANDSHAKE_IVL, _ms(opts.dial_timeout))
        # No ZMTP heartbeats (see "Failure detection" above); the kernel's TCP keepalive ends
        # an inbound connection whose host vanished.
        self._tcp_keepalive(router)
        if self._auth is not None:
            self._auth.connections = lambda: len(self._inbound)
            self._authenticator = _Gate(ctx, self._admit_plain)
            self._authenticator.start()
            self._authenticator.configure_curve_callback(
                domain=ZAP_DOMAIN, credentials_provider=self._auth
            )
            router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, self._auth.secret)
            router.setsockopt(zmq.CURVE_PUBLICKEY, self._auth.public)
        else:
            if self._shared_ctx is None:
                # Plain text: the same ZAP handler caps connections (NULL mechanism). A shared
                # context (tests, benchmarks) may hold one ZAP handler only: no cap there.
                self._authenticator = _Gate(ctx, self._admit_plain)
                self._authenticator.start()
                router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            if not is_loopback_endpoint(self._bind_addr):
                log.warning(
                    "binding %s in plain text: any host that reaches it can join and read the"
                    " overlay; configure CURVE keys for anything but loopback",
                    self._bind_addr,
                )
        self._router_mon = router.get_monitor_socket(sum(_ROUTER_EVENTS))
        self._open_sockets.add(self._router_mon)
        bind = self._bind_addr
        if bind.startswith("tcp://") and bind.endswith(":0"):
            bind = bind[:-2] + ":*"
        router.bind(bind)
        self._router = router
        self._router_shadow = zmq.Socket.shadow(router.underlying)
        self._endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        # Inbound frames are read from the loop's reader callback on the ROUTER's descriptor,
        # not through zmq.asyncio (a future, flag arithmetic and a loop turn per message).
        self._loop = asyncio.get_running_loop()
        self._router_fd = int(router.getsockopt(zmq.FD))
        self._loop.add_reader(self._router_fd, self._on_readable)
        self._spawn(self._watch_router(self._router_mon))
        self._spawn(self._expire_idle())
        self._spawn(self._maintain())
        log.debug("%s listening on %s", self._node_id, self._endpoint)
        return self._endpoint

    def send(self, peer: Peer, data: bytes) -> bool:
        if self._closed or self._ctx is None:
            self._counters["send.dropped.closed"] += 1
            return False
        link = self._links.get(peer.id)
        if link is not None and peer.endpoint and link.peer.endpoint != peer.endpoint:
            link = self._redial(link, peer)  # the node restarted elsewhere
            if link is None:
                self._counters["send.dropped.unreachable"] += 1
                return False
        elif link is None:
            link = self._dial(peer)
            if link is None:
                self._counters["send.dropped.unreachable"] += 1
                return False
        else:
            self._links.move_to_end(peer.id)
        link.last_used = self._now()
        if not link.up:
            if len(link.pending) >= self._opts.pending_limit:
                self._counters["send.dropped.pending_full"] += 1
                return False
            link.pending.append(data)
            return True
        if link.turn:
            return self._queue(link, data)
        if self._opts.batch_bytes:
            # The first frame of a turn leaves at once (no latency added to a lone send);
            # the ones after it in the same turn leave together at its end.
            link.turn = True
            self._touched.append(link)
            if not self._turn_scheduled:
                self._turn_scheduled = True
                asyncio.get_running_loop().call_soon(self._end_turn)
        return self._send_now(link, data, 1, len(data))

    def _send_now(self, link: _Link, data: bytes, frames: int, size: int) -> bool:
        """Hand one ZeroMQ message carrying ``frames`` frames of ``size`` bytes to libzmq."""
        try:
            link.shadow.send(data, _NOBLOCK)
        except zmq.Again:
            self._counters["send.dropped.hwm"] += frames
            return False
        except zmq.ZMQError as exc:
            self._counters["send.dropped.error"] += frames
            log.debug("send to %s failed: %s", link.peer, exc)
            return False
        self._counters["sent.msgs"] += frames
        self._counters["sent.bytes"] += size
        return True

    def _queue(self, link: _Link, data: bytes) -> bool:
        """Add a frame to the link's batch of this turn, keeping the order of frames and
        every batch within ``batch_bytes`` and ``max_batch`` frames."""
        cost = len(data) + batches.ENTRY_OVERHEAD
        limit = self._opts.batch_bytes - len(batches.BATCH_HEADER)
        if link.outbox and (
            link.outbox_bytes + cost > limit or len(link.outbox) >= self._opts.max_batch
        ):
            self._flush_outbox(link)
        if cost > limit:  # too large to share a batch: it goes alone, after those before it
            return self._send_now(link, data, 1, len(data))
        link.outbox.append(data)
        link.outbox_bytes += cost
        return True

    def _flush_outbox(self, link: _Link) -> None:
        frames = link.outbox
        if not frames:
            return
        link.outbox = []
        size = link.outbox_bytes - batches.ENTRY_OVERHEAD * len(frames)
        link.outbox_bytes = 0
        if len(frames) == 1:
            self._send_now(link, frames[0], 1, size)
        elif self._send_now(link, batches.pack(frames), len(frames), size):
            self._counters["sent.batches"] += 1

    def _end_turn(self) -> None:
        """End of the loop turn: send each link's queued frames as one batch frame."""
        self._turn_scheduled = False
        touched, self._touched = self._touched, []
        for link in touched:
            link.turn = False
            if link.outbox and self._links.get(link.peer.id) is link:
                self._flush_outbox(link)

    def open_link(self, peer: Peer) -> None:
        if self._closed or self._ctx is None:
            return
        link = self._links.get(peer.id)
        if link is not None and peer.endpoint and link.peer.endpoint != peer.endpoint:
            link = self._redial(link, peer)
        elif link is None:
            self._events.discard(peer.id)
            link = self._dial(peer)
        if link is not None:
            link.pinned = True
            link.release = False

    def close_link(self, peer_id: NodeId) -> None:
        link = self._links.pop(peer_id, None)
        if link is not None:
            self._stop_link(link)

    def release_link(self, peer_id: NodeId) -> None:
        link = self._links.get(peer_id)
        if link is None:
            return
        link.pinned = False
        link.release = True
        if link.up:  # else _run_link ends it once the dial has handed its frames over
            del self._links[peer_id]
            self._flush_outbox(link)
            self._counters["link.released"] += 1
            self._stop_link(link)

    def quarantine(self, peer_id: NodeId, seconds: float) -> None:
        self._quarantine.add(peer_id, self._now() + seconds)

    def linked(self) -> frozenset[NodeId]:
        return frozenset(self._links)

    def set_receiver(self, receiver: Receiver | None) -> bool:
        """Hand every inbound batch to ``receiver`` from the ROUTER's reader callback, in
        the loop turn the descriptor fires, instead of waking a task that waits in
        :meth:`recv_batch` (which must not be used meanwhile). Saves the task's wake-up, a
        loop turn, on every hop. ``receiver`` must not raise. Returns True: this transport
        supports it (see :func:`attach_receiver`)."""
        self._receiver = receiver
        if receiver is not None and self._loop is not None and not self._closed:
            self._loop.call_soon(self._on_readable)  # what arrived before now
        return True

    def _drain(self, limit: int) -> tuple[list[tuple[NodeId, bytes]], bool]:
        """Up to ``limit`` frames that wait, without awaiting; and whether more may wait."""
        shadow = self._router_shadow
        assert shadow is not None
        copy = self._auth is None
        batch, self._carry = self._carry, []
        # Ask EVENTS first: a failed NOBLOCK recv raises zmq.Again, and building that
        # exception costs several times the check. Reading EVENTS also re-arms the ROUTER's
        # edge-triggered descriptor, so that the reader callback fires again when the next
        # message arrives.
        while len(batch) < limit:
            if not cast(int, shadow.get(_EVENTS)) & _POLLIN:
                return batch, False
            try:
                frames: list[Any] = shadow.recv_multipart(_NOBLOCK, copy=copy)
            except zmq.Again:
                return batch, False
            self._accept(frames, batch)
        if len(batch) > limit:  # the last batch frame overran: the rest comes next time
            self._carry = batch[limit:]
            return batch[:limit], True
        return batch, True

    async def recv_batch(self) -> list[tuple[NodeId, bytes]]:
        if self._closed or self._router_shadow is None or self._loop is None:
            raise TransportClosed("transport closed")
        while True:
            batch, _ = self._drain(self._opts.max_batch)
            if batch:
                return batch
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
            if self._closed:
                raise TransportClosed("transport closed")

    def _on_readable(self) -> None:
        """The ROUTER's descriptor fired: with a receiver, drain and hand it the batch now;
        without one, wake ``recv_batch`` if a message waits. Either way ``EVENTS`` is read,
        which clears the signal, so the level-triggered reader does not spin."""
        shadow = self._router_shadow
        if shadow is None or shadow.closed or self._closed:
            return
        receiver = self._receiver
        if receiver is not None:
            batch, more = self._drain(min(self._opts.max_batch, self._opts.turn_frames))
            if batch:
                receiver(batch)
            if more and self._loop is not None:
                # A full batch: the rest waits a turn (the descriptor may not fire again for
                # what is already queued), so that timers and other sockets get theirs. It is
                # scheduled after the receiver ran: what the receiver sent is flushed at the
                # end of this turn (_end_turn, scheduled by its first send) before the rest
                # is read, and the next hop starts on it meanwhile.
                self._loop.call_soon(self._on_readable)
            return
        if cast(int, shadow.get(_EVENTS)) & _POLLIN:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def link_events(self) -> list[LinkFailed]:
        return await self._events.get()

    async def aclose(self, *, linger: float = 0.0) -> None:
        if self._closed:
            return
        if self._turn_scheduled:
            self._end_turn()  # frames queued this turn (goodbyes) leave before the close
        self._closed = True
        self._linger_ms = max(0, round(linger * 1000))
        self._events.close()
        if self._loop is not None and self._router_fd is not None:
            self._loop.remove_reader(self._router_fd)
            self._router_fd = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # recv_batch wakes and raises TransportClosed
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            self._stop_link(link)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._router is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._router.disable_monitor()
        for sock in list(self._open_sockets):
            self._close_sockets(sock)
        self._open_sockets.clear()
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
            await asyncio.sleep(0)  # let the authenticator's cancelled task finish
        if self._ctx is not None and self._shared_ctx is None:
            if self._linger_ms:
                # term() blocks until lingering frames are sent or ``linger`` has passed.
                await asyncio.to_thread(self._ctx.term)
            else:
                self._ctx.term()

    # -- outbound links ----------------------------------------------------------------------

    def _dial(self, peer: Peer) -> _Link | None:
        """Create, monitor and connect a DEALER to ``peer``; report UNREACHABLE on failure."""
        endpoint = peer.endpoint
        if not endpoint.startswith(SCHEMES):
            self._report(LinkFailed(peer.id, LinkFailure.UNREACHABLE, f"bad endpoint {endpoint!r}"))
            return None
        server_key = None
        if self._auth is not None:
            server_key = self._auth.server_key_for(peer.id)
            if server_key is None and self._auth.refresh is None:
                self._report(LinkFailed(peer.id, LinkFailure.UNREACHABLE, "no CURVE key"))
                return None
        opts = self._opts
        try:
            sock = self._socket(zmq.DEALER)
        except zmq.ZMQError as exc:
            # Out of sockets (EMFILE, or libzmq's ZMQ_MAX_SOCKETS): a local failure of this
            # one dial, reported like any other, never an exception out of send().
            self._counters["dial.no_socket"] += 1
            self._report(LinkFailed(peer.id, LinkFailure.UNREACHABLE, f"no socket: {exc}"))
            return None
        sock.setsockopt(zmq.ROUTING_ID, self._raw_id + b"\0" + os.urandom(_TAG_LEN))
        sock.setsockopt(zmq.SNDHWM, opts.hwm)
        sock.setsockopt(zmq.RCVHWM, 16)  # peers never send on this socket
        sock.setsockopt(zmq.MAXMSGSIZE, 1024)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, _ms(opts.reconnect_ivl))
        sock.setsockopt(zmq.CONNECT_TIMEOUT, _ms(opts.dial_timeout))
        # The link's own task times the dial (DIAL_TIMEOUT); libzmq's handshake timer is only
        # a backstop. With both at dial_timeout they raced: libzmq's starts when TCP connects,
        # the task's a loop turn later, and a late turn made a silent peer HANDSHAKE_FAILED.
        sock.setsockopt(zmq.HANDSHAKE_IVL, _ms(opts.dial_timeout) + _HANDSHAKE_BACKSTOP_MS)
        # Data unacknowledged this long ends the link: a vanished or partitioned peer is
        # found while anything is sent to it (the agent's keepalives see to that).
        sock.setsockopt(zmq.TCP_MAXRT, _ms(opts.heartbeat_timeout))
        if self._auth is not None:
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self._auth.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._auth.secret)
            if server_key is not None:
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        try:
            mon = sock.get_monitor_socket(_LINK_EVENTS)
        except zmq.ZMQError as exc:
            self._counters["dial.no_socket"] += 1
            self._close_sockets(sock)
            self._report(LinkFailed(peer.id, LinkFailure.UNREACHABLE, f"no socket: {exc}"))
            return None
        self._open_sockets.add(mon)
        keyless = self._auth is not None and server_key is None
        try:
            if not keyless:  # else connected once the key is known (_find_key)
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            self._close_sockets(sock, mon)
            self._report(LinkFailed(peer.id, LinkFailure.UNREACHABLE, str(exc)))
            return None
        link = _Link(peer, sock, mon)
        self._links[peer.id] = link
        self._strangers.pop(peer.id, None)  # linked now: its slot is free for another
        self._counters["link.opened"] += 1
        link.task = self._spawn(self._run_link(link, find_key=keyless))
        link.task.add_done_callback(lambda _t: self._release(link))
        self._evict_cached()
        return link

    def _redial(self, link: _Link, peer: Peer) -> _Link | None:
        """Replace a link whose peer now names another endpoint (the node restarted elsewhere),
        keeping it pinned if it was."""
        del self._links[link.peer.id]
        self._stop_link(link)
        self._counters["link.redialled"] += 1
        log.debug("%s moved from %s to %s", peer.id, link.peer.endpoint, peer.endpoint)
        new = self._dial(peer)
        if new is not None:
            new.pinned = link.pinned
        return new

    async def _run_link(self, link: _Link, *, find_key: bool = False) -> None:
        failure = await self._find_key(link) if find_key else None
        if failure is None:
            failure = await self._dial_phase(link)
            refresh = self._auth.refresh if self._auth is not None else None
            if failure is not None and failure[0] in _STALE_KEY and refresh is not None:
                # The peer may have a new key (a replaced node): read the binding again (the
                # source bounds how often), so that the next dial uses it.
                self._spawn(self._refresh_keys(refresh))
        if failure is None:
            if link.release:  # released while it dialled; its frames are handed over now
                if self._links.get(link.peer.id) is link:
                    del self._links[link.peer.id]  # a later send dials afresh
                self._counters["link.released"] += 1
                return
            failure = await self._watch_phase(link)
        cause, detail = failure
        if self._links.get(link.peer.id) is link:
            del self._links[link.peer.id]
            self._report(LinkFailed(link.peer.id, cause, detail))

    async def _refresh_keys(self, refresh: Callable[[], Awaitable[None]]) -> None:
        try:
            await refresh()
        except Exception as exc:
            log.debug("refreshing the CURVE keys failed: %r", exc)

    async def _find_key(self, link: _Link) -> tuple[LinkFailure, str] | None:
        """A peer whose key the binding lacks (it may have just been published): one refresh
        of the binding, bounded by the dial timeout, then connect or give up."""
        assert self._auth is not None
        assert self._auth.refresh is not None
        try:
            async with asyncio.timeout(self._opts.dial_timeout):
                await self._auth.refresh()
        except Exception as exc:  # the source failed or timed out: this dial fails
            log.debug("refreshing the CURVE keys failed: %r", exc)
        key = self._auth.server_key_for(link.peer.id)
        if key is None:
            self._counters["dial.no_key"] += 1
            return LinkFailure.UNREACHABLE, "no CURVE key"
        try:
            link.sock.setsockopt(zmq.CURVE_SERVERKEY, key)
            link.sock.connect(link.peer.endpoint)
        except zmq.ZMQError as exc:
            return LinkFailure.UNREACHABLE, str(exc)
        return None

    async def _dial_phase(self, link: _Link) -> tuple[LinkFailure, str] | None:
        try:
            async with asyncio.timeout(self._opts.dial_timeout):
                while True:
                    event = await self._next_event(link.mon)
                    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        break
                    if event == zmq.EVENT_CONNECT_RETRIED:
                        return LinkFailure.REFUSED, link.peer.endpoint
                    if event == zmq.EVENT_DISCONNECTED:
                        return LinkFailure.DISCONNECTED, "during handshake"
                    if event in _HANDSHAKE_FAILED:
                        return LinkFailure.HANDSHAKE_FAILED, _HANDSHAKE_FAILED[event]
                # IMMEDIATE=1: the pipe may attach just after the handshake event.
                await self._flush(link)
        except TimeoutError:
            return LinkFailure.DIAL_TIMEOUT, f"{self._opts.dial_timeout}s"
        return None

    async def _flush(self, link: _Link) -> None:
        sent = 0
        while link.pending:
            try:
                link.shadow.send(link.pending[0], zmq.NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(0.001)  # bounded by the dial timeout around us
                continue
            data = link.pending.popleft()
            self._counters["sent.msgs"] += 1
            self._counters["sent.bytes"] += len(data)
            sent += 1
            if sent % 64 == 0:
                await asyncio.sleep(0)  # sends do not yield while writable; let timers run
        link.up = True

    async def _watch_phase(self, link: _Link) -> tuple[LinkFailure, str]:
        while True:
            event = await self._next_event(link.mon)
            if event == zmq.EVENT_DISCONNECTED:
                return LinkFailure.DISCONNECTED, "connection dropped"
            if event in _HANDSHAKE_FAILED:
                return LinkFailure.HANDSHAKE_FAILED, _HANDSHAKE_FAILED[event]

    @staticmethod
    async def _next_event(mon: zmq.asyncio.Socket) -> int:
        msg = await mon.recv_multipart()
        return int(parse_monitor_message(msg)["event"])

    def _stop_link(self, link: _Link) -> None:
        if held := link.drop_held():
            self._counters["send.dropped.link_closed"] += held
        if link.task is not None:
            link.task.cancel()

    def _release(self, link: _Link) -> None:
        """Close a link's sockets once its task is done, however it ended (even if it was
        cancelled before it first ran, when a ``finally`` would never execute)."""
        if self._links.get(link.peer.id) is link:
            del self._links[link.peer.id]
        if held := link.drop_held():
            self._counters["send.dropped.link_failed"] += held
        with contextlib.suppress(zmq.ZMQError):
            link.sock.disable_monitor()
        if link.release and link.up:
            # Its frames are all with libzmq: give them a bounded time to leave. (A context
            # ends at once when they have; only a peer that stalls right then delays it.)
            self._close_sockets(link.sock, link.mon, linger_ms=_RELEASE_LINGER_MS)
        else:
            self._close_sockets(link.sock, link.mon)

    def _evict_cached(self) -> None:
        cached = [link for link in self._links.values() if not link.pinned]
        for link in cached[: max(0, len(cached) - self._opts.max_cached_links)]:
            del self._links[link.peer.id]
            self._stop_link(link)
            self._counters["link.evicted"] += 1

    async def _expire_idle(self) -> None:
        period = max(0.05, self._opts.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            cutoff = self._now() - self._opts.idle_timeout
            for link in [lk for lk in self._links.values() if not lk.pinned]:
                if link.last_used < cutoff:
                    del self._links[link.peer.id]
                    self._stop_link(link)
                    self._counters["link.expired"] += 1

    # -- inbound -----------------------------------------------------------------------------

    def _accept(self, frames: list[Any], batch: list[tuple[NodeId, bytes]]) -> None:
        if len(frames) != 2:
            self._counters["recv.dropped.multipart"] += 1
            return
        rid_frame, data_frame = frames
        rid: bytes = rid_frame if type(rid_frame) is bytes else rid_frame.bytes
        node_id = self._ids.get(rid)
        if node_id is None:
            node_id = self._parse_routing_id(rid)
            if node_id is None:
                self._counters["recv.dropped.bad_id"] += 1
                return
        if self._quarantine and self._quarantine.holds(node_id, self._now()):
            self._counters["recv.dropped.quarantined"] += 1
            return
        if node_id not in self._links and not self._admit_stranger(node_id):
            self._counters["recv.dropped.stranger_cap"] += 1
            self._counters["recv.dropped.bytes"] += len(data_frame)
            return
        if self._auth is None:
            data: bytes = data_frame
        else:
            user_id = data_frame.get("User-Id")
            if not self._auth.may_claim(node_id, user_id):
                self._counters["recv.dropped.impersonation"] += 1
                self._counters["recv.dropped.bytes"] += len(data_frame)
                self._rate.warning(
                    log, "dropped frames of CURVE key %s claiming id %r", user_id, node_id
                )
                return
            data = data_frame.bytes
        if batches.is_batch(data):
            inner = batches.unpack(data, self._opts.max_batch)
            if inner is None:
                self._counters["recv.dropped.bad_batch"] += 1
                self._counters["recv.dropped.bytes"] += len(data)
                self._rate.warning(log, "dropped a malformed batch frame from %r", node_id)
                return
            self._counters["recv.batches"] += 1
            self._counters["recv.msgs"] += len(inner)
            self._counters["recv.bytes"] += len(data) - len(batches.BATCH_HEADER)
            batch.extend((node_id, frame) for frame in inner)
            return
        self._counters["recv.msgs"] += 1
        self._counters["recv.bytes"] += len(data)
        batch.append((node_id, data))

    def _admit_plain(self) -> bool:
        """ZAP for a plain-text connection: the id it will claim is not known yet, so every
        connection counts, and more than ``max_connections`` open are refused."""
        if len(self._inbound) <= self._opts.max_connections:
            return True
        self._counters["zap.refused.connections"] += 1
        self._rate.warning(
            log, "refused a plain-text connection: %d inbound connections open", len(self._inbound)
        )
        return False

    def _admit_stranger(self, node_id: NodeId) -> bool:
        """Take frames from an id we hold no link to while fewer than ``max_strangers`` such
        ids spoke within ``stranger_timeout``. With CURVE, ids bound to a key are no
        strangers (their frames are checked against the key just after)."""
        if self._auth is not None and node_id in self._auth.rule.node_keys:
            return True
        strangers = self._strangers
        now = self._now()
        if node_id in strangers:
            strangers[node_id] = now
            strangers.move_to_end(node_id)
            return True
        cutoff = now - self._opts.stranger_timeout
        while strangers:
            oldest, seen = next(iter(strangers.items()))
            if seen >= cutoff:
                break
            del strangers[oldest]
        if len(strangers) >= self._opts.max_strangers:
            return False
        strangers[node_id] = now
        return True

    async def _maintain(self) -> None:
        """Once a second: hand a flood's freed memory back to the system."""
        while True:
            await asyncio.sleep(1.0)
            received = self._counters["recv.bytes"] + self._counters["recv.dropped.bytes"]
            if _TRIM is not None and received - self._trimmed_at >= self._opts.trim_after_bytes:
                self._trimmed_at = received
                self._counters["malloc_trim"] += 1
                _TRIM(0)

    def _parse_routing_id(self, rid: bytes) -> NodeId | None:
        """``node_id + b"\\0" + tag`` -> node id; ``None`` for anything else (e.g. the
        zero-led ids libzmq invents for peers that set none)."""
        sep = len(rid) - _TAG_LEN - 1
        if sep < 1 or rid[sep] != 0 or rid[0] == 0:
            return None
        try:
            node_id = rid[:sep].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not node_id.isprintable():
            return None
        if len(self._ids) >= _ID_CACHE_MAX:
            self._ids.clear()
        self._ids[rid] = node_id
        return node_id

    async def _watch_router(self, mon: zmq.asyncio.Socket) -> None:
        """Count the ROUTER's connection events (refused handshakes show up here) and track
        which connections are open, by file descriptor, for the connection cap."""
        while True:
            msg = await mon.recv_multipart()
            parsed = parse_monitor_message(msg)
            event = int(parsed["event"])
            name = _ROUTER_EVENTS.get(event)
            if name is not None:
                self._counters[f"router.{name}"] += 1
            # ACCEPTED and DISCONNECTED carry the connection's fd; libzmq reports every
            # accepted connection's end as DISCONNECTED, refused handshakes included.
            if event == zmq.EVENT_ACCEPTED:
                self._inbound.add(parsed["value"])
            elif event == zmq.EVENT_DISCONNECTED:
                self._inbound.discard(parsed["value"])

    # -- helpers -----------------------------------------------------------------------------

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self._open_sockets.add(sock)
        return sock

    def _tcp_keepalive(self, sock: zmq.asyncio.Socket) -> None:
        """Kernel keepalive probes every ``heartbeat_ivl`` (whole seconds, at least 1) after as
        long an idle time, and the connection ends after as many unanswered probes as fit in
        ``heartbeat_timeout``."""
        opts = self._opts
        interval = max(1, math.ceil(opts.heartbeat_ivl))
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, interval)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, interval)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, max(1, math.ceil(opts.heartbeat_timeout / interval)))

    def _close_sockets(self, *socks: zmq.Socket[Any], linger_ms: int = 0) -> None:
        for sock in socks:
            # Only DEALERs linger: of a closing transport, so goodbyes can still leave, and of
            # a released link, so what it was given can.
            linger = max(self._linger_ms, linger_ms) if sock.type == zmq.DEALER else 0
            sock.close(linger=linger)
            self._open_sockets.discard(sock)

    def _report(self, event: LinkFailed) -> None:
        if self._closed:
            return
        self._counters[f"link.failed.{event.cause.value}"] += 1
        log.debug(
            "%s: link to %s failed: %s %s",
            self._node_id,
            event.peer_id,
            event.cause.value,
            event.detail,
        )
        self._events.put(event)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("transport task failed", exc_info=task.exception())

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
