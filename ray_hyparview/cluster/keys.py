"""Per-node CURVE keys in Ray mode, with the GCS as the trust root.

Theory of operation
===================

By default (:class:`NodeKeys`) every agent the plugin or the sidecar starts makes its own CURVE
key pair when it starts (or loads one from ``key_file`` on its own node), and publishes the
public key in the GCS beside its endpoint (``agent/<node id>`` = ``{endpoint, incarnation,
public_key}``). Nobody writes or copies a key: the GCS is the root of trust Ray already has.
Whoever can write to it can already run code on every node through Ray itself, so admitting
what it lists adds no weaker way in; where Ray's token authentication is on, the same token
guards both.

:class:`GcsKeyring` is one agent's view of the published keys. It binds each node id to the
key published under it, and hands that binding to the ZeroMQ transport
(:meth:`ZmqTransport.set_node_keys`), whose ZAP handler then admits only published keys, and
whose per-frame check lets a key speak only for the node id it was published under. The
binding is read again

* when an unknown key knocks, or an id without a known key is dialled (a node that just
  joined): the transport awaits :meth:`GcsKeyring.refresh`; and when a dial fails its
  handshake (the peer may have been replaced, with a new key). One read is two GCS round trips
  (list, multi-get) shared by every caller that arrives while it runs, and reads are rate
  limited by a token bucket (``burst`` reads, then one per ``min_interval``): a flood of
  strangers' keys costs the GCS at most that, and once the bucket is empty they are refused
  at once, without holding up the ZAP handler;
* whenever discovery reads the GCS anyway;
* every ``refresh_interval``, so that the key of a node that died (the plugin deletes its
  entry) or was replaced (its new agent publishes a new key) stops being admitted.

A key that two node ids publish is bound to neither (counted as ``keys.duplicate``): a copied
key file must not let one node speak for the other. The own id is always bound to the own key.

``insecure=True`` (``--insecure`` for the sidecar) turns all this off, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ray_hyparview.config.keys import KeyFileError, generate_keypair, is_z85_key, load_keypair
from ray_hyparview.config.strategy import Security, StrategyError
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.transport.zmq import ZmqTransport

__all__ = [
    "INSECURE_WARNING",
    "KEY_SOURCE",
    "GcsKeyring",
    "KeyPolicy",
    "NodeKeys",
    "key_policy",
    "node_security",
    "published_keys",
    "read_published",
    "sidecar_policy",
]

log = logging.getLogger("ray_hyparview.cluster")

KEY_SOURCE: Final = "ray-gcs"
"""``Security.key_source`` of an agent whose peers' keys come from the GCS."""

INSECURE_WARNING: Final = (
    "ray_hyparview runs insecure: agents' links are plain text, and any host that reaches an"
    " agent's port can join the overlay, forge membership and deliver to user actors"
)


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """The plugin's default: every agent its own key pair, published in and admitted from the
    GCS. Passed to the agents in place of a :class:`Security`."""

    key_file: str | None = None
    """A ``.key_secret`` file (``keygen``'s format) each agent loads on its own node; ``None``
    makes a fresh pair at every agent start."""


KeyPolicy = Security | NodeKeys | None
"""What the plugin hands each agent: a :class:`Security` used as it is (keys the operator
manages), :class:`NodeKeys` (per-node keys through the GCS), or ``None`` (plain text)."""


def key_policy(
    security: Security | None, *, insecure: bool = False, key_file: str | None = None
) -> KeyPolicy:
    """The policy ``cluster.start()`` hands to its agents; warns when ``insecure``."""
    if insecure:
        if security is not None or key_file is not None:
            raise ValueError("insecure=True contradicts security= and key_file=")
        log.warning(INSECURE_WARNING)
        return None
    if security is not None:
        if key_file is not None:
            raise ValueError("give security= or key_file=, not both")
        return security
    return NodeKeys(key_file)


def node_security(policy: NodeKeys) -> Security:
    """This agent's key pair under ``policy``, marked as taking its peers' keys from the GCS."""
    if policy.key_file is None:
        public, secret = generate_keypair()
        return Security(public_key=public, secret_key=secret, key_source=KEY_SOURCE)
    public, maybe_secret = load_keypair(policy.key_file)
    if maybe_secret is None:
        raise KeyFileError(f"key file {policy.key_file} holds a public key only")
    return Security(
        public_key=public,
        secret_key=maybe_secret,
        secret_key_file=str(policy.key_file),
        key_source=KEY_SOURCE,
    )


def sidecar_policy(security: Security | None, *, insecure: bool) -> Security | None:
    """The sidecar's keys, from the ``[security]`` table of its strategy as ``run`` parsed it
    (``security``): that key pair if there is one, else a fresh pair; either way marked as
    taking the peers' keys from the GCS. ``None`` (plain text, with a warning) if ``insecure``;
    ``insecure`` with a key pair is a contradiction (:class:`StrategyError`)."""
    if insecure:
        if security is not None:
            raise StrategyError(
                "security",
                "[security]",
                "no key pair with --insecure",
                hint="drop --insecure or the [security] table",
            )
        log.warning(INSECURE_WARNING)
        return None
    if security is None:
        return node_security(NodeKeys())
    if security.allowed_keys or security.allow_list or security.default_server_key:
        log.warning(
            "security.allowed_keys, allow_list and default_server_key are ignored with"
            " --ray-address: peers' keys come from the GCS"
        )
    return Security(
        public_key=security.public_key,
        secret_key=security.secret_key,
        secret_key_file=security.secret_key_file,
        key_source=KEY_SOURCE,
    )


