"""The strategy config and CURVE key files: valid configs load, invalid ones say why."""

from __future__ import annotations

import copy
import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_hyparview.config.keys import (
    KeyFileError,
    cmd_keygen,
    generate_keypair,
    is_z85_key,
    load_keypair,
    write_keypair,
)
from ray_hyparview.config.strategy import (
    ENV_VARS,
    NodeSpec,
    Security,
    Strategy,
    StrategyError,
    TransportLimits,
    apply_env,
    cmd_check,
    validate_endpoint,
)
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError, HyParViewError
from ray_hyparview.protocol.peer import Peer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

PUB1, SEC1 = generate_keypair()
PUB2, SEC2 = generate_keypair()
PUB3, SEC3 = generate_keypair()


def base() -> dict[str, Any]:
    """A valid three-node mapping that each invalid case below spoils in one place."""
    return {
        "node": {"id": "n1", "bind": "tcp://0.0.0.0:7001", "contacts": ["n2", "n3"]},
        "hyparview": {"active_view_size": 4, "keepalive_interval": 0.25},
        "transport": {"kind": "zmq", "heartbeat_interval": 0.2, "heartbeat_timeout": 1.0},
        "agent": {"control": "ipc:///tmp/rh-test.ctl", "metrics_port": 9464, "log_level": "debug"},
        "nodes": {
            "n1": "tcp://127.0.0.1:7001",
            "n2": "tcp://127.0.0.1:7002",
            "n3": {"endpoint": "tcp://127.0.0.1:7003"},
        },
    }


def secured() -> dict[str, Any]:
    data = base()
    data["security"] = {"public_key": PUB1, "secret_key": SEC1}
    data["nodes"] = {
        "n1": {"endpoint": "tcp://127.0.0.1:7001", "public_key": PUB1},
        "n2": {"endpoint": "tcp://127.0.0.1:7002", "public_key": PUB2},
        "n3": {"endpoint": "tcp://127.0.0.1:7003", "public_key": PUB3},
    }
    return data


# -- valid configs ----------------------------------------------------------------------------


def test_mapping_loads_every_field() -> None:
    s = Strategy.from_mapping(base())
    assert s.local_peer == Peer("n1")
    assert s.local_peer.endpoint == "tcp://127.0.0.1:7001"
    assert [(p.id, p.endpoint) for p in s.contacts] == [
        ("n2", "tcp://127.0.0.1:7002"),
        ("n3", "tcp://127.0.0.1:7003"),
    ]
    assert s.bind == "tcp://0.0.0.0:7001"
    assert s.transport == "zmq"
    assert s.hyparview_config == HyParViewConfig(active_view_size=4, keepalive_interval=0.25)
    assert s.heartbeat_interval == 0.2
    assert s.heartbeat_timeout == 1.0
    assert s.control == "ipc:///tmp/rh-test.ctl"
    assert s.metrics_port == 9464
    assert s.log_level == "DEBUG"
    assert s.nodes["n3"] == NodeSpec(endpoint="tcp://127.0.0.1:7003")
    assert s.security is None
    assert s.endpoint_of("n2") == "tcp://127.0.0.1:7002"
    assert s.endpoint_of("n9") is None


def test_defaults_are_derived() -> None:
    s = Strategy.from_mapping(
        {"node": {"id": "b"}, "nodes": {"a": "tcp://h1:1", "b": "tcp://h2:2"}}
    )
    assert s.local_peer.endpoint == "tcp://h2:2"
    assert s.bind == "tcp://h2:2"
    assert [p.id for p in s.contacts] == ["a"]  # every other listed node
    assert s.hyparview_config == HyParViewConfig()
    assert s.transport == "zmq"
    assert s.control is None
    assert s.metrics_port is None


def test_first_node_has_no_contacts() -> None:
    s = Strategy.from_mapping(
        {"node": {"id": "a", "endpoint": "tcp://127.0.0.1:0", "contacts": []}, "nodes": {}}
    )
    assert s.contacts == ()
    assert s.bind == "tcp://127.0.0.1:0"


def test_endpoint_defaults_to_a_dialable_bind() -> None:
    s = Strategy.from_mapping({"node": {"id": "a", "bind": "tcp://127.0.0.1:0"}})
    assert s.local_peer.endpoint == "tcp://127.0.0.1:0"
    assert s.advertised_peer("tcp://127.0.0.1:41000").endpoint == "tcp://127.0.0.1:41000"
    assert Strategy.from_mapping(s.to_mapping()) == s
    with pytest.raises(StrategyError, match=r"^node\.endpoint: expected this node's endpoint"):
        Strategy.from_mapping({"node": {"id": "a", "bind": "tcp://0.0.0.0:7946"}})


def test_python_constructor_resolves_bare_peers() -> None:
    s = Strategy(
        local_peer=Peer("a"),
        contacts=(Peer("b"), Peer("c", "mem://c")),
        nodes={"a": NodeSpec(endpoint="mem://a"), "b": "mem://b"},  # type: ignore[dict-item]
        transport="memory",
    )
    assert s.local_peer.endpoint == "mem://a"
    assert [p.endpoint for p in s.contacts] == ["mem://b", "mem://c"]
    assert s.nodes["b"] == NodeSpec(endpoint="mem://b")
    with pytest.raises(TypeError):
        s.nodes["x"] = NodeSpec(endpoint="mem://x")  # type: ignore[index]
    nodes: dict[str, Any] = {"b": "tcp://h:1"}
    with pytest.raises(StrategyError, match=r"^nodes\.b\.endpoint: expected an in-memory"):
        Strategy(local_peer=Peer("a", "mem://a"), nodes=nodes, transport="memory")
    with pytest.raises(StrategyError, match=r"needs transport\.kind = 'memory'"):
        Strategy(local_peer=Peer("a", "mem://a"))


