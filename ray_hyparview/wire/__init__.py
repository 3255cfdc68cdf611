"""The wire format: every message tag in one table (:mod:`~ray_hyparview.wire.table`) over a
bounded msgpack codec (:mod:`~ray_hyparview.wire.codec`)."""

from __future__ import annotations

from ray_hyparview.wire.codec import Codec, DecodeError, EncodeError
from ray_hyparview.wire.table import wire_codec

__all__ = ["Codec", "DecodeError", "EncodeError", "wire_codec"]
