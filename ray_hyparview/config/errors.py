""":class:`StrategyError`, the one error of the configuration layer, and its helpers.

An error names the dotted key (``hyparview.arwl``, ``nodes.n3.endpoint``, ``node.contacts[1]``),
the value (a placeholder for a secret key or a missing value), what was expected and, when
known, where the value came from (a file, an environment variable).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from ray_hyparview.protocol.errors import ConfigError

__all__ = ["MISSING", "StrategyError", "hide", "suggest"]


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


MISSING: Final = _Missing()
"""The value shown for a key that is not set but must be."""


@dataclass(frozen=True, slots=True)
class _Hidden:
    """Stands in for a secret in error messages: its length, never its text."""

    length: int

    def __repr__(self) -> str:
        return f"<secret, {self.length} characters>"


def hide(value: object) -> object:
    """``value`` as an error may show it when it is a secret: its length only."""
    return _Hidden(len(value)) if isinstance(value, str) else value


def suggest(name: str, known: Iterable[str]) -> str | None:
    """``did you mean 'x'?`` for the known name nearest to ``name``, if one is near."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


class StrategyError(ConfigError):
    """An invalid strategy value: names the key, the value and what was expected.

    Subclasses :class:`~ray_hyparview.protocol.errors.ConfigError`, hence ``HyParViewError`` and
    ``ValueError``.
    """

    def __init__(
        self,
        key: str,
        value: object,
        expected: str,
        *,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.key = key
        """Dotted path of the offending value, e.g. ``nodes.n3.endpoint``."""
        self.value = value
        """The offending value (a placeholder for secrets and missing values)."""
        self.source = source
        """Where the value came from (``file x.toml``, ``RAY_HYPARVIEW_BIND``), if known."""
        self.hint = hint
        """A suggestion, e.g. the nearest known key."""
        where = key or "strategy"
        if source:
            where += f" ({source})"
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        message = f"{where}: expected {expected}, got {shown}"
        if hint:
            message += f"; {hint}"
        super().__init__(message, field=key, expected=expected)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as ``cls(*args)`` by default, which loses the keyword fields and
        # breaks on our signature; Ray pickles exceptions raised inside tasks and actors.
        rebuild = functools.partial(StrategyError, source=self.source, hint=self.hint)
        return (rebuild, (self.key, self.value, self.expected))

    def with_source(self, source: str | None) -> StrategyError:
        """A copy that also says where the value came from."""
        if source is None or self.source is not None:
            return self
        return StrategyError(
            self.key, self.value, self.expected or "", source=source, hint=self.hint
        )
