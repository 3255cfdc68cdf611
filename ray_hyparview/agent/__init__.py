"""One node's agent: the asyncio process that drives the pure cores over a transport.

:mod:`~ray_hyparview.agent.node` is the HyParView agent itself, :mod:`~ray_hyparview.agent.meshnode`
the mesh, Plumtree and routing services it hosts, :mod:`~ray_hyparview.agent.control` its
read-only control and metrics endpoints, :mod:`~ray_hyparview.agent.localpath` the node-local
socket its actors use, :mod:`~ray_hyparview.agent.metrics` its Prometheus
collector. Nothing here imports Ray. ``python -m ray_hyparview.agent`` runs the command line
(:mod:`ray_hyparview.cli`).
"""

from __future__ import annotations

from ray_hyparview.agent.node import (
    Agent,
    AgentClosed,
    Event,
    EventsOverflow,
    Gate,
    make_transport,
    next_incarnation,
)

__all__ = [
    "Agent",
    "AgentClosed",
    "Event",
    "EventsOverflow",
    "Gate",
    "make_transport",
    "next_incarnation",
]