def test_equality_sees_endpoints_and_strategies_hash() -> None:
    a = Strategy.from_mapping(secured())
    b = Strategy.from_mapping(_set(secured(), "nodes.n2.endpoint", "tcp://127.0.0.1:7999"))
    assert a.contacts == b.contacts  # Peer equality is by id...
    assert a != b  # ...but a strategy compares endpoints too
    assert a == Strategy.from_mapping(secured())
    assert hash(a) == hash(Strategy.from_mapping(secured()))
    assert len({a, b, Strategy.from_mapping(secured())}) == 2


@pytest.mark.parametrize(
    ("endpoint", "bound", "advertised"),
    [
        ("tcp://10.0.0.1:0", "tcp://0.0.0.0:40123", "tcp://10.0.0.1:40123"),
        ("tcp://[::1]:0", "tcp://[::1]:40123", "tcp://[::1]:40123"),
        ("tcp://10.0.0.1:7946", "tcp://0.0.0.0:7946", "tcp://10.0.0.1:7946"),
        ("ipc:///tmp/a", "ipc:///tmp/a", "ipc:///tmp/a"),
    ],
)
def test_advertised_peer_fills_in_the_bound_port(
    endpoint: str, bound: str, advertised: str
) -> None:
    s = Strategy(local_peer=Peer("a", endpoint), bind="tcp://0.0.0.0:0")
    assert s.advertised_peer(bound).endpoint == advertised
    assert s.advertised_peer(bound).id == "a"


def test_keepalive_off_is_false() -> None:
    data = base()
    data["hyparview"] = {"keepalive_interval": False}
    s = Strategy.from_mapping(data)
    assert s.hyparview_config.keepalive_interval is None
    assert s.to_mapping()["hyparview"] == {"keepalive_interval": False}


def test_file_and_env_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        """
[node]
id = "n1"
endpoint = "tcp://127.0.0.1:7001"
contacts = ["n2"]
[hyparview]
active_view_size = 4
arwl = 5
[nodes]
n2 = "tcp://127.0.0.1:7002"
"""
    )
    plain = Strategy.from_file(path)
    assert plain.hyparview_config.active_view_size == 4
    env = {
        "RAY_HYPARVIEW_BIND": "tcp://0.0.0.0:7001",
        "RAY_HYPARVIEW_ACTIVE_VIEW_SIZE": "6",
        "RAY_HYPARVIEW_CONTACTS": "n2, n9=tcp://10.0.0.9:7946",
        "RAY_HYPARVIEW_NODES": "n2=tcp://127.0.0.1:7012",
        "RAY_HYPARVIEW_KEEPALIVE_INTERVAL": "off",
        "RAY_HYPARVIEW_METRICS_PORT": "0",
        "RAY_HYPARVIEW_LOG_LEVEL": "warning",
        "UNRELATED": "ignored",
    }
    s = Strategy.from_file(path, environ=env)
    assert s.bind == "tcp://0.0.0.0:7001"
    assert s.hyparview_config.active_view_size == 6
    assert s.hyparview_config.arwl == 5  # untouched file value
    assert s.hyparview_config.keepalive_interval is None
    assert [(p.id, p.endpoint) for p in s.contacts] == [
        ("n2", "tcp://127.0.0.1:7012"),
        ("n9", "tcp://10.0.0.9:7946"),
    ]
    assert s.metrics_port == 0
    assert s.log_level == "WARNING"
    assert Strategy.from_env(path, env) == s
    assert Strategy.from_env(plain, env).hyparview_config == s.hyparview_config


def test_env_alone_and_node_id_switch() -> None:
    shared = Strategy.from_mapping(base() | {"node": {"id": "n1"}})
    s = Strategy.from_env(shared, {"RAY_HYPARVIEW_NODE_ID": "n3"})
    assert s.local_peer.endpoint == "tcp://127.0.0.1:7003"
    assert s.bind == "tcp://127.0.0.1:7003"
    assert [p.id for p in s.contacts] == ["n1", "n2"]
    alone = Strategy.from_env(
        None,
        {
            "RAY_HYPARVIEW_NODE_ID": "x",
            "RAY_HYPARVIEW_ENDPOINT": "tcp://127.0.0.1:0",
            "RAY_HYPARVIEW_CONTACTS": "",
        },
    )
    assert alone.local_peer.id == "x"
    assert alone.contacts == ()


def test_env_empty_turns_optional_off() -> None:
    s = Strategy.from_env(
        base(), {"RAY_HYPARVIEW_CONTROL": "", "RAY_HYPARVIEW_METRICS_PORT": "none"}
    )
    assert s.control is None
    assert s.metrics_port is None


def test_apply_env_merges_nodes_keeping_keys() -> None:
    merged = apply_env(secured(), {"RAY_HYPARVIEW_NODES": "n2=tcp://10.0.0.2:1,n4=tcp://h:4"})
    assert merged["nodes"]["n2"] == {"endpoint": "tcp://10.0.0.2:1", "public_key": PUB2}
    assert merged["nodes"]["n4"] == {"endpoint": "tcp://h:4"}
    assert secured()["nodes"]["n2"]["endpoint"] == "tcp://127.0.0.1:7002"  # input untouched


def test_every_config_field_has_an_env_var() -> None:
    for name in HyParViewConfig.__dataclass_fields__:
        assert ENV_VARS[name.upper()][0] == f"hyparview.{name}"


# -- security ---------------------------------------------------------------------------------


def test_security_merges_node_keys_and_decides_claims() -> None:
    data = secured()
    extra_pub, _ = generate_keypair()
    data["security"]["allow_list"] = [extra_pub]
    s = Strategy.from_mapping(data)
    sec = s.security
    assert sec is not None
    assert dict(sec.allowed_keys) == {"n1": PUB1, "n2": PUB2, "n3": PUB3}
    assert sec.public_key_bytes == PUB1.encode()
    assert sec.is_allowed(PUB2)
    assert sec.is_allowed(extra_pub.encode())
    assert not sec.is_allowed(generate_keypair()[0])
    assert sec.may_claim("n2", PUB2)
    assert not sec.may_claim("n2", PUB3)  # n2 is bound to another key
    assert not sec.may_claim("n9", PUB3)  # a bound key speaks for its own id only
    assert sec.may_claim("n9", extra_pub)  # allow-listed key, unbound id
    assert not sec.may_claim("n2", extra_pub)
    assert SEC1 not in repr(s)
    assert s.warnings() == ()
    assert sec.server_key_for("n3") == PUB3
    assert sec.server_key_for("n9") is None


