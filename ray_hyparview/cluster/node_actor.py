"""The node actor: one detached Ray actor per node that hosts the agent and its mesh service
(:class:`_Service` is shared with the sidecar)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any

import ray

from ray_hyparview.agent.localpath import LocalServer, socket_dir
from ray_hyparview.agent.meshnode import MeshNode
from ray_hyparview.agent.node import Agent
from ray_hyparview.agent.priority import Priority, process_stats, raise_priority
from ray_hyparview.cluster.gcs import (
    _KV_PREFIX,
    GcsDirectory,
    _kv_del,
    _kv_exists,
    _kv_put,
    _node_ip,
    _read_agents,
    next_incarnation,
    published_agents,
)
from ray_hyparview.cluster.keys import (
    KEY_SOURCE,
    GcsKeyring,
    KeyPolicy,
    NodeKeys,
    node_security,
)
from ray_hyparview.config.models import AGENT_NICE
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.protocol.routing import RoutingConfig
from ray_hyparview.transport.ratelimit import RateLimitFilter

log = logging.getLogger("ray_hyparview.cluster")

_CONTACTS = 3
_METRICS_INTERVAL = 5.0


def service_strategy(
    node_id: NodeId, host: str, config: HyParViewConfig, security: KeyPolicy
) -> Strategy:
    """The plugin's agent on ``node_id``: any port on ``host``, the keys ``security`` gives."""
    own = node_security(security) if isinstance(security, NodeKeys) else security
    return Strategy(
        local_peer=Peer(node_id, f"tcp://{host}:0"), hyparview_config=config, security=own
    )


