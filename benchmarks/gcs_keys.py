"""What the Ray plugin's per-node keys cost: reading the published keys, and admitting a key.

What it measures
----------------
On a local one-node Ray (dashboard off), ``N`` agent entries as the plugin publishes them
(``agent/<node id>`` = ``{endpoint, incarnation, public_key}``) are written to the GCS, then:

* **read**: one read of every entry, as the keyring does it (``read_published``: a key listing
  and one multi-get) and as ``published_agents()`` does it (a listing and one get per entry);
  median of ``--repeats`` reads, in ms;
* **admit**: a CURVE transport driven by a :class:`GcsKeyring` over the GCS, and a client whose
  key is published just before it dials: the time from ``send`` to the frame's arrival when the
  server must read the GCS first (the key is unknown to it) and when it already knows the key;
  median of ``--repeats`` dials, in ms. Both include the CURVE handshake.

Run: ``python benchmarks/gcs_keys.py [--quick] [--repeats 7] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_hyparview.cluster.keys import GcsKeyring, read_published
from ray_hyparview.config.keys import generate_keypair
from ray_hyparview.config.strategy import Security
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.transport.zmq import CurveConfig, ZmqTransport


def _publish(node_id: str, public_key: str, endpoint: str = "tcp://127.0.0.1:9") -> None:
    from ray_hyparview.cluster.gcs import _KV_PREFIX, _kv_put

    entry = {"endpoint": endpoint, "incarnation": 1, "public_key": public_key}
    _kv_put(_KV_PREFIX + node_id, json.dumps(entry).encode())


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def measure_reads(n: int, repeats: int) -> dict[str, float]:
    from ray_hyparview.cluster.gcs import _KV_PREFIX, NAMESPACE, published_agents

    have = len(published_agents())
    for i in range(have, n):
        _publish(f"bench-{i:05d}", generate_keypair()[0])
    multi: list[float] = []
    single: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = read_published(NAMESPACE, _KV_PREFIX, published_agents)
        multi.append(time.perf_counter() - t0)
        assert len(got) >= n, len(got)
        t0 = time.perf_counter()
        published_agents()
        single.append(time.perf_counter() - t0)
    return {"entries": n, "multi_get_ms": _ms(multi), "one_get_each_ms": _ms(single)}


async def measure_admission(repeats: int) -> dict[str, float]:
    from ray_hyparview.cluster.gcs import _read_agents

    public, secret = generate_keypair()
    server = ZmqTransport("bench-server", curve=CurveConfig(public_key=public, secret_key=secret))
    await server.start()
    keyring = GcsKeyring(
        "bench-server",
        Security(public_key=public, secret_key=secret),
        _read_agents,
        Counter(),
        min_interval=0.0,
    )
    keyring.attach(server)
    _publish("bench-server", public, server.endpoint)
    target = Peer("bench-server", server.endpoint)
    fresh: list[float] = []
    known: list[float] = []
    try:
        for i in range(repeats):
            for samples, refresh_first in ((fresh, False), (known, True)):
                client_id = f"bench-client-{i}-{refresh_first}"
                cpub, csec = generate_keypair()
                _publish(client_id, cpub)
                if refresh_first:
                    await keyring.refresh()
                client = ZmqTransport(
                    client_id,
                    curve=CurveConfig(
                        public_key=cpub, secret_key=csec, node_keys={"bench-server": public}
                    ),
                )
                await client.start()
                try:
                    t0 = time.perf_counter()
                    assert client.send(target, b"x")
                    async with asyncio.timeout(10):
                        batch = await server.recv_batch()
                    samples.append(time.perf_counter() - t0)
                    assert batch == [(client_id, b"x")], batch
                finally:
                    await client.aclose()
    finally:
        await server.aclose()
    return {"unknown_key_ms": _ms(fresh), "known_key_ms": _ms(known)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 entries, 3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", metavar="PATH", help="write the figures here")
    args = parser.parse_args()
    sizes = (10, 100) if args.quick else (10, 100, 1000)
    repeats = 3 if args.quick else args.repeats

    import ray

    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        reads = [measure_reads(n, repeats) for n in sizes]
        admission = asyncio.run(measure_admission(repeats))
    finally:
        ray.shutdown()
    for row in reads:
        print(
            f"read {row['entries']:>5} entries: list + multi-get {row['multi_get_ms']} ms,"
            f" list + one get each {row['one_get_each_ms']} ms"
        )
    print(
        f"admit a just-published key: {admission['unknown_key_ms']} ms"
        f" (key already read: {admission['known_key_ms']} ms)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"reads": reads, "admission": admission}, indent=1))
    last = reads[-1]
    print(
        f"summary: a keyring read of {last['entries']} entries takes {last['multi_get_ms']} ms;"
        f" admitting an unknown published key adds"
        f" {round(admission['unknown_key_ms'] - admission['known_key_ms'], 2)} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
