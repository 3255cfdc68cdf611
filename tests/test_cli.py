"""``python -m ray_hyparview.agent`` as an operator runs it: real processes on 127.0.0.1, each
stopped by its pid at the end of the test."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ray_hyparview import __version__
from ray_hyparview.cli.main import _parser, main
from ray_hyparview.testing.conditions import wait_sync

ROOT = Path(__file__).resolve().parents[1]
AGENT = [sys.executable, "-m", "ray_hyparview.agent"]


@contextmanager
def running(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Start ``run`` with ``args``; yield the process and its first JSON line; always stop it."""
    proc = subprocess.Popen(
        [*AGENT, "run", "--json", *args, "--log-level", "WARNING"],
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


# ---------------------------------------------------------------- conventions of every command

COMMANDS = ("run", "status", "check", "keygen", "demo")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_version_on_every_command(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*([command] if command else []), "--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"ray_hyparview {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_json_is_a_flag_on_every_command(command: str) -> None:
    """``--json`` takes no value anywhere: it means "print JSON to stdout"."""
    args = _parser().parse_args([command, "--json", *(["--config", "x"] * (command == "check"))])
    assert args.json is True


def test_check_and_keygen_print_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--json", "--config", "examples/strategy.toml"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["summary"][0].startswith("node        n1")
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nid = "n1"\nendpoint = "tcp://127.0.0.1:7101"\n[hyparview]\narwl = 2\n')
    assert main(["check", "--json", "--config", str(bad)]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["ok"] is False
    assert "hyparview.prwl" in out.err
    assert main(["keygen", "--json", "--out", str(tmp_path), "--name", "n1"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert Path(written["secret_file"]).read_text().strip()
    assert len(written["public_key"]) == 40


def run_fails(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [*AGENT, "run", "--id", "n1", "--log-level", "WARNING", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    return out


def test_operator_mistakes_end_in_one_line_and_status_1(tmp_path: Path) -> None:
    """A busy port used to end ``run`` in a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent = run_fails("--bind", f"tcp://127.0.0.1:{port}")
        assert agent.stderr.startswith(f"run: cannot bind the agent at tcp://127.0.0.1:{port}")
        assert "in use" in agent.stderr
        metrics = run_fails("--bind", "tcp://127.0.0.1:0", "--metrics-port", str(port))
        assert metrics.stderr.startswith("run: cannot bind the metrics page at 127.0.0.1:")
        assert len(metrics.stderr.strip().splitlines()) == 1
    bad_host = run_fails(
        "--bind", "tcp://127.0.0.1:0", "--metrics-port", "0", "--metrics-host", "a b"
    )
    assert "agent.metrics_host" in bad_host.stderr
    bad_bind = run_fails("--bind", "tcp://127.0.0.1:port")
    assert bad_bind.stderr.startswith("run: invalid strategy: ")
    assert "tcp://127.0.0.1:port" in bad_bind.stderr
    assert len(bad_bind.stderr.strip().splitlines()) == 1
    config = tmp_path / "n1.toml"
    config.write_text(f'[security]\nsecret_key_file = "{tmp_path / "missing.key_secret"}"\n')
    key = run_fails("--config", str(config), "--bind", "tcp://127.0.0.1:0")
    assert "security.secret_key_file" in key.stderr
    assert len(key.stderr.strip().splitlines()) == 1


def test_run_serves_metrics_on_the_address_given() -> None:
    bind = ("--id", "n1", "--bind", "tcp://127.0.0.1:0", "--metrics-port", "0")
    with running(*bind, "--metrics-host", "127.0.0.2") as (_, info):
        url = f"http://127.0.0.2:{info['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as page:
            text = page.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    gauge = families["ray_hyparview_active_view_size"]
    assert gauge.type == "gauge"
    assert gauge.documentation.startswith("Peers in the active view")
    assert [(s.labels, s.value) for s in gauge.samples] == [({"node": "n1"}, 0.0)]


def test_run_without_json_says_it_is_up_in_words() -> None:
    proc = subprocess.Popen(
        [*AGENT, "run", "--id", "n1", "--bind", "tcp://127.0.0.1:0", "--log-level", "WARNING"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("n1: running at tcp://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_demo_prints_one_json_object() -> None:
    out = subprocess.run(
        [*AGENT, "demo", "--json", "--agents", "5", "--timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["agents"] == 5
    assert report["survivors"] == 4
    assert not set(report["killed"]) & set(report["views"])
