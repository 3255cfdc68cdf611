"""The direct local path between mesh actors and their node's agent.

Theory of operation
===================

Without it every mesh message crosses two same-node Ray actor calls: the sending actor's call
into its agent actor, and the receiving actor's long poll. On the loaded 2-core machine of
the benchmarks a plain Ray actor call takes 1.5-3 ms. So the agent (:class:`LocalServer`, in
the node actor) listens on one stream socket on the node and each joined actor
(:class:`LocalLink`) keeps one connection to it, framed by
:mod:`ray_hyparview.transport.localstream` and read in the event loop's reader callback on
both ends:

* the endpoint is ``ipc://`` (a Unix socket) in the Ray session's ``sockets`` directory (mode
  0600), or ``tcp://127.0.0.1`` where a Unix socket path would be too long;
* **why not ZeroMQ** (which carries everything between agents, and carried this path until
  2026-12-05): libzmq does a socket's I/O on an I/O thread of its own, so each local message
  woke three threads instead of one; a bare echo between two asyncio processes took a median
  114-139 us over ZeroMQ ``ipc://`` and 14-33 us over a Unix stream socket on the benchmarks'
  machine, and a mesh send crosses this path twice on its critical path (``benchmarks/README.md``,
  "The local path off ZeroMQ", has the end-to-end figures). Nothing of ZeroMQ's
  was used here that a local stream lacks: no reconnection to a path whose agent is gone (its
  replacement listens on a new path), no CURVE (the token and the socket's mode guard it), no
  heartbeats (the link is probed with a ping);
* **authentication**: at join (still a Ray call) the agent hands the actor a random 32-byte
  token for its name, over Ray's own channel. Every message on the local socket starts with it;
  a message whose token the agent did not hand out is dropped and counted
  (``local.refused``), and its sender is told so only when it said hello. The token names the
  member: a local process without one cannot inject, and one member cannot speak for another;
* sends, requests, replies, publications, subscriptions and ACKs go as frames; the agent
  answers each operation with one frame when the delivery core has an outcome;
* deliveries are **pushed**: when the delivery core puts an item in a member's inbox the agent
  sends it at once (no polling). Pushed items are *lent*, exactly as a poll lends them: they
  stay in the inbox until the actor acknowledges their seq on the same socket, which it does
  after :meth:`ray_hyparview.mesh.Mesh.inbox` has yielded them (every 64 items, 20 ms after it
  caught up, and at once when its loop is left). At most ``window`` pushed items
  wait for an ACK per member (a consumer that stops reading stops the pushes; its inbox then
  fills and senders get ``inbox_full``). A new hello (a new link for the name) pushes every
  unacknowledged item again, and the actor drops the seqs it has already consumed: no item is
  lost when a link breaks and none is yielded twice;
* **batching**: the first frame of a loop turn leaves at once (a lone operation waits for
  nothing); the frames queued after it in the same turn leave together at the turn's end as
  one message (on both sides), so a burst costs one system call, not one per message;
* **backpressure**: a link holds at most ``window`` operations without an answer; the next
  caller waits for a slot rather than failing or filling memory;
* **the active view is pushed**: the answer to a hello carries the agent's active view, and
  every change of it is pushed to every connected actor (once per loop turn), so a handle's
  gate (:meth:`ray_hyparview.mesh.Mesh.allowed`) needs no Ray call to stay current. Polling it
  with a Ray call every half second blocked the actor's event loop for the call's submission,
  in the middle of its sends.

Wire format (local only, never between nodes): a client message is two frames,
``[token, body]``, an agent message one, ``[body]`` (framed by
:mod:`~ray_hyparview.transport.localstream`). A body is one msgpack array
``[header, data, header, data, ...]``: each header an array whose first element names the
operation (see ``_OPS``), each data opaque bytes (the agent never unpickles them). The agent
reads a body only after its token checked out.

A link works from async actors (its socket lives on the actor's event loop) and from sync or
threaded actors (the socket lives on a loop in a background thread, and calls from any loop
are handed to it). Ray calls remain for setup: join, the name directory, leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from ray_hyparview.protocol.delivery import InboxItem
from ray_hyparview.protocol.messages import PeerDown, PeerUp
from ray_hyparview.transport.localstream import PeerGone, StreamClient, StreamServer

if TYPE_CHECKING:
    from ray_hyparview.agent.meshnode import MeshNode

__all__ = ["LocalLink", "LocalServer", "LinkClosed", "socket_dir"]

log = logging.getLogger("ray_hyparview.agent.localpath")

WINDOW = 256
"""Pushed items per member waiting for the actor's ACK."""
CALL_WINDOW = 1024
"""Operations per link waiting for their outcome."""
_BATCH = 256
"""Operations per local message at most."""
_HELLO = msgpack.packb([["H"], b""])
"""A hello's body: the one body the agent recognises without reading it (to answer a refused
token), by comparing bytes."""


