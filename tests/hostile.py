"""A hostile peer on loopback, for tests and measurements: real agents started as
``python -m ray_hyparview.agent run`` subprocesses, a flood of large frames from many
connections, and the victim's resident memory read from ``/proc/<pid>/status``.

Run as a script to print figures: ``python -m tests.hostile [--curve] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ray_hyparview.config.keys import generate_keypair

ROOT = Path(__file__).resolve().parents[1]
AGENT = [sys.executable, "-m", "ray_hyparview.agent"]


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out and released (the agents bind them a moment later)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Agent:
    """One agent subprocess: its pid, endpoints, and the file its log goes to."""

    proc: subprocess.Popen[str]
    info: dict[str, Any]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [*AGENT, "status", "--control", self.info["control"], "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def log_lines(self, level: str = "WARNING") -> int:
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if level in line)


@dataclass
class Cluster:
    """Three agents ``n1`` (the victim), ``n2`` and ``n3``, all linked, plain or CURVE."""

    agents: dict[str, Agent]
    endpoints: dict[str, str]
    attacker_keys: tuple[str, str] | None = None
    """(public, secret) of a key the victim admits without binding it to an id (a key shared
    by the cluster, as the Ray plugin hands out today), when CURVE is on."""
    server_key: str | None = None
    """The victim's public key, when CURVE is on."""

    @property
    def victim(self) -> Agent:
        return self.agents["n1"]


@contextmanager
def cluster(workdir: Path, *, curve: bool) -> Iterator[Cluster]:
    """Start n1, n2, n3 (n2 and n3 join through n1) and stop them, by pid, at the end."""
    ids = ("n1", "n2", "n3")
    ports = free_ports(len(ids))
    endpoints = {i: f"tcp://127.0.0.1:{p}" for i, p in zip(ids, ports, strict=True)}
    keys = {i: generate_keypair() for i in ids}
    attacker = generate_keypair()
    with ExitStack() as stack:
        agents: dict[str, Agent] = {}
        for node_id in ids:
            lines = ["[node]", f'id = "{node_id}"']
            lines += ["contacts = []" if node_id == "n1" else 'contacts = ["n1"]']
            lines += ["[agent]", 'control = "tcp://127.0.0.1:0"', "[nodes]"]
            for other in ids:
                entry = f'endpoint = "{endpoints[other]}"'
                if curve:
                    entry += f', public_key = "{keys[other][0]}"'
                lines.append(f"{other} = {{ {entry} }}")
            if curve:
                public, secret = keys[node_id]
                lines += ["[security]", f'public_key = "{public}"', f'secret_key = "{secret}"']
                if node_id == "n1":
                    lines.append(f'allow_list = ["{attacker[0]}"]')
            config = workdir / f"{node_id}.toml"
            config.write_text("\n".join(lines) + "\n")
            config.chmod(0o600)
            agents[node_id] = stack.enter_context(_agent(config, workdir / f"{node_id}.log"))
        yield Cluster(
            agents,
            endpoints,
            attacker if curve else None,
            keys["n1"][0] if curve else None,
        )


@contextmanager
def _agent(config: Path, log: Path) -> Iterator[Agent]:
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*AGENT, "run", "--json", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        yield Agent(proc, info, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Flood:
    """What a flood did and what the victim's memory did meanwhile."""

    frames: int = 0
    peak_mib: float = 0.0
    samples: list[float] = field(default_factory=list)


def flood(
    endpoint: str,
    *,
    seconds: float,
    connections: int = 50,
    frame_size: int = 60_000,
    watch_pid: int | None = None,
    curve: tuple[str, str, str] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> Flood:
    """Open ``connections`` DEALERs to ``endpoint``, each claiming a fresh node id, and send
    ``frame_size`` bytes of garbage on all of them as fast as they take it for ``seconds``.
    ``curve`` is (server public key, client public key, client secret key)."""
    ctx = zmq.Context()
    result = Flood()
    payload = zmq.Frame(os.urandom(frame_size))
    socks: list[zmq.Socket[bytes]] = []
    try:
        for index in range(connections):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, f"stranger-{index}".encode() + b"\0" + os.urandom(6))
            if curve is not None:
                sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0].encode())
                sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1].encode())
                sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2].encode())
            sock.connect(endpoint)
            socks.append(sock)
        deadline = time.monotonic() + seconds
        next_sample = 0.0
        while (now := time.monotonic()) < deadline and not stop():
            sent = 0
            for sock in socks:
                try:
                    sock.send(payload, zmq.NOBLOCK, copy=False)
                    sent += 1
                except zmq.Again:
                    pass
            result.frames += sent
            if not sent:
                time.sleep(0.001)
            if watch_pid is not None and now >= next_sample:
                next_sample = now + 0.1
                rss = rss_mib(watch_pid)
                result.samples.append(rss)
                result.peak_mib = max(result.peak_mib, rss)
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
    return result


def settle(pid: int, *, target_mib: float, limit: float) -> tuple[float, float]:
    """Wait until the process's RSS is at most ``target_mib`` or ``limit`` seconds passed;
    return (RSS, seconds waited)."""
    start = time.monotonic()
    while True:
        rss = rss_mib(pid)
        waited = time.monotonic() - start
        if rss <= target_mib or waited >= limit:
            return rss, waited
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--curve", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--frame-size", type=int, default=60_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, cluster(Path(tmp), curve=args.curve) as c:
        victim = c.victim
        deadline = time.monotonic() + 30
        while sorted(victim.status()["active"]) != ["n2", "n3"]:
            if time.monotonic() > deadline:
                raise SystemExit("the overlay did not form")
            time.sleep(0.2)
        before = rss_mib(victim.pid)
        keys = None
        if c.attacker_keys is not None and c.server_key is not None:
            keys = (c.server_key, *c.attacker_keys)
        result = flood(
            victim.info["endpoint"],
            seconds=args.seconds,
            connections=args.connections,
            frame_size=args.frame_size,
            watch_pid=victim.pid,
            curve=keys,
        )
        at_end = rss_mib(victim.pid)
        after, waited = settle(victim.pid, target_mib=before * 1.5, limit=60)
        status = victim.status()
        print(
            json.dumps(
                {
                    "curve": args.curve,
                    "frames_sent": result.frames,
                    "rss_before_mib": round(before, 1),
                    "rss_peak_mib": round(result.peak_mib, 1),
                    "rss_at_end_mib": round(at_end, 1),
                    "rss_after_mib": round(after, 1),
                    "settled_after_s": round(waited, 1),
                    "active": status["active"],
                    "warning_lines": victim.log_lines(),
                    "counters": {
                        k: v
                        for k, v in status["counters"].items()
                        if k.startswith(("transport.recv", "transport.router", "transport.zap"))
                        or "dropped" in k
                        or "offender" in k
                        or "log." in k
                    },
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
