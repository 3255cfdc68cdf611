"""The one exception hierarchy for local misuse of the library.

Remote garbage never raises: the core drops it and counts it. Only a caller that
uses the local API wrongly sees these.
"""

from __future__ import annotations

__all__ = ["HyParViewError", "ConfigError", "StateError"]


class HyParViewError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(HyParViewError, ValueError):
    """A configuration value is out of range or of the wrong type.

    Subclasses :class:`ValueError` so that plain ``except ValueError`` also works.
    """


class StateError(HyParViewError, RuntimeError):
    """An operation was called in a state that does not allow it (e.g. after leave)."""
