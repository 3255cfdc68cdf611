"""A hostile peer against the transport's bounds, one transport in process: connection caps,
stranger caps, rate-limited warnings. The flood of a real agent subprocess from 50 connections
(memory, links, log volume) is in ``tests/test_hostile_suite.py`` with every other attack.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import zmq
import zmq.asyncio

from ray_hyparview.config.keys import generate_keypair
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.testing.conditions import until
from ray_hyparview.transport.base import LinkFailure
from ray_hyparview.transport.ratelimit import LogRate, RateLimitFilter
from ray_hyparview.transport.zmq import CurveConfig, ZmqOptions, ZmqTransport

# -- the caps, one transport in process ---------------------------------------------------------


async def _dealers(
    ctx: zmq.asyncio.Context,
    endpoint: str,
    count: int,
    curve: tuple[bytes, bytes, bytes] | None = None,
) -> list[zmq.asyncio.Socket]:
    socks = []
    for index in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, f"s{index}".encode() + b"\0" + os.urandom(6))
        if curve is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1])
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2])
        sock.connect(endpoint)
        socks.append(sock)
    return socks


async def _one_by_one(
    ctx: zmq.asyncio.Context,
    t: ZmqTransport,
    count: int,
    curve: tuple[bytes, bytes, bytes] | None = None,
) -> list[zmq.asyncio.Socket]:
    """Connect ``count`` dealers to ``t``, each once the last one's handshake was decided
    (accepted or refused), so that the cap sees them one at a time. A fixed pause between
    them was not enough on a loaded machine: the agent read the monitor's reports of several
    new connections before their handshakes, counted them all, and refused more than the
    cap asks."""
    socks: list[zmq.asyncio.Socket] = []
    counters = t.counters

    def decided() -> int:
        return counters["zap.refused.connections"] + counters["router.handshake_succeeded"]

    for _ in range(count):
        before = decided()
        socks += await _dealers(ctx, t.endpoint, 1, curve)
        await until(lambda: decided() > before)  # noqa: B023 - awaited in this iteration
    return socks


@pytest.mark.asyncio
async def test_frames_of_more_strangers_than_the_cap_are_dropped_and_counted() -> None:
    t = ZmqTransport("victim", options=ZmqOptions(max_strangers=3))
    await t.start()
    ctx = zmq.asyncio.Context()
    socks = await _dealers(ctx, t.endpoint, 6)
    got: list[tuple[str, bytes]] = []

    async def drain() -> None:
        while True:
            got.extend(await t.recv_batch())

    task = asyncio.ensure_future(drain())
    try:
        for sock in socks:
            await sock.send(b"hello")
        await until(lambda: len(got) + t.counters["recv.dropped.stranger_cap"] == 6)
        assert len(got) == 3
        assert t.counters["recv.dropped.stranger_cap"] == 3
        # A peer we link to is no stranger, however many strangers there are.
        friend = ZmqTransport("friend")
        await friend.start()
        t.open_link(Peer(friend.node_id, friend.endpoint))
        assert "friend" in t.linked()
        assert friend.send(Peer(t.node_id, t.endpoint), b"from a friend")
        await until(lambda: ("friend", b"from a friend") in got)
        assert t.counters["recv.dropped.stranger_cap"] == 3
        await friend.aclose()
    finally:
        task.cancel()
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
        await t.aclose()


@pytest.mark.asyncio
async def test_curve_connections_beyond_the_cap_are_refused_at_the_handshake() -> None:
    server_pub, server_sec = generate_keypair()
    shared_pub, shared_sec = generate_keypair()
    curve = CurveConfig(
        public_key=server_pub, secret_key=server_sec, allow_list=frozenset({shared_pub})
    )
    t = ZmqTransport("victim", options=ZmqOptions(max_connections=4), curve=curve)
    await t.start()
    ctx = zmq.asyncio.Context()
    keys = (server_pub.encode(), shared_pub.encode(), shared_sec.encode())
    socks: list[zmq.asyncio.Socket] = []
    try:
        socks += await _one_by_one(ctx, t, 10, keys)
        assert t.counters["router.handshake_succeeded"] == 4
        assert t.counters["zap.refused.connections"] == 6
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
        await t.aclose()


@dataclass
class _Capped:
    """A transport with a connection cap, transports beside it, what it received (drained in
    the background) and raw dealers connected to it."""

    victim: ZmqTransport
    peers: list[ZmqTransport]
    got: list[tuple[str, bytes]]
    ctx: zmq.asyncio.Context
    socks: list[zmq.asyncio.Socket]


@asynccontextmanager
async def _capped(cap: int, *names: str) -> AsyncIterator[_Capped]:
    """``victim`` with ``max_connections=cap`` and started transports ``names``; everything,
    raw dealers included, closed at the end."""
    t = ZmqTransport("victim", options=ZmqOptions(max_connections=cap))
    await t.start()
    peers = [ZmqTransport(name) for name in names]
    for peer in peers:
        await peer.start()
    capped = _Capped(t, peers, [], zmq.asyncio.Context(), [])

    async def drain() -> None:
        while True:
            capped.got.extend(await t.recv_batch())

    task = asyncio.ensure_future(drain())
    try:
        yield capped
    finally:
        task.cancel()
        for sock in capped.socks:
            sock.close(linger=0)
        capped.ctx.term()
        for x in (*peers, t):
            await x.aclose()


@pytest.mark.asyncio
async def test_plain_connections_beyond_the_cap_are_refused_and_links_up_stay() -> None:
    async with _capped(4, "friend") as c:
        t, (friend,), got = c.victim, c.peers, c.got
        assert friend.send(Peer(t.node_id, t.endpoint), b"hello")  # a link up before the flood
        await until(lambda: got == [("friend", b"hello")])
        c.socks += await _one_by_one(c.ctx, t, 10)
        assert t.counters["router.handshake_succeeded"] == 4  # the friend's and three more
        assert t.counters["zap.refused.connections"] == 7
        assert friend.send(Peer(t.node_id, t.endpoint), b"still linked")
        await until(lambda: ("friend", b"still linked") in got)


@pytest.mark.asyncio
async def test_a_peer_refused_at_the_cap_sees_its_link_fail_and_is_let_in_once_room_frees() -> None:
    """A legitimate agent that dials during a burst beyond the cap is refused at the handshake.
    libzmq does not retry a refused plain-text dial, so the link must be reported failed (the
    membership layer repairs from there), and a later send must dial afresh, not queue behind
    the dead dealer."""
    async with _capped(2, "friend", "late") as c:
        t, (friend, late), got = c.victim, c.peers, c.got
        assert friend.send(Peer(t.node_id, t.endpoint), b"hello")
        await until(lambda: got == [("friend", b"hello")])
        c.socks += await _one_by_one(c.ctx, t, 1)  # the friend and this one fill the cap
        assert t.counters["router.handshake_succeeded"] == 2
        refused = t.counters["zap.refused.connections"]
        assert late.send(Peer(t.node_id, t.endpoint), b"refused")
        events = await asyncio.wait_for(late.link_events(), 10.0)
        assert [(e.peer_id, e.cause) for e in events] == [(t.node_id, LinkFailure.HANDSHAKE_FAILED)]
        assert t.counters["zap.refused.connections"] == refused + 1
        assert ("late", b"refused") not in got
        closed = t.counters["router.disconnected"]
        for sock in c.socks:
            sock.close(linger=0)
        c.socks.clear()
        await until(lambda: t.counters["router.disconnected"] > closed)
        assert late.send(Peer(t.node_id, t.endpoint), b"let in")
        await until(lambda: ("late", b"let in") in got)


# -- rate-limited warnings ----------------------------------------------------------------------


def test_log_rate_allows_n_lines_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    rate = LogRate(3, 10.0, clock=lambda: now[0])
    assert [rate.allow("k") for _ in range(5)] == [0, 0, 0, None, None]
    assert rate.allow("other kind") == 0
    assert rate.counters["log.suppressed"] == 2
    now[0] = 10.0
    assert rate.allow("k") == 2  # the first line of a new interval says what was left out
    assert rate.allow("k") == 0


def test_rate_limit_filter_keeps_a_flood_to_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("ray_hyparview.test_flood")
    rate = LogRate(5, 60.0)
    caplog.handler.addFilter(RateLimitFilter(rate))
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            for index in range(1000):
                logger.warning("dropping link to %s after repeated bad frames", f"id{index}")
            logger.info("info lines pass")
    finally:
        caplog.handler.filters.clear()
    assert len(caplog.records) == 6
    assert rate.counters["log.suppressed"] == 995
