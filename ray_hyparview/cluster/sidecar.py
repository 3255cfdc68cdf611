"""The sidecar's Ray half: ``python -m ray_hyparview.agent run --ray-address ADDR`` runs one
node's agent as a process next to ``ray start``.

The command line (:mod:`ray_hyparview.cli.sidecar`) builds and checks the strategy exactly as
``run`` does, before this module is imported. From Ray the sidecar takes only what Ray knows:
the node id and address (:func:`ray_node`) and the peers and their keys through the GCS
(:func:`serving`, the same :class:`_Service` as the plugin's agent actors).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import ray

from ray_hyparview.agent.node import Agent
from ray_hyparview.cluster.gcs import NAMESPACE, _node_ip
from ray_hyparview.cluster.keys import sidecar_policy
from ray_hyparview.cluster.node_actor import _Service
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.peer import NodeId

__all__ = ["ray_node", "serving", "sidecar_policy"]


@contextlib.contextmanager
def ray_node(address: str) -> Iterator[tuple[NodeId, str]]:
    """Connect to the Ray cluster at ``address`` (``auto``: this node's) as a driver and yield
    this node's (id, IP address as Ray knows it: ``ray start --node-ip-address``); disconnect
    on exit. Raises :class:`ConnectionError` when no Ray answers there."""
    ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        known = [n for n in ray.nodes() if n.get("NodeID") == node_id]  # type: ignore[no-untyped-call]
        address_of = known[0].get("NodeManagerAddress") if known else None
        yield node_id, address_of if isinstance(address_of, str) and address_of else _node_ip()
    finally:
        ray.shutdown()


@contextlib.asynccontextmanager
async def serving(strategy: Strategy) -> AsyncIterator[Agent]:
    """Start ``strategy``'s agent, publish it in the GCS and join the peers published there
    (with their keys, when ``strategy.security`` comes from :func:`sidecar_policy`); on exit
    leave and withdraw the entry."""
    service = _Service(strategy, export_metrics=False)
    try:
        await service.start()
        yield service.agent
    finally:
        await service.stop()
