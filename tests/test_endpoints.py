"""The one endpoint parser every layer uses (transport, configuration, control socket, sidecar)."""

from __future__ import annotations

import pytest

from ray_hyparview.transport.endpoints import (
    Endpoint,
    EndpointError,
    check_endpoint,
    format_host,
    is_loopback_endpoint,
    parse_endpoint,
    tcp_host,
)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("tcp://127.0.0.1:7946", Endpoint("tcp", "127.0.0.1", 7946, None)),
        ("tcp://[::1]:0", Endpoint("tcp", "::1", 0, None)),
        ("tcp://node-3.example:1", Endpoint("tcp", "node-3.example", 1, None)),
        ("ipc:///tmp/agent.sock", Endpoint("ipc", None, None, "/tmp/agent.sock")),
        ("inproc://a", Endpoint("inproc", None, None, "a")),
    ],
)
def test_parse_endpoint(text: str, parsed: Endpoint) -> None:
    assert parse_endpoint(text) == parsed


@pytest.mark.parametrize(
    "text", ["tcp://::1:5", "tcp://host", "tcp://host:x", "tcp://h:70000", "nothing", "tcp://"]
)
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(EndpointError):
        parse_endpoint(text)


def test_hosts_and_loopback() -> None:
    assert tcp_host("tcp://[fe80::1]:5") == "fe80::1"
    assert tcp_host("ipc:///x") is None
    assert format_host("fe80::1") == "[fe80::1]"
    assert format_host("a.b") == "a.b"
    assert is_loopback_endpoint("tcp://[::1]:5")
    assert is_loopback_endpoint("tcp://localhost:5")
    assert is_loopback_endpoint("ipc:///x")
    assert not is_loopback_endpoint("tcp://*:5")
    assert not is_loopback_endpoint("tcp://10.0.0.1:5")


def test_check_endpoint_says_what_was_expected() -> None:
    with pytest.raises(EndpointError) as info:
        check_endpoint("tcp://10.0.0.1:5", "control")
    assert "local endpoint" in info.value.expected
    assert info.value.hint == "the control endpoint must not be reachable remotely"
    assert check_endpoint("tcp://0.0.0.0:0", "bind") == "tcp://0.0.0.0:0"
