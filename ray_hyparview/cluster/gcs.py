"""The plugin's state in Ray's GCS: published agents, incarnations and the mesh name directory.

Every key lives in the :data:`NAMESPACE` namespace; writes retry for a while (a GCS that
restarts must not leave an agent unpublished)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from tenacity import retry, stop_after_delay, wait_exponential_jitter

from ray_hyparview.cluster.keys import (
    read_published,
)
from ray_hyparview.protocol import limits
from ray_hyparview.protocol.peer import NodeId

log = logging.getLogger("ray_hyparview.cluster")

NAMESPACE = "ray_hyparview"
"""Ray namespace of the plugin's named actors and of its GCS key-value entries."""

_KV_PREFIX = "agent/"
_INCARNATION_PREFIX = "incarnation/"


def agent_actor_name(node_id: NodeId) -> str:
    """The name of the agent actor of Ray node ``node_id``."""
    return f"hyparview-agent-{node_id}"


@retry(
    stop=stop_after_delay(10.0),
    wait=wait_exponential_jitter(initial=0.1, max=1.0),
    reraise=True,
)
def _kv_put(key: str, value: bytes) -> None:
    """Publish in the GCS, retrying for a while: a GCS that is restarting or briefly
    overloaded must not leave an agent unpublished (and so never a contact)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key.encode(), value, overwrite=True, namespace=NAMESPACE)


def _kv_exists(key: str) -> bool:
    """Whether ``key`` is published: one GCS round trip, not a listing of every agent."""
    from ray.experimental import internal_kv

    return bool(internal_kv._internal_kv_exists(key.encode(), namespace=NAMESPACE))


def _kv_del(key: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key.encode(), namespace=NAMESPACE)


def next_incarnation(node_id: NodeId, *, clock: Callable[[], int] = time.time_ns) -> int:
    """The incarnation of a new agent on ``node_id``: microseconds since the epoch, but always
    above the last one this node published, so that it grows across restarts even when the
    clock stepped back. Read-then-write is enough: the named agent actor keeps one agent per
    node at a time."""
    from ray.experimental import internal_kv

    key = _INCARNATION_PREFIX + node_id
    raw: bytes | None = internal_kv._internal_kv_get(key.encode(), namespace=NAMESPACE)
    last = 0
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        last = int(raw.decode()) if raw else 0
    incarnation = limits.next_incarnation(clock() // 1000, last)
    _kv_put(key, str(incarnation).encode())
    return incarnation


def published_agents() -> dict[NodeId, dict[str, Any]]:
    """Every agent published in the GCS: node id -> ``{endpoint, incarnation}``."""
    from ray.experimental import internal_kv

    found: dict[NodeId, dict[str, Any]] = {}
    for key in internal_kv._internal_kv_list(_KV_PREFIX.encode(), namespace=NAMESPACE):
        raw: bytes | None = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        if not raw:
            continue  # deleted between the listing and the read
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            found[key.decode()[len(_KV_PREFIX) :]] = json.loads(raw)
    return found


def _read_agents() -> dict[NodeId, dict[str, Any]]:
    """``published_agents()`` in two GCS round trips, for the keyring's refreshes."""
    return read_published(NAMESPACE, _KV_PREFIX, published_agents)


def _node_ip() -> str:
    ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return ip


def _alive_nodes() -> dict[NodeId, str]:
    """Alive Ray nodes: node id -> node address."""
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}  # type: ignore[no-untyped-call]


class GcsDirectory:
    """Mesh names in the GCS key-value store: ``name/<name>`` -> node id. ``claim`` is atomic:
    the GCS refuses to overwrite a key that exists."""

    def claim(self, name: str, node_id: NodeId) -> bool:
        from ray.experimental import internal_kv

        key = f"name/{name}".encode()
        existed = internal_kv._internal_kv_put(
            key, node_id.encode(), overwrite=False, namespace=NAMESPACE
        )
        if not existed:
            return True
        owner: bytes | None = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        return owner is not None and owner.decode() == node_id

    def lookup(self, name: str) -> NodeId | None:
        from ray.experimental import internal_kv

        owner: bytes | None = internal_kv._internal_kv_get(
            f"name/{name}".encode(), namespace=NAMESPACE
        )
        return owner.decode() if owner else None

    def release(self, name: str, node_id: NodeId) -> None:
        if self.lookup(name) == node_id:
            _kv_del(f"name/{name}")

    @staticmethod
    def forget_node(node_id: NodeId) -> int:
        """Drop every name of a dead node; returns how many."""
        from ray.experimental import internal_kv

        dropped = 0
        for key in internal_kv._internal_kv_list(b"name/", namespace=NAMESPACE):
            if internal_kv._internal_kv_get(key, namespace=NAMESPACE) == node_id.encode():
                internal_kv._internal_kv_del(key, namespace=NAMESPACE)
                dropped += 1
        return dropped
