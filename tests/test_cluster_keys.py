"""Per-node keys admitted from a directory that changes (the GCS in Ray mode), without Ray:
real ZeroMQ transports on 127.0.0.1 driven by :class:`GcsKeyring` over a dict."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ray_hyparview.cluster.keys import (
    INSECURE_WARNING,
    KEY_SOURCE,
    GcsKeyring,
    NodeKeys,
    key_policy,
    node_security,
    published_keys,
    sidecar_policy,
)
from ray_hyparview.config.keys import generate_keypair, write_keypair
from ray_hyparview.config.strategy import Security, Strategy, StrategyError
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport import LinkFailure
from ray_hyparview.transport.zmq import CurveConfig, ZmqOptions, ZmqTransport
from tests.test_transport_zmq import collect, recv_n, until

FAST = ZmqOptions(heartbeat_ivl=0.1, heartbeat_timeout=0.3, dial_timeout=1.0)
DEADLINE = 5.0


class Node:
    """A transport whose peers' keys come from ``directory`` through a keyring."""

    def __init__(self, node_id: str, directory: dict[str, dict[str, Any]], **kw: Any) -> None:
        public, secret = generate_keypair()
        self.security = Security(public_key=public, secret_key=secret, key_source=KEY_SOURCE)
        self.t = ZmqTransport(
            node_id, options=FAST, curve=CurveConfig(public_key=public, secret_key=secret)
        )
        self.counters: Counter[str] = Counter()
        self.keyring = GcsKeyring(
            node_id, self.security, lambda: dict(directory), self.counters, **kw
        )
        self.directory = directory

    async def start(self, *, publish: bool = True) -> None:
        await self.t.start()
        self.keyring.attach(self.t)
        if publish:
            self.directory[self.t.node_id] = {
                "endpoint": self.t.endpoint,
                "public_key": self.security.public_key,
            }

    @property
    def peer(self) -> Peer:
        return Peer(self.t.node_id, self.t.endpoint)


@pytest_asyncio.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        await node.t.aclose()


@pytest.mark.asyncio
async def test_a_key_published_after_start_is_admitted_both_ways(nodes: list[Node]) -> None:
    directory: dict[str, dict[str, Any]] = {}
    a, b = Node("a", directory, min_interval=0.0), Node("b", directory, min_interval=0.0)
    nodes += [a, b]
    await b.start()
    await a.start()  # published after b read anything: b learns a's key when a knocks
    assert a.t.send(b.peer, b"hello")  # a knows no key for b yet: one refresh finds it
    assert await recv_n(b.t, 1) == [("a", b"hello")]
    assert b.t.send(a.peer, b"back")
    assert await recv_n(a.t, 1) == [("b", b"back")]
    assert b.t.counters["zap.allowed"] >= 1
    assert a.t.counters["zap.allowed"] >= 1
    assert b.t.counters["zap.denied"] == 0
    assert a.counters["keys.refreshes"] >= 1
    assert b.counters["keys.refreshes"] >= 1


@pytest.mark.asyncio
async def test_unpublished_keys_are_refused_and_refreshes_are_rate_limited(
    nodes: list[Node],
) -> None:
    directory: dict[str, dict[str, Any]] = {}
    b = Node("b", directory, min_interval=60.0, burst=1)
    nodes.append(b)
    await b.start()
    await b.keyring.refresh()  # the one read the bucket holds for the next 60 s
    reads = b.counters["keys.refreshes"]
    strangers = [Node(f"s{i}", {"b": dict(directory["b"])}) for i in range(5)]
    nodes += strangers
    for s in strangers:
        await s.start(publish=False)  # keys nobody published
        assert s.t.send(b.peer, b"let me in")
    for s in strangers:
        events = await asyncio.wait_for(s.t.link_events(), DEADLINE)
        assert [e.cause for e in events] == [LinkFailure.HANDSHAKE_FAILED]
    assert b.t.counters["zap.denied"] == 5
    assert b.t.counters["recv.msgs"] == 0
    assert b.counters["keys.refreshes"] == reads  # five knocks, no more reads of the GCS
    assert b.counters["keys.refresh_skipped"] >= 5


@pytest.mark.asyncio
async def test_a_replaced_nodes_old_key_stops_being_admitted(nodes: list[Node]) -> None:
    directory: dict[str, dict[str, Any]] = {}
    a, b = Node("a", directory, min_interval=0.0), Node("b", directory, min_interval=0.0)
    nodes += [a, b]
    await b.start()
    await a.start()
    assert a.t.send(b.peer, b"one")
    assert await recv_n(b.t, 1) == [("a", b"one")]
    old_key = a.security.public_key
    # Node a dies and is replaced by an agent with a new key under the same id.
    await a.t.aclose()
    a2 = Node("a", directory, min_interval=0.0)
    nodes.append(a2)
    await a2.start()
    await b.keyring.refresh()
    assert b.keyring.keys["a"] == a2.security.public_key != old_key
    assert a2.t.send(b.peer, b"two")
    assert await recv_n(b.t, 1) == [("a", b"two")]
    # Someone still holding the old key pair is now refused.
    old = ZmqTransport(
        "a",
        options=FAST,
        curve=CurveConfig(
            public_key=old_key,
            secret_key=a.security.secret_key,
            node_keys={"b": b.security.public_key},
        ),
    )
    await old.start()
    try:
        denied = b.t.counters["zap.denied"]
        assert old.send(b.peer, b"stale")
        events = await asyncio.wait_for(old.link_events(), DEADLINE)
        assert [e.cause for e in events] == [LinkFailure.HANDSHAKE_FAILED]
        assert b.t.counters["zap.denied"] == denied + 1
    finally:
        await old.aclose()


