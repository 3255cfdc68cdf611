"""The Ray cluster plugin: one HyParView agent per Ray node, discovered through the GCS.

Theory of operation
===================

``start()`` (from any driver connected to a cluster) creates one detached *reconciler* actor,
named so that a second ``start()`` finds it instead of making another. The reconciler looks at
``ray.nodes()`` every ``reconcile_interval`` seconds:

* for every alive node without an agent it creates a detached async actor
  (:class:`NodeAgent`, ``num_cpus=0``) pinned to that node with a hard
  ``NodeAffinitySchedulingStrategy``; the agent's node id is Ray's NodeID;
* for every alive node whose agent died (``ray.kill``, a crash, memory) or stopped answering
  its pings it kills what is left of it and starts a new one: *supervision*. The new agent takes
  an incarnation strictly above the last one its node published (:func:`next_incarnation`), so
  peers see a new life even if the clock stepped back, and joins the overlay again;
* for every node that died it forgets the agent and removes its GCS entries.

The reconciler is restarted by Ray when it dies (``max_restarts=-1``); the new one rebuilds its
state from the GCS (named agent actors, published agents) and resumes by itself. One stopped for
good (``ray.kill``) is re-created by the next :func:`start` or call on the
:class:`HyParViewCluster` handle. Agents are named per node, so however many reconcilers race,
a node never gets two.

Actors on a node whose agent was replaced get their mesh back without user code: their
:class:`~ray_hyparview.mesh.Mesh` notices the dead agent on its next call (or view refresh),
attaches to the replacement and claims its name again (see :mod:`ray_hyparview.mesh`).

Each agent binds a ZeroMQ ROUTER on its node's address (``bind_host`` overrides it; tests use
127.0.0.1), publishes ``{endpoint, incarnation}`` in the GCS key-value store under
``agent/<node id>`` (namespace ``ray_hyparview``), and joins through up to three agents that
are already published, picked at random: discovery populates the contacts, nobody writes a
contact list. The other published agents seed its passive view. If its active view ever empties
and stays empty, it looks in the GCS again (``_rediscover``).

By default each agent also makes its own CURVE key pair, publishes the public key in the same
entry (``public_key``) and admits only keys published there, each for its own node id: the GCS
is the trust root (:mod:`ray_hyparview.cluster.keys`). ``insecure=True`` runs in plain text.

The same agent runs as a sidecar next to ``ray start`` with ``python -m ray_hyparview.agent run
--ray-address auto`` (:mod:`ray_hyparview.cli.sidecar`, :mod:`ray_hyparview.cluster.sidecar`):
it takes ``run``'s configuration, connects as a driver only to learn its node id, address and
peers, then runs exactly as above, in its own process, with ``run``'s control endpoint and
``/metrics`` page.

In Ray mode the agent's counters and gauges are also exported with ``ray.util.metrics``, so
they reach Ray's own Prometheus endpoint, under the names and labels of the standalone
``/metrics`` page (:class:`~ray_hyparview.agent.metrics.RayMetricsExporter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_hyparview.agent.priority import check_nice
from ray_hyparview.cluster.gcs import (
    _INCARNATION_PREFIX,
    _KV_PREFIX,
    NAMESPACE,
    GcsDirectory,
    _alive_nodes,
    _kv_del,
    agent_actor_name,
    published_agents,
)
from ray_hyparview.cluster.keys import (
    KeyPolicy,
    key_policy,
)
from ray_hyparview.cluster.node_actor import NodeAgent
from ray_hyparview.config.models import AGENT_NICE
from ray_hyparview.config.strategy import Security
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.overlay import problems
from ray_hyparview.protocol.peer import NodeId

log = logging.getLogger("ray_hyparview.cluster")

RECONCILER_NAME = "hyparview-reconciler"

# An agent that does not answer a ping within this many seconds, this many rounds in a row, is
# taken for hung: killed and replaced. A dead one is replaced at the first failed ping.
_PING_TIMEOUT = 5.0
_PING_MISSES = 3


__all__ = [
    "NAMESPACE",
    "HyParViewCluster",
    "NodeAgent",
    "agent_actor_name",
    "get_agent",
    "views_summary",
    "start",
]


class _Reconciler:
    """Keeps exactly one live :class:`NodeAgent` on every alive node."""

    def __init__(
        self,
        config: dict[str, Any],
        security: KeyPolicy,
        bind_host: str | None,
        interval: float,
        *,
        log_level: str = "WARNING",
        nice: int = AGENT_NICE,
    ) -> None:
        self._log_level = log_level
        self._nice = nice
        self._config = config
        self._security = security
        self._bind_host = bind_host
        self._interval = interval
        self._agents: dict[NodeId, Any] = {}
        self._incarnations: dict[NodeId, int] = {}
        self._misses: dict[NodeId, int] = {}
        self._dead: set[NodeId] = set()
        self._swept = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.replaced = 0
        # Ray runs __init__ again when it restarts this actor, and nobody calls run() then: ask
        # for it ourselves, from a thread, since a call to ourselves fails while Ray still
        # counts us as restarting (run() is idempotent). The state is rebuilt by the first
        # round: the agents are named actors, found again by name.
        threading.Thread(target=_resume, name="hyparview-reconciler-resume", daemon=True).start()

    async def run(self) -> None:
        """Reconcile once now, then keep doing it in the background. Idempotent."""
        if self._stopping:
            return
        await self.reconcile()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="hyparview-reconciler")

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed; trying again")

    async def reconcile(self) -> dict[str, list[NodeId]]:
        # One round at a time: the loop and a driver's reconcile() must not both start an agent.
        async with self._lock:
            return await self._reconcile()

    async def _reconcile(self) -> dict[str, list[NodeId]]:
        alive = _alive_nodes()
        replaced = await self._check_health(alive)
        started: list[NodeId] = []
        for node_id in sorted(alive):
            if node_id in self._agents:
                continue
            # get_if_exists: an agent that outlived a previous reconciler is found, not doubled.
            handle = NodeAgent.options(
                name=agent_actor_name(node_id),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(
                node_id,
                self._config,
                self._security,
                self._bind_host,
                log_level=self._log_level,
                nice=self._nice,
            )
            self._agents[node_id] = handle
            started.append(node_id)
        # Start one at a time so that each finds the ones before it in the GCS.
        for node_id in started:
            handle = self._agents[node_id]
            try:
                await handle.start.remote()
                self._incarnations[node_id] = await handle.ping.remote()
            except Exception:
                log.exception("agent on node %s failed to start; replacing it", node_id)
                self._agents.pop(node_id, None)
                with contextlib.suppress(Exception):
                    ray.kill(handle)
        forgotten: list[NodeId] = []
        for node_id in [n for n in self._agents if n not in alive]:
            del self._agents[node_id]
            self._forget(node_id)
            forgotten.append(node_id)
        if not self._swept:
            # A new reconciler (first start, or Ray restarted this one): nodes that died while
            # none was running left their entries in the GCS.
            self._swept = True
            for node_id in sorted(set(published_agents()) - set(alive)):
                self._forget(node_id)
                forgotten.append(node_id)
        return {"started": started, "forgotten": forgotten, "replaced": replaced}

    async def _check_health(self, alive: Mapping[NodeId, str]) -> list[NodeId]:
        """Ping every agent on an alive node; drop the dead and the hung (killing what is left
        of them), so that this round starts a new agent there."""
        nodes = sorted(n for n in self._agents if n in alive)
        results = await asyncio.gather(
            *(self._ping(self._agents[n]) for n in nodes), return_exceptions=True
        )
        replaced: list[NodeId] = []
        for node_id, result in zip(nodes, results, strict=True):
            if isinstance(result, int) and result > 0:
                self._misses.pop(node_id, None)
                continue
            # Died (ray.kill, crash, memory) or failed: replace now. Unreachable for a moment
            # (ActorUnavailableError, a timeout): only after several rounds in a row.
            dead = isinstance(result, ray.exceptions.ActorDiedError) or result == 0
            misses = self._misses.get(node_id, 0) + 1
            if not dead and misses < _PING_MISSES:
                self._misses[node_id] = misses
                log.warning("agent on node %s did not answer its ping (%d)", node_id, misses)
                continue
            log.warning(
                "agent on node %s (incarnation %s) is gone (%s): replacing it",
                node_id,
                self._incarnations.get(node_id),
                result if isinstance(result, BaseException) else "not serving",
            )
            handle = self._agents.pop(node_id)
            self._misses.pop(node_id, None)
            with contextlib.suppress(Exception):
                ray.kill(handle)
            self.replaced += 1
            replaced.append(node_id)
        return replaced

    @staticmethod
    async def _ping(handle: Any) -> int:
        async with asyncio.timeout(_PING_TIMEOUT):
            result: int = await handle.ping.remote()
            return result

    def _forget(self, node_id: NodeId) -> None:
        self._dead.add(node_id)
        self._incarnations.pop(node_id, None)
        self._misses.pop(node_id, None)
        with contextlib.suppress(Exception):
            _kv_del(_KV_PREFIX + node_id)
            _kv_del(_INCARNATION_PREFIX + node_id)  # Ray never reuses a node id
            GcsDirectory.forget_node(node_id)

    async def agents(self) -> dict[NodeId, Any]:
        if not self._swept:  # a new reconciler: find the agents before answering
            await self.run()
        return dict(self._agents)

    async def dead(self) -> list[NodeId]:
        return sorted(self._dead)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            handles = list(self._agents.values())
            self._agents.clear()
        results = await asyncio.gather(*(h.stop.remote() for h in handles), return_exceptions=True)
        for handle, result in zip(handles, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("agent did not stop cleanly: %s", result)
            with contextlib.suppress(Exception):
                ray.kill(handle)


def _resume() -> None:
    """Call ``run()`` on the reconciler actor this thread runs in, until Ray lets it through."""
    deadline = time.monotonic() + 120.0
    while True:
        try:
            ray.get(ray.get_runtime_context().current_actor.run.remote())
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                log.error("the reconciler could not resume itself; start() will")
                return
            time.sleep(0.2)
        except Exception:
            log.exception("the reconciler could not resume itself; start() will")
            return


# The actor classes; typed as Any because ray.remote's wrapper types are not generic.
# The reconciler is restarted by Ray whenever it dies (it rebuilds its state from the GCS); a
# ray.kill() with the default no_restart=True still stops it for good, as stop() means to.
Reconciler: Any = ray.remote(num_cpus=0, max_restarts=-1)(_Reconciler)


def get_agent(node_id: NodeId | None = None) -> Any:
    """The agent actor of ``node_id`` (default: the caller's node)."""
    if node_id is None:
        node_id = ray.get_runtime_context().get_node_id()
    return ray.get_actor(agent_actor_name(node_id), namespace=NAMESPACE)


class HyParViewCluster:
    """The handle ``start()`` returns: views, topology, stats, a picture, and ``stop()``.

    A reconciler that was stopped for good behind its back (``ray.kill``) is made again, with
    the settings of the ``start()`` that made this handle, by the next call that needs it."""

    def __init__(self, reconciler: Any, settings: Mapping[str, Any] | None = None) -> None:
        self._reconciler = reconciler
        self._settings = dict(settings or {})
        self._stopped = False

    def _call(self, method: str, *, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        again = False
        while True:
            try:
                if again:
                    ray.get(self._reconciler.run.remote())
                return ray.get(getattr(self._reconciler, method).remote())
            except ray.exceptions.RayActorError as exc:
                again = True
                if not self._settings or self._stopped or time.monotonic() > deadline:
                    raise
                if isinstance(exc, ray.exceptions.ActorDiedError):
                    log.warning("the reconciler is gone: making a new one")
                else:  # Ray is restarting it
                    time.sleep(0.2)
                # The one Ray restarted, or a new one if it is dead for good.
                self._reconciler = _reconciler(self._settings)

    @property
    def reconciler(self) -> Any:
        """The reconciler actor's handle."""
        return self._reconciler

    def _agents(self) -> dict[NodeId, Any]:
        agents: dict[NodeId, Any] = self._call("agents")
        return agents

    def reconcile(self) -> dict[str, list[NodeId]]:
        """Reconcile now (start agents on new nodes, replace dead agents, forget dead nodes)
        instead of waiting."""
        result: dict[str, list[NodeId]] = self._call("reconcile")
        return result

    def _gather(self, method: str, *, timeout: float = 10.0) -> dict[NodeId, Any]:
        agents = self._agents()
        refs = {node_id: getattr(h, method).remote() for node_id, h in agents.items()}
        out: dict[NodeId, Any] = {}
        for node_id, ref in refs.items():
            try:
                out[node_id] = ray.get(ref, timeout=timeout)
            except Exception as exc:  # a node that just died: say so, do not fail the call
                out[node_id] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    def views(self) -> dict[NodeId, dict[str, Any]]:
        """``{node_id: {"endpoint", "active": [...], "passive": [...]}}`` from every agent."""
        return self._gather("views")

    def topology(self) -> set[tuple[NodeId, NodeId]]:
        """Active-view edges as sorted pairs (an edge both ends agree on appears once)."""
        edges: set[tuple[NodeId, NodeId]] = set()
        for node_id, view in self.views().items():
            for peer in view.get("active", []):
                a, b = sorted((node_id, peer))
                edges.add((a, b))
        return edges

    def stats(self) -> dict[NodeId, dict[str, Any]]:
        """Every agent's ``stats()``."""
        return self._gather("stats")

    def wait_converged(
        self,
        *,
        timeout: float | None = None,
        min_active: int = 1,
        limit: float | None = None,
    ) -> dict[NodeId, Any]:
        """Block until every alive node has an agent with ``min_active`` links, views are
        symmetric, the overlay is connected and every agent has a route to every other; return
        the views. Raises ``TimeoutError`` after ``timeout`` seconds (default 60).

        ``limit`` is the deprecated name of ``timeout``."""
        timeout = _timeout(timeout, limit, 60.0, "HyParViewCluster.wait_converged")
        deadline = time.monotonic() + timeout
        while True:
            self.reconcile()
            views = self.views()
            alive = set(_alive_nodes())
            if set(views) >= alive and _converged(views, alive, min_active) and self._routed(alive):
                return views
            if time.monotonic() > deadline:
                raise TimeoutError(f"the overlay did not converge in {timeout} s: {views}")
            time.sleep(0.2)

    def _routed(self, alive: set[NodeId]) -> bool:
        """Every agent has a route to every other alive node: messages can flow."""
        for node_id, stats in self._gather("mesh_stats").items():
            if node_id not in alive:
                continue
            routes = stats.get("routes")
            if not isinstance(routes, dict) or not set(routes) >= alive - {node_id}:
                return False
        return True

    def draw(self, path: str) -> str:
        """Write a PNG of the overlay: nodes on a circle, active links, dead nodes marked."""
        from ray_hyparview.cluster.drawing import draw_overlay

        views = self.views()
        dead = set(self._call("dead"))
        nodes = sorted(set(views) | dead)
        edges = sorted(self.topology())
        return draw_overlay(path, nodes, edges, dead=dead, title="ray_hyparview overlay")

    def stop(self) -> None:
        """Stop every agent (they leave gracefully) and the reconciler."""
        self._stopped = True
        with contextlib.suppress(Exception):
            ray.get(self._reconciler.stop.remote(), timeout=30)
        with contextlib.suppress(Exception):
            ray.kill(self._reconciler)
        # Agents the reconciler did not stop (it was killed, or raced with a replacement).
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(agent_actor_name(node["NodeID"]), namespace=NAMESPACE))


def _timeout(timeout: float | None, limit: float | None, default: float, where: str) -> float:
    """``timeout``, or the deprecated ``limit`` with a DeprecationWarning (kept one release)."""
    if limit is not None:
        if timeout is not None:
            raise TypeError(f"{where}: give timeout= only (limit= is its deprecated name)")
        warnings.warn(
            f"{where}(limit=...) is deprecated, use timeout=...",
            DeprecationWarning,
            stacklevel=3,
        )
        return limit
    return default if timeout is None else timeout


def _converged(views: Mapping[NodeId, Any], alive: set[NodeId], min_active: int) -> bool:
    """Every alive node's view is in, and they form a connected, symmetric overlay of the
    alive nodes, each with at least ``min_active`` peers."""
    active = {n: v["active"] for n, v in views.items() if n in alive and "active" in v}
    return not problems(active, alive=alive, min_active=min_active)


def _reconciler(settings: Mapping[str, Any]) -> Any:
    """The reconciler actor, made with ``settings`` (its keyword arguments) unless one runs
    already (named, detached)."""
    # The head node: the reconciler lives there, since the cluster does not outlive it anyway.
    head = next(
        (
            n["NodeID"]
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})
        ),
        ray.get_runtime_context().get_node_id(),
    )
    return Reconciler.options(
        name=RECONCILER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False),
    ).remote(**settings)