def test_shared_cluster_key_pair() -> None:
    """Every node holds the same pair: no key is bound to an id, any id may be claimed with
    it, and dials to nodes learned later expect it."""
    data = base()
    data["security"] = {"secret_key": SEC1, "allow_list": [PUB1], "default_server_key": PUB1}
    s = Strategy.from_mapping(data)
    assert s.security is not None
    assert s.security.may_claim("n7", PUB1)
    assert s.security.server_key_for("n7") == PUB1
    assert Strategy.from_mapping(s.to_mapping()) == s


def test_public_key_is_derived_from_secret() -> None:
    data = secured()
    del data["security"]["public_key"]
    s = Strategy.from_mapping(data)
    assert s.security is not None
    assert s.security.public_key == PUB1


def test_secret_key_file_relative_to_config(tmp_path: Path) -> None:
    files = write_keypair(tmp_path / "keys", "n1")
    path = tmp_path / "s.toml"
    path.write_text(
        '[node]\nid = "n1"\nendpoint = "tcp://127.0.0.1:7001"\ncontacts = []\n'
        '[security]\nsecret_key_file = "keys/n1.key_secret"\n'
        f'allow_list = ["{PUB2}"]\n'
    )
    s = Strategy.from_file(path)
    assert s.security is not None
    assert s.security.public_key == files.public_key
    assert s.security.secret_key_file == str(files.secret_file)
    mapping = s.to_mapping()
    assert "secret_key" not in mapping["security"]  # the path is dumped, not the secret
    assert Strategy.from_mapping(mapping) == s
    files.secret_file.chmod(0o644)
    assert any("chmod 600" in note for note in Strategy.from_file(path).warnings())


def test_plain_text_on_public_bind_warns() -> None:
    notes = Strategy.from_mapping(base()).warnings()
    assert any("plain text" in note for note in notes)
    loopback = base()
    del loopback["node"]["bind"]
    assert not any("plain text" in n for n in Strategy.from_mapping(loopback).warnings())


# -- invalid values ---------------------------------------------------------------------------


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    table = data
    for part in parents:
        table = table.setdefault(part, {})
    if value is _DELETE:
        del table[leaf]
    else:
        table[leaf] = value
    return data


_DELETE = object()

