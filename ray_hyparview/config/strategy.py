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
  The mapping layout is the file layout, one typed model per section
  (:mod:`~ray_hyparview.config.models`: types, defaults, bounds, documentation and
  environment variables of every key); ``Strategy.to_mapping()`` writes it back so that
  ``from_mapping(s.to_mapping()) == s``. ``to_mapping`` leaves out what the loader derives
  (the bind endpoint when it equals the advertised one, contacts equal to "every other node",
  the local endpoint taken from ``nodes``, default values), so that overriding ``node.id`` on a
  dumped strategy derives those values afresh.
* ``Strategy.from_env(base, environ)``: ``RAY_HYPARVIEW_*`` variables (see
  :data:`~ray_hyparview.config.env.ENV_VARS`) override a base mapping, file or strategy.

The section models check each key alone; ``Strategy.__post_init__`` runs the scalar settings
through the same models (so a strategy built in Python meets the same bounds) and then checks
what involves several keys: node ids, endpoints (:mod:`ray_hyparview.transport.endpoints`),
contacts against ``nodes``, key pairs, a heartbeat timeout longer than its interval.

Every invalid value raises :class:`StrategyError` carrying the dotted key (``hyparview.arwl``,
``nodes.n3.endpoint``, ``node.contacts[1]``), the value, what was expected and where the value
came from (a file, an environment variable). Secret keys are never echoed in messages.

Endpoints are the ZeroMQ forms this agent can use (zmq_tcp(7), zmq_ipc(7), zmq_inproc(7)):
``tcp://host:port`` (host name, IPv4, or ``[IPv6]``), ``ipc://path`` and ``inproc://name``. A
port of 0 ("any free port") is accepted where the agent binds or advertises itself, never for a
peer it must dial; the wildcard hosts ``*``, ``0.0.0.0`` and ``[::]`` only for ``bind``.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from ray_hyparview.config.describe import cmd_check, configure_logging, describe
from ray_hyparview.config.env import ENV_PREFIX, ENV_VARS, PROCESS_ENV_VARS, apply_env, merge_env
from ray_hyparview.config.errors import MISSING, StrategyError, hide, suggest
from ray_hyparview.config.keys import (
    KeyFileError,
    is_z85_key,
    load_keypair,
    public_key_of,
    secret_file_too_open,
)
from ray_hyparview.config.models import (
    LOG_LEVELS,
    MIN_INTERVAL,
    TRANSPORTS,
    AgentSection,
    HyParViewSection,
    NodeSpec,
    SecuritySection,
    StrategyFile,
    TransportLimits,
    TransportSection,
    error_from,
    validate_section,
)
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.transport.admission import KeyRule
from ray_hyparview.transport.endpoints import (
    WILDCARD_HOSTS,
    EndpointError,
    EndpointUse,
    check_endpoint,
    format_host,
    is_loopback_host,
    split_host_port,
    tcp_host,
)
from ray_hyparview.wire.codec import MAX_PEER_ID_BYTES

__all__ = [
    "ENV_PREFIX",
    "ENV_VARS",
    "LOG_LEVELS",
    "MIN_INTERVAL",
    "PROCESS_ENV_VARS",
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

_MAX_ID_BYTES: Final = MAX_PEER_ID_BYTES
_NODE_ID_RE = re.compile(r"^[^\s,=\[\]\"']+$")


# ----------------------------------------------------------------------------------------------
# Checks of single values


def validate_endpoint(
    endpoint: object, key: str, use: EndpointUse, *, transport: str = "zmq"
) -> str:
    """Check an endpoint for one use (see :func:`~ray_hyparview.transport.endpoints.
    check_endpoint`) and return it, or raise :class:`StrategyError` naming ``key``."""
    try:
        return check_endpoint(endpoint, use, transport=transport)
    except EndpointError as exc:
        raise StrategyError(key, endpoint, exc.expected, hint=exc.hint) from None


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
        shown = hide(value) if secret else value
        what = "secret" if secret else "public"
        raise StrategyError(key, shown, f"a CURVE {what} key: 40 characters of Z85 text")
    assert isinstance(value, str)
    return value


# ----------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    """CURVE settings: this node's key pair and which peers' keys are let in.

    A peer is admitted (ZAP) if its key is in :attr:`allowed_keys` or :attr:`allow_list`, and
    may speak for a node id only as :meth:`may_claim` says: an id bound to a key takes that key
    alone, and a bound key speaks for its own id alone (so one compromised node cannot pose as
    another). The rule is the transport's (:class:`~ray_hyparview.transport.admission.KeyRule`,
    where :attr:`allowed_keys` is called ``node_keys``: ``CurveConfig.node_keys``).
    ``Strategy`` merges the keys of its ``nodes`` table into :attr:`allowed_keys`.
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

    @property
    def rule(self) -> KeyRule:
        """The transport's admission rule over these keys: the code the ZAP handler runs."""
        return KeyRule(self.allowed_keys, self.allow_list)

    def is_allowed(self, public_key: str | bytes) -> bool:
        """Whether a client presenting ``public_key`` may connect at all (the ZAP decision)."""
        key = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
        return self.rule.admits(key)

    def may_claim(self, node_id: NodeId, public_key: str | bytes) -> bool:
        """Whether the holder of ``public_key`` may speak as ``node_id``
        (:meth:`ray_hyparview.transport.admission.KeyRule.may_claim`)."""
        key = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
        return self.rule.may_claim(node_id, key)


