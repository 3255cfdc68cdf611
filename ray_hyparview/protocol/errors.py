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

    Subclasses :class:`ValueError` so that plain ``except ValueError`` also works. ``field``
    and ``expected``, when given, say which setting was refused and what it should have been,
    so that a caller can name the setting in its own terms (the strategy file's key).
    """

    def __init__(self, *args: object, field: str | None = None, expected: str | None = None):
        super().__init__(*args)
        self.field = field
        """The name of the refused setting, if one is to blame."""
        self.expected = expected
        """What that setting should have been, e.g. ``at least 1``."""


class StateError(HyParViewError, RuntimeError):
    """An operation was called in a state that does not allow it (e.g. after leave)."""
