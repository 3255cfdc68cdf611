"""CURVE settings of one agent (:class:`Security`) and the checks of node ids and keys.

Which peer may connect and which node id it may speak for is the transport's rule
(:class:`~ray_hyparview.transport.admission.KeyRule`); :class:`Security` holds the tables it
runs over, as a strategy file writes them (``[security]``, the keys of ``[nodes]``).
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_hyparview.config.errors import MISSING, StrategyError, hide
from ray_hyparview.config.keys import KeyFileError, is_z85_key, load_keypair, public_key_of
from ray_hyparview.config.models import NODE_ID_EXPECTED, SecuritySection, validate_section
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.transport.admission import KeyRule
from ray_hyparview.wire.codec import MAX_PEER_ID_BYTES

if TYPE_CHECKING:
    from ray_hyparview.config.models import NodeSpec

__all__ = [
    "Security",
    "check_key",
    "check_node_id",
    "drop_none",
    "merge_node_keys",
    "parse_security",
    "security_from",
]

_NODE_ID_RE = re.compile(r"^[^\s,=\[\]\"']+$")


def check_node_id(node_id: object, key: str) -> NodeId:
    """The wire's rule (a printable string of at most ``MAX_PEER_ID_BYTES`` UTF-8 bytes: it
    becomes a ZeroMQ routing id) and the config's (no separators the file forms use)."""
    if (
        not isinstance(node_id, str)
        or not node_id
        or len(node_id.encode("utf-8", "surrogatepass")) > MAX_PEER_ID_BYTES
        or not node_id.isprintable()
        or not _NODE_ID_RE.match(node_id)
    ):
        raise StrategyError(
            key,
            node_id,
            NODE_ID_EXPECTED,
        )
    return node_id


def check_key(value: object, key: str, *, secret: bool = False) -> str:
    if not is_z85_key(value):
        shown = hide(value) if secret else value
        what = "secret" if secret else "public"
        raise StrategyError(key, shown, f"a CURVE {what} key: 40 characters of Z85 text")
    assert isinstance(value, str)
    return value


def drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without its ``None`` values, in every table: ``None`` means "not set"."""
    return {
        key: drop_none(value) if isinstance(value, Mapping) else value
        for key, value in data.items()
        if value is not None
    }


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
        check_key(self.public_key, "security.public_key")
        check_key(self.secret_key, "security.secret_key", secret=True)
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
            check_node_id(node_id, f"security.allowed_keys.{node_id}")
            check_key(key, f"security.allowed_keys.{node_id}")
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
            check_key(key, f"security.allow_list[{index}]")
        object.__setattr__(self, "allow_list", frozenset(allow))
        if self.default_server_key is not None:
            check_key(self.default_server_key, "security.default_server_key")

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


def parse_security(value: object, base_dir: Path | None) -> Security:
    """A ``[security]`` table (as written, environment applied) as a :class:`Security`."""
    if not isinstance(value, Mapping):
        raise StrategyError("security", value, "a table")
    section = validate_section(SecuritySection, drop_none(value), "security")
    return security_from(section, base_dir)


def security_from(section: SecuritySection, base_dir: Path | None) -> Security:
    table = {
        name: getattr(section, name)
        for name in section.model_fields_set
        if getattr(section, name) is not None
    }
    public = table.get("public_key")
    if public is not None:
        check_key(public, "security.public_key")
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
        secret = check_key(table["secret_key"], "security.secret_key", secret=True)
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
        check_key(key, f"security.allow_list[{index}]")
    return Security(
        public_key=public,
        secret_key=secret,
        allowed_keys=dict(table.get("allowed_keys", {})),
        allow_list=frozenset(allow_list),
        default_server_key=table.get("default_server_key"),
        secret_key_file=secret_file,
    )


def merge_node_keys(security: Security, nodes: Mapping[NodeId, NodeSpec], local: Peer) -> Security:
    """``security`` with the public keys of the ``[nodes]`` table merged into its
    ``allowed_keys``, once they are checked against it and against this node's own key."""
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
