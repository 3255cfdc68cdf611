"""Run every example (and the Ray benchmarks in ``--quick`` mode) as a user would.

Each one starts its own embedded Ray cluster, so each runs in a subprocess of its own session
(``start_new_session``): every process it starts (GCS, raylets, workers, agents) carries the
subprocess's pid as its session id, which gives an exact way to find them all afterwards,
even once they have been re-parented. A run that outlives its time limit is killed by the pids
of its session. After each run the test waits for the session to empty (the examples shut their
cluster down in ``finally``) and fails, after killing them, if any process was left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
RUN_LIMIT = 240.0
"""Seconds a run may take; the examples aim at two minutes on 2 cores at full size."""
CLEANUP_LIMIT = 30.0


def session_pids(session: int) -> set[int]:
    """Live processes whose session id is ``session`` (zombies excluded)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == session:
            found.add(int(entry))
    return found


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(script: str, *args: str, cwd: Path, limit: float = RUN_LIMIT) -> str:
    """Run ``python script args`` to completion; return its output, or fail the test."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    session = proc.pid
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_pids(session_pids(session) | {proc.pid})
        output, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            kill_pids({proc.pid})
            proc.wait()
        deadline = time.monotonic() + CLEANUP_LIMIT
        left = session_pids(session)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = session_pids(session)
        kill_pids(left)
    tail = "\n".join(output.splitlines()[-40:])
    assert not timed_out, f"{script} ran over {limit:g} s and was killed:\n{tail}"
    assert not left, f"{script} left processes behind: {sorted(left)}\n{tail}"
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{tail}"
    return output


def test_a_hung_run_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    """The guard itself: a script that hangs, with a child of its own, is killed by the pids of
    its session when its time is up, and nothing of it survives."""
    script = tmp_path / "hang.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "open('pids', 'w').write(f'{os.getpid()} {child.pid}')\n"
        "print('hanging', flush=True)\n"
        "time.sleep(120)\n"
    )
    with pytest.raises(AssertionError, match="was killed"):
        run(str(script), cwd=tmp_path, limit=3.0)
    session, child = (int(p) for p in (tmp_path / "pids").read_text().split())
    assert session_pids(session) == set()
    assert not alive(child)


def alive(pid: int) -> bool:
    """Is ``pid`` a running process (not gone, not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def number(pattern: str, output: str) -> tuple[int, ...]:
    match = re.search(pattern, output)
    assert match is not None, f"no line matches {pattern!r} in:\n{output}"
    return tuple(int(g) for g in match.groups())


@pytest.mark.slow
@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
def test_quickstart(tmp_path: Path) -> None:
    picture = tmp_path / "overlay.png"
    out = run(
        "examples/quickstart.py",
        "--nodes",
        "3",
        "--actors",
        "4",
        "--picture",
        str(picture),
        cwd=tmp_path,
    )
    assert number(r"CURVE\): (\d+) keys for (\d+) nodes", out) == (3, 3)
    delivered, total = number(r"all-to-all: (\d+) of (\d+) messages delivered", out)
    assert (delivered, total) == (12, 12)
    assert number(r"publish: (\d+) of (\d+) subscribers got it", out) == (4, 4)
    assert "none lost silently" in out
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
def test_pubsub_fanout(tmp_path: Path) -> None:
    out = run(
        "examples/pubsub_fanout.py",
        "--nodes",
        "3",
        "--subscribers",
        "6",
        "--items",
        "5",
        cwd=tmp_path,
    )
    assert number(r"(\d+) of (\d+) subscribers got every item exactly once", out) == (6, 6)
    assert number(r"\(duplicates (\d+), missing (\d+)\)", out) == (0, 0)
    assert number(r"fan-out: (\d+) items x (\d+) subscribers", out) == (5, 6)
    assert "every publication reached every subscriber exactly once" in out


@pytest.mark.slow
@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
def test_gossip_average(tmp_path: Path) -> None:
    out = run(
        "examples/gossip_average.py",
        "--nodes",
        "3",
        "--actors",
        "8",
        "--rounds",
        "12",
        "--target",
        "20",
        cwd=tmp_path,
    )
    rounds = re.findall(r"^\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)", out, flags=re.MULTILINE)
    assert [int(r) for r, _, _ in rounds] == list(range(13))
    spreads = [float(s) for _, s, _ in rounds]
    assert spreads[-1] * 20 <= spreads[0]
    match = re.search(r"mean ([0-9.]+) vs true ([0-9.]+)", out)
    assert match is not None
    assert abs(float(match[1]) - float(match[2])) < 1e-6
    assert "converged to the true mean" in out


@pytest.mark.slow
@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
@pytest.mark.parametrize("timings", ["local", "default"])
def test_ray_connections_quick(tmp_path: Path, timings: str) -> None:
    out = run(
        "benchmarks/ray_connections.py",
        "--quick",
        "--timings",
        timings,
        "--json",
        "out.json",
        cwd=tmp_path,
    )
    assert "summary: mesh" in out
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["timings"] == timings
    summary = result["summary"]
    assert summary["mesh_delivered"] == summary["expected"] == summary["plain_answered"]
    assert summary["mesh_max_peer_nodes_on_active_links"] <= summary["active_view_size"]
    assert summary["mesh_new_non_overlay_sockets"] == 0
    assert summary["plain_total_sockets"] > 0
    assert len(result["per_node"]) == result["nodes"]


@pytest.mark.slow
@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
def test_ray_latency_quick(tmp_path: Path) -> None:
    out = run("benchmarks/ray_latency.py", "--quick", "--json", "out.json", cwd=tmp_path)
    assert "summary near (1 hop)" in out
    assert re.search(r"links, unchanged for \d+\.\ds", out)
    result = json.loads((tmp_path / "out.json").read_text())
    assert isinstance(result["hops_changed"], dict)  # empty unless the WARNING line says why
    assert bool(result["hops_changed"]) == ("WARNING: the overlay changed" in out)
    for table in result["results"].values():
        for method in ("send", "request", "ray"):
            assert table[method]["samples"] == result["samples"]
            assert 0 < table[method]["median_ms"] <= table[method]["p99_ms"]


@pytest.mark.slow
@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
def test_ray_supervision_quick(tmp_path: Path) -> None:
    out = run("benchmarks/ray_supervision.py", "--quick", "--json", "out.json", cwd=tmp_path)
    assert "ray_supervision: 2 kills" in out
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["lost_after_ack"] == 0
    assert len(result["serving"]["samples"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
def test_plumtree_benchmark_quick(tmp_path: Path) -> None:
    out = run("benchmarks/plumtree_10k.py", "--quick", "--json", "out.json", cwd=tmp_path)
    assert json.loads((tmp_path / "out.json").read_text())
    assert "0 duplicate deliveries" in out
    assert "once the tree settles" in out


@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
def test_mesh_path_benchmark_runs(tmp_path: Path) -> None:
    out = run(
        "benchmarks/mesh_path.py",
        "--ops",
        "40",
        "--blocks",
        "2",
        "--json",
        "out.json",
        cwd=tmp_path,
    )
    figures = json.loads((tmp_path / "out.json").read_text())
    for method in ("send", "request"):
        assert figures[method]["mesh"]["ops"] == figures[method]["raw"]["ops"] == 40
        assert figures[method]["median_ratio"] > 0
    assert "mesh / raw" in out


@pytest.mark.timeout(RUN_LIMIT + CLEANUP_LIMIT + 30)
def test_local_wire_benchmark_runs(tmp_path: Path) -> None:
    args = ["--ops", "40", "--blocks", "2", "--pairs", "2", "--json", "out.json"]
    out = run("benchmarks/local_wire.py", *args, cwd=tmp_path)
    figures = json.loads((tmp_path / "out.json").read_text())
    assert len(figures["pairs"]) == 2
    for pair in figures["pairs"]:
        assert pair["zmq"]["ops"] == pair["stream"]["ops"] == 40
    assert figures["median_ratio"] > 0
    assert "stream / ZeroMQ" in out
