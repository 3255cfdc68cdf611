"""The simulator's exception, in a module of its own so that :mod:`ray_hyparview.sim.engine`
can be compiled with mypyc (a compiled class cannot inherit from ``RuntimeError``)."""

from __future__ import annotations

__all__ = ["SimulationError"]


class SimulationError(RuntimeError):
    """The simulation was asked to do something impossible (unknown node, bad argument)."""
