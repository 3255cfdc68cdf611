"""Every message on the wire, in one table: tag, class and field kinds.

Theory of operation
-------------------
:data:`TABLE` lists every message the package sends, HyParView and the merge rule (1-15),
Plumtree (16-31), routing and the mesh envelopes (32-63), each with the kinds of its fields.
:data:`REGISTRY` is built from it once, frozen, and :func:`wire_codec` decodes with it. Nothing
registers at import time: what an agent, the simulator or a test can decode is this table,
whatever else was imported. The protocol modules stay free of any codec knowledge; this is
where their fields meet msgpack, and every width is a name from
:mod:`ray_hyparview.protocol.limits`, the table the cores check received values against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ray_hyparview.protocol import delivery_values as dl
from ray_hyparview.protocol import limits
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.delivery_values import (
    MAX_PAYLOAD,
    MeshAck,
    MeshPublish,
    MeshReply,
    MeshSend,
)
from ray_hyparview.protocol.messages import (
    ComponentMark,
    Disconnect,
    ForwardJoin,
    Join,
    KeepAlive,
    MergeProbe,
    Neighbor,
    NeighborReply,
    Priority,
    Shuffle,
    ShuffleReply,
)
from ray_hyparview.wire.codec import (
    BOOL,
    INCARNATION,
    MAX_SHUFFLE_PEERS,
    NODE_ID,
    PEER,
    TTL,
    BytesField,
    Codec,
    DecodeError,
    EnumField,
    Field,
    FloatField,
    IntField,
    OptionalField,
    Registry,
    SeqField,
    StrField,
    _Invalid,
)

__all__ = [
    "MAX_PAYLOAD",
    "REGISTRY",
    "TABLE",
    "MeshAck",
    "MeshPublish",
    "MeshReply",
    "MeshSend",
    "TupleField",
    "decode",
    "encode",
    "hyparview_registry",
    "wire_codec",
]


@dataclass(frozen=True, slots=True)
class TupleField:
    """A fixed-length tuple whose items have their own kinds (e.g. a Plumtree message id)."""

    items: tuple[Any, ...]

    def encode(self, value: Any) -> Any:
        if not isinstance(value, tuple | list) or len(value) != len(self.items):
            raise _Invalid(f"expected a tuple of {len(self.items)}")
        return [kind.encode(v) for kind, v in zip(self.items, value, strict=True)]

    def decode(self, raw: Any) -> Any:
        if type(raw) is not list or len(raw) != len(self.items):
            raise _Invalid(f"expected an array of {len(self.items)}")
        return tuple(kind.decode(v) for kind, v in zip(self.items, raw, strict=True))

    def max_array_len(self) -> int:
        inner: list[int] = [kind.max_array_len() for kind in self.items]
        return max([len(self.items), *inner])


# Every width below is a name from ray_hyparview.protocol.limits, which the cores check against
# too: a value the decoder accepts is one the cores may use and the encoder will carry again.
_ID = NODE_ID
_U64 = IntField(0, limits.U64_MAX)
_SEQNO = IntField(0, limits.MAX_SEQNO)
_FRAME_ID = IntField(0, limits.MAX_FRAME_ID)
_METRIC = IntField(0, limits.METRIC_INFINITY)
_HOPS = IntField(0, limits.MAX_HOPS)
_ROUND = IntField(0, limits.MAX_ROUND)
_TEXT = StrField(limits.MAX_TEXT)
_PAYLOAD = BytesField(MAX_PAYLOAD)
_ENVELOPE = BytesField(limits.MAX_ENVELOPE)  # a mesh envelope, inside a data frame or a gossip
_MSG_ID = TupleField((_ID, _U64, _U64))

_SHUFFLE_PEERS = SeqField(PEER, MAX_SHUFFLE_PEERS)
_AGE = FloatField(0.0, 1e9)
"""A component marker's age in seconds: a marker older than a few ``merge_interval`` is
dropped, so anything near the bound is garbage."""
_MARK: Final[Mapping[str, Field]] = {
    "sender": PEER,
    "incarnation": INCARNATION,
    "root": PEER,
    "root_incarnation": INCARNATION,
    "seq": INCARNATION,
    "age": _AGE,
    "settled": BOOL,
}

# The mesh envelopes travel inside routed data frames (or Plumtree gossip): 40-47. Tags 40-42
# carried the first envelopes, without incarnations or horizons; they are retired, not reused,
# so that a node of the older version counts the newer envelopes as ``unknown_type`` instead of
# misreading them. The values are defined by the delivery core; the bounds here are exactly
# the ones it accepts, so that whatever this decoder accepts, the encoder encodes again.
_MESH_NAME = StrField(dl.MAX_NAME_LEN, min_len=1)
_MESH_ID = IntField(1, dl.MAX_ID)
_MESH_INCARNATION = IntField(0, dl.MAX_ID)
_MESH_ATTEMPT = IntField(1, dl.MAX_ATTEMPT)

TABLE: Final[tuple[tuple[int, type[Any], Mapping[str, Field]], ...]] = (
    # HyParView (Leitão, Pereira, Rodrigues, DSN 2007) and the partition merge rule: 1-15.
    (1, Join, {"sender": PEER, "incarnation": INCARNATION}),
    (2, ForwardJoin, {"sender": PEER, "incarnation": INCARNATION, "new_peer": PEER, "ttl": TTL}),
    (3, Neighbor, {"sender": PEER, "incarnation": INCARNATION, "priority": EnumField(Priority)}),
    (4, NeighborReply, {"sender": PEER, "incarnation": INCARNATION, "accepted": BOOL}),
    (5, Disconnect, {"sender": PEER, "incarnation": INCARNATION, "leaving": BOOL}),
    (
        6,
        Shuffle,
        {
            "sender": PEER,
            "incarnation": INCARNATION,
            "origin": PEER,
            "peers": _SHUFFLE_PEERS,
            "ttl": TTL,
            "nonce": _U64,
        },
    ),
    (
        7,
        ShuffleReply,
        {"sender": PEER, "incarnation": INCARNATION, "peers": _SHUFFLE_PEERS, "nonce": _U64},
    ),
    (8, KeepAlive, {"sender": PEER, "incarnation": INCARNATION}),
    (9, ComponentMark, _MARK),
    (10, MergeProbe, {**_MARK, "reply": BOOL}),
    # Plumtree (Leitão, Pereira, Rodrigues, SRDS 2007): 16-19.
    (16, pt.Gossip, {"msg_id": _MSG_ID, "round": _ROUND, "topic": _TEXT, "payload": _ENVELOPE}),
    (
        17,
        pt.IHave,
        {"announcements": SeqField(TupleField((_MSG_ID, _ROUND)), limits.MAX_IHAVE_ENTRIES)},
    ),
    (18, pt.Graft, {"msg_id": OptionalField(_MSG_ID), "round": _ROUND}),
    (19, pt.Prune, {}),
    # Routing (a reduced Babel, RFC 8966): 32-35.
    (
        32,
        rt.RouteUpdate,
        {"entries": SeqField(TupleField((_ID, _SEQNO, _METRIC)), limits.MAX_ROUTE_ENTRIES)},
    ),
    (
        33,
        rt.SeqnoRequest,
        {"destination": _ID, "seqno": _SEQNO, "origin": _ID, "hop_limit": _HOPS},
    ),
    (
        34,
        rt.DataFrame,
        {
            "source": _ID,
            "destination": _ID,
            "frame_id": _FRAME_ID,
            "hops": _HOPS,
            "hop_limit": _HOPS,
            "payload": _ENVELOPE,
        },
    ),
    (
        35,
        rt.RouteError,
        {
            "source": _ID,
            "destination": _ID,
            "frame_id": _FRAME_ID,
            "frame_destination": _ID,
            "reason": StrField(32, min_len=1),
            "hops": _HOPS,
            "hop_limit": _HOPS,
        },
    ),
    # The mesh envelopes (see above): 43-46.
    (43, MeshPublish, {"src_name": _TEXT, "payload": _PAYLOAD}),
    (
        44,
        MeshSend,
        {
            "msg_id": _MESH_ID,
            "incarnation": _MESH_INCARNATION,
            "attempt": _MESH_ATTEMPT,
            "horizon_ms": IntField(0, dl.MAX_HORIZON_MS),
            "done_below": IntField(0, dl.MAX_ID),
            "src_name": _MESH_NAME,
            "dst_name": _MESH_NAME,
            "kind": StrField(16, min_len=1),
            "key": StrField(dl.MAX_KEY_LEN),
            "payload": _PAYLOAD,
        },
    ),
    (
        45,
        MeshAck,
        {
            "msg_id": _MESH_ID,
            "incarnation": _MESH_INCARNATION,
            "attempt": _MESH_ATTEMPT,
            "status": StrField(32, min_len=1),
        },
    ),
    (
        46,
        MeshReply,
        {"request_id": _MESH_ID, "incarnation": _MESH_INCARNATION, "payload": _PAYLOAD},
    ),
)
"""Every message of the package: ``(tag, class, {field: kind})``, fields in wire order."""

REGISTRY: Final = Registry.from_table(TABLE)
"""The frozen registry of :data:`TABLE`."""

_CODEC: Final = Codec(REGISTRY)


def wire_codec() -> Codec:
    """The codec over :data:`TABLE` with the default 64 KiB frame limit."""
    return _CODEC


def hyparview_registry() -> Registry:
    """A frozen registry of just the HyParView rows (tags 1-15): for codecs that must not see
    the layers above, e.g. to pin limits in tests."""
    return Registry.from_table(row for row in TABLE if row[0] < 16)


def encode(message: object) -> bytes:
    """Encode with :func:`wire_codec`; see :meth:`~ray_hyparview.wire.codec.Codec.encode`."""
    return _CODEC.encode(message)


def decode(data: bytes | bytearray | memoryview) -> object | DecodeError:
    """Decode with :func:`wire_codec`; see :meth:`~ray_hyparview.wire.codec.Codec.decode`."""
    return _CODEC.decode(data)