_TRANSPORT_DEFAULTS: Final = TransportSection()
_AGENT_DEFAULTS: Final = AgentSection()


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

    transport: str = _TRANSPORT_DEFAULTS.kind
    """``"zmq"`` (real sockets) or ``"memory"`` (in-process, for tests) ([transport] kind)."""

    hyparview_config: HyParViewConfig = field(default_factory=HyParViewConfig)
    """Protocol parameters ([hyparview], same field names)."""

    security: Security | None = None
    """CURVE key pair and allowed keys ([security]); ``None`` runs in plain text."""

    nodes: Mapping[NodeId, NodeSpec] = field(default_factory=dict)
    """Node id -> endpoint and key ([nodes]); a plain endpoint string is accepted as value."""

    bind: str = ""
    """Endpoint to bind ([node] bind); empty means the local peer's endpoint."""

    control: str | None = _AGENT_DEFAULTS.control
    """[agent] control: see :class:`~ray_hyparview.config.models.AgentSection`, as are the
    next three."""

    metrics_port: int | None = _AGENT_DEFAULTS.metrics_port
    metrics_host: str = _AGENT_DEFAULTS.metrics_host
    log_level: str = _AGENT_DEFAULTS.log_level

    heartbeat_interval: float = _TRANSPORT_DEFAULTS.heartbeat_interval
    """[transport] heartbeat_interval: see :class:`~ray_hyparview.config.models.TransportSection`,
    as is the next one."""

    heartbeat_timeout: float = _TRANSPORT_DEFAULTS.heartbeat_timeout

    limits: TransportLimits = field(default_factory=TransportLimits)
    """Queue, connection and log-rate bounds ([transport], see :class:`TransportLimits`)."""

    def __post_init__(self) -> None:
        self._check_sections()
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
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise StrategyError(
                "transport.heartbeat_timeout",
                self.heartbeat_timeout,
                f"more than transport.heartbeat_interval ({self.heartbeat_interval})",
            )
        if self.control is not None:
            validate_endpoint(self.control, "agent.control", "control")
        if self.security is not None:
            object.__setattr__(self, "security", self._check_security(self.security, nodes, local))

    # -- validation steps ----------------------------------------------------------------------

    def _sections(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The [transport], [agent] and [hyparview] values of this strategy, by key."""
        transport = {
            "kind": self.transport,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            **self.limits.options(),
        }
        agent = {name: getattr(self, name) for name in AgentSection.model_fields}
        return transport, agent, asdict(self.hyparview_config)

    def _check_sections(self) -> None:
        """The scalar settings against the section models: the bounds a file gets."""
        if not isinstance(self.limits, TransportLimits):
            raise StrategyError("transport", self.limits, "a TransportLimits")
        if not isinstance(self.hyparview_config, HyParViewConfig):
            raise StrategyError("hyparview", self.hyparview_config, "a HyParViewConfig")
        transport_values, agent_values, hyparview_values = self._sections()
        transport = validate_section(TransportSection, transport_values, "transport")
        object.__setattr__(self, "transport", transport.kind)
        object.__setattr__(self, "heartbeat_interval", transport.heartbeat_interval)
        object.__setattr__(self, "heartbeat_timeout", transport.heartbeat_timeout)
        agent = validate_section(AgentSection, agent_values, "agent")
        for name in AgentSection.model_fields:
            object.__setattr__(self, name, getattr(agent, name))
        validate_section(HyParViewSection, hyparview_values, "hyparview")

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
            if self.bind and tcp_host(self.bind) not in WILDCARD_HOSTS:
                # `run --id a --bind tcp://127.0.0.1:0`: a bind others can dial doubles as
                # the advertised endpoint (with its port filled in by advertised_peer).
                validate_endpoint(self.bind, "node.bind", "advertise", transport=self.transport)
                return Peer(node_id, self.bind)
            raise StrategyError(
                "node.endpoint",
                MISSING,
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
                        hint=suggest(peer.id, nodes) or f"known ids: {', '.join(nodes) or 'none'}",
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
        host, port = split_host_port(local.endpoint[len("tcp://") :])
        _, bound_port = split_host_port(bound_endpoint[len("tcp://") :])
        if host is None or port != "0" or not bound_port.isdigit():
            return local
        return Peer(local.id, f"tcp://{format_host(host)}:{bound_port}")

    def endpoint_of(self, node_id: NodeId) -> str | None:
        """The endpoint ``nodes`` lists for ``node_id`` (or this node's own), else None."""
        if node_id == self.local_peer.id:
            return self.local_peer.endpoint
        spec = self.nodes.get(node_id)
        return None if spec is None else spec.endpoint

    @property
    def binds_loopback_only(self) -> bool:
        """True if the bind endpoint cannot be reached from another host."""
        host = tcp_host(self.bind)
        return host is None or is_loopback_host(host)

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
        transport, agent, hyparview = self._sections()
        for name, model, values in (
            ("hyparview", HyParViewSection, hyparview),
            ("transport", TransportSection, transport),
            ("agent", AgentSection, agent),
        ):
            table = model.model_construct(**values).model_dump(exclude_defaults=True)
            if table:
                out[name] = table
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
        merged, env_sources = merge_env(data, environ)
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
        merged, sources = merge_env(data, env)
        return cls.from_mapping(merged, sources=sources)


# ----------------------------------------------------------------------------------------------
# Building from the mapping


def _build(cls: type[Strategy], data: Mapping[str, Any], base_dir: Path | None) -> Strategy:
    if not isinstance(data, Mapping):
        raise StrategyError("", data, "a table")
    given = _drop_none(data)
    given.setdefault("node", {})
    try:
        file = StrategyFile.model_validate(given)
    except ValidationError as exc:
        raise error_from(exc, StrategyFile, given) from None
    node, nodes = file.node, dict(file.nodes)
    _validate_node_id(node.id, "node.id")  # before Peer() below, which refuses less politely
    for node_id in nodes:
        _validate_node_id(node_id, f"nodes.{node_id}")
    if node.contacts is not None:
        contacts: tuple[Peer | str, ...] = tuple(node.contacts)
    else:
        contacts = tuple(Peer(other) for other in nodes if other != node.id)
    transport = file.transport
    return cls(
        local_peer=Peer(node.id, node.endpoint),
        nodes=nodes,
        bind=node.bind,
        contacts=contacts,  # type: ignore[arg-type]  # bare ids and 'id=endpoint' resolve
        hyparview_config=_hyparview_config(file.hyparview),
        transport=transport.kind,
        heartbeat_interval=transport.heartbeat_interval,
        heartbeat_timeout=transport.heartbeat_timeout,
        limits=TransportLimits.model_construct(
            **{name: getattr(transport, name) for name in TransportLimits.model_fields}
        ),
        security=None if file.security is None else _security_from(file.security, base_dir),
        **{name: getattr(file.agent, name) for name in AgentSection.model_fields},
    )


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without its ``None`` values, in every table: ``None`` means "not set"."""
    return {
        key: _drop_none(value) if isinstance(value, Mapping) else value
        for key, value in data.items()
        if value is not None
    }


def _hyparview_config(section: Any) -> HyParViewConfig:
    """The protocol's configuration from ``[hyparview]``; what the protocol refuses is
    reported under the key its ``ConfigError`` names."""
    values = {name: getattr(section, name) for name in type(section).model_fields}
    try:
        return HyParViewConfig(**values)
    except ConfigError as exc:
        if exc.field not in values:
            raise StrategyError("hyparview", values, str(exc)) from None
        raise StrategyError(
            f"hyparview.{exc.field}", values[exc.field], exc.expected or str(exc)
        ) from None


def _parse_security(value: object, base_dir: Path | None) -> Security:
    """A ``[security]`` table (as written, environment applied) as a :class:`Security`."""
    if not isinstance(value, Mapping):
        raise StrategyError("security", value, "a table")
    section = validate_section(SecuritySection, _drop_none(value), "security")
    return _security_from(section, base_dir)


def _security_from(section: SecuritySection, base_dir: Path | None) -> Security:
    table = {
        name: getattr(section, name)
        for name in section.model_fields_set
        if getattr(section, name) is not None
    }
    public = table.get("public_key")
    if public is not None:
        _validate_key(public, "security.public_key")
    secret_file: str | None = None
    if "secret_key_file" in table:
        if "secret_key" in table:
            raise StrategyError(
                "security.secret_key",
                hide(table["secret_key"]),
                "nothing when security.secret_key_file is set",
                hint="set one of the two",
            )
        raw: str = table["secret_key_file"]
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
            MISSING,
            "this node's secret key (security.secret_key or security.secret_key_file)",
            hint="generate a pair with: python -m ray_hyparview.agent keygen",
        )
    if public is None:
        public = public_key_of(secret)
    allow_list = table.get("allow_list", [])
    for index, key in enumerate(allow_list):
        _validate_key(key, f"security.allow_list[{index}]")
    return Security(
        public_key=public,
        secret_key=secret,
        allowed_keys=dict(table.get("allowed_keys", {})),
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