def published_keys(
    published: Mapping[NodeId, Mapping[str, Any]], counters: Counter[str] | None = None
) -> dict[NodeId, str]:
    """Node id -> public key of every published agent that has one. A key published under two
    ids is bound to neither."""
    keys: dict[NodeId, str] = {}
    owners: Counter[str] = Counter()
    for node_id, info in sorted(published.items()):
        key = info.get("public_key")
        if isinstance(key, str) and is_z85_key(key):
            keys[node_id] = key
            owners[key] += 1
    shared = {key for key, n in owners.items() if n > 1}
    if shared:
        if counters is not None:
            counters["keys.duplicate"] += len(shared)
        log.warning("a CURVE key published under more than one node id is refused: %s", shared)
    return {node_id: key for node_id, key in keys.items() if key not in shared}


Read = Callable[[], Mapping[NodeId, Mapping[str, Any]]]


def read_published(
    namespace: str, prefix: str, fallback: Read, *, timeout: float = 5.0
) -> dict[NodeId, dict[str, Any]]:
    """Every ``prefix<node id>`` JSON entry of the GCS key-value store in two round trips
    (list, then one multi-get), instead of one get per node; ``fallback`` where the GCS
    client lacks a multi-get (Ray client mode)."""
    from ray.experimental import internal_kv

    client = getattr(internal_kv, "global_gcs_client", None)
    if client is None or not hasattr(client, "internal_kv_multi_get"):
        return {n: dict(i) for n, i in fallback().items()}
    space = namespace.encode()
    names: list[bytes] = client.internal_kv_keys(prefix.encode(), space, timeout=timeout)
    raw: dict[bytes, bytes] = (
        client.internal_kv_multi_get(names, space, timeout=timeout) if names else {}
    )
    found: dict[NodeId, dict[str, Any]] = {}
    for name, value in sorted(raw.items()):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            entry = json.loads(value)
            if isinstance(entry, dict):
                found[name.decode()[len(prefix) :]] = entry
    return found


class GcsKeyring:
    """One agent's binding of node ids to published keys, kept current; see the module
    docstring. ``read`` returns the published agents (blocking; it runs in a thread)."""

    def __init__(
        self,
        node_id: NodeId,
        security: Security,
        read: Read,
        counters: Counter[str],
        *,
        min_interval: float = 1.0,
        burst: int = 4,
        refresh_interval: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.public_key = security.public_key
        self._read = read
        self._counters = counters
        self._min_interval = min_interval
        self._burst = float(burst)
        self._tokens = float(burst)
        self._filled = time.monotonic()
        self._refresh_interval = refresh_interval
        self._timeout = timeout
        self._transport: ZmqTransport | None = None
        self._keys: dict[NodeId, str] = {node_id: security.public_key}
        self._inflight: asyncio.Task[None] | None = None

    @property
    def keys(self) -> dict[NodeId, str]:
        """The current binding: node id -> public key."""
        return dict(self._keys)

    def attach(self, transport: object) -> None:
        """Drive ``transport``'s admission from this keyring."""
        if not isinstance(transport, ZmqTransport):
            raise TypeError(f"per-node keys need the ZeroMQ transport, not {transport!r}")
        self._transport = transport
        transport.set_node_keys(self._keys, refresh=self.refresh)

    def update(self, published: Mapping[NodeId, Mapping[str, Any]]) -> None:
        """Bind exactly the keys in ``published`` (a read of the GCS), plus our own."""
        keys = published_keys(published, self._counters)
        keys = {n: k for n, k in keys.items() if k != self.public_key}
        keys[self.node_id] = self.public_key
        if keys == self._keys:
            return
        gone = sorted(n for n, k in self._keys.items() if keys.get(n) != k)
        if gone:
            log.info("%s: keys no longer admitted: %s", self.node_id, gone)
        self._keys = keys
        self._counters["keys.changed"] += 1
        if self._transport is not None:
            self._transport.set_node_keys(keys)

    def _take_token(self) -> bool:
        now = time.monotonic()
        if self._min_interval <= 0:
            return True
        self._tokens = min(self._burst, self._tokens + (now - self._filled) / self._min_interval)
        self._filled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def refresh(self) -> None:
        """Read the GCS again if the rate limit allows; callers that arrive during a read
        share it."""
        if self._inflight is None:
            if not self._take_token():
                self._counters["keys.refresh_skipped"] += 1
                return
            self._inflight = asyncio.get_running_loop().create_task(self._refresh_once())
        task = self._inflight
        await asyncio.shield(task)

    async def _refresh_once(self) -> None:
        try:
            self._counters["keys.refreshes"] += 1
            published = await asyncio.wait_for(asyncio.to_thread(self._read), self._timeout)
            self.update(published)
        except Exception as exc:
            self._counters["keys.refresh_failed"] += 1
            log.warning("%s: reading the published keys failed: %r", self.node_id, exc)
        finally:
            self._inflight = None

    async def run(self) -> None:
        """Refresh every ``refresh_interval`` (with jitter) until cancelled."""
        rng = random.Random()
        try:
            while True:
                await asyncio.sleep(self._refresh_interval * rng.uniform(0.8, 1.2))
                await self.refresh()
        finally:
            task = self._inflight
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
