"""HyParView partial-mesh membership and messaging for Ray clusters."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
