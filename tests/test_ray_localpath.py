"""The direct local path in a Ray cluster (issue 12): deliveries pushed to async and sync
actors over the node-local socket, early breaks out of the inbox loop, and payloads too large
for the mesh carried through Ray's object store. One cluster for the module."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from ray_hyparview import cluster as plugin  # noqa: E402
from ray_hyparview import mesh  # noqa: E402
from ray_hyparview.protocol.config import HyParViewConfig  # noqa: E402
from ray_hyparview.testing.conditions import wait_sync  # noqa: E402

RAY_WORKERS = 1
"""Worker nodes besides the head: two nodes, so a message crosses one link between agents."""


class _Async:
    """An async actor on the mesh."""

    def __init__(self) -> None:
        self.m: Any = None

    async def join(self, name: str) -> tuple[str, bool]:
        self.m = await mesh.join(name)
        return str(self.m.node_id), self.m._link is not None

    async def send(self, to: str, payload: Any) -> str:
        try:
            await self.m.send(to, payload, timeout=8.0)
        except mesh.DeliveryError as exc:
            return exc.reason
        return "ok"

    async def request(self, to: str, payload: Any) -> Any:
        return await self.m.request(to, payload, timeout=8.0)

    async def receive(self, count: int, answer: bool = False) -> list[Any]:
        got: list[Any] = []
        async with asyncio.timeout(20):
            async for message in self.m.inbox():
                got.append(_digest(message.payload))
                if answer and message.kind == "request":
                    await message.reply(message.payload)
                if len(got) >= count:
                    break
        return got

    async def leave(self) -> list[Any]:
        return [m.payload for m in await self.m.leave()]


class _Sync:
    """A sync actor on the mesh: each call runs its coroutines on a loop of its own."""

    def __init__(self) -> None:
        self.m: Any = None

    def join(self, name: str) -> tuple[str, bool]:
        self.m = asyncio.run(mesh.join(name))
        return str(self.m.node_id), self.m._link is not None

    def send(self, to: str, payload: Any) -> str:
        try:
            asyncio.run(self.m.send(to, payload, timeout=8.0))
        except mesh.DeliveryError as exc:
            return exc.reason
        return "ok"

    def reattached(self) -> int:
        count: int = self.m.reattached
        return count

    def request(self, to: str, payload: Any) -> Any:
        return asyncio.run(self.m.request(to, payload, timeout=8.0))

    def receive(self, count: int, answer: bool = False) -> list[Any]:
        async def take() -> list[Any]:
            got: list[Any] = []
            async with asyncio.timeout(20):
                async for message in self.m.inbox():
                    got.append(_digest(message.payload))
                    if answer and message.kind == "request":
                        await message.reply(message.payload)
                    if len(got) >= count:
                        break
            return got

        return asyncio.run(take())

    def leave(self) -> list[Any]:
        return [m.payload for m in asyncio.run(self.m.leave())]


def _digest(payload: Any) -> Any:
    if isinstance(payload, bytes) and len(payload) > 1000:
        return ("bytes", len(payload), hashlib.sha256(payload).hexdigest()[:16])
    return payload


AsyncActor: Any = ray.remote(num_cpus=0)(_Async)
SyncActor: Any = ray.remote(num_cpus=0)(_Sync)


def place(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


@pytest.fixture(scope="module")
def hv(ray_cluster: Cluster) -> Iterator[plugin.HyParViewCluster]:
    cluster = plugin.start(
        HyParViewConfig.local(active_view_size=1, min_active_size=1), bind_host="127.0.0.1"
    )
    try:
        cluster.wait_converged(timeout=60, min_active=1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def actors(hv: plugin.HyParViewCluster) -> Iterator[dict[str, Any]]:
    """Names -> handles: ``async-a``/``sync-a`` on one node, ``async-b``/``sync-b`` on the
    other, all joined over the local path."""
    a, b = sorted(hv.views())
    made = {
        "async-a": AsyncActor.options(scheduling_strategy=place(a)).remote(),
        "sync-a": SyncActor.options(scheduling_strategy=place(a)).remote(),
        "async-b": AsyncActor.options(scheduling_strategy=place(b)).remote(),
        "sync-b": SyncActor.options(scheduling_strategy=place(b)).remote(),
    }
    try:
        joined = ray.get([h.join.remote(n) for n, h in made.items()], timeout=60)
        assert all(local for _, local in joined), joined
        yield made
    finally:
        for handle in made.values():
            with contextlib.suppress(Exception):  # a second leave is a no-op
                ray.get(handle.leave.remote(), timeout=10)
            ray.kill(handle)


def _local_counters(hv: plugin.HyParViewCluster) -> dict[str, int]:
    total: dict[str, int] = {}
    for stats in hv._gather("mesh_stats").values():
        for key, value in stats["local"]["counters"].items():
            total[key] = total.get(key, 0) + value
    return total


def test_pushed_to_async_and_sync_actors_across_nodes(
    hv: plugin.HyParViewCluster, actors: dict[str, Any]
) -> None:
    before = _local_counters(hv)
    pairs = [("async-a", "sync-b"), ("sync-a", "async-b"), ("sync-b", "async-a")]
    for src, dst in pairs:
        assert ray.get(actors[src].send.remote(dst, f"{src}->{dst}"), timeout=30) == "ok"
    for src, dst in pairs:
        assert ray.get(actors[dst].receive.remote(1), timeout=30) == [f"{src}->{dst}"]
    waiting = actors["sync-b"].receive.remote(1, answer=True)
    assert ray.get(actors["async-a"].request.remote("sync-b", 41), timeout=30) == 41
    assert ray.get(waiting, timeout=30) == [41]
    after = _local_counters(hv)
    assert after["local.op.send"] - before.get("local.op.send", 0) == len(pairs)
    assert after["local.pushed"] - before.get("local.pushed", 0) >= len(pairs) + 1


def test_breaking_out_of_the_inbox_early_loses_nothing(actors: dict[str, Any]) -> None:
    for i in range(6):
        assert ray.get(actors["async-a"].send.remote("sync-b", i), timeout=30) == "ok"
        assert ray.get(actors["sync-a"].send.remote("async-b", i), timeout=30) == "ok"
    for name in ("sync-b", "async-b"):
        assert ray.get(actors[name].receive.remote(2), timeout=30) == [0, 1]
        assert ray.get(actors[name].receive.remote(3), timeout=30) == [2, 3, 4]
        assert ray.get(actors[name].leave.remote(), timeout=30) == [5]


@pytest.mark.parametrize("size", [mesh.LARGE_PAYLOAD + 1, 3_000_000])
def test_a_payload_over_the_mesh_limit_goes_through_the_object_store(
    actors: dict[str, Any], size: int
) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    expected = _digest(payload)
    assert ray.get(actors["async-a"].send.remote("sync-b", payload), timeout=60) == "ok"
    assert ray.get(actors["sync-b"].receive.remote(1), timeout=60) == [expected]
    waiting = actors["async-b"].receive.remote(1, answer=True)
    echoed = ray.get(actors["sync-a"].request.remote("async-b", payload), timeout=60)
    assert _digest(echoed) == expected
    assert ray.get(waiting, timeout=60) == [expected]


def _incarnation(node_id: str) -> int:
    try:
        found: int = ray.get(plugin.get_agent(node_id).stats.remote(), timeout=5)["incarnation"]
    except Exception:
        return 0
    return found


@pytest.mark.slow
def test_a_sync_actor_follows_its_agents_replacement(
    hv: plugin.HyParViewCluster, actors: dict[str, Any]
) -> None:
    """A sync actor has no refresher between its calls, and its local socket says nothing
    when the agent dies: its next calls must still find the replacement (and re-attach)."""
    _, b = sorted(hv.views())
    old = _incarnation(b)
    assert old > 0
    ray.kill(plugin.get_agent(b))
    wait_sync(lambda: _incarnation(b) > old, limit=60, poll=0.2)

    def sends() -> bool:
        return bool(ray.get(actors["sync-b"].send.remote("async-a", "after"), timeout=30) == "ok")

    wait_sync(sends, limit=60, poll=0.5)
    assert ray.get(actors["sync-b"].reattached.remote()) == 1
    assert ray.get(actors["async-a"].receive.remote(1), timeout=30) == ["after"]
    assert ray.get(actors["async-a"].send.remote("sync-b", "back"), timeout=30) == "ok"
    assert ray.get(actors["sync-b"].receive.remote(1), timeout=30) == ["back"]
