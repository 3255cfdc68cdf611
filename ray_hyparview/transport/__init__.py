"""Transports: move encoded frames between node ids and report failed links.

:class:`~ray_hyparview.transport.base.Transport` is the contract;
:class:`~ray_hyparview.transport.zmq.ZmqTransport` is the ZeroMQ implementation and
:class:`~ray_hyparview.transport.memory.MemoryTransport` the in-process one for tests.
:mod:`~ray_hyparview.transport.localstream` is not a transport between nodes: it frames the
local path between an agent and the actors on its node (:mod:`ray_hyparview.agent.localpath`).
"""

from __future__ import annotations

from ray_hyparview.transport.base import (
    LinkEventBox,
    LinkFailed,
    LinkFailure,
    Quarantine,
    Transport,
    TransportClosed,
)
from ray_hyparview.transport.memory import MemoryNetwork, MemoryTransport
from ray_hyparview.transport.zmq import CurveConfig, ZmqOptions, ZmqTransport

__all__ = [
    "CurveConfig",
    "LinkEventBox",
    "LinkFailed",
    "LinkFailure",
    "MemoryNetwork",
    "MemoryTransport",
    "Quarantine",
    "Transport",
    "TransportClosed",
    "ZmqOptions",
    "ZmqTransport",
]
