"""The strategy file's schema: one typed model per TOML section.

Theory of operation
-------------------
A key of the strategy file is one annotated field of one of the models below. Its type and
bounds (pydantic's, checked in strict mode: TOML already gives typed values, and ``"5"`` is no
integer), its default, its documentation (the attribute docstring under it), its environment
variable (:class:`Env`) and what an error says was expected (:class:`Expect`) all come from that
declaration. :mod:`~ray_hyparview.config.env` derives ``ENV_VARS`` from the models,
:mod:`~ray_hyparview.config.describe` the key reference, and ``Strategy.to_mapping`` dumps the
``[hyparview]``, ``[transport]`` and ``[agent]`` sections through them.

The ``[hyparview]`` model is generated from the fields of
:class:`~ray_hyparview.protocol.config.HyParViewConfig`, which stays a plain dataclass (the
compiled simulator uses it): its bounds are the protocol's own checks, which report the
refused field (``ConfigError.field``).

What involves more than one key or a parser (node ids, endpoints, key pairs, a timeout longer
than its interval) is checked by the values built from the models
(:class:`~ray_hyparview.config.strategy.Strategy`, ``Security``), so that a strategy built in
Python gets the same checks as one read from a file.

Errors come from pydantic's structured ``ValidationError.errors()``: the ``loc`` becomes the
dotted key, the value is looked up in the input (a secret is hidden), and the expectation is
built from the error ``type`` and the field's declaration (:func:`error_from`).
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Final,
    Literal,
    Union,
    get_args,
    get_origin,
)

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo

from ray_hyparview.config.errors import MISSING, StrategyError, hide, suggest
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.transport.endpoints import is_host
from ray_hyparview.wire.codec import DEFAULT_MAX_SIZE, MAX_PEER_ID_BYTES

__all__ = [
    "AGENT_NICE",
    "LOG_LEVELS",
    "MIN_INTERVAL",
    "SECTIONS",
    "TRANSPORTS",
    "AgentSection",
    "Env",
    "Expect",
    "BelowFloor",
    "Floor",
    "HyParViewSection",
    "NodeSection",
    "NodeSpec",
    "SecuritySection",
    "StrategyFile",
    "TransportLimits",
    "TransportSection",
    "error_from",
    "validate_section",
]

TRANSPORTS: Final = ("zmq", "memory")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_INTERVAL: Final = 0.01
"""Floor, in seconds, of every period and timeout the agent arms (shuffles, keepalives,
heartbeats, probes, re-joins): below it a timer spins and burns a core (1e-9 s was accepted
once and ran a core at 100 %)."""

NODE_ID_EXPECTED: Final = (
    f"a node id: 1-{MAX_PEER_ID_BYTES} bytes of UTF-8, printable, without whitespace,"
    " control characters, quotes, brackets, ',' or '='"
)
PUBLIC_KEY_EXPECTED: Final = "a CURVE public key: 40 characters of Z85 text"
SECRET_KEY_EXPECTED: Final = "a CURVE secret key: 40 characters of Z85 text"
NODE_ENTRY_EXPECTED: Final = (
    'an endpoint string or a table { endpoint = "...", public_key = "..." }'
)


# ----------------------------------------------------------------------------------------------
# What a field declares besides its type


@dataclass(frozen=True, slots=True)
class Env:
    """The field can be set by ``RAY_HYPARVIEW_<name>`` (the field's name upper-cased unless
    given). ``parse`` turns the variable's text into the value (``parse(text, variable)``);
    by default it is chosen from the field's type."""

    name: str | None = None
    parse: Callable[[str, str], Any] | None = None


@dataclass(frozen=True, slots=True)
class Expect:
    """What an error about this field says was expected: ``text`` for a wrong value,
    ``item`` for a wrong item of its list or table, ``missing`` (and ``hint``) when a required
    value is absent."""

    text: str | None = None
    item: str | None = None
    missing: str | None = None
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Secret:
    """The field holds a secret: errors show its length, never its text."""


SECRET: Final = Secret()


class BelowFloor(ValueError):
    """A period below its :class:`Floor` (the error's ``ctx["error"]`` in pydantic's report)."""

    def __init__(self, floor: float) -> None:
        super().__init__(f"at least {floor} seconds")
        self.floor = floor