def start(
    hyparview_config: HyParViewConfig | None = None,
    security: Security | None = None,
    *,
    insecure: bool = False,
    key_file: str | None = None,
    bind_host: str | None = None,
    reconcile_interval: float = 1.0,
    wait: bool = True,
    timeout: float | None = None,
    log_level: str = "WARNING",
    limit: float | None = None,
    nice: int = AGENT_NICE,
) -> HyParViewCluster:
    """Start (or find) the plugin on the connected Ray cluster; see the module docstring.

    ``bind_host`` is the address each agent binds and advertises (default: its node's address).
    With ``wait`` it returns once the overlay is connected and symmetric, or raises
    ``TimeoutError`` after ``timeout`` seconds (default 60). ``limit`` is the deprecated name
    of ``timeout``.

    Links are CURVE-authenticated by default: each agent makes its own key pair (or loads
    ``key_file`` on its node), publishes the public key in the GCS and admits only published
    keys (see :mod:`ray_hyparview.cluster.keys`). ``security`` instead uses the keys given, as
    they are; ``insecure=True`` runs in plain text, with a warning.

    Each agent actor's process asks for the nice value ``nice`` (default -10, as ``[agent]
    nice``; 0 leaves it alone): on oversubscribed cores an agent at the default priority is
    failed by its peers for being late (see :mod:`ray_hyparview.agent.priority`).
    """
    timeout = _timeout(timeout, limit, 60.0, "ray_hyparview.cluster.start")
    if not ray.is_initialized():
        raise RuntimeError("connect to a Ray cluster first (ray.init(...))")
    policy = key_policy(security, insecure=insecure, key_file=key_file)
    config = hyparview_config if hyparview_config is not None else HyParViewConfig()
    settings = {
        "config": asdict(config),
        "security": policy,
        "bind_host": bind_host,
        "interval": reconcile_interval,
        "log_level": log_level,
        "nice": check_nice(nice),
    }
    handle = HyParViewCluster(_reconciler(settings), settings)
    handle._call("run")  # makes the reconciler again if the one found was dying
    if wait:
        handle.wait_converged(timeout=timeout)
    return handle


def views_summary(views: Mapping[NodeId, Any], names: Sequence[NodeId] | None = None) -> str:
    """A few readable lines: one per node with its active peers (ids shortened)."""
    short = {n: n[:8] for n in views}
    lines = []
    for node_id in names or sorted(views):
        view = views[node_id]
        peers = " ".join(short.get(p, p[:8]) for p in view.get("active", []))
        lines.append(f"  {short[node_id]}: {peers}")
    return "\n".join(lines)
