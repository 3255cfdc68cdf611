"""The local path's wire (:mod:`ray_hyparview.transport.localstream`): framed messages over a
Unix or loopback TCP stream, read in the event loop's reader callback."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_hyparview.agent.localpath import _BATCH, _pack
from ray_hyparview.protocol.limits import MAX_PAYLOAD
from ray_hyparview.testing.conditions import until
from ray_hyparview.transport import localstream
from ray_hyparview.transport.localstream import (
    MAX_MESSAGE,
    PeerGone,
    StreamClient,
    StreamServer,
    _Connection,
    pack_message,
)


class _Ends:
    """A server and what it received, by identity."""

    def __init__(self) -> None:
        self.received: list[list[bytes]] = []
        self.server = StreamServer(asyncio.get_running_loop(), self.received.append)

    @classmethod
    def bound(cls, tmp_path: Path) -> tuple[_Ends, str]:
        """Ends whose server listens on a Unix socket in ``tmp_path``, and its endpoint."""
        ends = cls()
        return ends, ends.server.bind(str(tmp_path / "s.sock"))

    def client(self, endpoint: str) -> tuple[StreamClient, list[list[bytes]]]:
        got: list[list[bytes]] = []
        return StreamClient(endpoint, asyncio.get_running_loop(), got.append), got


def _send_until_gone(
    server: StreamServer, identity: bytes, chunk: bytes, times: int
) -> tuple[int, str]:
    """How many of ``times`` sends of ``chunk`` went before one raised, and its message."""
    for sent in range(times):
        try:
            server.send(identity, [chunk])
        except PeerGone as exc:
            return sent, str(exc)
    return times, ""


def _frames_of(message: bytes) -> list[bytes] | None:
    return localstream._unpack_frames(message, 4, len(message))


@given(st.lists(st.binary(max_size=300), max_size=16))
def test_a_message_is_its_frames_and_nothing_else(frames: list[bytes]) -> None:
    message = pack_message(frames)
    assert struct.unpack_from("!I", message)[0] == len(message) - 4
    assert _frames_of(message) == frames
    # One byte less, or one more, no longer adds up.
    assert localstream._unpack_frames(message, 4, len(message) - 1) is None
    assert localstream._unpack_frames(message + b"x", 4, len(message) + 1) is None


@pytest.mark.asyncio
async def test_messages_go_both_ways_over_a_unix_socket_for_the_owner_only(
    tmp_path: Path,
) -> None:
    ends, endpoint = _Ends.bound(tmp_path)
    assert endpoint == f"ipc://{tmp_path / 's.sock'}"
    assert stat.S_IMODE(os.stat(tmp_path / "s.sock").st_mode) == 0o600
    client, got = ends.client(endpoint)
    try:
        client.send([b"token", b"body"])
        await until(lambda: len(ends.received) == 1, limit=5)
        identity, *frames = ends.received[0]
        assert frames == [b"token", b"body"]
        ends.server.send(identity, [b"answer"])
        await until(lambda: got == [[b"answer"]], limit=5)
    finally:
        client.close()
        ends.server.close()
    assert not (tmp_path / "s.sock").exists()  # the server removes what it made


@pytest.mark.asyncio
@pytest.mark.parametrize("too_long", [False, True])
async def test_without_a_usable_path_it_listens_on_loopback_tcp(
    tmp_path: Path, too_long: bool
) -> None:
    ends = _Ends()
    path = str(tmp_path / ("x" * (localstream.MAX_PATH + 1))) if too_long else ""
    endpoint = ends.server.bind(path)
    assert endpoint.startswith("tcp://127.0.0.1:")
    assert os.listdir(tmp_path) == []  # no socket file made
    client, got = ends.client(endpoint)
    try:
        client.send([b"t", b"b"])
        await until(lambda: len(ends.received) == 1, limit=5)
        ends.server.send(ends.received[0][0], [b"a"])
        await until(lambda: got == [[b"a"]], limit=5)
    finally:
        client.close()
        ends.server.close()


@pytest.mark.asyncio
async def test_a_large_message_that_the_kernel_takes_in_parts_arrives_whole(
    tmp_path: Path,
) -> None:
    ends, endpoint = _Ends.bound(tmp_path)
    client, got = ends.client(endpoint)
    try:
        big = os.urandom(3 * 1024 * 1024)  # larger than a Unix socket's buffer
        for i in range(3):
            client.send([b"t", big + bytes([i])])
        await until(lambda: len(ends.received) == 3, limit=10)
        assert [m[2][-1] for m in ends.received] == [0, 1, 2]
        assert all(m[2][:-1] == big for m in ends.received)
        ends.server.send(ends.received[0][0], [big])
        await until(lambda: len(got) == 1, limit=10)
        assert got[0] == [big]
    finally:
        client.close()
        ends.server.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack("!I", MAX_MESSAGE + 1),  # longer than any message may be
        struct.pack("!I", 0),  # no count byte
        struct.pack("!IB", 2, 1) + b"\x00",  # a frame length cut short
        struct.pack("!IBI", 6, 1, 5) + b"x",  # a frame longer than its message
        struct.pack("!IB", 1, 17),  # more frames than a message has
    ],
)
async def test_a_malformed_message_closes_only_its_own_connection(
    tmp_path: Path, garbage: bytes
) -> None:
    ends, endpoint = _Ends.bound(tmp_path)
    honest, _ = ends.client(endpoint)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(tmp_path / "s.sock"))
    try:
        raw.sendall(garbage + pack_message([b"t", b"after the garbage"]))
        await until(lambda: ends.server.counters["closed"] == 1, limit=5)
        assert raw.recv(10) == b""  # closed by the server
        honest.send([b"t", b"still served"])
        await until(lambda: len(ends.received) == 1, limit=5)
        assert ends.received[0][1:] == [b"t", b"still served"]
    finally:
        raw.close()
        honest.close()
        ends.server.close()


@pytest.mark.asyncio
async def test_a_send_to_a_connection_that_is_gone_raises(tmp_path: Path) -> None:
    ends, endpoint = _Ends.bound(tmp_path)
    client, _ = ends.client(endpoint)
    client.send([b"t", b"b"])
    await until(lambda: len(ends.received) == 1, limit=5)
    identity = ends.received[0][0]
    client.close()
    await until(lambda: ends.server.counters["closed"] == 1, limit=5)
    with pytest.raises(PeerGone):
        ends.server.send(identity, [b"late"])
    with pytest.raises(PeerGone):
        ends.server.send(b"\x00" * 8, [b"never connected"])
    ends.server.close()


@pytest.mark.asyncio
async def test_a_client_of_an_agent_that_is_gone_drops_and_counts(tmp_path: Path) -> None:
    ends, endpoint = _Ends.bound(tmp_path)
    client, _ = ends.client(endpoint)
    ends.server.close()
    await until(lambda: client.closed, limit=5)
    client.send([b"t", b"b"])
    assert client.counters["dropped"] == 1
    nobody, _ = ends.client(f"ipc://{tmp_path / 'nothing.sock'}")
    assert nobody.closed
    assert nobody.counters["connect_failed"] == 1
    with pytest.raises(ValueError, match="not a local endpoint"):
        ends.client("udp://127.0.0.1:1")


@pytest.mark.asyncio
async def test_a_peer_that_does_not_read_is_cut_off_at_the_buffer_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localstream, "MAX_BUFFERED", 4 * 1024 * 1024)
    ends = _Ends()
    ends.server.bind(str(tmp_path / "s.sock"))
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(tmp_path / "s.sock"))
    try:
        raw.sendall(pack_message([b"t", b"hello"]))
        await until(lambda: len(ends.received) == 1, limit=5)
        identity = ends.received[0][0]
        chunk = b"x" * (256 * 1024)
        sent, error = _send_until_gone(ends.server, identity, chunk, 64)  # 16 MiB, never read
        assert "not reading" in error
        assert 8 <= sent < 64  # cut off once the kernel's buffer and 4 MiB of its own filled
        assert ends.server.counters["closed"] == 1
    finally:
        raw.close()
        ends.server.close()


@pytest.mark.asyncio
async def test_connections_beyond_the_bound_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localstream, "MAX_CONNECTIONS", 2)
    ends, endpoint = _Ends.bound(tmp_path)
    clients = [ends.client(endpoint)[0] for _ in range(3)]
    try:
        await until(lambda: ends.server.counters["refused"] == 1, limit=5)
        assert ends.server.counters["accepted"] == 2
    finally:
        for client in clients:
            client.close()
        ends.server.close()


@pytest.mark.asyncio
async def test_a_connection_closed_while_it_parses_stops_handing_up(tmp_path: Path) -> None:
    left, right = socket.socketpair()
    got: list[list[bytes]] = []
    closed: list[_Connection] = []
    loop = asyncio.get_running_loop()

    def on_message(frames: list[bytes]) -> None:
        got.append(frames)
        connection.close()  # the first message's handler closes its own connection

    connection = _Connection(left, loop, on_message, closed.append)
    try:
        right.sendall(pack_message([b"one"]) + pack_message([b"two"]))
        await until(lambda: closed == [connection], limit=5)
        assert got == [[b"one"]]
    finally:
        right.close()


def test_a_full_batch_of_the_largest_operations_fits_in_one_message() -> None:
    # The local path batches up to _BATCH operations per message, each carrying at most a
    # mesh payload; a message over MAX_MESSAGE would cost its whole connection.
    header = [
        "I",
        2**62,
        2**62,
        "request",
        "n" * 256,
        "t" * 256,
        "x" * 64,
        ["x" * 64, 2**62, 2**62],
    ]
    body = _pack([header, b"p" * MAX_PAYLOAD] * _BATCH)
    assert len(pack_message([b"t" * 32, body])) <= MAX_MESSAGE


@pytest.mark.asyncio
async def test_a_handler_that_raises_costs_only_its_own_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    left, right = socket.socketpair()
    got: list[list[bytes]] = []

    def on_message(frames: list[bytes]) -> None:
        if frames == [b"bad"]:
            raise RuntimeError("a handler's bug")
        got.append(frames)

    connection = _Connection(left, asyncio.get_running_loop(), on_message, lambda _c: None)
    try:
        # In one read, and split across two: neither the messages after it nor a copy of one
        # before it may be lost or handed up again.
        right.sendall(pack_message([b"one"]) + pack_message([b"bad"]) + pack_message([b"two"]))
        await until(lambda: len(got) == 2, limit=5)
        tail = pack_message([b"bad"]) + pack_message([b"three"])
        right.sendall(tail[:3])
        await asyncio.sleep(0)
        right.sendall(tail[3:])
        await until(lambda: len(got) == 3, limit=5)
        assert got == [[b"one"], [b"two"], [b"three"]]
        assert not connection.closed
        assert "a message's handler failed" in caplog.text
    finally:
        connection.close()
        right.close()
