"""An embedded multi-node Ray cluster on this machine, for the quick start, the examples and the
Ray benchmarks: the same four steps each of them needs, written once.

    cluster = embedded_cluster()
    hv = None
    try:
        connect(cluster, nodes=5)
        hv = cluster_plugin.start(demo_config(active_view_size=2), bind_host="127.0.0.1")
        ...
    finally:
        stop(cluster, hv)
"""

from __future__ import annotations

import logging

import ray
from ray.cluster_utils import Cluster

from ray_hyparview.cluster.plugin import HyParViewCluster
from ray_hyparview.protocol.config import HyParViewConfig

__all__ = ["connect", "demo_config", "embedded_cluster", "stop"]


def embedded_cluster() -> Cluster:
    """A head node with one CPU and no dashboard (the dashboard costs seconds at start)."""
    return Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})


def connect(cluster: Cluster, nodes: int) -> None:
    """Grow ``cluster`` to ``nodes`` one-CPU nodes and connect this driver to it."""
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    cluster.wait_for_nodes()


def demo_config(
    active_view_size: int, passive_view_size: int = 8, *, local_timings: bool = True
) -> HyParViewConfig:
    """Membership timing for a handful of nodes on one machine: shuffles every 2 s, a silent
    peer declared failed after 1.5 s, split components merged within seconds (the local
    preset's merge timings). ``local_timings=False`` keeps the same views with the production
    timers (shuffles every 10 s, a merge probe every 60 to 120 s), for measuring what the fast
    timers cost."""
    views = {"active_view_size": active_view_size, "passive_view_size": passive_view_size}
    if not local_timings:
        return HyParViewConfig(**views, min_active_size=1)
    return HyParViewConfig.local(
        **views,
        min_active_size=1,
        shuffle_interval=2.0,
        neighbor_timeout=HyParViewConfig().neighbor_timeout,
    )


def stop(cluster: Cluster, hv: HyParViewCluster | None) -> None:
    """Stop the plugin (if started), the driver and every node."""
    if hv is not None:
        hv.stop()
    ray.shutdown()
    cluster.shutdown()  # type: ignore[no-untyped-call]
