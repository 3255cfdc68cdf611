"""Rate-limited warnings: a flood of bad input must not become a flood of log lines.

A peer that sends garbage, a refused key that keeps reconnecting, a thousand fresh ids: each
event is counted (counters are cheap and bounded), but only ``lines`` log lines per ``interval``
seconds are written for each kind of event; the rest are counted as ``log.suppressed`` and the
next line written says how many were left out. Kinds are the message templates, not the
offenders: an attacker that varies its id or key cannot buy itself more lines. The table of
kinds is bounded too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

__all__ = ["DEFAULT_LOG_INTERVAL", "DEFAULT_LOG_LINES", "LogRate", "RateLimitFilter"]

DEFAULT_LOG_LINES: Final = 10
"""Lines written per kind of warning and interval, by default."""

DEFAULT_LOG_INTERVAL: Final = 10.0
"""Seconds of one rate-limiting interval, by default."""

_MAX_KINDS: Final = 256


class LogRate:
    """Allow ``lines`` events of each kind per ``interval`` seconds; count the others."""

    def __init__(
        self,
        lines: int = DEFAULT_LOG_LINES,
        interval: float = DEFAULT_LOG_INTERVAL,
        *,
        counters: Counter[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if type(lines) is not int or lines < 0:
            raise ValueError(f"lines must be an int >= 0, got {lines!r}")
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.lines = lines
        self.interval = interval
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._clock = clock
        self._windows: dict[object, tuple[float, int, int]] = {}
        """kind -> (window start, lines written in it, events suppressed since the last line)"""

    def allow(self, kind: object) -> int | None:
        """``None`` if this event must not be logged (it is counted as ``log.suppressed``);
        otherwise the number of events of this kind suppressed since the last line written."""
        now = self._clock()
        start, written, suppressed = self._windows.get(kind, (now, 0, 0))
        if now - start >= self.interval:
            start, written = now, 0
        if written >= self.lines:
            self._windows[kind] = (start, written, suppressed + 1)
            self.counters["log.suppressed"] += 1
            return None
        if kind not in self._windows and len(self._windows) >= _MAX_KINDS:
            self._windows.clear()
        self._windows[kind] = (start, written + 1, 0)
        return suppressed

    def warning(self, logger: logging.Logger, message: str, *args: object) -> None:
        """``logger.warning(message, *args)`` within the rate; the kind is ``message``."""
        suppressed = self.allow(message)
        if suppressed is None:
            return
        if suppressed:
            logger.warning(message + " (%d more like this not logged)", *args, suppressed)
        else:
            logger.warning(message, *args)


class RateLimitFilter(logging.Filter):
    """A handler filter that applies :class:`LogRate` to records at WARNING and above, one
    kind per logger and message template. Install it on the handlers of a process that runs
    an agent (``python -m ray_hyparview.agent run`` does)."""

    def __init__(self, rate: LogRate | None = None) -> None:
        super().__init__()
        self.rate = rate if rate is not None else LogRate()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.levelno >= logging.CRITICAL:
            return True
        suppressed = self.rate.allow((record.name, record.msg))
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.getMessage()} ({suppressed} more like this not logged)"
            record.args = None
        return True