INVALID: list[tuple[str, Any, str, str, str]] = [
    # (path to spoil, value, expected error key, fragment of the expectation, base mapping;
    # "n1-bare" is the secured mapping with n1 listed without its public key)
    ("hyparvew", {}, "hyparvew", "did you mean 'hyparview'", "plain"),
    ("contacts", ["n2"], "contacts", "[node] table", "plain"),
    ("node.idd", "x", "node.idd", "did you mean 'id'", "plain"),
    ("hyparview.actve_view_size", 3, "hyparview.actve_view_size", "'active_view_size'", "plain"),
    ("nodes.n3.endpont", "tcp://h:1", "nodes.n3.endpont", "did you mean 'endpoint'", "plain"),
    ("node.id", _DELETE, "node.id", "this node's id", "plain"),
    ("node.id", 7, "node.id", "a node id", "plain"),
    ("node.id", "has space", "node.id", "a node id", "plain"),
    ("node.id", "", "node.id", "a node id", "plain"),
    ("node.endpoint", "tcp://127.0.0.1:7009", "node.endpoint", "nodes.n1 lists", "plain"),
    ("node.bind", "udp://h:1", "node.bind", "tcp://host:port", "plain"),
    ("node.bind", "tcp://h:65536", "node.bind", "port 0-65535", "plain"),
    ("node.bind", 7001, "node.bind", "an endpoint string", "plain"),
    ("node.contacts", "n2", "node.contacts", "a list", "plain"),
    ("node.contacts", ["n9"], "node.contacts[0]", "listed in [nodes]", "plain"),
    ("node.contacts", ["n2", "n22"], "node.contacts[1]", "listed in [nodes]", "plain"),
    ("node.contacts", ["n1"], "node.contacts[0]", "another node", "plain"),
    ("node.contacts", ["n2", "n2"], "node.contacts[1]", "each contact once", "plain"),
    ("node.contacts", [3], "node.contacts[0]", "a node id", "plain"),
    ("node.contacts", ["n9="], "node.contacts[0]", "non-empty endpoint", "plain"),
    ("node.contacts", ["n9=tcp://h:0"], "node.contacts[0]", "port 1-65535", "plain"),
    ("node.contacts", ["n9=tcp://*:1"], "node.contacts[0]", "wildcard", "plain"),
    ("node.contacts", ["n2=tcp://h:9"], "node.contacts[0]", "nodes.n2 lists", "plain"),
    ("nodes.n3.endpoint", "tcp://h", "nodes.n3.endpoint", "tcp://host:port", "plain"),
    ("nodes.n3.endpoint", "tcp://h:0", "nodes.n3.endpoint", "port 1-65535", "plain"),
    ("nodes.n3.endpoint", "tcp://10.0.0.256:1", "nodes.n3.endpoint", "tcp://host", "plain"),
    ("nodes.n3.endpoint", "tcp://[zz]:1", "nodes.n3.endpoint", "tcp://host", "plain"),
    ("nodes.n3.endpoint", "ipc://" + "x" * 200, "nodes.n3.endpoint", "ipc://path", "plain"),
    ("nodes.n3.endpoint", _DELETE, "nodes.n3.endpoint", "the node's endpoint", "plain"),
    ("nodes.n3", 5, "nodes.n3", "an endpoint string or a table", "plain"),
    ("nodes.n3.public_key", "short", "nodes.n3.public_key", "40 characters", "plain"),
    ("nodes.contacts", ["n2"], "nodes.contacts", "[node] table", "plain"),
    ("hyparview.arwl", 0, "hyparview.arwl", "at least 1", "plain"),
    ("hyparview.prwl", 7, "hyparview.prwl", "at most arwl", "plain"),
    ("hyparview.active_view_size", "5", "hyparview.active_view_size", "an integer", "plain"),
    ("hyparview.active_view_size", 2.5, "hyparview.active_view_size", "an integer", "plain"),
    ("hyparview.shuffle_interval", True, "hyparview.shuffle_interval", "seconds", "plain"),
    ("hyparview.shuffle_interval", -1.0, "hyparview.shuffle_interval", "greater than 0", "plain"),
    ("hyparview.keepalive_timeout", 0.1, "hyparview.keepalive_timeout", "keepalive_", "plain"),
    ("hyparview", [], "hyparview", "a table", "plain"),
    ("transport.kind", "tcp", "transport.kind", "'zmq', 'memory'", "plain"),
    ("transport.heartbeat_interval", 0, "transport.heartbeat_interval", "greater than 0", "plain"),
    ("transport.heartbeat_timeout", 0.1, "transport.heartbeat_timeout", "more than", "plain"),
    ("transport.heartbeat_timeout", "1s", "transport.heartbeat_timeout", "seconds", "plain"),
    ("agent.control", "tcp://10.0.0.1:7199", "agent.control", "local endpoint", "plain"),
    ("agent.control", "tcp://127.0.0.1:70000", "agent.control", "local endpoint", "plain"),
    ("agent.metrics_port", 70000, "agent.metrics_port", "0-65535", "plain"),
    ("agent.metrics_port", "9464", "agent.metrics_port", "0-65535", "plain"),
    ("agent.log_level", "LOUD", "agent.log_level", "'DEBUG'", "plain"),
    ("security.secret_key", _DELETE, "security.secret_key", "secret key", "secure"),
    ("security.secret_key", "x" * 39, "security.secret_key", "40 characters", "secure"),
    ("security.secret_key", "\"" * 40, "security.secret_key", "Z85", "secure"),
    ("security.public_key", PUB2, "security.public_key", "belongs to", "secure"),
    ("security.public_key", PUB2[:-1], "security.public_key", "40 characters", "secure"),
    ("security", {"secret_key_file": "/no/k"}, "security.secret_key_file", "readable", "secure"),
    ("security.allow_list", PUB2, "security.allow_list", "a list", "secure"),
    ("security.allow_list", ["nope"], "security.allow_list[0]", "40 characters", "secure"),
    ("security.allowed_keys", {"n2": PUB3}, "nodes.n2.public_key", "bound to one key", "secure"),
    ("security.allowed_keys", {"n9": PUB2}, "nodes.n2.public_key", "no other node", "secure"),
    ("security.allowed_keys", {"a": PUB2, "b": PUB2}, "security.allowed_keys.b", "no ", "secure"),
    ("nodes.n1.public_key", PUB2, "nodes.n1.public_key", "this node's own", "secure"),
    ("nodes.n3.public_key", PUB2, "nodes.n3.public_key", "no other node", "secure"),
    ("security.allowed_keys", {"n9": PUB1}, "nodes.n1.public_key", "no other node", "secure"),
    ("security.allowed_keys", {"n9": PUB1}, "security.allowed_keys.n9", "other than", "n1-bare"),
    ("security.colour", "red", "security.colour", "a key of [security]", "secure"),
    ("security.default_server_key", "k", "security.default_server_key", "40 char", "secure"),
    ("security", {"secret_key_file": " "}, "security.secret_key_file", "a file path", "secure"),
    # What `run` would crash on or spin with, refused by `check` as well:
    ("node.id", "n" * 241, "node.id", "1-240 bytes of UTF-8", "plain"),
    ("node.id", "\u00e9" * 121, "node.id", "1-240 bytes of UTF-8", "plain"),
    ("node.id", "n\x01", "node.id", "control characters", "plain"),
    ("node.id", "n\x7f", "node.id", "control characters", "plain"),
    ("hyparview.shuffle_interval", 1e-9, "hyparview.shuffle_interval", "at least 0.01", "plain"),
    ("hyparview.keepalive_interval", 1e-9, "hyparview.keepalive_interval", "at least", "plain"),
    ("hyparview.probe_interval_min", 1e-6, "hyparview.probe_interval_min", "at least", "plain"),
    ("hyparview.rejoin_backoff_initial", 1e-9, "hyparview.rejoin_backoff_initial", "at least",
     "plain"),
    ("transport.heartbeat_interval", 1e-9, "transport.heartbeat_interval", "at least 0.01",
     "plain"),
    ("nodes.n3.endpoint", "tcp://127.0.0.1:7002", "nodes.n3.endpoint", "no other node id uses",
     "plain"),
    ("node.contacts", ["n2", "n9=tcp://127.0.0.1:7003"], "node.contacts[1]", "no other node id",
     "plain"),
    ("transport.recv_hwm", 0, "transport.recv_hwm", "from 1", "plain"),
    ("transport.recv_hwm", 1.5, "transport.recv_hwm", "an integer", "plain"),
    ("transport.max_msg_size", 1 << 20, "transport.max_msg_size", "to 65536", "plain"),
    ("transport.max_msg_size", 100, "transport.max_msg_size", "from 1024", "plain"),
    ("transport.max_connections", 0, "transport.max_connections", "from 1", "plain"),
    ("transport.max_strangers", -1, "transport.max_strangers", "from 1", "plain"),
    ("transport.log_lines", -1, "transport.log_lines", "from 0", "plain"),
    ("transport.log_interval", 1e-9, "transport.log_interval", "at least 0.01", "plain"),
    ("transport.stranger_timeout", 0, "transport.stranger_timeout", "greater than 0", "plain"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "key", "expected", "which"), INVALID)