@dataclass(frozen=True, slots=True)
class Floor:
    """A period or timeout of at least ``seconds``: a shorter timer spins and burns a core.
    Values at or below 0 are left to the ``gt=0`` bound or to the protocol's own check. Used
    as ``AfterValidator(Floor(MIN_INTERVAL))``."""

    seconds: float

    def __call__(self, value: float | None) -> float | None:
        if value is not None and 0 < value < self.seconds:
            raise BelowFloor(self.seconds)
        return value


def _off(value: object) -> object:
    return None if value is False else value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _host(value: str) -> str:
    if not is_host(value):
        raise ValueError("an IP address or a host name")
    return value


Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A finite number of seconds greater than 0."""
Interval = Annotated[float, Field(gt=0, allow_inf_nan=False), AfterValidator(Floor(MIN_INTERVAL))]
"""A period or timeout the agent arms: at least :data:`MIN_INTERVAL` seconds."""

_STRICT = ConfigDict(
    strict=True,
    extra="forbid",
    frozen=True,
    regex_engine="python-re",
)


class _Section(BaseModel):
    """A table of the strategy file: strict types, unknown keys refused."""

    model_config = _STRICT
    _prefix: ClassVar[str] = ""
    """The dotted key of the table, for errors raised by the constructor."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise error_from(exc, type(self), data, prefix=self._prefix) from None

    # Nested validation (a [transport] table inside the file) must not run this constructor,
    # or its error would come back wrapped as a value error of the enclosing table: pydantic
    # calls a model's own __init__ for nested values unless it is marked as the base one.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------
# Sections


class NodeSection(_Section):
    """``[node]``: who this node is and whom it joins through."""

    _prefix: ClassVar[str] = "node"

    id: Annotated[
        str,
        Expect(NODE_ID_EXPECTED, missing="this node's id", hint="set [node] id"),
        Env("NODE_ID"),
    ]
    """This node's id: unique in the cluster, at most 240 bytes of UTF-8."""

    endpoint: Annotated[str, Expect("an endpoint string"), Env()] = ""
    """Where the others reach this node (``tcp://host:port``); empty: taken from ``[nodes]``,
    else from ``bind`` unless that is a wildcard."""

    bind: Annotated[str, Expect("an endpoint string"), Env()] = ""
    """Endpoint to bind; empty: this node's endpoint. May be a wildcard (``tcp://0.0.0.0:7946``)."""

    contacts: Annotated[
        list[str] | None,
        Field(strict=False),
        Expect(
            "a list of node ids or 'id=endpoint' strings",
            item="a node id or an 'id=endpoint' string",
        ),
        Env(),
    ] = None
    """Nodes to join through, in order: ids listed in ``[nodes]`` or ``id=endpoint``. Unset:
    every other node in ``[nodes]``; empty: none (the first node of a cluster). As a variable,
    a comma list."""


class NodeSpec(_Section):
    """One entry of the ``nodes`` table: where a node listens and which key it holds."""

    _prefix: ClassVar[str] = "nodes"

    endpoint: Annotated[str, Expect("an endpoint string", missing="the node's endpoint")]
    """The node's agent endpoint, e.g. ``tcp://10.0.0.2:7946``."""

    public_key: Annotated[str | None, Expect(PUBLIC_KEY_EXPECTED)] = None
    """The node's CURVE public key (Z85); with security on, only this key may claim the id."""


class TransportLimits(_Section):
    """What peers can make one agent hold, and how much it logs about them ([transport], same
    names). The ZeroMQ transport's options of the same names; defaults bound an agent under a
    flood of 50 connections to about 100 MB (``tests/test_hostile_suite.py``)."""

    _prefix: ClassVar[str] = "transport"

    recv_hwm: Annotated[int, Field(ge=1, le=1 << 20), Env()] = 16
    """Frames libzmq queues per inbound connection (RCVHWM). Times ``max_msg_size``, the bytes
    one connection can make us hold: 1 MiB by default."""

    max_msg_size: Annotated[int, Field(ge=1024, le=DEFAULT_MAX_SIZE), Env()] = DEFAULT_MAX_SIZE
    """Largest inbound frame in bytes (MAXMSGSIZE; libzmq drops a connection that sends a
    larger one). At most the codec's limit, 64 KiB, which refuses larger frames anyway."""

    max_connections: Annotated[int, Field(ge=1, le=1 << 20), Env()] = 128
    """Inbound connections open at once; more are refused at the handshake
    (``transport.zap.refused.connections``), except, with CURVE, those of keys bound to a node
    id. In plain text every connection counts, the real peers' too."""

    max_strangers: Annotated[int, Field(ge=1, le=1 << 20), Env()] = 256
    """Distinct sender ids without a link whose frames are taken at once; frames of more are
    dropped unread (``transport.recv.dropped.stranger_cap``)."""

    stranger_timeout: Annotated[Interval, Env()] = 5.0
    """Seconds after its last frame that a stranger stops counting against the cap."""

    log_lines: Annotated[int, Field(ge=0, le=1 << 20), Env()] = 10
    """Warnings of one kind written per ``log_interval``; the rest are counted
    (``transport.log.suppressed``)."""

    log_interval: Annotated[Interval, Env()] = 10.0
    """Seconds of one warning-rate interval."""

    def options(self) -> dict[str, Any]:
        """These limits as keyword arguments of ``ZmqOptions``."""
        return {name: getattr(self, name) for name in TransportLimits.model_fields}


