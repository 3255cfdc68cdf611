"""The Ray plugin is secure by default: a CURVE key pair per agent, published in the GCS, and
only published keys admitted, each for its own node id. One local 3-node Ray cluster for the
module; every agent, client and the cluster are stopped at the end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from ray_hyparview import cluster as plugin  # noqa: E402
from ray_hyparview.agent.node import Agent  # noqa: E402
from ray_hyparview.cluster import gcs  # noqa: E402
from ray_hyparview.config.keys import generate_keypair, is_z85_key, write_keypair  # noqa: E402
from ray_hyparview.config.strategy import Security, Strategy  # noqa: E402
from ray_hyparview.protocol.config import HyParViewConfig  # noqa: E402
from ray_hyparview.protocol.peer import Peer  # noqa: E402
from ray_hyparview.testing.conditions import wait_sync  # noqa: E402
from ray_hyparview.transport.zmq import CurveConfig, ZmqOptions, ZmqTransport  # noqa: E402

CONFIG = HyParViewConfig(
    active_view_size=2,
    min_active_size=1,
    shuffle_interval=2.0,
    keepalive_interval=0.25,
    keepalive_timeout=1.5,
)
FAST = ZmqOptions(heartbeat_ivl=0.1, heartbeat_timeout=0.3, dial_timeout=2.0)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def secure(ray_cluster: Cluster) -> Iterator[plugin.HyParViewCluster]:
    hv = plugin.start(CONFIG, bind_host="127.0.0.1")  # no key, no setting: the defaults
    try:
        yield hv
    finally:
        hv.stop()


def counter(hv: plugin.HyParViewCluster, node_id: str, name: str) -> int:
    stats = hv.stats()[node_id]
    value: int = stats.get("counters", {}).get(name, 0)
    return value


def counters_where(hv: plugin.HyParViewCluster, node_id: str, pick: Callable[[str], bool]) -> int:
    stats = hv.stats()[node_id]
    return sum(v for k, v in stats.get("counters", {}).items() if pick(k))


def test_defaults_give_every_agent_its_own_published_key_and_curve_links(
    secure: plugin.HyParViewCluster,
) -> None:
    views = secure.wait_converged(timeout=60)
    assert len(views) == 3
    published = plugin.published_agents()
    keys = {node_id: published[node_id].get("public_key") for node_id in views}
    assert all(is_z85_key(key) for key in keys.values()), keys
    assert len(set(keys.values())) == 3  # one key pair per node, none shared
    for node_id, stats in secure.stats().items():
        counters = stats["counters"]
        # Every inbound link passed the ZAP handler: it is CURVE, with an admitted key.
        assert counters.get("transport.zap.allowed", 0) >= len(views[node_id]["active"]) >= 1
        assert counters.get("transport.zap.denied", 0) == 0
        assert counters.get("transport.recv.dropped.impersonation", 0) == 0


def test_an_agent_with_its_own_unpublished_key_cannot_join(
    secure: plugin.HyParViewCluster,
) -> None:
    views = secure.wait_converged(timeout=60)
    target = sorted(views)[0]
    info = plugin.published_agents()[target]
    denied = counter(secure, target, "transport.zap.denied")
    public, secret = generate_keypair()
    strategy = Strategy(
        local_peer=Peer("outsider", "tcp://127.0.0.1:0"),
        contacts=(Peer(target, info["endpoint"]),),
        hyparview_config=CONFIG,
        security=Security(
            public_key=public, secret_key=secret, allowed_keys={target: info["public_key"]}
        ),
    )

    async def attempt() -> tuple[int, int]:
        async with Agent(strategy) as outsider:
            # The outsider keeps trying to join; wait until the target has refused it.
            for _ in range(200):
                if (
                    await asyncio.to_thread(counter, secure, target, "transport.zap.denied")
                    > denied
                    and outsider.transport.counters["link.failed.handshake_failed"]
                ):
                    break
                await asyncio.sleep(0.1)
            return (
                len(outsider.active_view),
                outsider.transport.counters["link.failed.handshake_failed"],
            )

    active, failed = asyncio.run(attempt())
    assert active == 0
    assert failed >= 1
    assert counter(secure, target, "transport.zap.denied") > denied  # refused and counted
    assert all("outsider" not in v["active"] + v["passive"] for v in secure.views().values())


async def knock(
    target: tuple[str, dict[str, Any]],
    claimed: str,
    keypair: tuple[str, str],
    done: Callable[[], bool],
    *,
    limit: float = 20.0,
) -> bool:
    """Dial ``target`` as ``claimed`` with ``keypair``, send one garbage frame, and wait until
    ``done()`` (read from the cluster) holds; False if it did not within ``limit`` seconds."""
    target_id, info = target
    client = ZmqTransport(
        claimed,
        options=FAST,
        curve=CurveConfig(
            public_key=keypair[0],
            secret_key=keypair[1],
            node_keys={target_id: info["public_key"]},
        ),
    )
    await client.start()
    try:
        assert client.send(Peer(target_id, info["endpoint"]), b"garbage")
        for _ in range(round(limit / 0.1)):
            if await asyncio.to_thread(done):
                return True
            await asyncio.sleep(0.1)
        return False
    finally:
        await client.aclose()


def publish(node_id: str, public_key: str) -> None:
    """Publish a key as an agent does (the endpoint is never dialled by the test)."""
    entry = {"endpoint": "tcp://127.0.0.1:9", "incarnation": 1, "public_key": public_key}
    gcs._kv_put("agent/" + node_id, json.dumps(entry).encode())


def test_a_published_key_speaks_only_for_its_own_node_id_and_only_while_published(
    secure: plugin.HyParViewCluster,
) -> None:
    views = secure.wait_converged(timeout=60)
    node_a, target_id = sorted(views)[:2]
    target = (target_id, plugin.published_agents()[target_id])

    def count(name: str) -> int:
        return counter(secure, target_id, name)

    def garbage() -> int:
        return counters_where(secure, target_id, lambda k: k.startswith("agent.dropped."))

    # Node "B": a key pair published in the GCS under its own id, as an agent publishes it.
    node_b, old = "ffff-published-b", generate_keypair()
    publish(node_b, old[0])
    try:
        # B's key claiming A's id: admitted (it is published), but every frame is dropped.
        stolen = count("transport.recv.dropped.impersonation")
        drop = "transport.recv.dropped.impersonation"
        assert asyncio.run(knock(target, node_a, old, lambda: count(drop) > stolen))
        # The same key under its own id is heard (and its garbage counted as such).
        heard = garbage()
        assert asyncio.run(knock(target, node_b, old, lambda: garbage() > heard))
        # B is replaced: a new key under its id. Once the target has read the GCS again (an
        # unknown key's knock makes it), the old key is refused and the new one heard.
        new = generate_keypair()
        publish(node_b, new[0])
        changed = count("agent.keys.changed")
        for _ in range(20):
            if asyncio.run(
                knock(
                    target,
                    "stranger",
                    generate_keypair(),
                    lambda: count("agent.keys.changed") > changed,
                    limit=2.0,
                )
            ):
                break
        denied = count("transport.zap.denied")
        assert asyncio.run(
            knock(target, node_b, old, lambda: count("transport.zap.denied") > denied)
        )
        heard = garbage()
        assert asyncio.run(knock(target, node_b, new, lambda: garbage() > heard))
    finally:
        gcs._kv_del("agent/" + node_b)


def test_a_plain_text_client_is_refused(secure: plugin.HyParViewCluster) -> None:
    views = secure.wait_converged(timeout=60)
    target = sorted(views)[-1]
    endpoint = plugin.published_agents()[target]["endpoint"]

    def failed() -> int:
        return counters_where(
            secure, target, lambda k: k.startswith("transport.router.handshake_failed")
        )

    def garbage() -> int:
        return counters_where(secure, target, lambda k: k.startswith("agent.dropped."))

    before = failed()
    dropped = garbage()
    ctx = zmq.Context()
    plain = ctx.socket(zmq.DEALER)
    try:
        plain.setsockopt(zmq.LINGER, 0)
        plain.setsockopt(zmq.ROUTING_ID, sorted(views)[0].encode() + b"\0abcdef")
        plain.connect(endpoint)
        plain.send(b"plain text")
        wait_sync(lambda: failed() > before, limit=30)
    finally:
        plain.close(linger=0)
        ctx.term()
    # Its frame never reached the agent (which would have counted it as garbage).
    assert garbage() == dropped


def test_the_sidecar_takes_runs_security_table(ray_cluster: Cluster, tmp_path: Path) -> None:
    files = write_keypair(tmp_path, "node")
    config = tmp_path / "node.toml"
    config.write_text('[security]\nsecret_key_file = "node.key_secret"\n')
    command = [
        sys.executable, "-m", "ray_hyparview.agent", "run",
        "--ray-address", ray_cluster.address,
        "--bind", "tcp://127.0.0.1:0",
        "--config", str(config),
        "--log-level", "WARNING",
        "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert plugin.published_agents()[info["id"]]["public_key"] == files.public_key
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_insecure_runs_in_plain_text_and_warns(
    secure: plugin.HyParViewCluster, caplog: pytest.LogCaptureFixture
) -> None:
    secure.stop()
    wait_sync(lambda: not plugin.published_agents(), limit=30)
    with caplog.at_level(logging.WARNING, logger="ray_hyparview.cluster"):
        hv = plugin.start(CONFIG, bind_host="127.0.0.1", insecure=True)
    try:
        assert "insecure" in caplog.text
        assert "plain text" in caplog.text
        views = hv.wait_converged(timeout=60)
        assert len(views) == 3
        published = plugin.published_agents()
        assert all("public_key" not in published[n] for n in views)
        for stats in hv.stats().values():
            assert stats["counters"].get("transport.zap.allowed", 0) == 0
            assert stats["counters"].get("transport.recv.msgs", 0) >= 1
    finally:
        hv.stop()
