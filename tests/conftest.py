"""Fixtures shared by the test modules.

* ``memory_agent``: a factory of agents on an in-memory network, with the fast local timings
  (:meth:`HyParViewConfig.local`) unless told otherwise; every agent it made is closed at the
  end of the test.
* ``ray_cluster``: one local multi-node Ray cluster per module (a two-CPU head and
  ``RAY_WORKERS`` one-CPU nodes, a module constant, default 2), the driver connected to it;
  shut down at the end of the module. Ray is imported only by the modules that use it.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import pytest
import pytest_asyncio

from ray_hyparview.agent.node import Agent
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport.memory import MemoryNetwork


class MemoryAgentFactory(Protocol):
    def __call__(
        self,
        net: MemoryNetwork,
        name: str,
        *contacts: str,
        config: HyParViewConfig | None = None,
        gate: object | None = None,
    ) -> Agent: ...


@pytest_asyncio.fixture
async def memory_agent() -> AsyncIterator[MemoryAgentFactory]:
    """``make(net, name, *contacts, config=..., gate=...)``: an agent (not started) at
    ``mem://<name>`` joining through ``contacts``, seeded by its name."""
    made: list[Agent] = []

    def make(
        net: MemoryNetwork,
        name: str,
        *contacts: str,
        config: HyParViewConfig | None = None,
        gate: object | None = None,
    ) -> Agent:
        strategy = Strategy(
            local_peer=Peer(name, f"mem://{name}"),
            contacts=tuple(Peer(c, f"mem://{c}") for c in contacts),
            transport="memory",
            hyparview_config=config if config is not None else HyParViewConfig.local(),
        )
        agent = Agent(
            strategy,
            transport=net.transport(name, bind=f"mem://{name}"),
            rng=random.Random(name),
            gate=gate,  # type: ignore[arg-type]
        )
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in reversed(made):
            await agent.aclose()


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    for _ in range(getattr(request.module, "RAY_WORKERS", 2)):
        cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