class _Service:
    """One node's agent plus its discovery and metrics, shared by the actor and the sidecar."""

    def __init__(self, strategy: Strategy, *, export_metrics: bool) -> None:
        """``strategy`` is the agent's, its security already resolved (see
        :func:`service_strategy`): a ``key_source`` of :data:`KEY_SOURCE` takes the peers'
        keys from the GCS."""
        self.node_id = strategy.local_peer.id
        own = strategy.security
        self.agent = Agent(strategy, incarnation=next_incarnation(self.node_id))
        self.keyring: GcsKeyring | None = None
        if own is not None and own.key_source == KEY_SOURCE:
            self.keyring = GcsKeyring(self.node_id, own, _read_agents, self.agent.counters)
        self._export_metrics = export_metrics
        self.mesh: MeshNode | None = None
        self.local: LocalServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.failed = False
        """One of the agent's tasks ended with an error: the agent no longer does all it
        should, and the reconciler replaces it."""
        self._rng = random.Random()

    async def start(self) -> str:
        agent = self.agent
        await agent.start()
        me = agent.myself
        # An earlier life of this node that did not stop cleanly (its entry is still
        # published: it was killed, and this agent replaces it) may still be routed through by
        # neighbours that have not noticed: hold routes down until its announcements expired
        # (routing.py, rule 6). A clean stop deletes the entry, so a fresh start does not hold.
        replacing = _kv_exists(_KV_PREFIX + self.node_id)
        entry: dict[str, Any] = {"endpoint": me.endpoint, "incarnation": agent.incarnation}
        if self.keyring is not None:
            # Admit only published keys, and publish ours beside the endpoint.
            self.keyring.attach(agent.transport)
            self._tasks.append(asyncio.create_task(self.keyring.run(), name="hyparview-keys"))
            entry["public_key"] = self.keyring.public_key
        _kv_put(_KV_PREFIX + self.node_id, json.dumps(entry).encode())
        holddown = RoutingConfig(start_holddown=None) if replacing else None
        self.mesh = MeshNode(agent, GcsDirectory(), routing=holddown)
        local = LocalServer(self.mesh, directory=socket_dir())
        await local.start()
        self.local = local
        self._watch_tasks()
        self._discover()
        self._tasks.append(asyncio.create_task(self._rediscover(), name="hyparview-discovery"))
        if self._export_metrics:
            self._tasks.append(asyncio.create_task(self._export(), name="hyparview-metrics"))
        return me.endpoint

    def _watch_tasks(self) -> None:
        """Mark the agent failed when one of its tasks ends with an error.

        The agent's TaskGroup was entered by the call that started it, long finished in an
        actor; so a failing task does not end the group (asyncio only reports it to the loop's
        exception handler) and the agent goes on with one loop missing. The loop belongs to
        this agent's process alone: watch that handler for the agent's tasks (named
        ``hyparview-*`` and ``mesh-*``)."""
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            task = context.get("task") or context.get("future")
            name = task.get_name() if isinstance(task, asyncio.Task) else ""
            if (
                context.get("exception") is not None
                and name.startswith(("hyparview-", "mesh-"))
                and not self._stopping
            ):
                self.failed = True
                log.error("%s: task %s failed; the agent must be replaced", self.node_id, name)
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(on_error)

    @property
    def serving(self) -> bool:
        agent = self.agent
        return agent.started and not agent.closed and not self.failed and not agent.lost_services

    def _discover(self) -> None:
        published = published_agents()
        if self.keyring is not None:
            self.keyring.update(published)
            keyed = self.keyring.keys  # a peer without a published key cannot be dialled
            published = {n: i for n, i in published.items() if n in keyed}
        others = [
            Peer(node_id, info["endpoint"])
            for node_id, info in sorted(published.items())
            if node_id != self.node_id and isinstance(info.get("endpoint"), str)
        ]
        if not others:
            return
        self.agent.add_passive(others)
        picks = self._rng.sample(others, min(_CONTACTS, len(others)))
        self.agent.join_contacts(picks)

    async def _rediscover(self) -> None:
        # A node that lost every link and every passive peer knows nobody alive: the GCS does.
        while True:
            await asyncio.sleep(2.0)
            if not self.agent.active_view:
                self._discover()

    async def _export(self) -> None:
        from ray_hyparview.agent.metrics import RayMetricsExporter

        exporter = RayMetricsExporter()
        while True:
            exporter.export(self.agent.stats())
            self.agent.counters["metrics.exported"] += 1
            await asyncio.sleep(_METRICS_INTERVAL)

    def views(self) -> dict[str, Any]:
        agent = self.agent
        if not agent.started:
            return {"endpoint": "", "active": [], "passive": []}
        return {
            "endpoint": agent.myself.endpoint,
            "active": [p.id for p in agent.active_view],
            "passive": [p.id for p in agent.passive_view],
        }

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.local is not None:
            await self.local.aclose()
        if self.mesh is not None:
            await self.mesh.aclose()
        with contextlib.suppress(Exception):
            _kv_del(_KV_PREFIX + self.node_id)
        await self.agent.aclose()