def test_invalid_value_names_key_value_and_expectation(
    path: str, value: Any, key: str, expected: str, which: str
) -> None:
    data = base() if which == "plain" else secured()
    if which == "n1-bare":
        data["nodes"]["n1"] = "tcp://127.0.0.1:7001"
    data = _set(data, path, value)
    with pytest.raises(StrategyError) as info:
        Strategy.from_mapping(data, source="file test.toml")
    err = info.value
    assert err.key == key, str(err)
    assert expected in str(err), str(err)
    assert str(err).startswith(f"{key} (file test.toml): expected ")
    assert isinstance(err, ConfigError | HyParViewError | ValueError)
    if "a key of" in str(err):  # an unknown key: its name is the value shown
        assert repr(path.rsplit(".", 1)[-1]) in str(err)
    elif value is not _DELETE and not isinstance(value, dict | list) and "secret" not in path:
        assert repr(value)[:40] in str(err)
    if path == "security.secret_key" and isinstance(value, str):
        assert value not in str(err)  # secrets are never echoed
        assert "<secret, " in str(err)


def test_secret_key_next_to_secret_key_file(tmp_path: Path) -> None:
    files = write_keypair(tmp_path, "k")
    data = _set(secured(), "security.secret_key_file", str(files.secret_file))
    with pytest.raises(StrategyError, match=r"one of the two") as info:
        Strategy.from_mapping(data)
    assert SEC1 not in str(info.value)


def test_public_key_file_is_not_a_secret(tmp_path: Path) -> None:
    files = write_keypair(tmp_path, "k")
    data = secured()
    data["security"] = {"secret_key_file": str(files.public_file)}
    with pytest.raises(StrategyError, match="public key only"):
        Strategy.from_mapping(data)


@pytest.mark.parametrize(
    ("env", "key", "expected"),
    [
        ({"RAY_HYPARVIEW_ACTIVE_VIEW_SIZ": "3"}, "RAY_HYPARVIEW_ACTIVE_VIEW_SIZ", "VIEW_SIZE'"),
        ({"RAY_HYPARVIEW_ARWL": "six"}, "RAY_HYPARVIEW_ARWL", "an integer"),
        ({"RAY_HYPARVIEW_SHUFFLE_INTERVAL": "soon"}, "RAY_HYPARVIEW_SHUFFLE_INTERVAL", "a number"),
        ({"RAY_HYPARVIEW_NODES": "n4"}, "RAY_HYPARVIEW_NODES", "'id=endpoint'"),
        ({"RAY_HYPARVIEW_ACTIVE_VIEW_SIZE": "0"}, "hyparview.active_view_size", "at least 1"),
        ({"RAY_HYPARVIEW_CONTACTS": "n2,n7"}, "node.contacts[1]", "listed in [nodes]"),
        ({"RAY_HYPARVIEW_BIND": "tcp://h"}, "node.bind", "tcp://host:port"),
        ({"RAY_HYPARVIEW_NODES": "n4=tcp://h:1,n4=tcp://h:2"}, "RAY_HYPARVIEW_NODES", "once"),
        ({"RAY_HYPARVIEW_NODES": "n4=tcp://127.0.0.1:7002"}, "nodes.n4.endpoint", "no other"),
        ({"RAY_HYPARVIEW_HEARTBEAT_INTERVAL": "1e-9"}, "transport.heartbeat_interval", "at least"),
    ],
)  # fmt: skip
def test_invalid_env_names_the_variable(env: dict[str, str], key: str, expected: str) -> None:
    with pytest.raises(StrategyError) as info:
        Strategy.from_env(base(), env)
    assert info.value.key == key
    assert expected in str(info.value)
    assert any(var in str(info.value) for var in env)


def test_strategy_error_pickles() -> None:
    with pytest.raises(StrategyError) as info:
        Strategy.from_mapping(_set(secured(), "security.secret_key", "x" * 39), source="file f")
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, StrategyError)
    assert str(again) == str(info.value)
    assert (again.key, again.source) == ("security.secret_key", "file f")


