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
import tomllib
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from ray_hyparview.config.describe import cmd_check, configure_logging, describe
from ray_hyparview.config.env import ENV_PREFIX, ENV_VARS, PROCESS_ENV_VARS, apply_env, merge_env
from ray_hyparview.config.errors import MISSING, StrategyError, suggest
from ray_hyparview.config.keys import (
    secret_file_too_open,
)
from ray_hyparview.config.loading import build
from ray_hyparview.config.models import (
    LOG_LEVELS,
    MIN_INTERVAL,
    TRANSPORTS,
    AgentSection,
    HyParViewSection,
    NodeSpec,
    TransportLimits,
    TransportSection,
    validate_section,
)
from ray_hyparview.config.security import (
    Security,
    check_key,
    check_node_id,
    merge_node_keys,
    parse_security,
)
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import NodeId, Peer
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


# ----------------------------------------------------------------------------------------------
# Values


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
    nice: int = _AGENT_DEFAULTS.nice

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
            object.__setattr__(self, "security", merge_node_keys(self.security, nodes, local))

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
            check_node_id(node_id, f"nodes.{node_id}")
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
                check_key(spec.public_key, f"nodes.{node_id}.public_key")
            nodes[node_id] = spec
        return nodes

    def _check_local(self, nodes: Mapping[NodeId, NodeSpec]) -> Peer:
        if not isinstance(self.local_peer, Peer):
            raise StrategyError("node", self.local_peer, "a Peer")
        node_id = check_node_id(self.local_peer.id, "node.id")
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
            check_node_id(peer.id, key)
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
            self.nice,
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
            return build(cls, data, Path(base_dir) if base_dir is not None else None)
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


_parse_security = parse_security
"""The old private name, which ``cluster/keys.py`` imports."""


def _parse_contact(text: str, key: str) -> Peer:
    node_id, sep, endpoint = text.partition("=")
    node_id = node_id.strip()
    endpoint = endpoint.strip()
    check_node_id(node_id, key)
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