def _pack(ops: list[Any]) -> bytes:
    """A body: ``[header, data, header, data, ...]``."""
    return msgpack.packb(ops)


def _unpack(body: bytes) -> list[Any] | None:
    """The ops of a body, or None if it is not an array of (header array, bytes) pairs."""
    try:
        ops = msgpack.unpackb(body)
    except Exception:
        return None
    if type(ops) is not list or len(ops) % 2:
        return None
    return ops


_VIEW_EVENTS = (PeerUp, PeerDown)
_OPS = {
    "H": "hello",
    "S": "send",
    "R": "request",
    "P": "reply",
    "B": "publish",
    "T": "subscribe",
    "A": "ack",
    "K": "ping",
}


class LinkClosed(ConnectionError):
    """The local link was closed (the agent refused it, or the handle re-attached or left)."""


def socket_dir() -> str | None:
    """The Ray session's ``sockets`` directory, or None outside a Ray worker."""
    try:
        from ray._private import worker

        node: Any = getattr(worker, "_global_node", None)
        path = os.path.join(node.get_session_dir_path(), "sockets")
    except Exception:
        return None
    return path if os.path.isdir(path) else None


@dataclass(slots=True)
class _Member:
    name: str
    token: bytes
    identity: bytes | None = None
    pushed: int = 0
    """Highest seq pushed on the current connection."""
    acked: int = 0
    """Highest seq the actor acknowledged."""


