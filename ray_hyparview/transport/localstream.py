"""Framed messages over a node-local stream socket: the wire of the local path.

The local path (:mod:`ray_hyparview.agent.localpath`) joins each mesh actor to its node's agent
on the same machine. It used to be a ZeroMQ DEALER/ROUTER pair over ``ipc://``. libzmq does a
socket's I/O on an I/O thread of its own, so every message crossed three threads (the sender's,
its I/O thread, the receiver's I/O thread) before the receiver's own thread woke: on the 2-vCPU
machine of the benchmarks a bare echo over ``ipc://`` between two asyncio processes took a
median 114 to 139 us, and over a plain Unix stream socket, read in the event loop's reader
callback, 14 to 33 us. A mesh send crosses the local path twice on its critical path; moving it
onto this wire took a send to a neighbour from 0.50x-0.53x a plain Ray call to 0.43x-0.44x
(``benchmarks/README.md``, "The local path off ZeroMQ"; ``benchmarks/local_wire.py`` compares
the two wires in one run). Between agents, where ZeroMQ's reconnection, heartbeats and CURVE
earn their cost, ZeroMQ stays.

So this is the smallest thing that does the local path's job:

* a message is a list of byte frames, written as ``u32 length`` then ``u8 count`` then each
  frame as ``u32 length`` and its bytes (big-endian); the reader checks every length against
  :data:`MAX_MESSAGE` before it buffers anything, and a connection that sends a malformed or
  oversized message is closed;
* :class:`StreamServer` listens on a Unix socket path (mode 0600) or, where a path would be too
  long or Unix sockets are missing, on ``127.0.0.1``; it gives each connection an identity and
  hands each message up as ``[identity, *frames]``, as a ROUTER does. A send to an identity
  whose connection is gone raises :class:`PeerGone`, as ``ROUTER_MANDATORY`` does. It holds at
  most :data:`MAX_CONNECTIONS` connections;
* :class:`StreamClient` connects once. A closed connection stays closed: the agent that owned
  the path is gone, its replacement listens on a new path, and the actor's handle finds it
  through Ray (what a DEALER's reconnection attempts to a dead path came to as well). Sends
  after that are dropped and counted; their callers time out, as before;
* both read in the event loop's reader callback and write at once; what the kernel does not
  take waits in a buffer of at most :data:`MAX_BUFFERED` bytes per connection, written when
  the socket is writable. A connection whose buffer would exceed it is closed (its peer was
  not reading), so no queue here is unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Final

__all__ = [
    "MAX_BUFFERED",
    "MAX_CONNECTIONS",
    "MAX_MESSAGE",
    "MAX_PATH",
    "PeerGone",
    "StreamClient",
    "StreamServer",
    "pack_message",
]

MAX_MESSAGE: Final = 16 * 1024 * 1024
"""Largest message, in bytes after its length word: a batch of operations with their payloads
(the local path batches at most 256 operations; a payload above 32 KiB goes by reference, so a
batch stays under 9 MiB)."""
MAX_BUFFERED: Final = 64 * 1024 * 1024
"""Bytes one connection may hold unwritten before it is closed as not reading."""
MAX_CONNECTIONS: Final = 4096
"""Connections a server holds at once; the ones beyond are closed as they come (counted)."""
MAX_PATH: Final = 100
"""Longest Unix socket path :meth:`StreamServer.bind` uses (``sun_path`` is 108 bytes on
Linux, 104 on macOS)."""
_MAX_FRAMES: Final = 16
_CONNECT_TIMEOUT: Final = 2.0
_READ: Final = 64 * 1024
"""Bytes asked of one ``recv``. Python allocates that much for every read before it shrinks
the result; at 256 KiB that is above glibc's threshold for ``mmap`` (128 KiB), so each read
cost an ``mmap``, a page fault and a ``munmap``: 41-46 us of CPU per round trip of a small
message against 20-21 us at 64 KiB, measured between two processes."""
_U32: Final = struct.Struct("!I")
_HEAD: Final = struct.Struct("!IB")  # the message's length, then its count of frames

OnMessage = Callable[[list[bytes]], None]

log = logging.getLogger("ray_hyparview.transport.localstream")


class PeerGone(ConnectionError):
    """The connection of this identity is closed (or never was)."""


def pack_message(frames: list[bytes]) -> bytes:
    """One message as it goes on the stream."""
    parts = [b""]
    size = 1
    for frame in frames:
        parts.append(_U32.pack(len(frame)))
        parts.append(frame)
        size += 4 + len(frame)
    parts[0] = _HEAD.pack(size, len(frames))
    return b"".join(parts)


def _unpack_frames(data: bytes | memoryview, start: int, end: int) -> list[bytes] | None:
    """The frames of the message body ``data[start:end]`` (its count byte first), or None if
    the lengths in it do not add up to exactly that."""
    count = data[start]
    if count > _MAX_FRAMES:
        return None
    at = start + 1
    frames: list[bytes] = []
    for _ in range(count):
        if at + 4 > end:
            return None
        (size,) = _U32.unpack_from(data, at)
        at += 4
        if at + size > end:
            return None
        frames.append(bytes(data[at : at + size]))
        at += size
    return frames if at == end else None


class _Connection:
    """One stream socket on an event loop: reads whole messages, writes without blocking."""

    __slots__ = ("_buffer", "_closed", "_loop", "_on_close", "_on_message", "_out", "sock")

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: OnMessage,
        on_close: Callable[[_Connection], None],
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = loop
        self._on_message = on_message
        self._on_close = on_close
        self._buffer = bytearray()
        self._out = bytearray()
        self._closed = False
        loop.add_reader(sock.fileno(), self._readable)

    @property
    def closed(self) -> bool:
        return self._closed

    def _readable(self) -> None:
        try:
            data = self.sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        buffer = self._buffer
        if not buffer:
            # The common case: whole messages in one read, parsed where they lie.
            used = self._parse(data)
            if used < len(data):
                buffer += memoryview(data)[used:]
            return
        buffer += data
        used = self._parse(buffer)
        del buffer[:used]

    def _parse(self, data: bytes | bytearray) -> int:
        """Hand up every whole message at the start of ``data``; the bytes used."""
        view = memoryview(data)
        at, end = 0, len(data)
        try:
            while end - at >= 4:
                (size,) = _U32.unpack_from(view, at)
                if size < 1 or size > MAX_MESSAGE:
                    self.close()
                    return end
                if end - at - 4 < size:
                    break
                frames = _unpack_frames(view, at + 4, at + 4 + size)
                if frames is None:
                    self.close()
                    return end
                at += 4 + size
                try:
                    self._on_message(frames)
                except Exception:  # the handler's own failure: this message, not the stream
                    log.exception("local stream: a message's handler failed")
                if self._closed:
                    return end
        finally:
            view.release()
        return at

    def write(self, message: bytes) -> None:
        """Send ``message`` now, or buffer what the kernel does not take; :class:`PeerGone` if
        the connection is closed, or closes now because its buffer would overflow."""
        if self._closed:
            raise PeerGone("closed")
        waiting = bool(self._out)
        if not waiting:
            try:
                sent = self.sock.send(message)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.close()
                raise PeerGone(str(exc)) from None
            if sent == len(message):
                return
            message = message[sent:]
        if len(self._out) + len(message) > MAX_BUFFERED:
            self.close()
            raise PeerGone("not reading: its buffer is full")
        self._out += message
        if not waiting:
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        fd = self.sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            if self._out:
                self._loop.remove_writer(fd)
        # Rebound, not cleared: a message being parsed may still hold a view of the buffer.
        self._out = bytearray()
        self._buffer = bytearray()
        self.sock.close()
        self._on_close(self)


class StreamServer:
    """Listens on a node-local endpoint; each message arrives as ``[identity, *frames]``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_message: OnMessage) -> None:
        self._loop = loop
        self._on_message = on_message
        self._listener: socket.socket | None = None
        self._connections: dict[bytes, _Connection] = {}
        self._next = 0
        self.path = ""
        self.counters: Counter[str] = Counter()

    def bind(self, path: str) -> str:
        """Listen on the Unix socket ``path`` (owner only), or on a loopback TCP port when
        ``path`` is empty, longer than a Unix socket path may be (:data:`MAX_PATH`) or Unix
        sockets are missing; the endpoint, as ``ipc://PATH`` or ``tcp://127.0.0.1:PORT``."""
        unix = bool(path) and len(path) <= MAX_PATH and hasattr(socket, "AF_UNIX")
        listener = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(path if unix else ("127.0.0.1", 0))
            if unix:
                # Owner only. Not by umask: that is the whole process's, and Ray's threads
                # create files too. The token guards the moment in between.
                os.chmod(path, 0o600)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)
        if unix:
            self.path = path
            return f"ipc://{path}"
        return f"tcp://127.0.0.1:{listener.getsockname()[1]}"

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["accept_errors"] += 1
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                sock.close()
                self.counters["refused"] += 1
                continue
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._next += 1
            identity = self._next.to_bytes(8, "big")
            self._connections[identity] = _Connection(
                sock,
                self._loop,
                functools.partial(self._deliver, identity),
                functools.partial(self._forget, identity),
            )
            self.counters["accepted"] += 1

    def _deliver(self, identity: bytes, frames: list[bytes]) -> None:
        self._on_message([identity, *frames])

    def _forget(self, identity: bytes, _connection: _Connection) -> None:
        if self._connections.pop(identity, None) is not None:
            self.counters["closed"] += 1

    def send(self, identity: bytes, frames: list[bytes]) -> None:
        """One message to the connection ``identity``; :class:`PeerGone` if it is gone."""
        connection = self._connections.get(identity)
        if connection is None:
            raise PeerGone("no such connection")
        connection.write(pack_message(frames))

    def close(self) -> None:
        """Stop listening, close every connection, remove the socket file. Idempotent."""
        if self._listener is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for connection in list(self._connections.values()):
            connection.close()
        self._connections.clear()
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = ""