def test_env_secret_replaces_the_file_key_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_keypair(tmp_path / "keys", "other")
    monkeypatch.chdir(tmp_path)
    env = {"RAY_HYPARVIEW_SECRET_KEY_FILE": "keys/other.key_secret"}  # relative to the cwd
    data = secured()
    data["nodes"]["n1"] = "tcp://127.0.0.1:7001"  # the file's n1 key would contradict
    s = Strategy.from_env(data, env)
    assert s.security is not None
    assert s.security.public_key == files.public_key
    assert s.security.secret_key_file == str(files.secret_file)
    public, secret = generate_keypair()
    s2 = Strategy.from_env(data, {"RAY_HYPARVIEW_SECRET_KEY": secret})
    assert s2.security is not None
    assert s2.security.public_key == public
    assert s2.security.secret_key_file is None
    # n2's key pair may not serve as n1: n2 would then be able to pose as n1.
    with pytest.raises(StrategyError, match=r"^nodes\.n2\.public_key: .*pose as n1"):
        Strategy.from_env(data, {"RAY_HYPARVIEW_SECRET_KEY": SEC2})


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(StrategyError, match="readable strategy file"):
        Strategy.from_file(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\nid = 1\n")
    with pytest.raises(StrategyError, match="valid TOML"):
        Strategy.from_file(broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[node]\nid = "n1"\nendpoint = "tcp://h:1"\n[hyparview]\narwl = "6"\n')
    with pytest.raises(StrategyError, match=r"^hyparview\.arwl \(file .*wrong\.toml\): expected"):
        Strategy.from_file(wrong)


@pytest.mark.parametrize(
    ("endpoint", "use", "ok"),
    [
        ("tcp://127.0.0.1:7946", "dial", True),
        ("tcp://[::1]:7946", "dial", True),
        ("tcp://node-1.example.com:1", "dial", True),
        ("tcp://node_1:1", "dial", False),
        ("tcp://-bad:1", "dial", False),
        ("tcp://h:01x", "dial", False),
        ("tcp://h:", "dial", False),
        ("tcp://:1", "dial", False),
        ("tcp://::1:7946", "dial", False),
        ("tcp://0.0.0.0:1", "dial", False),
        ("tcp://0.0.0.0:1", "bind", True),
        ("tcp://*:0", "bind", True),
        ("tcp://[::]:7946", "bind", True),
        ("tcp://h:0", "advertise", True),
        ("tcp://*:1", "advertise", False),
        ("ipc:///tmp/x.sock", "dial", True),
        ("ipc://", "dial", False),
        ("inproc://x", "dial", True),
        ("pgm://x", "dial", False),
        ("tcp://localhost:7199", "control", True),
        ("tcp://[::1]:7199", "control", True),
        ("tcp://127.0.0.2:7199", "control", True),
        ("tcp://example.com:7199", "control", False),
    ],
)
def test_validate_endpoint(endpoint: str, use: Any, ok: bool) -> None:
    if ok:
        assert validate_endpoint(endpoint, "k", use) == endpoint
    else:
        with pytest.raises(StrategyError, match=r"^k: expected "):
            validate_endpoint(endpoint, "k", use)


# -- round trip -------------------------------------------------------------------------------


def _same(a: Strategy, b: Strategy) -> None:
    """Equality plus the endpoints, which Peer equality ignores."""
    assert a == b
    assert a.local_peer.endpoint == b.local_peer.endpoint
    assert [p.endpoint for p in a.contacts] == [p.endpoint for p in b.contacts]
    assert a.to_mapping() == b.to_mapping()


@pytest.mark.parametrize("which", ["plain", "secure"])
def test_round_trip(which: str) -> None:
    s = Strategy.from_mapping(secured() if which == "secure" else base())
    _same(Strategy.from_mapping(s.to_mapping()), s)
    _same(Strategy.from_mapping(copy.deepcopy(s.to_mapping())), s)


_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8)
_ports = st.integers(min_value=1, max_value=65535)
_hosts = st.sampled_from(["127.0.0.1", "10.1.2.3", "node-a", "[::1]", "h.example.org"])


@st.composite
def strategies(draw: st.DrawFn) -> Strategy:
    ids = draw(st.lists(_ids, min_size=1, max_size=6, unique=True))
    # One port per endpoint: two node ids at one endpoint is an error of its own.
    ports = draw(st.lists(_ports, min_size=len(ids) + 1, max_size=len(ids) + 1, unique=True))
    nodes = {
        node_id: NodeSpec(endpoint=f"tcp://{draw(_hosts)}:{port}")
        for node_id, port in zip(ids, ports, strict=False)
    }
    local = ids[0]
    listed = draw(st.booleans())
    if not listed:
        local = local + "-self"
    others = [n for n in ids if n != local]
    contacts = draw(st.lists(st.sampled_from(others), unique=True)) if others else []
    contact_peers = [Peer(c) for c in contacts]
    if draw(st.booleans()):
        contact_peers.append(Peer("zz-extra", f"ipc:///tmp/{draw(_ids)}.sock"))
    config = HyParViewConfig(
        active_view_size=draw(st.integers(2, 8)),
        shuffle_interval=draw(st.floats(0.1, 100.0, allow_nan=False)),
        keepalive_interval=draw(st.sampled_from([None, 0.5])),
    )
    return Strategy(
        local_peer=Peer(local, "" if listed else f"tcp://{draw(_hosts)}:{ports[-1]}"),
        contacts=tuple(contact_peers),
        nodes=nodes,
        bind=draw(st.sampled_from(["", "tcp://0.0.0.0:7946", "tcp://*:0"])),
        hyparview_config=config,
        transport="zmq",
        control=draw(st.sampled_from([None, "ipc:///tmp/c", "tcp://127.0.0.1:9"])),
        metrics_port=draw(st.one_of(st.none(), st.integers(0, 65535))),
        heartbeat_interval=draw(st.floats(0.01, 5.0)),
        heartbeat_timeout=10.0,
        log_level=draw(st.sampled_from(["debug", "INFO"])),
    )


@settings(max_examples=150, deadline=None)
@given(strategies())
def test_round_trip_property(s: Strategy) -> None:
    _same(Strategy.from_mapping(s.to_mapping()), s)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_endpoint_validation_never_crashes(text: str) -> None:
    for use in ("dial", "advertise", "bind", "control"):
        try:
            result: object = validate_endpoint(text, "k", use)
        except StrategyError as err:
            result = err.key
        assert result in (text, "k")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )
)
def test_garbage_mappings_raise_only_strategy_error(garbage: Any) -> None:
    for data in (garbage, {"node": garbage}, {"node": {"id": "a"}, "nodes": garbage}):
        try:
            result: object = Strategy.from_mapping(data)
        except StrategyError as err:  # anything else (TypeError, KeyError, ...) fails the test
            result = err
        assert isinstance(result, Strategy | StrategyError)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*ENV_VARS, "NODE", "ARWLL", "nodes"]).map(lambda n: "RAY_HYPARVIEW_" + n),
        st.text(max_size=30),
        max_size=4,
    )
)
def test_garbage_environment_raises_only_strategy_error(env: dict[str, str]) -> None:
    try:
        result: object = Strategy.from_env(base(), env)
    except StrategyError as err:  # anything else fails the test
        result = err
    if isinstance(result, StrategyError) and result.key.startswith("RAY_HYPARVIEW_"):
        assert result.key in env  # a variable that does not parse is named as such


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_HYPARVIEW_NODE_ID", "n2")
    assert Strategy.from_env(base() | {"node": {"id": "n1"}}).local_peer.id == "n2"


