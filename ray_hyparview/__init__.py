"""HyParView partial-mesh membership and messaging for Ray clusters.

The folders are the layers, bottom up; each imports only the ones below it
(``tests/test_layers.py`` checks):

* :mod:`ray_hyparview.protocol`: the sans-I/O HyParView, merge, Plumtree, routing and delivery
  cores (pure: no I/O, no clock, no global randomness);
* :mod:`ray_hyparview.wire.table`: every message tag in one table over a bounded msgpack codec;
* :mod:`ray_hyparview.transport`: ZeroMQ and in-memory links;
* :mod:`ray_hyparview.config`: what an operator writes, checked and turned into the agent's values;
* :mod:`ray_hyparview.agent`: one node's asyncio agent and the services it hosts (no Ray);
* :mod:`ray_hyparview.cluster`: everything that imports Ray (plugin, node actor, GCS, sidecar);
* :mod:`ray_hyparview.mesh` (the actor API) and :mod:`ray_hyparview.cli` (the command line);
* beside them :mod:`ray_hyparview.sim` (the simulator, on the same cores) and
  :mod:`ray_hyparview.testing` (harnesses the tests and benchmarks share).

This module re-exports the names most users need; it does not import Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError, HyParViewError, StateError
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.messages import DownReason, PeerDown, PeerUp
from ray_hyparview.protocol.peer import Peer

if TYPE_CHECKING:
    from ray_hyparview.agent.node import Agent, AgentClosed, EventsOverflow
    from ray_hyparview.config.strategy import Security, Strategy, StrategyError

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
    # The agent (asyncio, the transports and every service) is imported on first use, not
    # here: the simulator and the pure cores never need it, and loading it doubled the
    # package's import cost (1.2 G instructions against 0.7 G, paid again by the simulator's
    # spawned baseline process).
    if name in {"Agent", "AgentClosed", "EventsOverflow"}:
        from ray_hyparview.agent import node

        return getattr(node, name)
    # The operator's configuration too: it loads pydantic and ZeroMQ (0.13 s more per import,
    # paid twice by the simulator, which never reads it).
    if name in {"Security", "Strategy", "StrategyError"}:
        from ray_hyparview.config import strategy

        return getattr(strategy, name)
    raise AttributeError(f"module 'ray_hyparview' has no attribute {name!r}")
