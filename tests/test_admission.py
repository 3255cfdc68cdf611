"""The CURVE admission rule has one copy, in the transport; the configuration's view of it is
that copy. These tests run the objects a running agent uses: the ZeroMQ transport that
``make_transport`` builds from a strategy, and its ZAP and frame checks."""

from __future__ import annotations

import itertools

import pytest

from ray_hyparview.agent.node import make_transport
from ray_hyparview.config.keys import generate_keypair
from ray_hyparview.config.strategy import Security, Strategy
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport.admission import KeyRule
from ray_hyparview.transport.zmq import ZAP_DOMAIN, ZmqTransport

PUB1, SEC1 = generate_keypair()
PUB2, _ = generate_keypair()
PUB3, _ = generate_keypair()
SHARED, _ = generate_keypair()
STRANGER, _ = generate_keypair()


def test_rule() -> None:
    rule = KeyRule({"a": PUB1, "b": PUB2}, [SHARED])
    assert rule.may_claim("a", PUB1)
    assert not rule.may_claim("a", PUB2)  # a is bound to another key
    assert not rule.may_claim("c", PUB2)  # a bound key speaks for its own id only
    assert rule.may_claim("c", SHARED)  # allow-listed key, unbound id
    assert not rule.may_claim("a", SHARED)  # ... but not a bound id
    assert not rule.may_claim("c", STRANGER)
    assert not rule.may_claim("a", None)
    assert rule.admits(PUB2)
    assert rule.admits(SHARED)
    assert not rule.admits(STRANGER)
    with pytest.raises(ValueError, match="one key to two node ids"):
        KeyRule({"a": PUB1, "b": PUB1})


def test_security_and_the_running_transport_decide_alike() -> None:
    """``Security.may_claim`` answers what the transport built from the same strategy does,
    for every id and key, because both run :class:`KeyRule`."""
    strategy = Strategy(
        local_peer=Peer("a", "tcp://127.0.0.1:0"),
        security=Security(
            public_key=PUB1,
            secret_key=SEC1,
            allowed_keys={"a": PUB1, "b": PUB2, "c": PUB3},
            allow_list=frozenset({SHARED}),
        ),
    )
    security = strategy.security
    assert security is not None
    transport = make_transport(strategy)
    assert isinstance(transport, ZmqTransport)
    auth = transport._auth
    assert auth is not None
    ids = ["a", "b", "c", "d"]
    keys = [PUB1, PUB2, PUB3, SHARED, STRANGER]
    for node_id, key in itertools.product(ids, keys):
        assert auth.may_claim(node_id, key) == security.may_claim(node_id, key), (node_id, key)
    for key in keys:
        assert auth.callback(ZAP_DOMAIN, key.encode()) == security.is_allowed(key), key
    assert not auth.may_claim("d", None)