class TransportSection(TransportLimits):
    """``[transport]``: which transport, its heartbeats, and the limits of
    :class:`TransportLimits`."""

    kind: Annotated[
        Literal["zmq", "memory"], Expect(f"one of {list(TRANSPORTS)}"), Env("TRANSPORT")
    ] = "zmq"
    """``zmq`` (real sockets) or ``memory`` (in-process, for tests)."""

    heartbeat_interval: Annotated[Interval, Env()] = 0.5
    """Seconds between TCP keepalive probes on an idle inbound connection (rounded up to whole
    seconds, the kernel's unit), which end one whose host vanished. No ZMTP heartbeats are sent:
    libzmq 4.3.5 can abort the process on them (see :mod:`ray_hyparview.transport.zmq`). A
    frozen peer is found by the agent's keepalives (``[hyparview] keepalive_timeout``)."""

    heartbeat_timeout: Annotated[Interval, Env()] = 1.5
    """A link whose sent data stays unacknowledged this long is dropped and reported failed
    (``TCP_MAXRT``): a vanished or partitioned peer; more than ``heartbeat_interval``. Default:
    three intervals, since one lost packet on a busy network is no evidence of a dead peer."""


AGENT_NICE: Final = -10
"""The nice value a process that runs an agent asks for by default (``[agent] nice``)."""


class AgentSection(_Section):
    """``[agent]``: the agent's own sockets and logging."""

    _prefix: ClassVar[str] = "agent"

    control: Annotated[str | None, Expect("an endpoint string"), Env()] = None
    """Local control endpoint answering ``status``: loopback or ipc only. As a variable, empty
    turns it off."""

    metrics_port: Annotated[int | None, Field(ge=0, le=65535), Expect("a port 0-65535"), Env()] = (
        None
    )
    """TCP port of the Prometheus text endpoint; 0 picks a free port. As a variable, empty or
    ``none`` turns it off."""

    metrics_host: Annotated[
        str, AfterValidator(_host), Expect("an IP address or a host name"), Env()
    ] = "127.0.0.1"
    """Address the Prometheus endpoint binds: loopback by default; ``0.0.0.0`` or ``::`` (or
    the pod's address) for a Prometheus on another host."""

    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        BeforeValidator(_upper),
        Expect(f"one of {list(LOG_LEVELS)}"),
        Env(),
    ] = "INFO"
    """Level of the ``ray_hyparview`` loggers, a ``logging`` level name (any case)."""

    nice: Annotated[int, Field(ge=-20, le=19), Expect("a nice value -20 to 19"), Env()] = AGENT_NICE
    """Nice value the agent's process asks for at start (``ray_hyparview.agent.priority``): a
    starved agent's peers fail it for being late. Needs ``CAP_SYS_NICE`` or ``RLIMIT_NICE``;
    without them the agent warns once and runs as it is. ``0`` leaves the priority alone."""


