"""The strategy: what one agent needs to know to join the overlay, as a user writes it.

Theory of operation
-------------------
A :class:`Strategy` plays the part of a libcluster topology entry (``strategy``, ``config:
[hosts: ...]``): it names this node, the nodes it may join through, and a ``nodes`` table that
maps node ids to endpoints (and, with CURVE, to public keys). One ``[nodes]`` table can be
shared by every host of a cluster; each host then only sets its own id (``[node] id`` or
``RAY_HYPARVIEW_NODE_ID``), takes its endpoint from the table and, unless told otherwise, uses
every other listed node as a contact.

There are three ways in, all ending in the same validating constructor:

* ``Strategy(...)`` from Python. Contacts and the local peer may be given as ``Peer(id)``
  without an endpoint; ``__post_init__`` resolves them through ``nodes``.
* ``Strategy.from_mapping(dict)`` / ``Strategy.from_file(path)`` (TOML, stdlib ``tomllib``).
  The mapping layout (sections ``node``, ``hyparview``, ``transport``, ``agent``, ``security``,
  ``nodes``) is the file layout; ``Strategy.to_mapping()`` writes it back so that
  ``from_mapping(s.to_mapping()) == s``. ``to_mapping`` leaves out what the loader derives
  (the bind endpoint when it equals the advertised one, contacts equal to "every other node",
  the local endpoint taken from ``nodes``, default values), so that overriding ``node.id`` on a
  dumped strategy derives those values afresh.
* ``Strategy.from_env(base, environ)``: ``RAY_HYPARVIEW_*`` variables (see :data:`ENV_VARS`)
  override a base mapping, file or strategy. Unknown ``RAY_HYPARVIEW_*`` names are errors, with
  a did-you-mean, because a misspelt override that is silently ignored is worse than none.

Every invalid value raises :class:`StrategyError` carrying the dotted key (``hyparview.arwl``,
``nodes.n3.endpoint``, ``node.contacts[1]``), the value, what was expected and where the value
came from (a file, an environment variable). Secret keys are never echoed in messages.

Endpoints are the ZeroMQ forms this agent can use (zmq_tcp(7), zmq_ipc(7), zmq_inproc(7)):
``tcp://host:port`` (host name, IPv4, or ``[IPv6]``), ``ipc://path`` and ``inproc://name``. A
port of 0 ("any free port") is accepted where the agent binds or advertises itself, never for a
peer it must dial; the wildcard hosts ``*``, ``0.0.0.0`` and ``[::]`` only for ``bind``.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
import sys
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Literal, TextIO

from ray_hyparview.config.keys import (
    KeyFileError,
    is_z85_key,
    load_keypair,
    public_key_of,
    secret_file_too_open,
)
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.wire.codec import DEFAULT_MAX_SIZE, MAX_PEER_ID_BYTES

__all__ = [
    "ENV_PREFIX",
    "ENV_VARS",
    "LOG_LEVELS",
    "MIN_INTERVAL",
    "TRANSPORTS",
    "NodeSpec",
    "Security",
    "Strategy",
    "StrategyError",
    "TransportLimits",
    "apply_env",
    "cmd_check",
    "configure_logging",
    "describe",
    "validate_endpoint",
]

ENV_PREFIX: Final = "RAY_HYPARVIEW_"
TRANSPORTS: Final = ("zmq", "memory")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_MAX_ID_BYTES: Final = MAX_PEER_ID_BYTES
_NODE_ID_RE = re.compile(r"^[^\s,=\[\]\"']+$")
MIN_INTERVAL: Final = 0.01
"""Floor, in seconds, of every period and timeout the agent arms (shuffles, keepalives,
heartbeats, probes, re-joins): below it a timer spins and burns a core (1e-9 s was accepted
once and ran a core at 100 %)."""
_HYPARVIEW_FLOORS: Final = (
    "shuffle_interval",
    "neighbor_timeout",
    "rejoin_backoff_initial",
    "rejoin_backoff_max",
    "keepalive_interval",
    "keepalive_timeout",
    "probe_interval_min",
    "probe_interval_max",
)
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_IPC_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one of them the terminating NUL
_LOOPBACK_NAMES = frozenset({"localhost"})
_WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::"})


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class _Hidden:
    """Stands in for a secret in error messages: its length, never its text."""

    length: int

    def __repr__(self) -> str:
        return f"<secret, {self.length} characters>"


def _hide(value: object) -> object:
    return _Hidden(len(value)) if isinstance(value, str) else value


class StrategyError(ConfigError):
    """An invalid strategy value: names the key, the value and what was expected.

    Subclasses :class:`~ray_hyparview.protocol.errors.ConfigError`, hence ``HyParViewError`` and
    ``ValueError``.
    """

    def __init__(
        self,
        key: str,
        value: object,
        expected: str,
        *,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.key = key
        """Dotted path of the offending value, e.g. ``nodes.n3.endpoint``."""
        self.value = value
        """The offending value (a placeholder for secrets and missing values)."""
        self.expected = expected
        """What would have been accepted."""
        self.source = source
        """Where the value came from (``file x.toml``, ``RAY_HYPARVIEW_BIND``), if known."""
        self.hint = hint
        """A suggestion, e.g. the nearest known key."""
        where = key or "strategy"
        if source:
            where += f" ({source})"
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        message = f"{where}: expected {expected}, got {shown}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as ``cls(*args)`` by default, which loses the keyword fields and
        # breaks on our signature; Ray pickles exceptions raised inside tasks and actors.
        return (_rebuild_error, (self.key, self.value, self.expected, self.source, self.hint))

    def with_source(self, source: str | None) -> StrategyError:
        """A copy that also says where the value came from."""
        if source is None or self.source is not None:
            return self
        return StrategyError(self.key, self.value, self.expected, source=source, hint=self.hint)


def _rebuild_error(
    key: str, value: object, expected: str, source: str | None, hint: str | None
) -> StrategyError:
    return StrategyError(key, value, expected, source=source, hint=hint)


# ----------------------------------------------------------------------------------------------
# Endpoints


EndpointUse = Literal["dial", "advertise", "bind", "control"]


def validate_endpoint(
    endpoint: object, key: str, use: EndpointUse, *, transport: str = "zmq"
) -> str:
    """Check an endpoint for one use and return it, or raise :class:`StrategyError`.

    ``dial``: a peer's endpoint (port 1-65535, no wildcard host). ``advertise``: this node's
    own endpoint (port 0 allowed, meaning the agent advertises the port it gets). ``bind``:
    wildcard hosts allowed. ``control``: ``ipc://``, ``inproc://`` or TCP on loopback only,
    since the control socket answers anyone who can reach it. With ``transport="memory"`` the
    node endpoints are the in-process switchboard's ``mem://name`` instead.
    """
    if transport == "memory" and use != "control":
        if isinstance(endpoint, str) and endpoint.startswith("mem://") and len(endpoint) > 6:
            return endpoint
        raise StrategyError(key, endpoint, "an in-memory endpoint mem://name")
    expected = {
        "dial": "an endpoint tcp://host:port (port 1-65535), ipc://path or inproc://name",
        "advertise": "an endpoint tcp://host:port (port 0-65535, not a wildcard host), "
        "ipc://path or inproc://name",
        "bind": "an endpoint tcp://host:port (port 0-65535, host may be * or 0.0.0.0), "
        "ipc://path or inproc://name",
        "control": "a local endpoint: ipc://path, inproc://name or tcp://127.0.0.1:port",
    }[use]
    if not isinstance(endpoint, str):
        raise StrategyError(key, endpoint, expected)
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        raise StrategyError(key, endpoint, expected)
    match scheme:
        case "ipc":
            if "\0" in rest or len(rest.encode()) > _IPC_PATH_MAX:
                raise StrategyError(
                    key, endpoint, expected, hint=f"ipc paths are limited to {_IPC_PATH_MAX} bytes"
                )
            return endpoint
        case "inproc":
            return endpoint
        case "tcp":
            pass
        case "mem":
            raise StrategyError(
                key, endpoint, expected, hint="mem:// needs transport.kind = 'memory'"
            )
        case _:
            raise StrategyError(key, endpoint, expected, hint=f"unknown scheme {scheme!r}")
    host, port_text = _split_host_port(rest)
    if host is None or not port_text.isdigit() or not port_text.isascii():
        raise StrategyError(key, endpoint, expected)
    port = int(port_text)
    # Port 0 (any free port) makes sense wherever we listen: the bind, the control endpoint
    # (the agent prints where it listens), and an advertised endpoint filled in after binding.
    lowest = 1 if use == "dial" else 0
    if not lowest <= port <= 65535:
        raise StrategyError(key, endpoint, expected, hint=f"port {port} is out of range")
    if host in _WILDCARD_HOSTS:
        if use != "bind":
            raise StrategyError(
                key,
                endpoint,
                expected,
                hint=f"{host} is a wildcard, which other nodes cannot dial; set it as bind",
            )
        return endpoint
    if not _valid_host(host):
        raise StrategyError(key, endpoint, expected, hint=f"{host!r} is not a valid host")
    if use == "control" and not _is_loopback(host):
        raise StrategyError(
            key, endpoint, expected, hint="the control endpoint must not be reachable remotely"
        )
    return endpoint


def _split_host_port(rest: str) -> tuple[str | None, str]:
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            return None, ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None, ""
        return host, tail[1:]
    host, colon, port = rest.rpartition(":")
    if not colon or not host or ":" in host:
        return None, ""
    return host, port


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    if re.fullmatch(r"[0-9.]+", host):
        return False  # looks like IPv4 but is not one (e.g. 10.0.0.256)
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL_RE.match(label) for label in labels)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tcp_host(endpoint: str) -> str | None:
    if not endpoint.startswith("tcp://"):
        return None
    host, _ = _split_host_port(endpoint[len("tcp://") :])
    return host


def _validate_node_id(node_id: object, key: str) -> NodeId:
    """The wire's rule (a printable string of at most ``MAX_PEER_ID_BYTES`` UTF-8 bytes: it
    becomes a ZeroMQ routing id) and the config's (no separators the file forms use)."""
    if (
        not isinstance(node_id, str)
        or not node_id
        or len(node_id.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES
        or not node_id.isprintable()
        or not _NODE_ID_RE.match(node_id)
    ):
        raise StrategyError(
            key,
            node_id,
            f"a node id: 1-{_MAX_ID_BYTES} bytes of UTF-8, printable, without whitespace,"
            " control characters, quotes, brackets, ',' or '='",
        )
    return node_id


def _check_floors(config: HyParViewConfig) -> None:
    for name in _HYPARVIEW_FLOORS:
        value = getattr(config, name)
        if value is not None and value < MIN_INTERVAL:
            raise StrategyError(
                f"hyparview.{name}",
                value,
                f"at least {MIN_INTERVAL} seconds (a shorter timer burns a core)",
            )


def _check_unique_endpoints(
    nodes: Mapping[NodeId, NodeSpec], local: Peer, contacts: Sequence[Peer]
) -> None:
    """Two node ids at one endpoint cannot both be dialled: one of them is a typo, and its
    traffic would reach the other node. Port 0 ("pick a port") is not an address yet."""
    owner: dict[str, NodeId] = {}
    entries = [(f"nodes.{node_id}.endpoint", node_id, s.endpoint) for node_id, s in nodes.items()]
    entries.append(("node.endpoint", local.id, local.endpoint))
    entries += [(f"node.contacts[{i}]", p.id, p.endpoint) for i, p in enumerate(contacts)]
    for key, node_id, endpoint in entries:
        if not endpoint or endpoint.endswith(":0"):
            continue
        other = owner.setdefault(endpoint, node_id)
        if other != node_id:
            raise StrategyError(
                key,
                endpoint,
                "an endpoint no other node id uses",
                hint=f"{other} is listed at {endpoint} already",
            )


def _validate_key(value: object, key: str, *, secret: bool = False) -> str:
    if not is_z85_key(value):
        shown = _hide(value) if secret else value
        what = "secret" if secret else "public"
        raise StrategyError(key, shown, f"a CURVE {what} key: 40 characters of Z85 text")
    assert isinstance(value, str)
    return value


# ----------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """One entry of the ``nodes`` table: where a node listens and which key it holds."""

    endpoint: str
    """The node's agent endpoint, e.g. ``tcp://10.0.0.2:7946``."""

    public_key: str | None = None
    """The node's CURVE public key (Z85); with security on, only this key may claim the id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportLimits:
    """What peers can make one agent hold, and how much it logs about them ([transport], same
    names). The ZeroMQ transport's options of the same names; defaults bound an agent under a
    flood of 50 connections to about 100 MB (``tests/test_hostile_suite.py``)."""

    recv_hwm: int = 16
    """Frames libzmq queues per inbound connection (RCVHWM). Times ``max_msg_size``, the bytes
    one connection can make us hold: 1 MiB by default."""

    max_msg_size: int = DEFAULT_MAX_SIZE
    """Largest inbound frame in bytes (MAXMSGSIZE; libzmq drops a connection that sends a
    larger one). At most the codec's limit, 64 KiB, which refuses larger frames anyway."""

    max_connections: int = 128
    """Inbound connections open at once; more are refused at the handshake
    (``transport.zap.refused.connections``), except, with CURVE, those of keys bound to a node
    id. In plain text every connection counts, the real peers' too."""

    max_strangers: int = 256
    """Distinct sender ids without a link whose frames are taken at once; frames of more are
    dropped unread (``transport.recv.dropped.stranger_cap``)."""

    stranger_timeout: float = 5.0
    """Seconds after its last frame that a stranger stops counting against the cap."""

    log_lines: int = 10
    """Warnings of one kind written per ``log_interval``; the rest are counted
    (``transport.log.suppressed``)."""

    log_interval: float = 10.0
    """Seconds of one warning-rate interval."""

    def options(self) -> dict[str, Any]:
        """These limits as keyword arguments of ``ZmqOptions``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_MIN_MSG_SIZE: Final = 1024


def _check_limits(limits: object) -> TransportLimits:
    if not isinstance(limits, TransportLimits):
        raise StrategyError("transport", limits, "a TransportLimits")
    for name, low, high in (
        ("recv_hwm", 1, 1 << 20),
        ("max_msg_size", _MIN_MSG_SIZE, DEFAULT_MAX_SIZE),
        ("max_connections", 1, 1 << 20),
        ("max_strangers", 1, 1 << 20),
        ("log_lines", 0, 1 << 20),
    ):
        value = getattr(limits, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise StrategyError(f"transport.{name}", value, f"an integer from {low} to {high}")
    for name in ("stranger_timeout", "log_interval"):
        _interval(getattr(limits, name), f"transport.{name}")
    return limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    """CURVE settings: this node's key pair and which peers' keys are let in.

    A peer is admitted (ZAP) if its key is in :attr:`allowed_keys` or :attr:`allow_list`, and
    may speak for a node id only as :meth:`may_claim` says: an id bound to a key takes that key
    alone, and a bound key speaks for its own id alone (so one compromised node cannot pose as
    another). ``Strategy`` merges the keys of its ``nodes`` table into :attr:`allowed_keys`.
    """

    public_key: str
    """This node's public key, Z85 text (40 characters)."""

    secret_key: str = field(repr=False)
    """This node's secret key, Z85 text; never printed."""

    allowed_keys: Mapping[NodeId, str] = field(default_factory=dict)
    """Node id -> the one public key that may claim it."""

    allow_list: frozenset[str] = frozenset()
    """Extra public keys admitted without a fixed node id (e.g. nodes that join later); they
    may claim any id not bound to another key."""

    secret_key_file: str | None = None
    """The certificate file the key pair was read from, if any (kept so that ``to_mapping``
    writes the path rather than the secret)."""

    default_server_key: str | None = None
    """Public key to expect when dialling a node whose key is not bound in
    :attr:`allowed_keys` (a node learned by shuffle, or a cluster sharing one key pair);
    without it such a node cannot be dialled."""

    key_source: str | None = None
    """Where more peer keys come from while the agent runs, besides the tables above:
    ``"ray-gcs"`` when the Ray plugin admits the keys its agents publish in the GCS. Not read
    from a strategy file."""

    def __post_init__(self) -> None:
        _validate_key(self.public_key, "security.public_key")
        _validate_key(self.secret_key, "security.secret_key", secret=True)
        if public_key_of(self.secret_key) != self.public_key:
            raise StrategyError(
                "security.public_key",
                self.public_key,
                "the public key that belongs to security.secret_key",
                hint=f"that is {public_key_of(self.secret_key)!r}",
            )
        if not isinstance(self.allowed_keys, Mapping):
            raise StrategyError(
                "security.allowed_keys", self.allowed_keys, "a table of node id = public key"
            )
        bound: dict[str, NodeId] = {}
        for node_id, key in self.allowed_keys.items():
            _validate_node_id(node_id, f"security.allowed_keys.{node_id}")
            _validate_key(key, f"security.allowed_keys.{node_id}")
            if key in bound:
                raise StrategyError(
                    f"security.allowed_keys.{node_id}",
                    key,
                    "a public key no other node id uses",
                    hint=f"{bound[key]} is bound to it already",
                )
            bound[key] = node_id
        object.__setattr__(self, "allowed_keys", types.MappingProxyType(dict(self.allowed_keys)))
        given: object = self.allow_list
        if isinstance(given, str) or not isinstance(given, Iterable):
            raise StrategyError("security.allow_list", given, "a list of public keys")
        allow = list(given)
        for index, key in enumerate(allow):
            _validate_key(key, f"security.allow_list[{index}]")
        object.__setattr__(self, "allow_list", frozenset(allow))
        if self.default_server_key is not None:
            _validate_key(self.default_server_key, "security.default_server_key")

    def __hash__(self) -> int:
        return hash(
            (
                self.public_key,
                tuple(sorted(self.allowed_keys.items())),
                self.allow_list,
                self.default_server_key,
            )
        )

    def server_key_for(self, node_id: NodeId) -> str | None:
        """The public key a dial to ``node_id`` must expect, or None if it cannot be dialled."""
        return self.allowed_keys.get(node_id, self.default_server_key)

    @property
    def public_key_bytes(self) -> bytes:
        """:attr:`public_key` as bytes, for ``zmq.CURVE_PUBLICKEY``."""
        return self.public_key.encode("ascii")

    @property
    def secret_key_bytes(self) -> bytes:
        """:attr:`secret_key` as bytes, for ``zmq.CURVE_SECRETKEY``."""
        return self.secret_key.encode("ascii")

    def is_allowed(self, public_key: str | bytes) -> bool:
        """Whether a client presenting ``public_key`` may connect at all (the ZAP decision)."""
        key = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
        return key in self.allow_list or key in self.allowed_keys.values()

    def may_claim(self, node_id: NodeId, public_key: str | bytes) -> bool:
        """Whether the holder of ``public_key`` may speak as ``node_id``."""
        key = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
        bound = self.allowed_keys.get(node_id)
        if bound is not None:
            return key == bound
        if key in self.allowed_keys.values():
            return False
        return key in self.allow_list


_DEFAULT_HEARTBEAT_INTERVAL: Final = 0.5
_DEFAULT_HEARTBEAT_TIMEOUT: Final = 1.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Strategy:
    """Everything one agent is configured with. Validated on construction.

    Field names are the Python names; the TOML keys are given in brackets.
    """

    local_peer: Peer
    """This node ([node] id, endpoint). An empty endpoint is taken from ``nodes``, else from
    ``bind`` unless that is a wildcard."""

    contacts: tuple[Peer, ...] = ()
    """Nodes to join through, in order ([node] contacts). A ``Peer`` without endpoint (or a bare
    id string) is resolved through ``nodes``. Empty for the first node of a cluster."""

    transport: str = "zmq"
    """``"zmq"`` (real sockets) or ``"memory"`` (in-process, for tests) ([transport] kind)."""

    hyparview_config: HyParViewConfig = field(default_factory=HyParViewConfig)
    """Protocol parameters ([hyparview], same field names)."""

    security: Security | None = None
    """CURVE key pair and allowed keys ([security]); ``None`` runs in plain text."""

    nodes: Mapping[NodeId, NodeSpec] = field(default_factory=dict)
    """Node id -> endpoint and key ([nodes]); a plain endpoint string is accepted as value."""

    bind: str = ""
    """Endpoint to bind ([node] bind); empty means the local peer's endpoint."""

    control: str | None = None
    """Local control endpoint answering ``status`` ([agent] control); loopback or ipc only."""

    metrics_port: int | None = None
    """TCP port of the Prometheus text endpoint ([agent] metrics_port); 0 picks a free port."""

    metrics_host: str = "127.0.0.1"
    """Address the Prometheus endpoint binds ([agent] metrics_host): loopback by default;
    ``0.0.0.0`` or ``::`` (or the pod's address) for a Prometheus on another host."""

    heartbeat_interval: float = _DEFAULT_HEARTBEAT_INTERVAL
    """Seconds between ZMTP heartbeats on each link ([transport] heartbeat_interval)."""

    heartbeat_timeout: float = _DEFAULT_HEARTBEAT_TIMEOUT
    """A link whose heartbeats go unanswered this long is dropped and reported failed
    ([transport] heartbeat_timeout). Default: three intervals, since one lost probe on a busy
    network is no evidence of a dead peer."""

    log_level: str = "INFO"
    """Level of the ``ray_hyparview`` loggers ([agent] log_level), a ``logging`` level name."""

    limits: TransportLimits = field(default_factory=TransportLimits)
    """Queue, connection and log-rate bounds ([transport], see :class:`TransportLimits`)."""

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise StrategyError("transport.kind", self.transport, f"one of {list(TRANSPORTS)}")
        nodes = self._check_nodes()
        local = self._check_local(nodes)
        object.__setattr__(self, "nodes", types.MappingProxyType(nodes))
        object.__setattr__(self, "local_peer", local)
        bind = validate_endpoint(
            self.bind or local.endpoint, "node.bind", "bind", transport=self.transport
        )
        object.__setattr__(self, "bind", bind)
        object.__setattr__(self, "contacts", self._check_contacts(nodes, local))
        _check_unique_endpoints(nodes, local, self.contacts)
        if not isinstance(self.hyparview_config, HyParViewConfig):
            raise StrategyError("hyparview", self.hyparview_config, "a HyParViewConfig")
        _check_floors(self.hyparview_config)
        interval = _interval(self.heartbeat_interval, "transport.heartbeat_interval")
        timeout = _interval(self.heartbeat_timeout, "transport.heartbeat_timeout")
        object.__setattr__(self, "heartbeat_interval", interval)
        object.__setattr__(self, "heartbeat_timeout", timeout)
        if timeout <= interval:
            raise StrategyError(
                "transport.heartbeat_timeout",
                self.heartbeat_timeout,
                f"more than transport.heartbeat_interval ({self.heartbeat_interval})",
            )
        _check_limits(self.limits)
        if self.control is not None:
            validate_endpoint(self.control, "agent.control", "control")
        if self.metrics_port is not None and (
            isinstance(self.metrics_port, bool)
            or not isinstance(self.metrics_port, int)
            or not 0 <= self.metrics_port <= 65535
        ):
            raise StrategyError("agent.metrics_port", self.metrics_port, "a port 0-65535")
        if not isinstance(self.metrics_host, str) or not _is_host(self.metrics_host):
            raise StrategyError(
                "agent.metrics_host", self.metrics_host, "an IP address or a host name"
            )
        level = self.log_level.upper() if isinstance(self.log_level, str) else self.log_level
        if level not in LOG_LEVELS:
            raise StrategyError("agent.log_level", self.log_level, f"one of {list(LOG_LEVELS)}")
        object.__setattr__(self, "log_level", level)
        if self.security is not None:
            object.__setattr__(self, "security", self._check_security(self.security, nodes, local))

    # -- validation steps ----------------------------------------------------------------------

    def _check_nodes(self) -> dict[NodeId, NodeSpec]:
        if not isinstance(self.nodes, Mapping):
            raise StrategyError("nodes", self.nodes, "a table of node id = endpoint")
        nodes: dict[NodeId, NodeSpec] = {}
        for node_id, given in self.nodes.items():
            _validate_node_id(node_id, f"nodes.{node_id}")
            spec: object = given
            if isinstance(spec, str):
                spec = NodeSpec(endpoint=spec)
            if not isinstance(spec, NodeSpec):
                raise StrategyError(
                    f"nodes.{node_id}",
                    spec,
                    'an endpoint string or a table { endpoint = "...", public_key = "..." }',
                )
            validate_endpoint(
                spec.endpoint, f"nodes.{node_id}.endpoint", "dial", transport=self.transport
            )
            if spec.public_key is not None:
                _validate_key(spec.public_key, f"nodes.{node_id}.public_key")
            nodes[node_id] = spec
        return nodes

    def _check_local(self, nodes: Mapping[NodeId, NodeSpec]) -> Peer:
        if not isinstance(self.local_peer, Peer):
            raise StrategyError("node", self.local_peer, "a Peer")
        node_id = _validate_node_id(self.local_peer.id, "node.id")
        listed = nodes.get(node_id)
        endpoint = self.local_peer.endpoint
        if not endpoint:
            if listed is not None:
                return Peer(node_id, listed.endpoint)
            if self.bind and _tcp_host(self.bind) not in _WILDCARD_HOSTS:
                # `run --id a --bind tcp://127.0.0.1:0`: a bind others can dial doubles as
                # the advertised endpoint (with its port filled in by advertised_peer).
                validate_endpoint(self.bind, "node.bind", "advertise", transport=self.transport)
                return Peer(node_id, self.bind)
            raise StrategyError(
                "node.endpoint",
                _MISSING,
                "this node's endpoint",
                hint=f"set node.endpoint (or a non-wildcard node.bind), or list {node_id} in"
                " [nodes]",
            )
        validate_endpoint(endpoint, "node.endpoint", "advertise", transport=self.transport)
        if listed is not None and listed.endpoint != endpoint:
            raise StrategyError(
                "node.endpoint",
                endpoint,
                f"the endpoint nodes.{node_id} lists ({listed.endpoint!r})",
                hint="drop one of the two",
            )
        return self.local_peer

    def _check_contacts(self, nodes: Mapping[NodeId, NodeSpec], local: Peer) -> tuple[Peer, ...]:
        raw: object = self.contacts
        if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
            raise StrategyError("node.contacts", raw, "a list of node ids or 'id=endpoint'")
        contacts: list[Peer] = []
        seen: set[NodeId] = set()
        for index, item in enumerate(raw):
            key = f"node.contacts[{index}]"
            peer = _parse_contact(item, key) if isinstance(item, str) else item
            if not isinstance(peer, Peer):
                raise StrategyError(key, item, "a node id, 'id=endpoint' or a Peer")
            _validate_node_id(peer.id, key)
            if peer.id == local.id:
                raise StrategyError(
                    key,
                    item,
                    "another node than this one",
                    hint=f"{local.id} is this node; remove it, or leave node.contacts unset to"
                    " use every other node in [nodes]",
                )
            if peer.id in seen:
                raise StrategyError(key, item, "each contact once", hint=f"{peer.id} is repeated")
            seen.add(peer.id)
            listed = nodes.get(peer.id)
            if not peer.endpoint:
                if listed is None:
                    raise StrategyError(
                        key,
                        item if isinstance(item, str) else peer.id,
                        "a node id listed in [nodes], or 'id=endpoint'",
                        hint=_suggest(peer.id, nodes) or f"known ids: {_names(nodes)}",
                    )
                peer = Peer(peer.id, listed.endpoint)
            else:
                validate_endpoint(peer.endpoint, key, "dial", transport=self.transport)
                if listed is not None and listed.endpoint != peer.endpoint:
                    raise StrategyError(
                        key,
                        item if isinstance(item, str) else str(peer),
                        f"the endpoint nodes.{peer.id} lists ({listed.endpoint!r})",
                        hint=f"write just {peer.id!r}",
                    )
            contacts.append(peer)
        return tuple(contacts)

    def _check_security(
        self, security: Security, nodes: Mapping[NodeId, NodeSpec], local: Peer
    ) -> Security:
        if not isinstance(security, Security):
            raise StrategyError("security", security, "a Security")
        listed = nodes.get(local.id)
        if listed is not None and listed.public_key not in (None, security.public_key):
            raise StrategyError(
                f"nodes.{local.id}.public_key",
                listed.public_key,
                "this node's own public key (security.public_key)",
                hint="the [nodes] entry and the key pair disagree",
            )
        merged = dict(security.allowed_keys)
        owner = {key: node_id for node_id, key in merged.items()}
        for node_id, spec in nodes.items():
            if spec.public_key is None:
                continue
            bound = merged.get(node_id)
            if bound is not None and bound != spec.public_key:
                raise StrategyError(
                    f"nodes.{node_id}.public_key",
                    spec.public_key,
                    f"the key security.allowed_keys.{node_id} binds ({bound!r})",
                    hint="a node id may be bound to one key only",
                )
            other = owner.get(spec.public_key)
            if other is not None and other != node_id:
                raise StrategyError(
                    f"nodes.{node_id}.public_key",
                    spec.public_key,
                    "a public key no other node id uses",
                    hint=f"{other} is bound to it already",
                )
            merged[node_id] = spec.public_key
            owner[spec.public_key] = node_id
        other = owner.get(security.public_key)
        if other is not None and other != local.id:
            entry = nodes.get(other)
            raise StrategyError(
                f"nodes.{other}.public_key"
                if entry is not None and entry.public_key == security.public_key
                else f"security.allowed_keys.{other}",
                security.public_key,
                "a key other than this node's own",
                hint=f"{other} would be able to pose as {local.id}",
            )
        if merged == dict(security.allowed_keys):
            return security
        return replace(security, allowed_keys=merged)

    # -- identity -------------------------------------------------------------------------------

    def _identity(self) -> tuple[object, ...]:
        """Every setting, endpoints included (``Peer`` equality looks at the id alone)."""
        return (
            (self.local_peer.id, self.local_peer.endpoint),
            tuple((peer.id, peer.endpoint) for peer in self.contacts),
            self.transport,
            self.hyparview_config,
            self.security,
            tuple(self.nodes.items()),
            self.bind,
            self.control,
            self.metrics_port,
            self.metrics_host,
            self.heartbeat_interval,
            self.heartbeat_timeout,
            self.log_level,
            self.limits,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Strategy):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    # -- derived values -------------------------------------------------------------------------

    def advertised_peer(self, bound_endpoint: str) -> Peer:
        """The local peer to announce once the transport has bound ``bound_endpoint``.

        If this node's endpoint asks for port 0 ("any free port"), the port the bind actually
        got is put in; the host stays the advertised one (a bind to ``0.0.0.0`` must not be
        announced as such). Otherwise the configured endpoint stands.
        """
        local = self.local_peer
        if not local.endpoint.startswith("tcp://") or not bound_endpoint.startswith("tcp://"):
            return local
        host, port = _split_host_port(local.endpoint[len("tcp://") :])
        _, bound_port = _split_host_port(bound_endpoint[len("tcp://") :])
        if host is None or port != "0" or not bound_port.isdigit():
            return local
        shown = f"[{host}]" if ":" in host else host
        return Peer(local.id, f"tcp://{shown}:{bound_port}")

    def endpoint_of(self, node_id: NodeId) -> str | None:
        """The endpoint ``nodes`` lists for ``node_id`` (or this node's own), else None."""
        if node_id == self.local_peer.id:
            return self.local_peer.endpoint
        spec = self.nodes.get(node_id)
        return None if spec is None else spec.endpoint

    @property
    def binds_loopback_only(self) -> bool:
        """True if the bind endpoint cannot be reached from another host."""
        host = _tcp_host(self.bind)
        return host is None or _is_loopback(host)

    def warnings(self) -> tuple[str, ...]:
        """Legal but risky settings, one sentence each, for ``check`` and the agent's log."""
        notes: list[str] = []
        if self.security is None:
            if self.transport == "zmq" and not self.binds_loopback_only:
                notes.append(
                    f"node.bind {self.bind!r} is reachable from other hosts and [security] is"
                    " not set: traffic is plain text and anyone may join"
                )
            if any(spec.public_key for spec in self.nodes.values()):
                notes.append("[nodes] lists public keys but [security] is not set: keys unused")
        else:
            if self.transport == "memory":
                notes.append("[security] has no effect with transport.kind = 'memory'")
            unkeyed = [
                node_id
                for node_id, spec in self.nodes.items()
                if node_id != self.local_peer.id and spec.public_key is None
            ]
            if unkeyed and not self.security.allow_list:
                notes.append(
                    f"nodes without public_key will be refused: {', '.join(sorted(unkeyed))}"
                )
            others = {k for n, k in self.security.allowed_keys.items() if n != self.local_peer.id}
            if not others and not self.security.allow_list and not self.security.key_source:
                notes.append("[security] allows no peer key: every peer will be refused")
            if self.security.secret_key_file and secret_file_too_open(
                self.security.secret_key_file
            ):
                notes.append(
                    f"security.secret_key_file {self.security.secret_key_file!r} is readable"
                    " by group or others: chmod 600 it"
                )
        if not self.contacts and len(self.nodes) > 1:
            notes.append("no contacts: this node waits for others to join through it")
        return tuple(notes)

    def _default_contacts(self, local_id: NodeId) -> tuple[NodeId, ...]:
        return tuple(node_id for node_id in self.nodes if node_id != local_id)

    # -- mappings and files ---------------------------------------------------------------------

    def to_mapping(self) -> dict[str, Any]:
        """The TOML-shaped mapping that :meth:`from_mapping` turns back into this strategy.

        Derived values are left out (see the module docstring); a secret key read from a file
        is written as ``secret_key_file``, not as text.
        """
        local = self.local_peer
        node: dict[str, Any] = {"id": local.id}
        listed = self.nodes.get(local.id)
        if listed is None:
            node["endpoint"] = local.endpoint
        if self.bind != local.endpoint:
            node["bind"] = self.bind
        contact_ids = tuple(peer.id for peer in self.contacts)
        if contact_ids != self._default_contacts(local.id):
            node["contacts"] = [
                peer.id if peer.id in self.nodes else f"{peer.id}={peer.endpoint}"
                for peer in self.contacts
            ]
        out: dict[str, Any] = {"node": node}
        default_config = HyParViewConfig()
        hyparview: dict[str, Any] = {}
        for f in fields(HyParViewConfig):
            value = getattr(self.hyparview_config, f.name)
            if value != getattr(default_config, f.name):
                hyparview[f.name] = False if value is None else value
        if hyparview:
            out["hyparview"] = hyparview
        transport: dict[str, Any] = {}
        if self.transport != "zmq":
            transport["kind"] = self.transport
        if self.heartbeat_interval != _DEFAULT_HEARTBEAT_INTERVAL:
            transport["heartbeat_interval"] = self.heartbeat_interval
        if self.heartbeat_timeout != _DEFAULT_HEARTBEAT_TIMEOUT:
            transport["heartbeat_timeout"] = self.heartbeat_timeout
        default_limits = TransportLimits()
        for name, value in self.limits.options().items():
            if value != getattr(default_limits, name):
                transport[name] = value
        if transport:
            out["transport"] = transport
        agent: dict[str, Any] = {}
        if self.control is not None:
            agent["control"] = self.control
        if self.metrics_port is not None:
            agent["metrics_port"] = self.metrics_port
        if self.metrics_host != "127.0.0.1":
            agent["metrics_host"] = self.metrics_host
        if self.log_level != "INFO":
            agent["log_level"] = self.log_level
        if agent:
            out["agent"] = agent
        if self.security is not None:
            sec = self.security
            security: dict[str, Any] = {}
            if sec.secret_key_file is not None:
                security["secret_key_file"] = sec.secret_key_file
            else:
                security["public_key"] = sec.public_key
                security["secret_key"] = sec.secret_key
            extra = {
                node_id: key
                for node_id, key in sec.allowed_keys.items()
                if node_id not in self.nodes or self.nodes[node_id].public_key != key
            }
            if extra:
                security["allowed_keys"] = extra
            if sec.allow_list:
                security["allow_list"] = sorted(sec.allow_list)
            if sec.default_server_key is not None:
                security["default_server_key"] = sec.default_server_key
            out["security"] = security
        if self.nodes:
            out["nodes"] = {
                node_id: (
                    spec.endpoint
                    if spec.public_key is None
                    else {"endpoint": spec.endpoint, "public_key": spec.public_key}
                )
                for node_id, spec in self.nodes.items()
            }
        return out

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        base_dir: str | os.PathLike[str] | None = None,
        source: str | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> Strategy:
        """Build a strategy from the TOML-shaped mapping (see ``examples/strategy.toml``).

        ``base_dir`` anchors a relative ``security.secret_key_file``. ``source`` labels every
        error (e.g. ``file x.toml``); ``sources`` maps dotted keys to a more precise origin
        (``from_env`` uses it to name the variable that set a value). A value of ``None``
        anywhere means "not set".
        """
        labels = dict(sources or {})
        try:
            return _build(cls, data, Path(base_dir) if base_dir is not None else None)
        except StrategyError as exc:
            raise exc.with_source(_source_for(exc.key, labels) or source) from None

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
    ) -> Strategy:
        """Load a TOML strategy file; with ``environ``, ``RAY_HYPARVIEW_*`` overrides apply."""
        file = Path(path)
        label = f"file {file}"
        try:
            with file.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise StrategyError(
                "", str(file), "a readable strategy file", hint=exc.strerror or str(exc)
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise StrategyError("", str(file), "valid TOML", hint=str(exc)) from None
        base_dir = file.resolve().parent
        if environ is None:
            return cls.from_mapping(data, base_dir=base_dir, source=label)
        merged, env_sources = _merge_env(data, environ)
        return cls.from_mapping(merged, base_dir=base_dir, source=label, sources=env_sources)

    @classmethod
    def from_env(
        cls,
        base: Strategy | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Strategy:
        """Apply ``RAY_HYPARVIEW_*`` overrides (``environ`` defaults to ``os.environ``) to a base
        strategy, mapping or strategy file, or to nothing (then the environment must name at
        least the node id and endpoint)."""
        env = os.environ if environ is None else environ
        match base:
            case str() | os.PathLike():
                return cls.from_file(base, environ=env)
            case None:
                data: Mapping[str, Any] = {}
            case Strategy():
                data = base.to_mapping()
            case Mapping():
                data = base
            case _:
                raise TypeError(f"base must be a Strategy, mapping or path, got {base!r}")
        merged, sources = _merge_env(data, env)
        return cls.from_mapping(merged, sources=sources)


# ----------------------------------------------------------------------------------------------
# Parsing the mapping


_SECTIONS: Final = ("node", "hyparview", "transport", "agent", "security", "nodes")
_NODE_KEYS: Final = ("id", "endpoint", "bind", "contacts")
_LIMIT_FIELDS: Final = {f.name: str(f.type) for f in fields(TransportLimits)}
_TRANSPORT_KEYS: Final = ("kind", "heartbeat_interval", "heartbeat_timeout", *_LIMIT_FIELDS)
_AGENT_KEYS: Final = ("control", "metrics_port", "metrics_host", "log_level")
_SECURITY_KEYS: Final = (
    "public_key",
    "secret_key",
    "secret_key_file",
    "allowed_keys",
    "allow_list",
    "default_server_key",
)
_NODE_SPEC_KEYS: Final = ("endpoint", "public_key")
_CONFIG_FIELDS: Final = {f.name: str(f.type) for f in fields(HyParViewConfig)}
_CONFIG_ERROR_RE = re.compile(r"^(\w+) must (?:be )?(.*), got (.*)$", re.DOTALL)


def _suggest(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def _names(known: Iterable[str]) -> str:
    names = list(known)
    return ", ".join(names) if names else "none"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _table(value: object, path: str, known: Sequence[str]) -> dict[str, Any]:
    """A sub-table with only known keys; ``None`` values are dropped ("not set")."""
    if not isinstance(value, Mapping):
        raise StrategyError(path, value, "a table")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            hint = _suggest(str(key), known)
            if path == "" and key == "contacts":
                hint = "contacts belong in the [node] table"
            where = f"[{path}]" if path else "the top level"
            raise StrategyError(
                _join(path, str(key)), key, f"a key of {where} ({', '.join(known)})", hint=hint
            )
        if item is not None:
            out[key] = item
    return out


_HOST_NAME: Final = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _is_host(text: str) -> bool:
    """An IP address (v4 or v6) or a DNS host name, as a bind address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return len(text) <= 253 and _HOST_NAME.fullmatch(text) is not None
    return True


def _string(value: object, path: str, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise StrategyError(path, value, what)
    return value


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StrategyError(path, value, "a number of seconds")
    return float(value)


def _positive(value: object, path: str) -> float:
    number = _number(value, path)
    if not math.isfinite(number) or number <= 0:
        raise StrategyError(path, value, "a finite number of seconds greater than 0")
    return number


def _interval(value: object, path: str) -> float:
    number = _positive(value, path)
    if number < MIN_INTERVAL:
        raise StrategyError(
            path, value, f"at least {MIN_INTERVAL} seconds (a shorter timer burns a core)"
        )
    return number


def _build(cls: type[Strategy], data: Mapping[str, Any], base_dir: Path | None) -> Strategy:
    root = _table(data, "", _SECTIONS)
    node = _table(root.get("node", {}), "node", _NODE_KEYS)
    if "id" not in node:
        raise StrategyError("node.id", _MISSING, "this node's id", hint="set [node] id")
    node_id = _validate_node_id(node["id"], "node.id")
    nodes = _parse_nodes(root.get("nodes", {}))
    endpoint = _string(node.get("endpoint", ""), "node.endpoint", "an endpoint string")
    kwargs: dict[str, Any] = {
        "local_peer": Peer(node_id, endpoint),
        "nodes": nodes,
        "bind": _string(node.get("bind", ""), "node.bind", "an endpoint string"),
    }
    if "contacts" in node:
        contacts = node["contacts"]
        if isinstance(contacts, str) or not isinstance(contacts, Sequence):
            raise StrategyError(
                "node.contacts", contacts, "a list of node ids or 'id=endpoint' strings"
            )
        for index, item in enumerate(contacts):
            _string(item, f"node.contacts[{index}]", "a node id or an 'id=endpoint' string")
        kwargs["contacts"] = tuple(contacts)
    else:
        kwargs["contacts"] = tuple(Peer(other) for other in nodes if other != node_id)
    kwargs["hyparview_config"] = _parse_hyparview(root.get("hyparview", {}))
    transport = _table(root.get("transport", {}), "transport", _TRANSPORT_KEYS)
    if "kind" in transport:
        kwargs["transport"] = _string(transport["kind"], "transport.kind", f"one of {TRANSPORTS}")
    for name in ("heartbeat_interval", "heartbeat_timeout"):
        if name in transport:
            kwargs[name] = _number(transport[name], f"transport.{name}")
    limits: dict[str, Any] = {}
    for name, kind in _LIMIT_FIELDS.items():
        if name not in transport:
            continue
        if kind == "int":
            value = transport[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise StrategyError(f"transport.{name}", value, "an integer")
            limits[name] = value
        else:
            limits[name] = _number(transport[name], f"transport.{name}")
    if limits:
        kwargs["limits"] = TransportLimits(**limits)
    agent = _table(root.get("agent", {}), "agent", _AGENT_KEYS)
    if "control" in agent:
        kwargs["control"] = _string(agent["control"], "agent.control", "an endpoint string")
    if "metrics_port" in agent:
        kwargs["metrics_port"] = agent["metrics_port"]
    if "metrics_host" in agent:
        kwargs["metrics_host"] = _string(
            agent["metrics_host"], "agent.metrics_host", "an IP address or a host name"
        )
    if "log_level" in agent:
        kwargs["log_level"] = _string(
            agent["log_level"], "agent.log_level", f"one of {list(LOG_LEVELS)}"
        )
    if "security" in root:
        kwargs["security"] = _parse_security(root["security"], base_dir)
    return cls(**kwargs)


def _parse_nodes(value: object) -> dict[NodeId, NodeSpec]:
    if not isinstance(value, Mapping):
        raise StrategyError("nodes", value, "a table of node id = endpoint")
    nodes: dict[NodeId, NodeSpec] = {}
    for node_id, spec in value.items():
        key = f"nodes.{node_id}"
        _validate_node_id(node_id, key)
        match spec:
            case None:
                continue
            case str():
                nodes[node_id] = NodeSpec(endpoint=spec)
            case NodeSpec():
                nodes[node_id] = spec
            case Mapping():
                table = _table(spec, key, _NODE_SPEC_KEYS)
                if "endpoint" not in table:
                    raise StrategyError(f"{key}.endpoint", _MISSING, "the node's endpoint")
                endpoint = _string(table["endpoint"], f"{key}.endpoint", "an endpoint string")
                public_key = table.get("public_key")
                if public_key is not None:
                    _validate_key(public_key, f"{key}.public_key")
                nodes[node_id] = NodeSpec(endpoint=endpoint, public_key=public_key)
            case _:
                hint = None
                if node_id == "contacts":
                    hint = "contacts belong in the [node] table (in TOML, keys after [nodes]"
                    hint += " belong to [nodes])"
                raise StrategyError(
                    key,
                    spec,
                    'an endpoint string or a table { endpoint = "...", public_key = "..." }',
                    hint=hint,
                )
    return nodes


def _parse_hyparview(value: object) -> HyParViewConfig:
    table = _table(value, "hyparview", tuple(_CONFIG_FIELDS))
    kwargs: dict[str, Any] = {}
    for name, item in table.items():
        key = f"hyparview.{name}"
        kind = _CONFIG_FIELDS[name]
        if "None" in kind and item is False:
            kwargs[name] = None
        elif kind == "int":
            if isinstance(item, bool) or not isinstance(item, int):
                raise StrategyError(key, item, "an integer")
            kwargs[name] = item
        else:
            what = "a number of seconds" + (" or false (off)" if "None" in kind else "")
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise StrategyError(key, item, what)
            kwargs[name] = float(item)
    try:
        return HyParViewConfig(**kwargs)
    except ConfigError as exc:
        match = _CONFIG_ERROR_RE.match(str(exc))
        if match is None or match.group(1) not in _CONFIG_FIELDS:
            raise StrategyError("hyparview", kwargs, str(exc)) from None
        name = match.group(1)
        value = kwargs.get(name, getattr(HyParViewConfig(), name))
        raise StrategyError(f"hyparview.{name}", value, match.group(2)) from None


def _parse_security(value: object, base_dir: Path | None) -> Security:
    table = _table(value, "security", _SECURITY_KEYS)
    public = table.get("public_key")
    if public is not None:
        _validate_key(public, "security.public_key")
    secret_file: str | None = None
    if "secret_key_file" in table:
        if "secret_key" in table:
            raise StrategyError(
                "security.secret_key",
                _hide(table["secret_key"]),
                "nothing when security.secret_key_file is set",
                hint="set one of the two",
            )
        raw = _string(table["secret_key_file"], "security.secret_key_file", "a file path")
        if not raw.strip():
            raise StrategyError("security.secret_key_file", raw, "a file path")
        path = Path(raw).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            file_public, secret = load_keypair(path)
        except KeyFileError as exc:
            raise StrategyError(
                "security.secret_key_file", raw, "a readable .key_secret file", hint=str(exc)
            ) from None
        if secret is None:
            raise StrategyError(
                "security.secret_key_file",
                raw,
                "a .key_secret file holding a secret-key",
                hint="that file holds a public key only",
            )
        if public is not None and public != file_public:
            raise StrategyError(
                "security.public_key",
                public,
                f"the public key in security.secret_key_file ({file_public!r})",
            )
        public = file_public
        secret_file = str(path)
    elif "secret_key" in table:
        secret = _validate_key(table["secret_key"], "security.secret_key", secret=True)
    else:
        raise StrategyError(
            "security.secret_key",
            _MISSING,
            "this node's secret key (security.secret_key or security.secret_key_file)",
            hint="generate a pair with: python -m ray_hyparview.agent keygen",
        )
    if public is None:
        public = public_key_of(secret)
    allowed = table.get("allowed_keys", {})
    if not isinstance(allowed, Mapping):
        raise StrategyError("security.allowed_keys", allowed, "a table of node id = public key")
    allow_list = table.get("allow_list", [])
    if isinstance(allow_list, str) or not isinstance(allow_list, Sequence):
        raise StrategyError("security.allow_list", allow_list, "a list of public keys")
    return Security(
        public_key=public,
        secret_key=secret,
        allowed_keys=dict(allowed),
        allow_list=frozenset(allow_list),
        default_server_key=table.get("default_server_key"),
        secret_key_file=secret_file,
    )


def _parse_contact(text: str, key: str) -> Peer:
    node_id, sep, endpoint = text.partition("=")
    node_id = node_id.strip()
    endpoint = endpoint.strip()
    _validate_node_id(node_id, key)
    if sep and not endpoint:
        raise StrategyError(key, text, "'id=endpoint' with a non-empty endpoint")
    return Peer(node_id, endpoint)


def _source_for(key: str, sources: Mapping[str, str]) -> str | None:
    """The origin of ``key`` or of the nearest enclosing key that has one."""
    probe = key
    while probe:
        if probe in sources:
            return sources[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return None


# ----------------------------------------------------------------------------------------------
# Environment overrides


def _env_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _env_int(text: str, var: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise StrategyError(var, text, "an integer") from None


def _env_float(text: str, var: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise StrategyError(var, text, "a number") from None


def _env_optional_float(text: str, var: str) -> float | bool:
    if text.strip().lower() in ("none", "off", "false", "no"):
        return False
    return _env_float(text, var)


def _env_optional_int(text: str, var: str) -> int | None:
    return None if not text.strip() or text.strip().lower() == "none" else _env_int(text, var)


def _env_nodes(text: str, var: str) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for item in _env_list(text):
        node_id, sep, endpoint = item.partition("=")
        if not sep or not node_id.strip() or not endpoint.strip():
            raise StrategyError(var, item, "'id=endpoint' items separated by commas")
        if node_id.strip() in nodes:
            raise StrategyError(
                var, item, "each node id once", hint=f"{node_id.strip()} is repeated"
            )
        nodes[node_id.strip()] = {"endpoint": endpoint.strip()}
    return nodes


def _env_text(text: str, var: str) -> str:
    return text.strip()


def _env_optional_text(text: str, var: str) -> str | None:
    return text.strip() or None


def _env_path(text: str, var: str) -> str:
    # Relative to the working directory of whoever set the variable, not to the config file.
    return os.path.abspath(os.path.expanduser(text.strip())) if text.strip() else ""


_EnvParser = Callable[[str, str], Any]

PROCESS_ENV_VARS: Final = frozenset({"INCARNATION_FILE"})
"""``RAY_HYPARVIEW_<NAME>`` suffixes that the agent process reads itself, outside the strategy
(``INCARNATION_FILE``: where the agent keeps its last incarnation, see
:func:`ray_hyparview.agent.node.next_incarnation`). The loader lets them pass."""

ENV_VARS: Final[Mapping[str, tuple[str, _EnvParser]]] = types.MappingProxyType(
    {
        "NODE_ID": ("node.id", _env_text),
        "ENDPOINT": ("node.endpoint", _env_text),
        "BIND": ("node.bind", _env_text),
        "CONTACTS": ("node.contacts", lambda text, var: _env_list(text)),
        "NODES": ("nodes", _env_nodes),
        "TRANSPORT": ("transport.kind", _env_text),
        "HEARTBEAT_INTERVAL": ("transport.heartbeat_interval", _env_float),
        "HEARTBEAT_TIMEOUT": ("transport.heartbeat_timeout", _env_float),
        **{
            name.upper(): (f"transport.{name}", _env_int if kind == "int" else _env_float)
            for name, kind in _LIMIT_FIELDS.items()
        },
        "CONTROL": ("agent.control", _env_optional_text),
        "METRICS_PORT": ("agent.metrics_port", _env_optional_int),
        "METRICS_HOST": ("agent.metrics_host", _env_text),
        "LOG_LEVEL": ("agent.log_level", _env_text),
        "PUBLIC_KEY": ("security.public_key", _env_text),
        "SECRET_KEY": ("security.secret_key", _env_text),
        "SECRET_KEY_FILE": ("security.secret_key_file", _env_path),
        "ALLOW_LIST": ("security.allow_list", lambda text, var: _env_list(text)),
        "DEFAULT_SERVER_KEY": ("security.default_server_key", _env_optional_text),
        **{
            name.upper(): (
                f"hyparview.{name}",
                _env_int
                if kind == "int"
                else (_env_optional_float if "None" in kind else _env_float),
            )
            for name, kind in _CONFIG_FIELDS.items()
        },
    }
)
"""``RAY_HYPARVIEW_<NAME>`` suffix -> (dotted key it sets, parser). ``CONTACTS`` is a comma
list of ids or ``id=endpoint``; ``NODES`` a comma list of ``id=endpoint`` merged into [nodes];
``CONTACTS=""`` means no contacts; ``CONTROL=""`` / ``METRICS_PORT=""`` turn those off;
``KEEPALIVE_INTERVAL=off`` turns keepalives off."""


def _env_overlay(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    overlay: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        suffix = var[len(ENV_PREFIX) :]
        if suffix in PROCESS_ENV_VARS:
            continue
        if suffix not in ENV_VARS:
            hint = _suggest(suffix, ENV_VARS)
            raise StrategyError(
                var,
                environ[var],
                f"a known variable ({ENV_PREFIX} + one of {', '.join(ENV_VARS)})",
                hint=hint and hint.replace("'", "'" + ENV_PREFIX, 1),
            )
        path, parse = ENV_VARS[suffix]
        value = parse(environ[var], var)
        *parents, leaf = path.split(".")
        table = overlay
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value
        sources[path] = var
        if isinstance(value, Mapping):
            for child in value:
                sources[f"{path}.{child}"] = var
    return overlay, sources


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any], path: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        current = out.get(key)
        if path == "nodes" and isinstance(current, str) and isinstance(value, Mapping):
            current = {"endpoint": current}
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(current, value, _join(path, key))
        else:
            out[key] = value
    if path == "security":
        # A secret from the environment replaces the file's key pair, not adds to it.
        if "secret_key_file" in overlay:
            out.pop("secret_key", None)
        if "secret_key" in overlay:
            out.pop("secret_key_file", None)
        if ("secret_key" in overlay or "secret_key_file" in overlay) and (
            "public_key" not in overlay
        ):
            out.pop("public_key", None)
    return out


def _merge_env(
    data: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    overlay, sources = _env_overlay(environ)
    if not isinstance(data, Mapping):
        raise StrategyError("", data, "a table")
    return _merge(data, overlay, ""), sources


def apply_env(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``data`` with the ``RAY_HYPARVIEW_*`` overrides of ``environ`` (default ``os.environ``)
    merged in: the mapping ``from_env`` validates. Raises :class:`StrategyError` for unknown
    variables and values that do not parse."""
    return _merge_env(data, os.environ if environ is None else environ)[0]


# ----------------------------------------------------------------------------------------------
# Command line


def _metrics_at(strategy: Strategy) -> str:
    host = strategy.metrics_host
    return f"[{host}]:{strategy.metrics_port}" if ":" in host else f"{host}:{strategy.metrics_port}"


def describe(strategy: Strategy) -> list[str]:
    """A short human-readable summary, one fact per line."""
    local = strategy.local_peer
    lines = [f"node        {local.id} at {local.endpoint}"]
    if strategy.bind != local.endpoint:
        lines.append(f"bind        {strategy.bind}")
    contacts = ", ".join(str(peer) for peer in strategy.contacts) or "none (first node)"
    lines.append(f"contacts    {contacts}")
    lines.append(f"nodes       {len(strategy.nodes)} listed")
    lines.append(
        f"transport   {strategy.transport}, heartbeat every {strategy.heartbeat_interval:g} s,"
        f" timeout {strategy.heartbeat_timeout:g} s"
    )
    limits = strategy.limits
    lines.append(
        f"limits      {limits.recv_hwm} frames x {limits.max_msg_size} B per connection,"
        f" {limits.max_connections} connections, {limits.max_strangers} strangers,"
        f" {limits.log_lines} warnings per {limits.log_interval:g} s"
    )
    cfg = strategy.hyparview_config
    lines.append(
        f"hyparview   active {cfg.active_view_size}, passive {cfg.passive_view_size},"
        f" arwl {cfg.arwl}, prwl {cfg.prwl}, shuffle every {cfg.shuffle_interval:g} s"
    )
    if strategy.security is None:
        lines.append("security    none (plain text)")
    else:
        sec = strategy.security
        lines.append(
            f"security    CURVE, public key {sec.public_key}, {len(sec.allowed_keys)} node keys,"
            f" {len(sec.allow_list)} extra keys"
        )
    lines.append(
        f"agent       control {strategy.control or 'off'},"
        f" metrics {'off' if strategy.metrics_port is None else _metrics_at(strategy)},"
        f" log level {strategy.log_level}"
    )
    return lines


def cmd_check(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m ray_hyparview.agent check --config FILE``: validate, start nothing.

    Prints a summary and any warnings on success and returns 0; prints the error and returns 1
    if the strategy is invalid. With ``environ``, ``RAY_HYPARVIEW_*`` overrides apply first.
    """
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    try:
        strategy = Strategy.from_file(path, environ=environ)
    except StrategyError as exc:
        print(f"{path}: invalid: {exc}", file=stderr)
        return 1
    print(f"{path}: ok", file=stdout)
    for line in describe(strategy):
        print(f"  {line}", file=stdout)
    for note in strategy.warnings():
        print(f"  warning: {note}", file=stdout)
    return 0


def configure_logging(strategy: Strategy) -> None:
    """Set the level of the package's loggers from :attr:`Strategy.log_level`."""
    logging.getLogger("ray_hyparview").setLevel(strategy.log_level)
