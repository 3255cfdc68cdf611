"""A deterministic discrete-event simulator that drives the HyParView protocol core at scale.

``Simulation`` is the network (latency, loss, crashes, partitions); ``scenario`` runs the
paper's experiment on it; ``metrics`` holds the paper's figures; ``python -m ray_hyparview.sim``
is the command line.
"""

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