class LocalServer:
    """The agent's end: one listening socket for every mesh actor of the node. Runs on the
    agent's loop; :meth:`start` it after the :class:`~ray_hyparview.agent.meshnode.MeshNode`,
    :meth:`aclose` it before."""

    def __init__(
        self,
        mesh: MeshNode,
        *,
        directory: str | None = None,
        window: int = WINDOW,
    ) -> None:
        self.mesh = mesh
        self.window = window
        self.endpoint = ""
        self.counters: Counter[str] = Counter()
        self._directory = directory
        self._sock: StreamServer | None = None
        self._members: dict[str, _Member] = {}
        self._by_token: dict[bytes, _Member] = {}
        self._out: dict[bytes, list[Any]] = {}
        self._flushing = False
        self._view_pending = False
        self._unsubscribe: Callable[[], None] | None = None
        self._refs: set[int] = set()
        """Operations started here whose outcome has not come yet."""

    async def start(self) -> str:
        server = StreamServer(asyncio.get_running_loop(), self._read)
        name = f"hv-{self.mesh.node_id[:12]}-{os.getpid()}-{secrets.token_hex(3)}.sock"
        path = os.path.join(self._directory, name) if self._directory else ""
        self.endpoint = server.bind(path)
        self._sock = server
        self.mesh.on_inbox = self._inbox_ready
        self._unsubscribe = self.mesh.agent.subscribe(self._on_event)
        return self.endpoint

    # ------------------------------------------------------------------ members

    def admit(self, name: str) -> bytes:
        """A fresh token for registered member ``name`` (the previous one stops working)."""
        self.forget(name)
        member = _Member(name, secrets.token_bytes(32))
        self._members[name] = member
        self._by_token[member.token] = member
        return member.token

    def forget(self, name: str) -> None:
        member = self._members.pop(name, None)
        if member is not None:
            self._by_token.pop(member.token, None)

    # ------------------------------------------------------------------ reading

    def _read(self, frames: list[bytes]) -> None:
        try:
            self._on_message(frames)
        except Exception:
            self.counters["local.errors"] += 1
            log.exception("%s: a local frame failed", self.mesh.node_id)

    def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            self.counters["local.dropped"] += 1
            return
        identity, token, body = frames
        member = self._by_token.get(token)
        if member is None or member.name not in self._members:
            self.counters["local.refused"] += 1
            if body == _HELLO:
                self._queue(identity, ["X", "refused"], b"")
            return
        ops = _unpack(body)
        if ops is None:
            self.counters["local.dropped"] += 1
            return
        for i in range(0, len(ops), 2):
            header, data = ops[i], ops[i + 1]
            if type(header) is not list or not header or type(data) is not bytes:
                self.counters["local.dropped"] += 1
                continue
            op = header[0]
            if type(op) is not str:
                self.counters["local.dropped"] += 1
                continue
            self.counters["local.op." + _OPS.get(op, "unknown")] += 1
            try:
                self._operate(member, identity, op, header, data)
            except (ValueError, TypeError, IndexError):
                # A header of the wrong shape from a member that holds its token: its own
                # operation is lost (counted), the ones after it in the batch are not.
                self.counters["local.dropped"] += 1

    def _operate(
        self, member: _Member, identity: bytes, op: str, header: list[Any], data: bytes
    ) -> None:
        mesh = self.mesh
        if op == "H":
            member.identity = identity
            member.pushed = member.acked  # lend every unacknowledged item again
            self._queue(identity, ["W", mesh.core.incarnation, self._view()], b"")
            self._pump(member.name)
        elif op in ("S", "R"):
            # A send carries its idempotency key; a request has none.
            _, op_id, dst, timeout, *key = header
            kind = "send" if op == "S" else "request"
            if len(key) != (1 if op == "S" else 0):
                raise ValueError(f"{kind} header of {len(header)} fields")
            self._begin(
                identity,
                op_id,
                member.name,
                dst,
                data,
                timeout=float(timeout),
                kind=kind,
                key=key[0] if key else "",
            )
        elif op == "B":
            _, op_id, topic = header
            self._finish(identity, op_id, lambda: mesh.publish(member.name, topic, data))
        elif op == "P":
            _, node, incarnation, request_id = header
            with contextlib.suppress(ValueError):  # a bad request id: nothing to answer
                mesh.reply_nowait((node, int(incarnation), int(request_id)), data)
        elif op == "T":
            _, topic, on = header
            with contextlib.suppress(Exception):
                (mesh.subscribe if on else mesh.unsubscribe)(member.name, topic)
        elif op == "K":
            self._queue(identity, ["D", header[1]], b"")
        elif op == "A":
            upto = min(int(header[1]), member.pushed)
            if upto > member.acked:
                mesh.core.ack(member.name, upto)
                member.acked = upto
                self._pump(member.name)
        else:
            self.counters["local.dropped"] += 1

    def _finish(self, identity: bytes, op_id: int, call: Callable[[], Any]) -> None:
        try:
            result = call()
        except Exception as exc:
            self._queue(identity, _error_header(op_id, exc), b"")
        else:
            self._queue(identity, ["D", op_id], result if isinstance(result, bytes) else b"")

    def _begin(
        self,
        identity: bytes,
        op_id: int,
        src: str,
        dst: str,
        data: bytes,
        *,
        timeout: float,
        kind: str,
        key: str,
    ) -> None:
        mesh = self.mesh
        ref = 0
        settled = False

        def settle(result: bytes | None, error: Exception | None) -> None:
            # Called from inside the event that settles the operation: the answer leaves in
            # the same loop turn as the ACK or reply that brought it.
            nonlocal settled
            settled = True
            self._refs.discard(ref)
            if error is not None:
                self._queue(identity, _error_header(op_id, error), b"")
                return
            if path:
                mesh.counters[f"send.{path}"] += 1
            self._queue(identity, ["D", op_id], result if result is not None else path.encode())

        try:
            path = mesh.path_kind(dst) if kind == "send" else ""
            ref = mesh.start(src, dst, data, settle, timeout=timeout, kind=kind, key=key)
        except Exception as exc:
            self._queue(identity, _error_header(op_id, exc), b"")
            return
        if not settled:
            self._refs.add(ref)

    # ------------------------------------------------------------------ pushing

    def _view(self) -> list[str]:
        return [peer.id for peer in self.mesh.agent.active_view]

    def _on_event(self, event: object) -> None:
        if isinstance(event, _VIEW_EVENTS) and not self._view_pending and self._sock is not None:
            # Once per loop turn: a burst of changes (a repair, a merge) is pushed as its result.
            self._view_pending = True
            asyncio.get_running_loop().call_soon(self._push_view)

    def _push_view(self) -> None:
        self._view_pending = False
        view = self._view()
        for member in self._members.values():
            if member.identity is not None:
                self._queue(member.identity, ["V", view], b"")
        self.counters["local.views"] += 1

    def _inbox_ready(self, name: str) -> None:
        # Pushed now: the first frame of the turn leaves at once, the ones after it in the
        # same turn leave together at its end (``_queue``), so a burst still goes as one message.
        self._pump(name)

    def _pump(self, name: str) -> None:
        member = self._members.get(name)
        if member is None or member.identity is None:
            return
        room = member.acked + self.window - member.pushed
        if room <= 0:
            return
        items = self.mesh.core.take(name, limit=room, after=member.pushed)
        for item in items:
            header = [
                "I",
                item.seq,
                item.life,
                item.kind,
                item.sender,
                item.topic,
                item.sender_node,
                list(item.request) if item.request is not None else None,
            ]
            self._queue(member.identity, header, item.payload)
            member.pushed = item.seq
        self.counters["local.pushed"] += len(items)

    # ------------------------------------------------------------------ writing

    def _queue(self, identity: bytes, header: list[Any], data: bytes) -> None:
        if not self._flushing:
            # The turn's first frame leaves now; the ones after it wait for the turn's end.
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
            if self._sock is not None:
                self._send(self._sock, identity, [header, data])
                return
        self._out.setdefault(identity, []).extend((header, data))

    def _flush(self) -> None:
        self._flushing = False
        out, self._out = self._out, {}
        sock = self._sock
        if sock is None:
            return
        for identity, ops in out.items():
            for start in range(0, len(ops), 2 * _BATCH):
                if not self._send(sock, identity, ops[start : start + 2 * _BATCH]):
                    break

    def _send(self, sock: StreamServer, identity: bytes, ops: list[Any]) -> bool:
        try:
            sock.send(identity, [_pack(ops)])
        except PeerGone:
            # The actor's end is gone: its lent items are pushed again on its next hello (or
            # handed back when it leaves).
            self.counters["local.unreachable"] += 1
            self._disconnected(identity)
            return False
        self.counters["local.sends"] += 1
        return True

    def _disconnected(self, identity: bytes) -> None:
        for member in self._members.values():
            if member.identity == identity:
                member.identity = None
                member.pushed = member.acked

    async def aclose(self) -> None:
        """Stop reading, close the socket, remove the socket file. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for ref in self._refs:
            self.mesh.abandon(ref)
        self._refs.clear()
        if self._sock is not None:
            self._sock.close()  # and removes its socket file
            self._sock = None
        if self.mesh.on_inbox == self._inbox_ready:
            self.mesh.on_inbox = None

    def stats(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "members": len(self._members),
            "connected": sum(1 for m in self._members.values() if m.identity is not None),
            "counters": dict(sorted(self.counters.items())),
        }


def _error_header(op_id: int, exc: BaseException) -> list[Any]:
    from ray_hyparview.agent.meshnode import DeliveryError

    if isinstance(exc, DeliveryError):
        return ["E", op_id, exc.reason, exc.target, exc.detail, exc.outcome]
    return ["E", op_id, "usage", "", str(exc), "usage"]


# ---------------------------------------------------------------------- the actor's end


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    """Complete ``future`` from any thread (its loop may be gone: then nobody waits)."""

    def done() -> None:
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    loop = future.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        done()
    else:
        with contextlib.suppress(RuntimeError):  # that loop is closed
            loop.call_soon_threadsafe(done)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """A link's own thread: run its loop until the link closes, then close the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()


