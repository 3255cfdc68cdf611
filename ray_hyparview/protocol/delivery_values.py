"""The values of the actor mesh's delivery protocol: its settings, its envelopes and their
bounds, inbox items, and the actions the core (:mod:`ray_hyparview.protocol.delivery`, which
re-exports all of them) asks of its driver.

Envelope fields are str / int / bytes, so any msgpack codec can carry them;
:mod:`ray_hyparview.wire.table` registers them (tags 43-46) with exactly the bounds below, so that
whatever its decoder accepts the core handles and the encoder encodes again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Final, Literal

from ray_hyparview.protocol import limits
from ray_hyparview.protocol.errors import ConfigError, HyParViewError
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
    "Action",
    "Completed",
    "DeliveryConfig",
    "DeliveryMessage",
    "DeliveryUsageError",
    "Failed",
    "InboxItem",
    "InboxReady",
    "MeshAck",
    "MeshPublish",
    "MeshReply",
    "MeshSend",
    "Missed",
    "Outcome",
    "Route",
]

MAX_ID: Final = limits.MAX_INCARNATION
"""Largest msg id and incarnation the wire carries."""
MAX_ATTEMPT: Final = 2**32 - 1
"""Largest attempt number the wire carries."""
MAX_HORIZON_MS: Final = 86_400_000
"""Longest remaining retry horizon the wire carries: one day, in milliseconds."""
MAX_NAME_LEN: Final = limits.MAX_TEXT
"""Longest actor name."""
MAX_KEY_LEN: Final = 128
"""Longest idempotency key."""
MAX_PAYLOAD: Final = limits.MAX_PAYLOAD
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


Outcome = Literal["not_delivered", "unknown"]
"""How a failure ended: nothing was or ever will be delivered, or it cannot be known."""


class DeliveryUsageError(HyParViewError, ValueError):
    """The local caller passed a bad argument (a bad name, payload, timeout or key)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """Timers and bounds of the delivery protocol, validated on construction."""

    retry_interval: float = 0.5
    """Least seconds before a message's next copy: the retry timeout to a node whose round trip
    is not known yet, and the floor under the estimate of one that is."""

    retry_max_interval: float = 10.0
    """Most seconds between two copies of an unanswered message: where the round-trip estimate
    and the doubling per unanswered copy stop (a copy goes at least this often until the
    deadline, so a healed path is used within it)."""

    rtt_nodes: int = 4096
    """Target nodes whose round-trip estimate is kept (the least recently answered go first)."""

    max_timeout: float = 3600.0
    """Longest deadline a sender may set, in seconds (at most one day, what the wire carries)."""

    dedup_slack: float = 10.0
    """Seconds a receiver keeps an id beyond the sender's horizon: covers a copy's time in the
    network and clock-rate differences."""

    dedup_capacity: int = 100_000
    """Most ids remembered; a new id that finds the memory full is refused ``busy``."""

    inbox_capacity: int = 10_000
    """Most items in one actor's inbox, lent ones included."""

    inbox_bytes: int = 64 * 1024 * 1024
    """Most payload bytes in all inboxes of this node together (64 MiB); a message that finds
    them full is refused ``inbox_full`` (not delivered), never let in by dropping another."""

    key_retention: float = 600.0
    """Seconds a delivered idempotency key is remembered."""

    key_capacity: int = 100_000
    """Most idempotency keys remembered; a keyed message that finds the table full is refused
    ``busy``."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{f.name} must be finite and greater than 0, got {value!r}")
        for name in (
            "dedup_capacity",
            "inbox_capacity",
            "inbox_bytes",
            "key_capacity",
            "rtt_nodes",
        ):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.retry_max_interval < self.retry_interval:
            raise ConfigError(
                f"retry_max_interval ({self.retry_max_interval:g}) must be at least "
                f"retry_interval ({self.retry_interval:g})"
            )
        if self.max_timeout > MAX_HORIZON_MS / 1000:
            raise ConfigError(f"max_timeout must be at most {MAX_HORIZON_MS / 1000:g} s")


# --- messages (registered with the codec in ray_hyparview.wire) -----------------------------
# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """Route ``message`` to ``node``. When routing reports the frame undeliverable, call
    :meth:`Delivery.route_failed` with ``ref`` and ``attempt`` (both 0: nothing to report)."""

    node: NodeId
    message: DeliveryMessage
    ref: int = 0
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Completed:
    """Operation ``ref`` succeeded: a send was delivered, or a request answered with ``reply``."""

    ref: int
    reply: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """Operation ``ref`` failed; ``outcome`` says whether a copy may have been delivered."""

    ref: int
    outcome: Outcome
    reason: str


@dataclass(frozen=True, slots=True)
class InboxReady:
    """Actor ``name`` has something to take."""

    name: str


@dataclass(frozen=True, slots=True)
class Missed:
    """A publication on ``topic`` could not go into ``name``'s full inbox."""

    name: str
    topic: str
    origin: NodeId


Action = Route | Completed | Failed | InboxReady | Missed
"""What the delivery core asks of its driver."""
