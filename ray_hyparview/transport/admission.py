"""The CURVE admission rule: which client keys get in, and which node id each may speak for.

There is one copy of the rule, here; the ZeroMQ transport's ZAP handler and frame check run it
(:mod:`ray_hyparview.transport.zmq`) and the configuration's
:meth:`~ray_hyparview.config.strategy.Security.may_claim` delegates to it.

Two tables, named the same everywhere:

``node_keys`` (the ``[security] allowed_keys`` table of a strategy file, plus the keys of its
``[nodes]`` table)
    node id -> the one public key bound to it. A bound id may be claimed with its key alone,
    and a bound key speaks for its own id alone, so one compromised node cannot pose as another.
``allow_list``
    public keys admitted without an id binding (nodes that join later, a key shared by a
    cluster). Such a key may claim any id that is not bound to a key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ray_hyparview.protocol.peer import NodeId

__all__ = ["KeyRule"]


class KeyRule:
    """The admission rule over one binding of keys (immutable; build a new one to rebind)."""

    __slots__ = ("allow_list", "key_to_id", "node_keys")

    def __init__(self, node_keys: Mapping[NodeId, str], allow_list: Iterable[str] = ()) -> None:
        ids = dict(node_keys)
        owners = {key: node_id for node_id, key in ids.items()}
        if len(owners) != len(ids):
            raise ValueError("node_keys binds one key to two node ids")
        self.node_keys: Mapping[NodeId, str] = MappingProxyType(ids)
        """Node id -> the one public key that may claim it."""
        self.key_to_id: Mapping[str, NodeId] = MappingProxyType(owners)
        """The inverse: public key -> the one node id it may claim."""
        self.allow_list: frozenset[str] = frozenset(allow_list)
        """Keys admitted without an id binding."""

    def admits(self, public_key: str) -> bool:
        """Whether a client holding ``public_key`` may connect at all (the ZAP decision,
        before any connection cap)."""
        return public_key in self.key_to_id or public_key in self.allow_list

    def is_bound(self, public_key: str) -> bool:
        """Whether ``public_key`` is bound to a node id."""
        return public_key in self.key_to_id

    def may_claim(self, node_id: NodeId, public_key: str | None) -> bool:
        """Whether the holder of ``public_key`` may speak as ``node_id``: a bound key for its
        own id only; an allow-listed key for any id not bound to another key; nobody else."""
        if public_key is None:
            return False
        bound = self.key_to_id.get(public_key)
        if bound is not None:
            return bound == node_id
        return public_key in self.allow_list and node_id not in self.node_keys
