"""The wire schemas of the layers above membership: routing, Plumtree and the mesh envelopes.

Importing this module registers them in the codec's default registry, with the tag ranges that
:mod:`ray_hyparview.codec` sets aside: 16-31 Plumtree, 32-63 routing and mesh. The protocol
modules stay free of any codec knowledge; this is where their fields meet msgpack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ray_hyparview.codec import (
    NODE_ID,
    BytesField,
    Codec,
    IntField,
    OptionalField,
    SeqField,
    StrField,
    _Invalid,
    default_codec,
    register,
)
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

__all__ = [
    "MAX_PAYLOAD",
    "MeshAck",
    "MeshPublish",
    "MeshReply",
    "MeshSend",
    "TupleField",
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

# Plumtree (Leitão, Pereira, Rodrigues, SRDS 2007): 16-19.
register(16, pt.Gossip, {"msg_id": _MSG_ID, "round": _ROUND, "topic": _TEXT, "payload": _ENVELOPE})
register(
    17,
    pt.IHave,
    {"announcements": SeqField(TupleField((_MSG_ID, _ROUND)), limits.MAX_IHAVE_ENTRIES)},
)
register(18, pt.Graft, {"msg_id": OptionalField(_MSG_ID), "round": _ROUND})
register(19, pt.Prune, {})

# Routing (a reduced Babel, RFC 8966): 32-35.
register(
    32,
    rt.RouteUpdate,
    {"entries": SeqField(TupleField((_ID, _SEQNO, _METRIC)), limits.MAX_ROUTE_ENTRIES)},
)
register(
    33,
    rt.SeqnoRequest,
    {"destination": _ID, "seqno": _SEQNO, "origin": _ID, "hop_limit": _HOPS},
)
register(
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
)
register(
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
)


# The mesh envelopes travel inside routed data frames (or Plumtree gossip): 40-47. Tags 40-42
# carried the first envelopes, without incarnations or horizons; they are retired, not reused,
# so that a node of the older version counts the newer envelopes as ``unknown_type`` instead of
# misreading them. The values are defined by the delivery core; the bounds here are exactly
# the ones it accepts, so that whatever this decoder accepts, the encoder encodes again.
_MESH_NAME = StrField(dl.MAX_NAME_LEN, min_len=1)
_MESH_ID = IntField(1, dl.MAX_ID)
_MESH_INCARNATION = IntField(0, dl.MAX_ID)
_MESH_ATTEMPT = IntField(1, dl.MAX_ATTEMPT)
register(43, MeshPublish, {"src_name": _TEXT, "payload": _PAYLOAD})
register(
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
)
register(
    45,
    MeshAck,
    {
        "msg_id": _MESH_ID,
        "incarnation": _MESH_INCARNATION,
        "attempt": _MESH_ATTEMPT,
        "status": StrField(32, min_len=1),
    },
)
register(
    46,
    MeshReply,
    {"request_id": _MESH_ID, "incarnation": _MESH_INCARNATION, "payload": _PAYLOAD},
)

_CODEC: Final = default_codec()


def wire_codec() -> Codec:
    """The default codec, with every message type of this package registered."""
    return _CODEC
