"""A real partition between network namespaces outlasts ``lost_retention``; the halves merge.

Six ``python -m ray_hyparview.agent run`` processes, each in its own network namespace with its
own address (10.213.0.x), hang off two Linux bridges, one per half, that a veth trunk joins;
all of it lives in namespaces this test creates (the bridges in a "switch" namespace), so the
host's own network is never touched. With an active view of 2, each half of three is a full
triangle once the trunk goes down, and no rule of the HyParView paper links the triangles
again. The trunk stays down for longer than ``lost_retention`` (every lost entry of the other
half is gone, so only the component markers can tell the halves apart), then comes back up:
the agents must be one overlay again within a deadline, by themselves (issue 9, item 7).

Needs root and iproute2; skipped otherwise. Every process is killed by pid and every
namespace deleted in a finalizer, pass or fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_hyparview.agent.control import query_status
from ray_hyparview.protocol import overlay
from ray_hyparview.testing.conditions import wait_sync

pytestmark = pytest.mark.slow

NODES = 6
PORT = 7946
SUBNET = "10.213.0"
LOST_RETENTION = 5.0
SPLIT = 15.0  # > lost_retention + 3 merge intervals: lost entries and the old root both expire
HYPARVIEW = {
    "active_view_size": 2,
    "min_active_size": 1,
    "passive_view_size": 8,
    "shuffle_interval": 1.0,
    "keepalive_interval": 0.3,
    "keepalive_timeout": 2.0,
    "neighbor_timeout": 1.0,
    "rejoin_backoff_initial": 0.25,
    "rejoin_backoff_max": 2.0,
    "lost_retention": LOST_RETENTION,
    "probe_interval_min": 0.5,
    "probe_interval_max": 2.0,
    "merge_interval": 2.0,
}


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()}")


def _namespaces_available() -> str | None:
    """Why this test cannot run here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"hvprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        return f"`ip netns add` failed: {exc}"
    _run("ip", "netns", "del", probe)
    return None


class Lab:
    """The namespaces, links and agent processes of one test; ``close`` undoes all of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = f"hv{os.getpid() % 100000}"
        self.switch = f"{self.tag}sw"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def ns(self, i: int) -> str:
        return f"{self.tag}n{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def control(self, i: int) -> str:
        return f"ipc://{self.root}/n{i}.ctl"

    def build(self) -> None:
        sw = self.switch
        _run("ip", "netns", "add", sw)
        self.namespaces.append(sw)
        in_sw = ("ip", "-n", sw)
        for bridge in ("brl", "brr"):
            _run(*in_sw, "link", "add", bridge, "type", "bridge")
            _run(*in_sw, "link", "set", bridge, "up")
        # The trunk between the two halves: the link the test cuts.
        _run(*in_sw, "link", "add", "trl", "type", "veth", "peer", "name", "trr")
        _run(*in_sw, "link", "set", "trl", "master", "brl")
        _run(*in_sw, "link", "set", "trr", "master", "brr")
        _run(*in_sw, "link", "set", "trl", "up")
        _run(*in_sw, "link", "set", "trr", "up")
        for i in range(NODES):
            ns = self.ns(i)
            _run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            port, nic = f"p{i}", f"e{i}"
            # Both ends are created straight in their namespaces, never in the host's.
            _run("ip", "link", "add", port, "netns", sw, "type", "veth", "peer", nic, "netns", ns)
            _run(*in_sw, "link", "set", port, "master", "brl" if i < NODES // 2 else "brr")
            _run(*in_sw, "link", "set", port, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", nic)
            _run("ip", "-n", ns, "link", "set", nic, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def start_agents(self) -> None:
        config = self.root / "agent.toml"
        lines = ["[hyparview]"] + [f"{k} = {v!r}" for k, v in HYPARVIEW.items()]
        config.write_text("\n".join(lines) + "\n")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        for i in range(NODES):
            contacts = [
                f"--contact=n{j}=tcp://{self.address(j)}:{PORT}" for j in range(NODES) if j < i
            ][-2:]
            argv = [
                "ip",
                "netns",
                "exec",
                self.ns(i),
                sys.executable,
                "-m",
                "ray_hyparview.agent",
                "run",
                f"--config={config}",
                f"--id=n{i}",
                f"--endpoint=tcp://{self.address(i)}:{PORT}",
                f"--control={self.control(i)}",
                "--log-level=WARNING",
                *contacts,
            ]
            log = (self.root / f"n{i}.log").open("wb")
            # `ip netns exec` execs the command: the pid is the agent's own.
            self.processes.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            )
            log.close()

    def cut(self, down: bool) -> None:
        _run("ip", "-n", self.switch, "link", "set", "trl", "down" if down else "up")

    def views(self) -> dict[str, list[str]]:
        async def ask() -> list[dict[str, Any] | BaseException]:
            return await asyncio.gather(
                *(query_status(self.control(i), deadline=2.0) for i in range(NODES)),
                return_exceptions=True,
            )

        views: dict[str, list[str]] = {}
        for i, status in enumerate(asyncio.run(ask())):
            views[f"n{i}"] = [] if isinstance(status, BaseException) else list(status["active"])
        return views

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=20)


def components(views: dict[str, list[str]]) -> list[set[str]]:
    """Connected components of the graph of active views (a link counts if either side has
    it), over every node."""
    groups: dict[int, set[str]] = {}
    for node, label in overlay.components(views).items():
        groups.setdefault(label, set()).add(node)
    return [groups[label] for label in sorted(groups)]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = _namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    built = Lab(tmp_path)
    try:
        built.build()
        yield built
    finally:
        built.close()


def test_halves_cut_for_longer_than_lost_retention_merge_by_themselves(lab: Lab) -> None:
    lab.start_agents()
    left = {f"n{i}" for i in range(NODES // 2)}
    right = {f"n{i}" for i in range(NODES // 2, NODES)}
    last: dict[str, list[str]] = {}

    def one_overlay() -> bool:
        nonlocal last
        last = lab.views()
        full = all(len(peers) == HYPARVIEW["active_view_size"] for peers in last.values())
        return full and len(components(last)) == 1

    try:
        wait_sync(one_overlay, limit=60.0, poll=0.5)
    except TimeoutError:
        raise AssertionError(f"the overlay never formed: {last}") from None

    lab.cut(down=True)

    def split() -> bool:
        nonlocal last
        last = lab.views()
        return sorted(map(sorted, components(last))) == sorted([sorted(left), sorted(right)])

    try:
        wait_sync(split, limit=20.0, poll=0.5)
    except TimeoutError:
        raise AssertionError(f"the cut did not split the overlay in its halves: {last}") from None
    cut_at = time.monotonic()
    # Hold the cut for SPLIT seconds, checking all along that the halves stay apart.
    while time.monotonic() - cut_at < SPLIT:
        assert split(), f"traffic crossed the cut: {last}"
        time.sleep(1.0)

    lab.cut(down=False)
    healed_at = time.monotonic()
    try:
        wait_sync(lambda: len(components(lab.views())) == 1, limit=45.0, poll=0.5)
    except TimeoutError:
        raise AssertionError(f"the halves did not merge again: {lab.views()}") from None
    merged_after = time.monotonic() - healed_at
    print(f"merged {merged_after:.1f} s after the heal of a {SPLIT:.0f} s split")
