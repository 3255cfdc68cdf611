"""A deterministic discrete-event simulator that drives the HyParView protocol core at scale.

``Simulation`` is the network (latency, loss, crashes, partitions); ``scenario`` runs the
paper's experiment on it; ``metrics`` holds the paper's figures; ``python -m ray_hyparview.sim``
is the command line.
"""

from typing import TYPE_CHECKING, Any

from ray_hyparview.sim.engine import (
    LatencyModel,
    LogNormalLatency,
    NetworkConfig,
    SimNode,
    SimStats,
    Simulation,
    SimulationError,
    UniformLatency,
)
from ray_hyparview.sim.scenario import Experiment, run_experiment, run_sweep

if TYPE_CHECKING:
    from ray_hyparview.sim.stacked import (
        BroadcastNode,
        BroadcastResult,
        broadcast,
        broadcast_node_factory,
    )

__all__ = [
    "BroadcastNode",
    "BroadcastResult",
    "Experiment",
    "LatencyModel",
    "LogNormalLatency",
    "NetworkConfig",
    "SimNode",
    "SimStats",
    "Simulation",
    "SimulationError",
    "UniformLatency",
    "broadcast",
    "broadcast_node_factory",
    "run_experiment",
    "run_sweep",
]


_STACKED = frozenset({"BroadcastNode", "BroadcastResult", "broadcast", "broadcast_node_factory"})


def __getattr__(name: str) -> Any:
    # Plumtree in the simulator (stacked.py) loads on first use: the paper's experiment never
    # needs it, and its import was paid twice per run (the run and its baseline process).
    if name in _STACKED:
        from ray_hyparview.sim import stacked

        return getattr(stacked, name)
    raise AttributeError(f"module 'ray_hyparview.sim' has no attribute {name!r}")