class _NodeAgent:
    """The detached actor that hosts one node's agent (and, later, its mesh service)."""

    def __init__(
        self,
        node_id: NodeId,
        config: dict[str, Any],
        security: KeyPolicy,
        bind_host: str | None,
        *,
        log_level: str = "WARNING",
        nice: int = AGENT_NICE,
    ) -> None:
        # Membership changes are logged at INFO: one line each, which Ray forwards to every
        # driver. WARNING by default keeps drivers readable; start(log_level="INFO") shows them.
        _actor_logging(log_level)
        host = bind_host or _node_ip()
        strategy = service_strategy(node_id, host, HyParViewConfig(**config), security)
        self._service = _Service(strategy, export_metrics=True)
        self._starting: asyncio.Future[str] | None = None
        self._nice = nice
        self._priority: Priority | None = None

    async def start(self) -> str:
        """Start the agent; idempotent, and a call during a start waits for that start (a
        restarted reconciler may ask while its predecessor's call is still running)."""
        if self._starting is None:
            # The actor's process exists to run the agent. Asked here, on the event loop's
            # thread, before the agent makes libzmq's threads, which then inherit it.
            self._priority = raise_priority(self._nice)
            self._starting = asyncio.ensure_future(self._service.start())
        return await asyncio.shield(self._starting)

    async def views(self) -> dict[str, Any]:
        return self._service.views()

    async def ping(self) -> int:
        """The reconciler's health check: this agent's incarnation while it serves, else 0."""
        service = self._service
        return service.agent.incarnation if service.serving else 0

    async def stats(self) -> dict[str, Any]:
        """The agent's stats, with this process's id and the priority it asked for (``nice``,
        ``threads`` that got it, the ``error`` that kept the others from it)."""
        return {**self._service.agent.stats(), **process_stats(self._priority)}

    async def wait_for_active(self, n: int, timeout: float) -> int:
        await self._service.agent.wait_for_active(n, timeout=timeout)
        return len(self._service.agent.active_view)

    async def stop(self) -> None:
        await self._service.stop()

    # The mesh API, called by actors on this node through ray_hyparview.mesh.

    def _mesh(self) -> MeshNode:
        mesh = self._service.mesh
        if mesh is None:
            raise RuntimeError("the agent on this node is not started")
        return mesh

    async def mesh_register(self, name: str) -> list[NodeId]:
        self._mesh().register(name)
        return await self.mesh_view()

    async def mesh_join_local(self, name: str) -> dict[str, Any]:
        """Register ``name`` and open the direct local path for it: the active view, the
        agent's local endpoint and the member's token (see :mod:`ray_hyparview.agent.localpath`)."""
        mesh = self._mesh()
        local = self._service.local
        mesh.register(name)
        token = local.admit(name) if local is not None else b""
        endpoint = local.endpoint if local is not None else ""
        return {"view": await self.mesh_view(), "endpoint": endpoint, "token": token}

    async def mesh_unregister(self, name: str, ack: int | None = None) -> list[Any]:
        if self._service.local is not None:
            self._service.local.forget(name)
        return self._mesh().unregister(name, ack=ack)

    async def mesh_view(self) -> list[NodeId]:
        return [p.id for p in self._service.agent.active_view]

    async def mesh_send(
        self, src: str, dst: str, payload: bytes, timeout: float, key: str = ""
    ) -> str:
        return await self._mesh().send(src, dst, payload, timeout=timeout, key=key)

    async def mesh_request(self, src: str, dst: str, payload: bytes, timeout: float) -> bytes:
        return await self._mesh().request(src, dst, payload, timeout=timeout)

    async def mesh_reply(self, request: tuple[NodeId, int, int], payload: bytes) -> None:
        await self._mesh().reply(tuple(request), payload)  # type: ignore[arg-type]

    async def mesh_poll(self, name: str, wait: float, ack: int | None = None) -> list[Any]:
        return await self._mesh().poll(name, wait=wait, ack=ack)

    async def mesh_subscribe(self, name: str, topic: str) -> None:
        self._mesh().subscribe(name, topic)

    async def mesh_unsubscribe(self, name: str, topic: str) -> None:
        self._mesh().unsubscribe(name, topic)

    async def mesh_publish(self, name: str, topic: str, payload: bytes) -> None:
        self._mesh().publish(name, topic, payload)

    async def mesh_stats(self) -> dict[str, Any]:
        stats = self._mesh().stats()
        if self._service.local is not None:
            stats["local"] = self._service.local.stats()
        return stats


def _actor_logging(level: str) -> None:
    """Logging for an agent inside a Ray actor: the package's own logger only (the root logger
    belongs to Ray and to the user's code), one stderr handler that Ray forwards to the
    drivers, with warnings rate-limited so that a flood of bad frames cannot flood the logs."""
    logger = logging.getLogger("ray_hyparview")
    logger.setLevel(getattr(logging, level.upper(), logging.WARNING))
    if not any(getattr(h, "_ray_hyparview", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RateLimitFilter())
        handler._ray_hyparview = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


# The actor class; typed as Any because ray.remote's wrapper types are not generic.
NodeAgent: Any = ray.remote(num_cpus=0, max_restarts=0)(_NodeAgent)