class SecuritySection(_Section):
    """``[security]``: this node's CURVE key pair and which peers' keys are let in."""

    _prefix: ClassVar[str] = "security"

    public_key: Annotated[
        str | None, Expect(PUBLIC_KEY_EXPECTED), Env(parse=lambda t, v: t.strip())
    ] = None
    """This node's public key, Z85 text; derived from the secret key when unset."""

    secret_key: Annotated[
        str | None, Expect(SECRET_KEY_EXPECTED), SECRET, Env(parse=lambda t, v: t.strip())
    ] = None
    """This node's secret key, Z85 text. Prefer ``secret_key_file``."""

    secret_key_file: Annotated[
        str | None, Expect("a file path"), Env(parse=lambda t, v: _path(t))
    ] = None
    """A ``.key_secret`` certificate (``python -m ray_hyparview.agent keygen``); relative to the
    strategy file (to the working directory as a variable)."""

    allowed_keys: Annotated[
        dict[str, str], Expect("a table of node id = public key", item=PUBLIC_KEY_EXPECTED)
    ] = Field(default_factory=dict)
    """Node id = the one public key that may claim it (``[nodes]`` keys are merged in)."""

    allow_list: Annotated[
        list[str],
        Field(strict=False),
        Expect("a list of public keys", item=PUBLIC_KEY_EXPECTED),
        Env(),
    ] = Field(default_factory=list)
    """Extra public keys admitted without a fixed node id (e.g. nodes that join later); they
    may claim any id not bound to another key."""

    default_server_key: Annotated[str | None, Expect(PUBLIC_KEY_EXPECTED), Env()] = None
    """Public key to expect when dialling a node whose key is not bound (a node learned by
    shuffle, or a cluster sharing one key pair)."""


def _path(text: str) -> str:
    # Relative to the working directory of whoever set the variable, not to the config file.
    return os.path.abspath(os.path.expanduser(text.strip())) if text.strip() else ""


def _hyparview_field(f: dataclasses.Field[Any]) -> tuple[Any, Any]:
    """One ``[hyparview]`` key from one field of :class:`HyParViewConfig`."""
    default = f.default
    kind = str(f.type)
    floor = (AfterValidator(Floor(MIN_INTERVAL)),) if f.name in _HYPARVIEW_FLOORS else ()
    if kind == "int":
        return Annotated[int, Expect("an integer"), Env()], default
    if "None" in kind:
        return (
            Annotated[
                float | None,
                BeforeValidator(_off),
                PlainSerializer(lambda v: False if v is None else v),
                *floor,
                Expect("a number of seconds or false (off)"),
                Env(),
            ],
            default,
        )
    return Annotated[float, Field(allow_inf_nan=False), *floor, Env()], default


_HYPARVIEW_FLOORS: Final = frozenset(
    {
        "shuffle_interval",
        "neighbor_timeout",
        "rejoin_backoff_initial",
        "rejoin_backoff_max",
        "keepalive_interval",
        "keepalive_timeout",
        "probe_interval_min",
        "probe_interval_max",
    }
)
"""The protocol's periods and timeouts the agent arms as timers (see :class:`Floor`)."""


_HYPARVIEW_FIELDS: Final[dict[str, Any]] = {
    f.name: _hyparview_field(f) for f in dataclasses.fields(HyParViewConfig)
}


class _HyParViewBase(_Section):
    _prefix: ClassVar[str] = "hyparview"


if TYPE_CHECKING:
    # A class to type checkers: mypy without the pydantic plugin (mypyc compiling the
    # simulator's core follows imports here) refuses a variable as a type.
    HyParViewSection = _HyParViewBase
else:
    HyParViewSection = create_model(
        "HyParViewSection",
        __base__=_HyParViewBase,
        __doc__="``[hyparview]``: the protocol's parameters, one key per field of HyParViewConfig.",
        **_HYPARVIEW_FIELDS,
    )


def _entries(value: object) -> object:
    """``nodes``: a bare endpoint string stands for ``{ endpoint = "..." }``."""
    if not isinstance(value, Mapping):
        return value
    return {
        node_id: {"endpoint": spec} if isinstance(spec, str) else spec
        for node_id, spec in value.items()
    }


class StrategyFile(BaseModel):
    """The whole file: its sections."""

    model_config = _STRICT

    node: NodeSection
    hyparview: HyParViewSection = HyParViewSection()
    transport: TransportSection = TransportSection()
    agent: AgentSection = AgentSection()
    security: SecuritySection | None = None
    nodes: Annotated[
        dict[str, NodeSpec],
        BeforeValidator(_entries),
        Expect("a table of node id = endpoint", item=NODE_ENTRY_EXPECTED),
        Env(),
    ] = Field(default_factory=dict)
    """Node id = endpoint, or ``{ endpoint = "...", public_key = "..." }``. As a variable, a
    comma list of ``id=endpoint`` merged into the table."""


SECTIONS: Final = tuple(StrategyFile.model_fields)
"""The top-level keys of a strategy file."""


# ----------------------------------------------------------------------------------------------
# Errors


