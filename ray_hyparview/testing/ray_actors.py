"""A user actor on the mesh, and probes of the plugin's agents, shared by the Ray tests and the
Ray benchmarks (``tests/test_ray_supervision.py``, ``benchmarks/ray_supervision.py``).

Importing this module imports Ray."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_hyparview import mesh
from ray_hyparview.cluster.plugin import get_agent

__all__ = ["Worker", "incarnation", "on", "reattached"]


class _Worker:
    """A user actor on the mesh; it never joins twice. Each call answers with a plain value
    (a failed delivery's reason rather than an exception), so a driver can poll it."""

    def __init__(self) -> None:
        self.m: Any = None

    async def join(self, name: str, topic: str | None = None) -> str:
        self.m = await mesh.join(name)
        if topic is not None:
            self.m.subscribe(topic)
        return str(self.m.node_id)

    async def send(self, to: str, payload: Any, timeout: float = 5.0) -> str:
        try:
            await self.m.send(to, payload, timeout=timeout)
        except mesh.DeliveryError as exc:
            return exc.reason
        return "ok"

    async def request(self, to: str, payload: Any) -> tuple[str, str]:
        try:
            await self.m.request(to, payload, timeout=60.0)
        except mesh.DeliveryError as exc:
            return exc.reason, str(getattr(exc, "outcome", ""))
        return "ok", ""

    async def publish(self, topic: str, payload: Any) -> None:
        await self.m.publish(topic, payload)

    async def receive(self, count: int) -> list[tuple[str, str, Any]]:
        got: list[tuple[str, str, Any]] = []
        async for message in self.m.inbox():
            got.append((message.kind, message.sender, message.payload))
            if len(got) >= count:
                break
        return got

    async def receive_until(self, payload: Any) -> list[Any]:
        got: list[Any] = []
        async for message in self.m.inbox():
            got.append(message.payload)
            if message.payload == payload:
                break
        return got

    async def reattached(self) -> int:
        count: int = self.m.reattached
        return count

    async def leave(self) -> None:
        await self.m.leave()


Worker: Any = ray.remote(num_cpus=0)(_Worker)
"""The actor class (typed ``Any``: ``ray.remote``'s wrapper types are not generic)."""


def on(node_id: str) -> Any:
    """A new :data:`Worker` pinned to ``node_id``."""
    return Worker.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
    ).remote()


def reattached(worker: Any, times: int) -> bool:
    """``worker``'s mesh handle has moved to a new agent at least ``times`` times."""
    count: int = ray.get(worker.reattached.remote())
    return count >= times


def incarnation(node_id: str) -> int:
    """The incarnation of the agent serving ``node_id`` now, 0 if none answers (or it no
    longer serves)."""
    try:
        found: int = ray.get(get_agent(node_id).ping.remote(), timeout=5)
    except Exception:
        return 0
    return found
