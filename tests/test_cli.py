"""``python -m ray_hyparview.agent`` as an operator runs it: real processes on 127.0.0.1, each
stopped by its pid at the end of the test."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conditions import wait_sync

ROOT = Path(__file__).resolve().parents[1]
AGENT = [sys.executable, "-m", "ray_hyparview.agent"]


@contextmanager
def running(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Start ``run`` with ``args``; yield the process and its first JSON line; always stop it."""
    proc = subprocess.Popen(
        [*AGENT, "run", *args, "--log-level", "WARNING"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def status(control: str) -> dict[str, Any]:
    out = subprocess.run(
        [*AGENT, "status", "--control", control, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_run_status_and_graceful_sigterm() -> None:
    first = ("--id", "n1", "--bind", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0")
    with running(*first) as (p1, one):
        contact = f"n1={one['endpoint']}"
        second = ("--id", "n2", "--bind", "tcp://127.0.0.1:0", "--contact", contact)
        with running(*second, "--control", "tcp://127.0.0.1:0") as (p2, two):
            wait_sync(lambda: status(one["control"])["active"] == ["n2"], limit=20)
            assert status(two["control"])["active"] == ["n1"]
            table = subprocess.run(
                [*AGENT, "status", "--control", one["control"]],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            assert "node      n1" in table
            assert "core.peer_up" in table
            p2.send_signal(signal.SIGTERM)
            assert p2.wait(timeout=20) == 0
            # n2 left gracefully: n1 saw it leave at once, and says so.
            wait_sync(lambda: status(one["control"])["active"] == [], limit=10)
            assert status(one["control"])["counters"]["core.peer_down.left"] == 1
        p1.send_signal(signal.SIGINT)
        assert p1.wait(timeout=20) == 0


def test_status_without_an_agent_fails_clearly() -> None:
    out = subprocess.run(
        [*AGENT, "status", "--control", "tcp://127.0.0.1:9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1
    assert "no agent answers" in out.stderr


def test_check_accepts_the_example_and_names_the_bad_key(tmp_path: Path) -> None:
    ok = subprocess.run(
        [*AGENT, "check", "--config", "examples/strategy.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nid = "n1"\nendpoint = "tcp://127.0.0.1:7101"\n[hyparview]\narwl = 2\n')
    out = subprocess.run(
        [*AGENT, "check", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1
    assert "hyparview.prwl" in out.stderr


def test_keygen_writes_a_key_pair(tmp_path: Path) -> None:
    out = subprocess.run(
        [*AGENT, "keygen", "--out", str(tmp_path), "--name", "n1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "n1.key").exists()
    assert (tmp_path / "n1.key_secret").stat().st_mode & 0o777 == 0o600


def test_demo_converges_kills_and_repairs() -> None:
    out = subprocess.run(
        [*AGENT, "demo", "--agents", "8", "--timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "converged in" in out.stdout
    assert "repaired in" in out.stdout
    assert "no dead peer in any active view" in out.stdout
