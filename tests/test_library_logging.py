"""Library code never configures the root logger: in a Ray actor it belongs to Ray and to the
user's code. The agent actor logs through the package's logger, rate-limited."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from ray_hyparview.cluster.node_actor import _actor_logging
from ray_hyparview.transport.ratelimit import RateLimitFilter


@pytest.fixture
def package_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("ray_hyparview")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_actor_logging_leaves_the_root_logger_alone(package_logger: logging.Logger) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    _actor_logging("INFO")
    _actor_logging("DEBUG")  # an agent restarted in the same worker process
    assert (list(root.handlers), root.level) == before
    ours = [h for h in package_logger.handlers if getattr(h, "_ray_hyparview", False)]
    assert len(ours) == 1
    assert any(isinstance(f, RateLimitFilter) for f in ours[0].filters)
    assert package_logger.level == logging.DEBUG
