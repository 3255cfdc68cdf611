"""Everything that imports Ray: the plugin (:mod:`~ray_hyparview.cluster.plugin`), the node actor
that hosts each agent (:mod:`~ray_hyparview.cluster.node_actor`), the plugin's state in the GCS
(:mod:`~ray_hyparview.cluster.gcs`), per-node CURVE keys published there
(:mod:`~ray_hyparview.cluster.keys`), the sidecar next to ``ray start``
(:mod:`~ray_hyparview.cluster.sidecar`), the embedded local cluster of the quick start
(:mod:`~ray_hyparview.cluster.local`) and the overlay drawing
(:mod:`~ray_hyparview.cluster.drawing`).

``from ray_hyparview import cluster`` gives the plugin's public API: :func:`start`,
:class:`HyParViewCluster`, :func:`get_agent`, :func:`published_agents`, :func:`views_summary`.
"""

from __future__ import annotations

from ray_hyparview.cluster.gcs import (
    NAMESPACE,
    agent_actor_name,
    next_incarnation,
    published_agents,
)
from ray_hyparview.cluster.node_actor import NodeAgent
from ray_hyparview.cluster.plugin import HyParViewCluster, get_agent, start, views_summary

__all__ = [
    "NAMESPACE",
    "HyParViewCluster",
    "NodeAgent",
    "agent_actor_name",
    "get_agent",
    "next_incarnation",
    "published_agents",
    "start",
    "views_summary",
]
