"""The Ray plugin and the actor mesh on one local multi-node Ray cluster (shared by the module).

Agents bind 127.0.0.1 (the plugin's bind_host); the GCS uses the machine's own address, as Ray
chooses. Every actor and the cluster are stopped at the end of the module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from ray_hyparview import cluster as plugin  # noqa: E402
from ray_hyparview import mesh  # noqa: E402
from ray_hyparview.agent.priority import thread_nices  # noqa: E402
from ray_hyparview.protocol.config import HyParViewConfig  # noqa: E402
from ray_hyparview.testing.conditions import wait_sync  # noqa: E402

RAY_WORKERS = 3
"""Worker nodes of the module's cluster (``ray_cluster`` in conftest.py), besides the head."""


def config(active: int, minimum: int = 2) -> HyParViewConfig:
    return HyParViewConfig.local(active_view_size=active, min_active_size=minimum)


def alive() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


class _Worker:
    """A user actor that joins the mesh."""

    def __init__(self) -> None:
        self.m: Any = None

    async def join(self, name: str, topic: str) -> str:
        self.m = await mesh.join(name)
        self.m.subscribe(topic)
        return str(self.m.node_id)

    async def send(self, to: str, payload: Any, key: str | None = None) -> str:
        try:
            await self.m.send(to, payload, timeout=8.0, key=key)
        except mesh.DeliveryError as exc:
            return exc.reason
        return "ok"

    async def request(self, to: str, payload: Any) -> Any:
        return await self.m.request(to, payload, timeout=8.0)

    async def publish(self, topic: str, payload: Any) -> None:
        await self.m.publish(topic, payload)

    async def receive(self, count: int, answer: bool = False) -> list[tuple[str, str, Any]]:
        got: list[tuple[str, str, Any]] = []
        async for message in self.m.inbox():
            got.append((message.kind, message.sender, message.payload))
            if answer and message.kind == "request":
                await message.reply(("re", message.payload))
            if len(got) >= count:
                break
        return got

    async def gate(self, node_id: str, target: str) -> tuple[bool, str, list[str]]:
        # One snapshot: no await between reading the view and asking the gate, so the answer
        # is checked against the view the actor actually held (views may move after convergence).
        view = sorted(self.m.active_view)
        return self.m.allowed(node_id), self.m.channel(target).kind, view

    async def leave(self) -> list[Any]:
        return [message.payload for message in await self.m.leave()]


Worker: Any = ray.remote(num_cpus=0)(_Worker)