# -- examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["strategy.toml", "strategy-curve.toml"])
def test_examples_load_and_check(name: str) -> None:
    s = Strategy.from_file(EXAMPLES / name)
    assert s.local_peer.id == "n1"
    assert len(s.contacts) == 2
    out, err = io.StringIO(), io.StringIO()
    assert cmd_check(EXAMPLES / name, stdout=out, stderr=err) == 0
    assert "ok" in out.getvalue()
    assert err.getvalue() == ""


def test_plain_example_serves_every_node() -> None:
    path = EXAMPLES / "strategy.toml"
    s = Strategy.from_file(path)
    for node_id in ("n2", "n3"):
        other = Strategy.from_file(path, environ={"RAY_HYPARVIEW_NODE_ID": node_id})
        assert other.local_peer.endpoint == s.nodes[node_id].endpoint
        assert node_id not in {p.id for p in other.contacts}


def test_curve_example_keys_belong_together() -> None:
    s = Strategy.from_file(EXAMPLES / "strategy-curve.toml")
    assert s.security is not None
    assert s.security.allowed_keys["n1"] == s.security.public_key
    # [security] is per node: n1's key pair cannot serve as n2.
    with pytest.raises(StrategyError, match=r"^nodes\.n2\.public_key .*own public key"):
        Strategy.from_file(
            EXAMPLES / "strategy-curve.toml", environ={"RAY_HYPARVIEW_NODE_ID": "n2"}
        )


def test_transport_limits_load_round_trip_and_match_the_transports_defaults() -> None:
    from ray_hyparview.transport.zmq import ZmqOptions

    defaults = ZmqOptions()
    for name, value in TransportLimits().options().items():
        assert getattr(defaults, name) == value, name
    data = base()
    data["transport"].update(recv_hwm=8, max_connections=10, log_interval=5.0)
    strategy = Strategy.from_mapping(data)
    assert strategy.limits == TransportLimits(recv_hwm=8, max_connections=10, log_interval=5.0)
    assert strategy.to_mapping()["transport"]["recv_hwm"] == 8
    assert "max_strangers" not in strategy.to_mapping()["transport"]
    assert Strategy.from_mapping(strategy.to_mapping()) == strategy
    assert Strategy.from_env(base(), {"RAY_HYPARVIEW_MAX_STRANGERS": "7"}).limits.max_strangers == 7
    ZmqOptions(**strategy.limits.options())  # the agent passes them on as they are


def test_node_ids_in_the_nodes_table_meet_the_wire_limit() -> None:
    for bad in ("n\x00x", "n\tx", "x" * 241):
        data = base()
        data["nodes"][bad] = "tcp://127.0.0.1:7009"
        with pytest.raises(StrategyError) as info:
            Strategy.from_mapping(data)
        assert info.value.key == f"nodes.{bad}"
    Strategy.from_mapping({"node": {"id": "x" * 240, "endpoint": "tcp://127.0.0.1:7001"}})


def test_cmd_check_refuses_what_run_cannot_use(tmp_path: Path) -> None:
    """`check` and `run` load through one path: each value that would crash `run` or spin a
    timer is refused by `check`, naming the key, the value and what was expected."""
    cases = {
        'id = "' + "n" * 241 + '"': ("node.id", "1-240 bytes"),
        'id = "n\\u0001"': ("node.id", "control characters"),
        'id = "n1"\n[hyparview]\nshuffle_interval = 1e-9': ("hyparview.shuffle_interval", "1e-09"),
        'id = "n1"\n[transport]\nheartbeat_interval = 1e-9': (
            "transport.heartbeat_interval",
            "at least 0.01",
        ),
        'id = "n1"\n[nodes]\nn2 = "tcp://127.0.0.1:1"\nn3 = "tcp://127.0.0.1:1"': (
            "nodes.n3.endpoint",
            "no other node id",
        ),
    }
    for index, (node, (key, expected)) in enumerate(cases.items()):
        path = tmp_path / f"c{index}.toml"
        path.write_text(f'[node]\nendpoint = "tcp://127.0.0.1:7001"\n{node}\n')
        out, err = io.StringIO(), io.StringIO()
        assert cmd_check(path, stdout=out, stderr=err) == 1, node
        assert key in err.getvalue(), err.getvalue()
        assert expected in err.getvalue(), err.getvalue()


def test_cmd_check_reports_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nid = "n1"\nendpoint = "tcp://h:1"\ncontacts = ["n2"]\n')
    out, err = io.StringIO(), io.StringIO()
    assert cmd_check(bad, stdout=out, stderr=err) == 1
    assert "node.contacts[0]" in err.getvalue()
    assert "'n2'" in err.getvalue()
    assert out.getvalue() == ""


# -- key files --------------------------------------------------------------------------------


def test_generate_keypair_is_z85_and_matches() -> None:
    public, secret = generate_keypair()
    assert is_z85_key(public)
    assert is_z85_key(secret)
    assert zmq.curve_public(secret.encode()) == public.encode()