@pytest.mark.asyncio
async def test_a_key_speaks_only_for_the_id_it_was_published_under(nodes: list[Node]) -> None:
    directory: dict[str, dict[str, Any]] = {}
    a, b, c = (Node(n, directory, min_interval=0.0) for n in "abc")
    nodes += [a, b, c]
    for n in (a, b, c):
        await n.start()
    # c presents its own (published) key but claims to be a.
    liar = ZmqTransport(
        "a",
        options=FAST,
        curve=CurveConfig(
            public_key=c.security.public_key,
            secret_key=c.security.secret_key,
            node_keys={"b": b.security.public_key},
        ),
    )
    await liar.start()
    got: list[tuple[str, bytes]] = []
    drain = asyncio.ensure_future(collect(b.t, got))
    try:
        assert liar.send(b.peer, b"I am a")
        await until(lambda: b.t.counters["recv.dropped.impersonation"] >= 1)
        assert got == []
    finally:
        drain.cancel()
        await liar.aclose()


def test_a_key_published_under_two_ids_is_bound_to_neither() -> None:
    k1, _ = generate_keypair()
    k2, _ = generate_keypair()
    counters: Counter[str] = Counter()
    published = {
        "x": {"public_key": k1},
        "y": {"public_key": k1},
        "z": {"public_key": k2},
        "old": {"endpoint": "tcp://127.0.0.1:1"},
        "junk": {"public_key": "not a key"},
    }
    assert published_keys(published, counters) == {"z": k2}
    assert counters["keys.duplicate"] == 1


def test_policies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert key_policy(None) == NodeKeys()
    assert key_policy(None, key_file="/k") == NodeKeys("/k")
    with caplog.at_level(logging.WARNING, logger="ray_hyparview.cluster"):
        assert key_policy(None, insecure=True) is None
    assert INSECURE_WARNING in caplog.text
    public, secret = generate_keypair()
    given = Security(public_key=public, secret_key=secret)
    assert key_policy(given) is given
    with pytest.raises(ValueError, match="insecure"):
        key_policy(given, insecure=True)
    # Two fresh pairs differ; a key file is loaded.
    assert node_security(NodeKeys()).public_key != node_security(NodeKeys()).public_key
    files = write_keypair(tmp_path, "n1")
    loaded = node_security(NodeKeys(str(files.secret_file)))
    assert (loaded.public_key, loaded.key_source) == (files.public_key, KEY_SOURCE)
    # The sidecar takes run's [security] table (as the strategy parsed it); without one it
    # makes a pair; --insecure with a key pair is a contradiction.
    config = tmp_path / "node.toml"
    config.write_text('[node]\nid = "n1"\nendpoint = "tcp://127.0.0.1:0"\n'
                      '[security]\nsecret_key_file = "n1.key_secret"\n')  # fmt: skip
    parsed = Strategy.from_file(config).security
    side = sidecar_policy(parsed, insecure=False)
    assert side is not None
    assert side.public_key == files.public_key
    assert side.key_source == KEY_SOURCE
    fresh = sidecar_policy(None, insecure=False)
    assert fresh is not None
    assert fresh.public_key != files.public_key
    assert sidecar_policy(None, insecure=True) is None
    with pytest.raises(StrategyError, match="insecure"):
        sidecar_policy(parsed, insecure=True)


@pytest.mark.asyncio
async def test_a_dial_with_a_stale_key_makes_the_next_one_use_the_new_key(
    nodes: list[Node],
) -> None:
    directory: dict[str, dict[str, Any]] = {}
    a, b = Node("a", directory, min_interval=0.0), Node("b", directory, min_interval=0.0)
    nodes += [a, b]
    await b.start()
    await a.start()
    assert a.t.send(b.peer, b"one")
    assert await recv_n(b.t, 1) == [("a", b"one")]
    # b is replaced by an agent with a new key; a still holds the old one.
    await b.t.aclose()
    b2 = Node("b", directory, min_interval=0.0)
    nodes.append(b2)
    await b2.start()
    assert a.t.send(b2.peer, b"lost")
    events = await asyncio.wait_for(a.t.link_events(), DEADLINE)
    assert events[0].cause in {
        LinkFailure.HANDSHAKE_FAILED,
        LinkFailure.DIAL_TIMEOUT,
        LinkFailure.DISCONNECTED,
    }
    # That failure made a read the directory again: the next dial uses b2's key.
    await until(lambda: a.keyring.keys["b"] == b2.security.public_key)
    assert a.t.send(b2.peer, b"two")
    assert await recv_n(b2.t, 1) == [("a", b"two")]


def test_insecure_is_refused_without_ray_address(capsys: pytest.CaptureFixture[str]) -> None:
    from ray_hyparview.cli.main import main

    assert main(["run", "--insecure", "--id", "n1", "--bind", "tcp://127.0.0.1:0"]) == 1
    assert "--insecure needs --ray-address" in capsys.readouterr().err
