"""Transports: move encoded frames between node ids and report failed links.

:class:`~ray_hyparview.transport.base.Transport` is the contract;
:mod:`~ray_hyparview.transport.memory` is the in-process implementation for tests.
"""

from __future__ import annotations

from ray_hyparview.transport.base import (
    LinkEventBox,
    LinkFailed,
    LinkFailure,
    Transport,
    TransportClosed,
)
from ray_hyparview.transport.memory import MemoryNetwork, MemoryTransport

__all__ = [
    "LinkEventBox",
    "LinkFailed",
    "LinkFailure",
    "MemoryNetwork",
    "MemoryTransport",
    "Transport",
    "TransportClosed",
]