def test_write_keypair_modes_and_pyzmq_format(tmp_path: Path) -> None:
    old = os.umask(0o077)  # a strict umask must not hide the public file
    try:
        files = write_keypair(tmp_path / "keys", "n1")
    finally:
        os.umask(old)
    assert files.public_file == tmp_path / "keys" / "n1.key"
    assert files.secret_file == tmp_path / "keys" / "n1.key_secret"
    assert stat.S_IMODE(files.public_file.stat().st_mode) == 0o644
    assert stat.S_IMODE(files.secret_file.stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(files.secret_file)
    assert public.decode() == files.public_key
    assert secret is not None
    assert zmq.curve_public(secret) == public
    only_public, none = zmq.auth.load_certificate(files.public_file)
    assert only_public == public
    assert none is None
    assert zmq.auth.load_certificates(tmp_path / "keys") == {public: True}
    assert load_keypair(files.secret_file) == (public.decode(), secret.decode())
    assert load_keypair(tmp_path / "keys" / "n1") == (public.decode(), secret.decode())
    assert load_keypair(files.public_file) == (public.decode(), None)


def test_pyzmq_certificates_load(tmp_path: Path) -> None:
    _public_file, secret_file = zmq.auth.create_certificates(tmp_path, "theirs")
    public, secret = load_keypair(secret_file)
    assert secret is not None
    assert zmq.curve_public(secret.encode()).decode() == public


def test_write_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    first = write_keypair(tmp_path / "n1")  # prefix form
    with pytest.raises(KeyFileError, match="already exists"):
        write_keypair(tmp_path, "n1")
    assert load_keypair(first.secret_file)[0] == first.public_key
    second = write_keypair(tmp_path, "n1", overwrite=True)
    assert second.public_key != first.public_key
    assert load_keypair(second.secret_file)[0] == second.public_key
    assert stat.S_IMODE(second.secret_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1.key", "n1.key_secret"]


@pytest.mark.parametrize("name", ["", "../x", "a b", ".hidden", "x" * 200])
def test_write_keypair_rejects_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="key name"):
        write_keypair(tmp_path, name)


def test_load_keypair_rejects_mismatch_and_garbage(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.key_secret"
    mixed.write_text(f'curve\n    public-key = "{PUB2}"\n    secret-key = "{SEC1}"\n')
    with pytest.raises(KeyFileError, match="does not belong"):
        load_keypair(mixed)
    garbage = tmp_path / "garbage.key"
    garbage.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(KeyFileError, match="Z85"):
        load_keypair(garbage)
    empty = tmp_path / "empty.key"
    empty.write_text("# nothing\n")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_keypair(empty)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keypair(tmp_path / "absent")
    with pytest.raises(KeyFileError, match="names no file"):
        load_keypair("")


def test_cmd_keygen(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cmd_keygen(tmp_path, "n7", stdout=out, stderr=err) == 0
    public, secret = load_keypair(tmp_path / "n7.key_secret")
    assert public in out.getvalue()
    assert secret is not None
    assert secret not in out.getvalue()
    assert err.getvalue() == ""
    assert cmd_keygen(tmp_path, "n7", stdout=out, stderr=err) == 1
    assert "already exists" in err.getvalue()
    assert load_keypair(tmp_path / "n7.key_secret")[0] == public  # untouched


def test_keygen_output_feeds_a_strategy(tmp_path: Path) -> None:
    out = io.StringIO()
    assert cmd_keygen(tmp_path / "keys", "n1", stdout=out) == 0
    snippet = out.getvalue()
    secret_line = next(line for line in snippet.splitlines() if "secret_key_file" in line)
    path = tmp_path / "s.toml"
    path.write_text(
        f'[node]\nid = "n1"\nendpoint = "tcp://127.0.0.1:1"\n[security]\n{secret_line}\n'
    )
    s = Strategy.from_file(path)
    assert s.security is not None
    assert s.security.public_key in snippet


def test_security_value_rejects_bad_keys() -> None:
    with pytest.raises(StrategyError, match=r"^security\.public_key: "):
        Security(public_key="x", secret_key=SEC1)
    with pytest.raises(StrategyError, match="belongs to"):
        Security(public_key=PUB2, secret_key=SEC1)


def test_written_keys_work_with_zap_and_curve(tmp_path: Path) -> None:
    """Key files from write_keypair, loaded by pyzmq's ZAP authenticator from a directory,
    admit a listed client over a real CURVE handshake on loopback and refuse an unlisted one."""
    from zmq.auth.thread import ThreadAuthenticator

    allowed_dir = tmp_path / "allowed"
    server = write_keypair(tmp_path / "server")
    client = write_keypair(allowed_dir, "client")
    server_pub, server_sec = load_keypair(server.secret_file)
    assert server_sec is not None
    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    sockets: list[zmq.Socket[bytes]] = []
    try:
        auth.start()
        auth.configure_curve(domain="*", location=str(allowed_dir))
        router = ctx.socket(zmq.ROUTER)
        sockets.append(router)
        router.curve_server = True
        router.curve_publickey = server_pub.encode()
        router.curve_secretkey = server_sec.encode()
        port = router.bind_to_random_port("tcp://127.0.0.1")

        def dealer(secret_file: Path) -> zmq.Socket[bytes]:
            public, secret = load_keypair(secret_file)
            assert secret is not None
            sock = ctx.socket(zmq.DEALER)
            sockets.append(sock)
            sock.curve_serverkey = server_pub.encode()
            sock.curve_publickey = public.encode()
            sock.curve_secretkey = secret.encode()
            sock.connect(f"tcp://127.0.0.1:{port}")
            return sock

        stranger = dealer(write_keypair(tmp_path / "stranger").secret_file)
        stranger.send(b"let me in")
        friend = dealer(client.secret_file)
        friend.send(b"hello")
        assert router.poll(5000), "the listed client's message did not arrive"
        frames = router.recv_multipart()
        assert frames[-1] == b"hello"
        assert frames[0] != b""  # routed, with the peer's identity
        assert not router.poll(300), "the unlisted client got through"
    finally:
        for sock in sockets:
            sock.close(linger=0)
        auth.stop()
        ctx.term()


def test_the_agent_builds_its_transport_with_the_strategy_limits() -> None:
    """The [transport] limits reach the sockets: a setting that loads but is not applied would
    leave the agent unbounded under attack."""
    from ray_hyparview.agent.node import make_transport
    from ray_hyparview.transport.zmq import ZmqTransport

    data = base()
    data["transport"].update(recv_hwm=8, max_connections=10, max_strangers=7)
    transport = make_transport(Strategy.from_mapping(data))
    assert isinstance(transport, ZmqTransport)
    for name, value in Strategy.from_mapping(data).limits.options().items():
        assert getattr(transport._opts, name) == value, name
