"""HyParView partial-mesh membership and messaging for Ray clusters.

The pieces, bottom up: :mod:`ray_hyparview.protocol` (the sans-I/O HyParView, Plumtree and
routing cores), :mod:`ray_hyparview.codec` (the wire format), :mod:`ray_hyparview.transport`
(ZeroMQ and in-memory), :mod:`ray_hyparview.agent` (the asyncio agent),
:mod:`ray_hyparview.strategy` (what a user configures), :mod:`ray_hyparview.sim` (the
simulator), :mod:`ray_hyparview.cluster` (the Ray plugin) and :mod:`ray_hyparview.mesh` (the
actor API). This module re-exports the names most users need; it does not import Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError, HyParViewError, StateError
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.messages import DownReason, PeerDown, PeerUp
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.strategy import Security, Strategy, StrategyError

if TYPE_CHECKING:
    from ray_hyparview.agent import Agent, AgentClosed, EventsOverflow

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentClosed",
    "ConfigError",
    "DownReason",
    "EventsOverflow",
    "HyParView",
    "HyParViewConfig",
    "HyParViewError",
    "Peer",
    "PeerDown",
    "PeerUp",
    "Security",
    "StateError",
    "Strategy",
    "StrategyError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The agent is imported on first use, not here: `python -m ray_hyparview.agent` runs that
    # module as __main__, and importing it first from the package would load it twice.
    if name in {"Agent", "AgentClosed", "EventsOverflow"}:
        from ray_hyparview import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'ray_hyparview' has no attribute {name!r}")