class StreamClient:
    """One connection to a :class:`StreamServer`'s endpoint; each message arrives as its
    frames. Created on the loop that will serve it."""

    def __init__(self, endpoint: str, loop: asyncio.AbstractEventLoop, on_message: OnMessage):
        self.counters: Counter[str] = Counter()
        self._connection: _Connection | None = None
        if endpoint.startswith("ipc://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = endpoint.removeprefix("ipc://")
        elif endpoint.startswith("tcp://"):
            host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = (host, int(port))
        else:
            raise ValueError(f"not a local endpoint: {endpoint!r}")
        # A local connect completes or is refused at once, unless the agent's backlog is full
        # (its loop stalled with many actors connecting): then it fails after a short wait
        # rather than holding the caller's loop.
        sock.settimeout(_CONNECT_TIMEOUT)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            self.counters["connect_failed"] += 1
            return
        self._connection = _Connection(sock, loop, on_message, self._lost)

    @property
    def closed(self) -> bool:
        return self._connection is None

    def _lost(self, _connection: _Connection) -> None:
        self._connection = None

    def send(self, frames: list[bytes]) -> None:
        """One message; dropped and counted when the connection is gone (the agent is)."""
        connection = self._connection
        if connection is None:
            self.counters["dropped"] += 1
            return
        try:
            connection.write(pack_message(frames))
        except PeerGone:
            self.counters["dropped"] += 1

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
