"""Waiting on conditions with a deadline, never sleep-and-hope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(predicate: Callable[[], bool], *, limit: float = 5.0, poll: float = 0.01) -> None:
    """Return as soon as ``predicate()`` holds; ``TimeoutError`` after ``limit`` seconds.

    Polls because the conditions tests wait on span several agents (a connected overlay), which
    no single event announces.
    """
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - see the docstring
            await asyncio.sleep(poll)


def wait_sync(predicate: Callable[[], bool], *, limit: float = 5.0, poll: float = 0.05) -> None:
    """The blocking twin of :func:`until`, for tests that drive other processes."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {limit} s")
        time.sleep(poll)