def validate_section(model: type[BaseModel], data: Mapping[str, Any], prefix: str) -> Any:
    """``model`` validated from ``data``, or a :class:`StrategyError` naming the key under
    ``prefix``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_from(exc, model, data, prefix=prefix) from None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


@dataclass(slots=True)
class _Where:
    field: FieldInfo | None = None
    """The deepest model field on the error's path."""
    item: bool = False
    """Whether the path goes on into an item of that field's list or table."""
    owner: type[BaseModel] | None = None
    """The model whose key the path names last."""


def _walk(model: type[BaseModel], loc: tuple[int | str, ...]) -> _Where:
    where = _Where(owner=model)
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            where.owner = current
            info = current.model_fields.get(str(part))
            if info is None:
                return where
            where.field, where.item = info, False
            current = _unwrap(info.annotation)
        elif get_origin(current) in (list, dict):
            where.item = True
            current = _unwrap(get_args(current)[-1])
        else:
            return where
    return where


def _lookup(data: object, loc: tuple[int | str, ...]) -> object:
    """The value at ``loc`` in ``data`` as given (before any validator changed it)."""
    value = data
    for part in loc:
        if isinstance(value, Mapping):
            if part not in value:
                raise LookupError(part)
            value = value[part]
        elif isinstance(value, list | tuple) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            raise LookupError(part)
    return value


def _dotted(prefix: str, loc: tuple[int | str, ...]) -> str:
    key = prefix
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key = f"{key}.{part}" if key else str(part)
    return key


def _meta(info: FieldInfo | None, kind: type[Any]) -> Any:
    if info is None:
        return None
    return next((m for m in info.metadata if isinstance(m, kind)), None)


def _bounds(info: FieldInfo) -> tuple[object, object]:
    low = high = None
    for m in info.metadata:
        low = getattr(m, "ge", low)
        high = getattr(m, "le", high)
    return low, high


def _expected(error: Any, where: _Where) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    expect: Expect | None = _meta(where.field, Expect)
    if isinstance(ctx.get("error"), BelowFloor):
        return f"at least {ctx['error'].floor} seconds (a shorter timer burns a core)"
    if where.item and expect is not None and expect.item:
        return expect.item
    if not where.item and expect is not None and expect.text:
        return expect.text
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "a table"
    info = where.field
    annotation = None if info is None else _unwrap(info.annotation)
    if annotation is int:
        assert info is not None
        low, high = _bounds(info)
        return "an integer" if low is None or high is None else f"an integer from {low} to {high}"
    if annotation is float:
        if kind in ("greater_than", "finite_number"):
            return f"a finite number of seconds greater than {float(ctx.get('gt', 0)):g}"
        return "a number of seconds"
    text = str(error.get("msg", "a valid value"))
    return text[:1].lower() + text[1:]


def error_from(
    exc: ValidationError, model: type[BaseModel], data: object, *, prefix: str = ""
) -> StrategyError:
    """The :class:`StrategyError` for the first of pydantic's errors (an unknown key first:
    it is the likelier cause of whatever else went wrong), built from its ``loc``, ``type``
    and ``ctx`` and from the field's declaration, never from the message text."""
    errors = exc.errors()
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc: tuple[int | str, ...] = tuple(error["loc"])
    key = _dotted(prefix, loc)
    where = _walk(model, loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        known = tuple(where.owner.model_fields) if where.owner is not None else ()
        name = str(loc[-1]) if loc else ""
        section = _dotted(prefix, loc[:-1])
        hint = suggest(name, known)
        if not section and name == "contacts":
            hint = "contacts belong in the [node] table"
        shown = f"[{section}]" if section else "the top level"
        return StrategyError(key, name, f"a key of {shown} ({', '.join(known)})", hint=hint)
    expect: Expect | None = _meta(where.field, Expect)
    if kind == "missing":
        what = expect.missing if expect is not None and expect.missing else "a value"
        return StrategyError(key, MISSING, what, hint=expect.hint if expect else None)
    try:
        value = _lookup(data, loc)
    except LookupError:
        value = error.get("input")
    if _meta(where.field, Secret) is not None:
        value = hide(value)
    hint = None
    if loc[:1] == ("nodes",) and len(loc) == 2 and loc[1] == "contacts":
        hint = "contacts belong in the [node] table (in TOML, keys after [nodes] belong to [nodes])"
    return StrategyError(key, value, _expected(error, where), hint=hint)