def place(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


@pytest.fixture(scope="module")
def four(ray_cluster: Cluster) -> Iterator[plugin.HyParViewCluster]:
    hv = plugin.start(config(3), bind_host="127.0.0.1")
    try:
        yield hv
    finally:
        hv.stop()


def test_one_agent_per_node_and_views_agree_with_topology(
    four: plugin.HyParViewCluster, tmp_path: Any
) -> None:
    views = four.wait_converged(timeout=60)
    assert set(views) == alive()
    assert len(views) == 4
    edges = four.topology()
    for node_id, view in views.items():
        assert len(view["active"]) <= 3
        for peer in view["active"]:
            assert tuple(sorted((node_id, peer))) in edges
            assert node_id in views[peer]["active"]  # symmetric
    # A second start() finds the running plugin instead of starting another set.
    again = plugin.start(bind_host="127.0.0.1")
    assert set(again.views()) == set(views)
    stats = four.stats()
    assert all(s["gauges"]["active_view_size"] >= 1 for s in stats.values())
    # Every agent has pushed its counters and gauges through ray.util.metrics at least once.
    assert all(s["counters"].get("agent.metrics.exported", 0) >= 1 for s in stats.values())
    # Each agent actor's process asked for the default priority; as root every thread has it.
    for s in stats.values():
        assert s["priority"]["nice"] == -10
        if sys.platform == "linux" and os.geteuid() == 0:
            assert s["priority"]["error"] is None
            assert set(thread_nices(s["pid"])) == {-10}
    picture = four.draw(str(tmp_path / "overlay.png"))
    with open(picture, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_small_views_still_reach_every_actor_and_broadcast_once(
    ray_cluster: Cluster, four: plugin.HyParViewCluster
) -> None:
    four.stop()
    extra = [ray_cluster.add_node(num_cpus=1) for _ in range(2)]
    ray_cluster.wait_for_nodes()
    hv = plugin.start(config(2, 1), bind_host="127.0.0.1")
    workers: list[Any] = []
    try:
        views = hv.wait_converged(timeout=90)
        assert len(views) == 6
        assert all(len(v["active"]) <= 2 for v in views.values())
        nodes = sorted(views)
        workers = [
            Worker.options(scheduling_strategy=place(nodes[i % 6])).remote() for i in range(12)
        ]
        homes = ray.get([w.join.remote(f"w{i}", "news") for i, w in enumerate(workers)])
        assert homes == [nodes[i % 6] for i in range(12)]
        # All to all: every send is acknowledged end to end.
        results = ray.get(
            [
                w.send.remote(f"w{j}", (i, j))
                for i, w in enumerate(workers)
                for j in range(12)
                if i != j
            ]
        )
        assert results == ["ok"] * (12 * 11)
        got = ray.get([w.receive.remote(11) for w in workers], timeout=60)
        for j, inbox in enumerate(got):
            assert sorted(p for _, _, p in inbox) == sorted((i, j) for i in range(12) if i != j)
        # The gate: direct channels only to the own node or the active view.
        w0_node = homes[0]
        for j in range(1, 12):
            allowed, kind, held = ray.get(workers[0].gate.remote(homes[j], f"w{j}"))
            assert len(held) <= 2
            expected = homes[j] == w0_node or homes[j] in held
            assert allowed == expected
            assert kind == ("local" if homes[j] == w0_node else "direct" if expected else "routed")
        # Request/response across the overlay.
        server = workers[5].receive.remote(1, True)
        assert ray.get(workers[0].request.remote("w5", "ping")) == ("re", "ping")
        ray.get(server)
        # Publish: every subscriber gets each publication exactly once.
        ray.get(workers[3].publish.remote("news", "hello"))
        ray.get(workers[7].publish.remote("news", "world"))
        pubs = ray.get([w.receive.remote(2) for w in workers], timeout=60)
        for inbox in pubs:
            assert sorted(p for kind, _, p in inbox if kind == "publish") == ["hello", "world"]
        # Keyed sends are delivered once; leave() hands back what was never taken.
        leaver = Worker.options(scheduling_strategy=place(nodes[1])).remote()
        workers.append(leaver)
        ray.get(leaver.join.remote("leaver", "other"))
        twice = [workers[0].send.remote("leaver", "unread", "k-1") for _ in range(2)]
        assert ray.get(twice) == ["ok", "ok"]
        assert ray.get(leaver.leave.remote()) == ["unread"]
        # Node removal: the dead node's actors fail loudly, the living still talk.
        victim_node = ray_cluster.list_all_nodes()[-1]  # type: ignore[no-untyped-call]
        victim_id = victim_node.node_id
        ray_cluster.remove_node(victim_node)
        wait_sync(lambda: victim_id not in alive(), limit=60)
        hv.wait_converged(timeout=60)
        dead = [i for i in range(12) if homes[i] == victim_id]
        live = [i for i in range(12) if homes[i] != victim_id]
        assert dead
        for i in dead:
            reason = ray.get(workers[live[0]].send.remote(f"w{i}", "late"))
            assert reason in {"no_route", "timeout", "unknown_name"}
        results = ray.get(
            [workers[i].send.remote(f"w{j}", "after") for i in live for j in live if i != j]
        )
        assert results == ["ok"] * (len(live) * (len(live) - 1))
        # A node added later gets its agent by itself and joins.
        new = ray_cluster.add_node(num_cpus=1)
        ray_cluster.wait_for_nodes()
        grown = hv.wait_converged(timeout=60)
        assert new.node_id in grown
        assert grown[new.node_id]["active"]
    finally:
        for w in workers:
            ray.kill(w)
        hv.stop()
        del extra


def test_sidecar_finds_its_node_and_peers_through_the_gcs(ray_cluster: Cluster) -> None:
    import json
    import signal
    import subprocess
    import sys

    from ray_hyparview.agent.control import query_status

    command = [
        sys.executable, "-m", "ray_hyparview.agent", "run", "--json",
        "--ray-address", ray_cluster.address,
        "--bind", "tcp://127.0.0.1:0",
        "--control", "tcp://127.0.0.1:0",
        "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        assert info["id"] in alive()
        published = plugin.published_agents()
        assert published[info["id"]]["endpoint"] == info["endpoint"]
        import asyncio

        status = asyncio.run(query_status(info["control"]))
        assert status["id"] == info["id"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert info["id"] not in plugin.published_agents()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