class LocalLink:
    """An actor's end of the local path: one connection to its node's agent.

    ``loop``: the event loop that owns the socket (an async actor's loop); ``None`` starts a
    background thread with its own loop (sync and threaded actors, whose calls come from
    short-lived loops). Every method may be called from any thread and any loop."""

    def __init__(
        self,
        endpoint: str,
        token: bytes,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        window: int = CALL_WINDOW,
        error: Callable[[list[Any]], Exception] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.window = window
        self.life = 0
        """The agent's incarnation (what its items' ``life`` says)."""
        self.view: frozenset[str] | None = None
        """The agent's active view as it last pushed it (None before the hello's answer)."""
        self.heard = 0.0
        """When (``time.monotonic()``) the agent last sent anything on this link."""
        self.closed = False
        self._token = token
        self._error = error or (lambda h: RuntimeError(str(h)))
        self._thread: threading.Thread | None = None
        if loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=_run_loop, args=(loop,), name="mesh-local-link", daemon=True
            )
            self._thread.start()
        self._loop = loop
        self._sock: StreamClient | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._slots: deque[asyncio.Future[None]] = deque()
        self._out: deque[tuple[list[Any], bytes]] = deque()
        self._flushing = False
        self._items: deque[InboxItem] = deque()
        self._item_waiter: asyncio.Future[None] | None = None
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ life cycle

    async def open(self, timeout: float = 10.0) -> None:
        """Connect and say hello; :class:`LinkClosed` if the agent refuses the token."""
        await self._on_owner(self._connect)
        if self._sock is None or self._sock.closed:
            self.close(LinkClosed(f"no agent listens at {self.endpoint}"))
            raise LinkClosed(f"no agent listens at {self.endpoint}")
        hello = asyncio.get_running_loop().create_future()
        self._pending[0] = hello
        self._post(["H"], b"")
        try:
            async with asyncio.timeout(timeout):
                await hello
        except TimeoutError:
            self.close(LinkClosed(f"no answer from the agent at {self.endpoint}"))
            raise LinkClosed(f"no answer from the agent at {self.endpoint}") from None
        except LinkClosed:
            self.close(LinkClosed("refused"))
            raise

    async def _on_owner(self, call: Callable[[], None]) -> None:
        if asyncio.get_running_loop() is self._loop:
            call()
            return

        async def run() -> None:
            call()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self._loop))

    def _connect(self) -> None:
        self._sock = StreamClient(self.endpoint, self._loop, self._read)

    def close(self, error: Exception | None = None) -> None:
        """Fail every waiting operation with ``error`` (default :class:`LinkClosed`), close
        the socket, stop the thread. Idempotent."""
        if self.closed:
            return
        self.closed = True
        error = error or LinkClosed("the link was closed")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            _settle(future, None, error)
        while self._slots:
            _settle(self._slots.popleft(), None, None)
        self._wake_items()

        def shut() -> None:
            if self._sock is not None:
                self._sock.close()
            if self._thread is not None:
                self._loop.stop()

        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            shut()
        else:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(shut)

    # ------------------------------------------------------------------ operations

    async def call(self, header: list[Any], data: bytes, *, timeout: float) -> bytes:
        """Run one operation (``header`` without its id) and return the agent's answer; the
        agent's refusal is raised as built by ``error``; :class:`LinkClosed` if the link
        closes first; ``TimeoutError`` after ``timeout`` seconds."""
        while len(self._pending) >= self.window and not self.closed:
            slot = asyncio.get_running_loop().create_future()
            self._slots.append(slot)
            self.counters["window.waits"] += 1
            await slot
        if self.closed:
            raise LinkClosed("the link was closed")
        op_id = next(self._ids)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[op_id] = future
        self._post([header[0], op_id, *header[1:]], data)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if self._pending.pop(op_id, None) is not None:
                self._release()

    def post(self, header: list[Any], data: bytes = b"") -> None:
        """Send an operation that has no answer (reply, subscribe, ack)."""
        if not self.closed:
            self._post(header, data)

    def ack(self, seq: int) -> None:
        self.post(["A", seq])

    def _post(self, header: list[Any], data: bytes) -> None:
        op = (header, data)
        if self._flushing:
            self._out.append(op)
            return
        self._flushing = True
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._loop.call_soon(self._flush)
            sock = self._sock
            if not self._out and sock is not None and not self.closed:
                # The turn's first operation leaves now; the ones after it, at its end.
                sock.send([self._token, _pack([header, data])])
                self.counters["sends"] += 1
                return
            self._out.append(op)
        else:
            self._out.append(op)  # before the flush is scheduled: its thread may run it now
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        sock = self._sock
        if sock is None or self.closed:
            return
        while self._out:
            ops: list[Any] = []
            while self._out and len(ops) < 2 * _BATCH:
                ops += self._out.popleft()
            sock.send([self._token, _pack(ops)])
            self.counters["sends"] += 1

    def _release(self) -> None:
        while self._slots and len(self._pending) < self.window:
            _settle(self._slots.popleft(), None, None)

    # ------------------------------------------------------------------ reading

    def _read(self, frames: list[bytes]) -> None:
        self.heard = time.monotonic()
        ops = _unpack(frames[-1]) if len(frames) == 1 else None
        if ops is None:
            self.counters["dropped"] += 1
            log.error("local link: a message from the agent that is not one body")
            return
        for i in range(0, len(ops), 2):
            try:
                self._on_frame(ops[i], ops[i + 1])
            except Exception:
                self.counters["dropped"] += 1
                log.exception("local link: a frame from the agent failed")

    def _on_frame(self, header: list[Any], data: bytes) -> None:
        op = header[0]
        if op == "I":
            _, seq, life, kind, sender, topic, sender_node, request = header
            self._items.append(
                InboxItem(
                    kind=kind,
                    sender=sender,
                    payload=data,
                    topic=topic,
                    request=tuple(request) if request is not None else None,
                    sender_node=sender_node,
                    seq=seq,
                    life=life,
                )
            )
            self._wake_items()
        elif op in ("D", "E"):
            future = self._pending.pop(header[1], None)
            if future is None:
                return  # its caller gave up (timeout)
            self._release()
            if op == "D":
                _settle(future, data, None)
            else:
                _settle(future, None, self._error(header))
        elif op == "V":
            self.view = frozenset(header[1])
        elif op == "W":
            self.life = int(header[1])
            self.view = frozenset(header[2])
            hello = self._pending.pop(0, None)
            if hello is not None:
                _settle(hello, None, None)
        elif op == "X":
            hello = self._pending.pop(0, None)
            if hello is not None:
                _settle(hello, None, LinkClosed(f"the agent refused this link: {header[1]}"))

    def _wake_items(self) -> None:
        waiter, self._item_waiter = self._item_waiter, None
        if waiter is not None:
            _settle(waiter, None, None)

    async def take(self, wait: float) -> list[InboxItem]:
        """The items pushed since the last take, waiting up to ``wait`` s for the first."""
        if not self._items and not self.closed:
            waiter = asyncio.get_running_loop().create_future()
            self._item_waiter = waiter
            if not self._items and not self.closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await waiter
            if self._item_waiter is waiter:
                self._item_waiter = None
        items: list[InboxItem] = []
        while self._items:
            items.append(self._items.popleft())
        return items

    async def alive(self, timeout: float) -> bool:
        """Does the agent answer on this link within ``timeout`` seconds? True at once if it
        sent anything within the last ``timeout`` seconds."""
        if self.closed:
            return False
        if time.monotonic() - self.heard < timeout:
            return True
        try:
            await self.call(["K"], b"", timeout=timeout)
        except (LinkClosed, TimeoutError):
            return False
        return True

    def wake(self) -> None:
        """Make a waiting :meth:`take` return (the handle is leaving)."""
        self._wake_items()
