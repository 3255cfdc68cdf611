"""The actor mesh's envelopes and inbox items: the values the delivery core
(:mod:`ray_hyparview.protocol.delivery`) takes and emits, and their bounds.

Fields are str / int / bytes, so any msgpack codec can carry them; :mod:`ray_hyparview.wire`
registers them (tags 43-46) with exactly the bounds below, so that whatever its decoder accepts
the core handles and the encoder encodes again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from ray_hyparview.protocol.peer import NodeId

__all__ = [
    "KINDS",
    "MAX_ATTEMPT",
    "MAX_HORIZON_MS",
    "MAX_ID",
    "MAX_KEY_LEN",
    "MAX_NAME_LEN",
    "MAX_PAYLOAD",
    "STATUSES",
    "DeliveryMessage",
    "InboxItem",
    "MeshAck",
    "MeshPublish",
    "MeshReply",
    "MeshSend",
]

MAX_ID: Final = 2**63 - 1
"""Largest msg id and incarnation the wire carries."""
MAX_ATTEMPT: Final = 2**32 - 1
"""Largest attempt number the wire carries."""
MAX_HORIZON_MS: Final = 86_400_000
"""Longest remaining retry horizon the wire carries: one day, in milliseconds."""
MAX_NAME_LEN: Final = 200
"""Longest actor name."""
MAX_KEY_LEN: Final = 128
"""Longest idempotency key."""
MAX_PAYLOAD: Final = 48 * 1024
"""Largest application payload; the envelopes around it stay under the codec's 64 KiB frame."""
KINDS: Final = ("send", "request")
STATUSES: Final = ("ok", "unknown_name", "inbox_full", "busy")
"""What a receiver answers. ``busy`` is per copy; the others are remembered with the id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshSend:
    """One copy of a message for one actor."""

    msg_id: int
    """Per-life number of the message (from 1); a request's id is its msg id."""
    incarnation: int
    """The sending node's incarnation: with the source node and ``msg_id`` it names the
    message for dedup, ACK and reply."""
    attempt: int
    """Which copy this is (from 1); the ACK echoes it."""
    horizon_ms: int
    """Milliseconds the sender may still retry this message (until its deadline)."""
    done_below: int = 0
    """Every id of the sender's life below this one is finished at the sender (answered, or
    given up): the receiver may forget them now instead of at their horizon. 0: no news."""
    src_name: str
    """The sending actor's mesh name."""
    dst_name: str
    """The target actor's mesh name."""
    kind: str
    """``send`` or ``request``."""
    key: str
    """The caller's idempotency key, or empty."""
    payload: bytes
    """The application's bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshAck:
    """The target node's answer to one copy: ``ok`` or why not (one of :data:`STATUSES`)."""

    msg_id: int
    incarnation: int
    """The incarnation of the sender being answered, echoed."""
    attempt: int
    status: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshReply:
    """The answer to a request (not acknowledged: a lost reply is the requester's timeout)."""

    request_id: int
    incarnation: int
    """The requester's incarnation, echoed from the request."""
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshPublish:
    """A publication, carried as the payload of a Plumtree gossip."""

    src_name: str
    payload: bytes


DeliveryMessage = MeshSend | MeshAck | MeshReply
"""The messages :meth:`Delivery.receive` takes and :class:`Route` carries."""


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One thing that arrived for an actor."""

    kind: Literal["send", "request", "publish"]
    sender: str
    """The sending actor's name (for ``publish``: the publisher's name)."""
    payload: bytes
    topic: str = ""
    request: tuple[NodeId, int, int] | None = None
    """For ``request``: where the reply goes (requester node, its incarnation, request id)."""
    sender_node: NodeId = ""
    seq: int = 0
    """Position in the actor's inbox (from 1): what the actor acknowledges."""
    life: int = 0
    """The incarnation of the node whose inbox holds it: seqs count from 1 again in an agent's
    next life, so a consumer that sees a new ``life`` starts counting again."""
