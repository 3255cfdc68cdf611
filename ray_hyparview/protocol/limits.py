"""What the wire carries: the one set of value limits that the codec and the cores share.

A decoder that accepts a value the encoder refuses, or a core that derives from a received value
one the encoder refuses (a seqno + 1 past the u64 field, a round + 1 past the byte), turns one
remote frame into an ``EncodeError`` inside the agent. So every width is named here once: the
codec (:mod:`ray_hyparview.wire`) builds its fields from these
constants, and the cores check received values and bound derived ones against the same names.
Change a width here and both sides move together.

Pure: no I/O, no codec import (the codec imports this module, not the other way round).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_ENDPOINT_LEN",
    "MAX_ENVELOPE",
    "MAX_FRAME_ID",
    "MAX_FRAME_SIZE",
    "MAX_HOPS",
    "MAX_IHAVE_ENTRIES",
    "MAX_INCARNATION",
    "MAX_PAYLOAD",
    "MAX_PEER_ID_BYTES",
    "MAX_ROUND",
    "MAX_ROUTE_ENTRIES",
    "MAX_SEQNO",
    "MAX_SHUFFLE_PEERS",
    "MAX_TEXT",
    "MAX_TTL",
    "METRIC_INFINITY",
    "SEQNO_MODULUS",
    "U8_MAX",
    "U16_MAX",
    "U64_MAX",
    "is_node_id",
    "next_incarnation",
    "seqno_add",
    "seqno_newer",
    "seqno_not_older",
]

# --- integer widths --------------------------------------------------------------------------

U8_MAX: Final = 0xFF
U16_MAX: Final = 0xFFFF
U64_MAX: Final = 2**64 - 1

# --- frames ----------------------------------------------------------------------------------

MAX_FRAME_SIZE: Final = 64 * 1024
"""Largest frame accepted or produced, header included (64 KiB)."""

MAX_ENVELOPE: Final = 60_000
"""Largest encoded mesh envelope carried inside a routed data frame or a gossip."""

MAX_PAYLOAD: Final = 48 * 1024
"""Largest application payload the mesh carries; its envelopes stay under the frame limit."""

# --- identities ------------------------------------------------------------------------------

MAX_PEER_ID_BYTES: Final = 240
"""Longest node id in UTF-8 bytes. ZeroMQ routing ids are at most 255 bytes, and the ZeroMQ
transport appends a separator and a per-connection tag to the node id."""

MAX_ENDPOINT_LEN: Final = 255
"""Longest endpoint string (``tcp://[v6 address]:port`` fits easily)."""

MAX_TEXT: Final = 200
"""Longest topic or mesh name, in characters."""

MAX_INCARNATION: Final = 2**63 - 1
"""Incarnations are start times in microseconds: far below 2**63."""

# --- membership (HyParView) ------------------------------------------------------------------

MAX_TTL: Final = U8_MAX
"""Random-walk TTLs travel as one byte."""

MAX_SHUFFLE_PEERS: Final = 64
"""Most peers in one SHUFFLE or SHUFFLE_REPLY; the paper's sample is 1 + ka + kp = 8."""

# --- broadcast (Plumtree) --------------------------------------------------------------------

MAX_ROUND: Final = U8_MAX
"""A gossip's round (hops from its origin) travels as one byte."""

MAX_IHAVE_ENTRIES: Final = 256
"""Most announcements in one IHAVE."""

# --- routing (reduced Babel) -----------------------------------------------------------------

MAX_HOPS: Final = U8_MAX
"""Hop counts and hop limits of routed frames and seqno requests travel as one byte."""

METRIC_INFINITY: Final = U16_MAX
"""The metric of a retraction; metrics travel in ``0..METRIC_INFINITY``."""

MAX_ROUTE_ENTRIES: Final = 1024
"""Most entries in one ROUTE_UPDATE."""

MAX_SEQNO: Final = U64_MAX
"""Sequence numbers travel as u64 and are compared modulo :data:`SEQNO_MODULUS`."""

SEQNO_MODULUS: Final = MAX_SEQNO + 1

MAX_FRAME_ID: Final = U64_MAX
"""Per-source frame and message ids travel as u64."""


def seqno_add(seqno: int, n: int = 1) -> int:
    """``seqno + n`` modulo :data:`SEQNO_MODULUS` (RFC 8966, 3.2.1, with 64 bits for 16)."""
    return (seqno + n) % SEQNO_MODULUS


def seqno_newer(a: int, b: int) -> bool:
    """Is ``a`` strictly newer than ``b``? Modular: ``0 < (a - b) mod 2**64 < 2**63``, so that
    a seqno that wrapped past the top is newer than the one before it (RFC 8966, 3.2.1)."""
    return 0 < (a - b) % SEQNO_MODULUS < SEQNO_MODULUS // 2


def seqno_not_older(a: int, b: int) -> bool:
    """``a == b`` or ``a`` newer than ``b``."""
    return a == b or seqno_newer(a, b)


def next_incarnation(clock_us: int, last: int = 0) -> int:
    """The incarnation of a node's next life: its clock in microseconds, but always above
    ``last``, the one before (0: none known), and within what the wire carries.

    The one rule behind every place a life starts (the agent with its incarnation file, the
    Ray plugin with the GCS, the fuzzer's restarts): incarnations must grow at every restart
    even when the clock steps back, or peers that remember the earlier life drop the new
    one's messages as stale. A ``last`` outside the wire's range is not trusted."""
    incarnation = max(1, min(clock_us, MAX_INCARNATION))
    if 0 <= last < MAX_INCARNATION:
        incarnation = max(incarnation, last + 1)
    return incarnation


def is_node_id(value: object) -> bool:
    """A node id: a non-empty printable ``str`` of at most :data:`MAX_PEER_ID_BYTES` UTF-8
    bytes (what the codec's id fields accept)."""
    if type(value) is not str or not 0 < len(value) <= MAX_PEER_ID_BYTES:
        return False
    if not value.isprintable():
        return False
    return value.isascii() or len(value.encode()) <= MAX_PEER_ID_BYTES
