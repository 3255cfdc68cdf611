"""The sidecar: ``python -m ray_hyparview.agent run --ray-address ADDR`` runs one node's agent as
a process next to ``ray start``, finding its node id and peers through the GCS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys

import ray

from ray_hyparview.cluster.gcs import NAMESPACE, _node_ip
from ray_hyparview.cluster.keys import (
    sidecar_policy,
)
from ray_hyparview.cluster.node_actor import _Service
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError
from ray_hyparview.transport.endpoints import format_host, tcp_host
from ray_hyparview.transport.ratelimit import RateLimitFilter

log = logging.getLogger("ray_hyparview.cluster")


def run_sidecar(address: str, args: argparse.Namespace) -> int:
    """``python -m ray_hyparview.agent run --ray-address ADDR``: the agent as a process next to
    ``ray start``, finding its node id and peers through the GCS."""
    logging.basicConfig(level=getattr(logging, (args.log_level or "INFO").upper(), logging.INFO))
    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimitFilter())
    try:
        security = sidecar_policy(args.config, insecure=getattr(args, "insecure", False))
    except ConfigError as exc:
        print(f"run: invalid strategy: {exc}", file=sys.stderr)
        return 1
    ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        bind = args.bind if not args.bind or "://" in args.bind else f"tcp://{args.bind}"
        bound_host = tcp_host(bind) if bind else None
        host = format_host(bound_host) if bound_host else None
        service = _Service(
            node_id,
            host or _node_ip(),
            HyParViewConfig(),
            security,
            export_metrics=False,
        )
        return asyncio.run(_run_service(service, args))
    finally:
        ray.shutdown()


async def _run_service(service: _Service, args: argparse.Namespace) -> int:
    import signal

    from ray_hyparview.agent.control import control_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    endpoint = await service.start()
    try:
        async with control_server(args.control, service.agent.stats) as control:
            if getattr(args, "json", True):
                print(
                    json.dumps({"id": service.node_id, "endpoint": endpoint, "control": control}),
                    flush=True,
                )
            else:
                print(f"{service.node_id}: running at {endpoint} (control {control or 'off'})")
            await stop.wait()
    finally:
        await service.stop()
    return 0
