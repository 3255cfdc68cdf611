"""Batch frames on the inter-agent path: the format, and the ZeroMQ transport's use of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import zmq
import zmq.asyncio

from ray_hyparview.protocol.peer import Peer
from ray_hyparview.testing.conditions import until
from ray_hyparview.transport import batch as batches
from ray_hyparview.transport.zmq import ZmqOptions, ZmqTransport

DEADLINE = 5.0


def peer(t: ZmqTransport) -> Peer:
    return Peer(t.node_id, t.endpoint)


@asynccontextmanager
async def raw_sender(max_batch: int) -> AsyncIterator[tuple[ZmqTransport, zmq.asyncio.Socket]]:
    """A transport ``b`` and a bare DEALER connected to it that claims the id ``m``."""
    b = ZmqTransport("b", options=ZmqOptions(max_batch=max_batch))
    await b.start()
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"m\0abcdef")
    sock.connect(b.endpoint)
    try:
        yield b, sock
    finally:
        sock.close(linger=0)
        ctx.term()
        await b.aclose()


async def recv_n(t: ZmqTransport, n: int, most: int) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    async with asyncio.timeout(DEADLINE):
        while len(out) < n:
            got = await t.recv_batch()
            assert 1 <= len(got) <= most
            out.extend(got)
    return out


async def linked_pair(
    a_opts: ZmqOptions | None = None, b_opts: ZmqOptions | None = None
) -> tuple[ZmqTransport, ZmqTransport]:
    a, b = ZmqTransport("a", options=a_opts), ZmqTransport("b", options=b_opts)
    await a.start()
    await b.start()
    a.open_link(peer(b))
    assert a.send(peer(b), b"hello")
    assert (await recv_n(b, 1, 1)) == [("a", b"hello")]
    return a, b


# -- the format ----------------------------------------------------------------------------------


def test_pack_and_unpack_round_trip() -> None:
    frames = [b"x", b"\xc1\x68\x01abc", b"y" * 70_000]
    data = batches.pack(frames)
    assert batches.is_batch(data)
    assert len(data) == batches.packed_size([len(f) for f in frames])
    assert batches.unpack(data, 3) == frames


@pytest.mark.parametrize(
    "data",
    [
        batches.BATCH_HEADER,  # no entries
        batches.BATCH_HEADER + b"\x00\x00",  # truncated length
        batches.BATCH_HEADER + b"\x00\x00\x00\x05abc",  # truncated frame
        batches.BATCH_HEADER + b"\x00\x00\x00\x00",  # empty entry
        batches.pack([b"a", b"b"]) + b"\x00",  # trailing bytes
        batches.pack([b"a"] * 4),  # more entries than allowed
        b"\xc1\x68\x01" + b"\x00\x00\x00\x01a",  # a codec frame, not a batch
    ],
)
def test_malformed_batches_are_refused(data: bytes) -> None:
    assert batches.unpack(data, 3) is None


# -- the transport -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_burst_in_one_turn_leaves_as_batches_in_order() -> None:
    a, b = await linked_pair(ZmqOptions(max_batch=64), ZmqOptions(max_batch=64))
    for i in range(1000):  # one loop turn: the first goes alone, the rest in batches
        assert a.send(peer(b), i.to_bytes(2, "big"))
    got = await recv_n(b, 1000, 64)
    assert [int.from_bytes(d, "big") for _, d in got] == list(range(1000))
    assert {s for s, _ in got} == {"a"}
    assert a.counters["sent.batches"] >= 1000 // 64
    assert b.counters["recv.batches"] == a.counters["sent.batches"]
    assert a.counters["sent.msgs"] == b.counters["recv.msgs"] == 1001
    await a.aclose()
    await b.aclose()


@pytest.mark.asyncio
async def test_batches_stay_within_the_receivers_frame_size() -> None:
    # 20 KiB frames: three share a batch of at most 64 KiB; a frame too large to share one
    # goes alone, after the ones queued before it.
    opts = ZmqOptions(max_msg_size=64 * 1024, batch_bytes=64 * 1024)
    a, b = await linked_pair(opts, opts)
    frames = [bytes([i]) * 20_000 for i in range(10)]
    frames.insert(5, b"L" * (64 * 1024 - 3))
    for frame in frames:
        assert a.send(peer(b), frame)
    got = await recv_n(b, len(frames), opts.max_batch)
    assert [d for _, d in got] == frames
    assert b.counters["router.disconnected"] == 0  # no frame over MAXMSGSIZE
    assert a.counters["sent.batches"] >= 3
    await a.aclose()
    await b.aclose()


@pytest.mark.asyncio
async def test_batching_can_be_turned_off() -> None:
    a, b = await linked_pair(ZmqOptions(batch_bytes=0))
    for i in range(100):
        assert a.send(peer(b), bytes([i]))
    got = await recv_n(b, 100, 256)
    assert [d for _, d in got] == [bytes([i]) for i in range(100)]
    assert a.counters["sent.batches"] == 0
    assert b.counters["recv.batches"] == 0
    await a.aclose()
    await b.aclose()


@pytest.mark.asyncio
async def test_frames_queued_for_a_closed_link_are_counted() -> None:
    a, b = await linked_pair()
    await asyncio.sleep(0)  # a new turn: the next send goes at once
    assert a.send(peer(b), b"first")
    assert a.send(peer(b), b"queued")
    a.close_link("b")
    assert a.counters["send.dropped.link_closed"] == 1
    assert (await recv_n(b, 1, 1)) == [("a", b"first")]
    await a.aclose()
    await b.aclose()


@pytest.mark.asyncio
async def test_goodbyes_queued_in_the_closing_turn_still_leave() -> None:
    a, b = await linked_pair()
    for i in range(50):
        assert a.send(peer(b), b"bye %d" % i)
    await a.aclose(linger=0.5)
    got = await recv_n(b, 50, 256)
    assert got[-1] == ("a", b"bye 49")
    await b.aclose()


@pytest.mark.asyncio
async def test_garbage_batches_are_dropped_and_counted() -> None:
    async with raw_sender(8) as (b, liar):
        garbage = [
            batches.BATCH_HEADER,
            batches.BATCH_HEADER + b"\xff\xff\xff\xff" + b"x" * 10,
            batches.BATCH_HEADER + b"\x00\x00\x00\x00",
            batches.pack([b"a"] * 9),  # more than max_batch frames
            batches.pack([b"a"]) + b"\x01",
        ]
        for data in garbage:
            await liar.send(data)
        await liar.send(batches.pack([b"ok %d" % i for i in range(8)]))
        got = await recv_n(b, 8, 8)
        assert got == [("m", b"ok %d" % i) for i in range(8)]
        assert b.counters["recv.dropped.bad_batch"] == len(garbage)
        assert b.counters["recv.batches"] == 1


@pytest.mark.asyncio
async def test_a_batch_that_overruns_recv_batch_is_carried_over() -> None:
    async with raw_sender(8) as (b, sender):
        await sender.send(b"single")
        await sender.send(batches.pack([b"%d" % i for i in range(8)]))
        await until(lambda: b.counters["router.handshake_succeeded"] >= 1)
        # Order and bound must hold whether both messages are read in one drain (then the
        # batch overruns and one frame is carried) or in two; the pause makes one drain likely.
        await asyncio.sleep(0.05)
        got = await recv_n(b, 9, 8)
        assert [d for _, d in got] == [b"single", *(b"%d" % i for i in range(8))]
