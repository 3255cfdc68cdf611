"""Batch frames: several mesh frames for one peer carried in one ZeroMQ message.

Theory of operation
-------------------
When a sender queues several frames for one peer within one event-loop turn, the ZeroMQ
transport sends the first at once and the rest as one *batch frame* at the end of the turn, so
that a burst costs one ZeroMQ message (one libzmq queue entry, one wake-up of the receiver)
instead of one per frame. The wire format of a batch frame is::

    BATCH_HEADER (3 bytes: 0xC1 0x42 0x01) | (length: u32 big-endian | frame: length bytes)*

``0xC1`` is the byte msgpack never uses, as in the codec's own ``MAGIC`` (``0xC1 0x68``); the
second byte tells a batch from a codec frame and the third is the batch format's version. A
batch is one ZeroMQ frame, so the receiver's ``MAXMSGSIZE`` bounds it like any other frame, and
``RCVHWM x MAXMSGSIZE`` still bounds what one connection queues: the sender never builds a batch
larger than ``max_msg_size`` (a frame too large to share a batch goes alone) nor with more than
``max_frames`` frames. The receiver unpacks with the same bounds: a batch that is truncated,
has a zero-length or over-long entry, trailing bytes, or more than ``max_frames`` entries is
dropped whole and counted (never raised); its frames are then decoded one by one as if they had
arrived alone. A receiver older than this format sees a batch as an undecodable frame (it
counts ``bad_magic``), so a cluster mixing versions turns batching off
(``ZmqOptions.batch_bytes=0``) until every node has been upgraded.

Pure functions of bytes: no sockets, no loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["BATCH_HEADER", "ENTRY_OVERHEAD", "is_batch", "pack", "packed_size", "unpack"]

BATCH_HEADER: Final = b"\xc1\x42\x01"
"""The first three bytes of every batch frame."""

ENTRY_OVERHEAD: Final = 4
"""Bytes a batch adds per frame (its length prefix)."""

_HEADER_LEN: Final = len(BATCH_HEADER)


def is_batch(data: bytes) -> bool:
    """Whether ``data`` claims to be a batch frame (its entries are checked by :func:`unpack`)."""
    return data[:_HEADER_LEN] == BATCH_HEADER


def packed_size(sizes: Sequence[int]) -> int:
    """The size of the batch frame carrying frames of ``sizes`` bytes."""
    return _HEADER_LEN + sum(sizes) + ENTRY_OVERHEAD * len(sizes)


def pack(frames: Sequence[bytes]) -> bytes:
    """One batch frame carrying ``frames`` (each non-empty), in order."""
    parts = [BATCH_HEADER]
    for frame in frames:
        parts.append(len(frame).to_bytes(4, "big"))
        parts.append(frame)
    return b"".join(parts)


def unpack(data: bytes, max_frames: int) -> list[bytes] | None:
    """The frames of the batch frame ``data`` in order, or ``None`` if it is malformed: not a
    batch, truncated, an empty entry, trailing bytes, no entries or more than ``max_frames``."""
    if not is_batch(data):
        return None
    view = memoryview(data)
    end = len(data)
    pos = _HEADER_LEN
    frames: list[bytes] = []
    while pos < end:
        if len(frames) >= max_frames or end - pos < ENTRY_OVERHEAD:
            return None
        size = int.from_bytes(view[pos : pos + ENTRY_OVERHEAD], "big")
        pos += ENTRY_OVERHEAD
        if size == 0 or size > end - pos:
            return None
        frames.append(bytes(view[pos : pos + size]))
        pos += size
    return frames or None
