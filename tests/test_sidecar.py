"""The sidecar (``run --ray-address``) against a real ``ray start --head``, as the README's
KubeRay example runs it: same configuration as ``run`` (file, environment, flags, keys), the
same checks before Ray is touched, and from Ray only the node id and the peers.

One head per module, started with its own temp dir and ports and stopped by its process group
(never ``ray stop``: other clusters may live on this machine)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_hyparview.agent.control import query_status
from ray_hyparview.cli.main import main
from ray_hyparview.cli.sidecar import PLACEHOLDER_ID, sidecar_mapping
from ray_hyparview.config.keys import write_keypair
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.peer import Peer

ROOT = Path(__file__).resolve().parent.parent
PLAIN = {"RAY_AUTH_MODE": "disabled"}
"""Ray's token authentication turns itself on wherever a token file exists (``~/.ray``); the
head, the sidecars and this driver agree to run without it."""
RAY = Path(sys.executable).parent / "ray"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(check: Any, limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {limit}s waiting for {what}")


def _start_head(temp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One try at ``ray start --head --block`` on fresh ports; returns the process (in a new
    process group) and the GCS address, or raises ``RuntimeError`` with the end of its log
    when it exits before saying the runtime started (a port taken meanwhile)."""
    gcs, manager, objects, client, agent_grpc, agent_http, metrics, runtime_env = free_ports(8)
    # Workers' ports: above Ray's defaults (10002-19999, other clusters' workers) and below
    # the kernel's ephemeral range (32768-), where free_ports' picks come from.
    low = 20000 + (os.getpid() * 7 + gcs) % 12000
    command = [
        str(RAY), "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1",
        "--port", str(gcs),
        "--temp-dir", str(temp),
        "--num-cpus", "1",
        "--include-dashboard", "false",
        "--node-manager-port", str(manager),
        "--object-manager-port", str(objects),
        "--ray-client-server-port", str(client),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--dashboard-agent-listen-port", str(agent_http),
        "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(runtime_env),
        "--min-worker-port", str(low),
        "--max-worker-port", str(low + 200),
        "--disable-usage-stats",
    ]  # fmt: skip
    temp.mkdir(parents=True, exist_ok=True)
    log_path = temp / "ray-start.log"
    with log_path.open("wb") as log:
        head = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=temp,
            env={**os.environ, **PLAIN},
        )

    def started() -> bool:
        return head.poll() is not None or "Ray runtime started" in log_path.read_text()

    try:
        wait_for(started, 90, "the Ray head")
    except AssertionError:
        _stop_group(head)
        raise
    if head.poll() is not None:
        raise RuntimeError(log_path.read_text()[-2000:])
    return head, f"127.0.0.1:{gcs}"


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """``ray start --head --block`` on 127.0.0.1 with a private temp dir and ports; yields the
    GCS address, this process connected to it as a driver. Stopped by signalling its own
    process group."""
    pytest.importorskip("ray")
    if not RAY.exists():
        pytest.skip("no ray executable next to this Python")
    import ray

    temp = Path(tempfile.mkdtemp(prefix="rhv-", dir="/tmp"))
    saved = {name: os.environ.get(name) for name in PLAIN}
    os.environ.update(PLAIN)
    head: subprocess.Popen[bytes] | None = None
    try:
        failures = []
        for attempt in range(3):
            try:
                head, address = _start_head(temp / str(attempt))
                break
            except RuntimeError as exc:
                failures.append(str(exc))
        else:
            pytest.fail(f"ray start exited three times; last: {failures[-1]}")
        ray.init(address=address, namespace="ray_hyparview", logging_level=logging.WARNING)
        yield address
    finally:
        ray.shutdown()
        if head is not None:
            _stop_group(head)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp, ignore_errors=True)


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    """Stop ``ray start --block`` and what it started (its process group): SIGTERM, a short
    grace, then SIGKILL (its graceful drain would wait 30 s for nothing here)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def sidecar(address: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "ray_hyparview.agent", "run", "--json",
        "--ray-address", address, *args,
    ]  # fmt: skip
    environ = {**os.environ, **PLAIN, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=ROOT,
    )


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# ------------------------------------------------------------------- without Ray


def test_the_endpoint_takes_the_nodes_ip_and_the_binds_port() -> None:
    base = {"node": {"bind": "tcp://0.0.0.0:7946"}, "agent": {"control": "tcp://127.0.0.1:1"}}
    out = sidecar_mapping(base, "n1", "10.0.0.5")
    assert out["node"] == {
        "id": "n1",
        "bind": "tcp://0.0.0.0:7946",
        "endpoint": "tcp://10.0.0.5:7946",
    }
    assert base["node"] == {"bind": "tcp://0.0.0.0:7946"}  # not changed in place
    assert sidecar_mapping({}, "n1", "::1")["node"]["endpoint"] == "tcp://[::1]:0"
    # A bind others can dial doubles as the endpoint (as for `run`); a given endpoint stands.
    assert (
        "endpoint" not in sidecar_mapping({"node": {"bind": "tcp://10.0.0.5:7"}}, "n", "h")["node"]
    )
    given = {"node": {"endpoint": "tcp://pod.example:7946", "id": "file-id"}}
    assert sidecar_mapping(given, "n1", "h")["node"] == {
        "id": "n1",
        "endpoint": "tcp://pod.example:7946",
    }


@pytest.mark.parametrize(
    ("args", "env", "config", "expected"),
    [
        (["--control", "tcp://0.0.0.0:7946"], {}, None, "agent.control"),
        ([], {}, "[hyparview]\nactive_view_size = 0\n", "hyparview.active_view_size"),
        ([], {"RAY_HYPARVIEW_METRICS_PORT": "eighty"}, None, "RAY_HYPARVIEW_METRICS_PORT"),
        (["--config", "/nonexistent/strategy.toml"], {}, None, "readable TOML"),
        ([], {}, '[security]\nsecret_key_file = "missing.key_secret"\n', "secret_key_file"),
        (["--id", "n1"], {}, None, "--id conflicts with --ray-address"),
    ],
)
def test_a_bad_configuration_fails_in_one_line_before_ray_is_touched(
    *,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    config: str | None,
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if config is not None:
        (tmp_path / "s.toml").write_text(config)
        args = [*args, "--config", str(tmp_path / "s.toml")]
    started = []
    monkeypatch.setattr("ray.init", lambda *a, **k: started.append(a))
    # Nothing listens at this address: had the sidecar tried Ray it would say so, not this.
    assert main(["run", "--ray-address", "127.0.0.1:1", *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("run: "), err
    assert expected in err, err
    assert started == []


def test_the_strategy_the_sidecar_runs_is_runs_with_rays_node_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything but the node id and address comes from file, environment and flags; Ray is
    stood in for by the node it would report."""
    from ray_hyparview.cli import sidecar as cli_sidecar
    from ray_hyparview.cluster import sidecar as ray_side
    from ray_hyparview.cluster.keys import KEY_SOURCE

    files = write_keypair(tmp_path, "node")
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nid = "from-the-file"\n'
        "[hyparview]\nactive_view_size = 3\npassive_view_size = 9\n"
        "[transport]\nheartbeat_interval = 0.5\nheartbeat_timeout = 2.0\n"
        '[agent]\nmetrics_port = 0\nmetrics_host = "0.0.0.0"\n'
        '[security]\nsecret_key_file = "node.key_secret"\n'
    )
    monkeypatch.setenv("RAY_HYPARVIEW_SHUFFLE_INTERVAL", "7.5")
    ran: list[Strategy] = []

    @contextlib.contextmanager
    def fake_node(address: str) -> Iterator[tuple[str, str]]:
        assert address == "ray-head:6379"
        yield "a" * 56, "10.1.2.3"

    async def fake_run(strategy: Strategy, **_: Any) -> int:
        ran.append(strategy)
        return 0

    monkeypatch.setattr(ray_side, "ray_node", fake_node)
    monkeypatch.setattr(cli_sidecar, "run_agent", fake_run)
    monkeypatch.setattr(cli_sidecar, "setup_logging", lambda strategy: None)  # the process's
    asked: list[int] = []  # and so is its priority
    monkeypatch.setattr(cli_sidecar, "raise_priority", asked.append)
    argv = ["run", "--ray-address", "ray-head:6379", "--config", str(config)]
    assert main([*argv, "--bind", "tcp://0.0.0.0:7947", "--control", "tcp://127.0.0.1:7946"]) == 0
    (strategy,) = ran
    assert strategy.local_peer == Peer("a" * 56, "tcp://10.1.2.3:7947")
    assert strategy.local_peer.endpoint == "tcp://10.1.2.3:7947"
    assert strategy.bind == "tcp://0.0.0.0:7947"
    assert strategy.control == "tcp://127.0.0.1:7946"
    assert (strategy.metrics_port, strategy.metrics_host) == (0, "0.0.0.0")
    hv = strategy.hyparview_config
    assert (hv.active_view_size, hv.passive_view_size, hv.shuffle_interval) == (3, 9, 7.5)
    assert (strategy.heartbeat_interval, strategy.heartbeat_timeout) == (0.5, 2.0)
    assert strategy.security is not None
    assert strategy.security.public_key == files.public_key
    assert strategy.security.key_source == KEY_SOURCE  # peers' keys come from the GCS
    # Without [security] a fresh pair, published the same way; --insecure: plain text.
    config.write_text("")
    assert main(argv) == 0
    fresh = ran[-1].security
    assert fresh is not None
    assert fresh.key_source == KEY_SOURCE
    assert fresh.public_key != files.public_key
    assert main([*argv, "--insecure"]) == 0
    assert ran[-1].security is None
    assert asked == [-10, -10, -10]  # the default [agent] nice, asked before each agent ran


def test_a_placeholder_id_checks_like_a_ray_node_id() -> None:
    assert len(PLACEHOLDER_ID) == 56


# ---------------------------------------------------------------------- with Ray


@pytest.mark.slow
def test_the_sidecar_runs_on_runs_configuration(ray_head: str, tmp_path: Path) -> None:
    from ray_hyparview.cluster.gcs import published_agents

    files = write_keypair(tmp_path, "node")
    control, file_metrics, env_metrics, bind = free_ports(4)
    config = tmp_path / "node.toml"
    config.write_text(
        f'[agent]\ncontrol = "tcp://127.0.0.1:{control}"\nmetrics_port = {file_metrics}\n'
        '[security]\nsecret_key_file = "node.key_secret"\n'
        "[hyparview]\nactive_view_size = 3\npassive_view_size = 9\n"
    )
    proc = sidecar(
        ray_head,
        "--config", str(config),
        "--bind", f"tcp://0.0.0.0:{bind}",
        "--log-level", "WARNING",
        env={"RAY_HYPARVIEW_METRICS_PORT": str(env_metrics)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        info = json.loads(line)
        # The node id is Ray's; the bind's port is kept, announced at the node's address.
        import ray

        alive = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]
        nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in alive}
        assert info["id"] in nodes
        assert info["endpoint"] == f"tcp://{nodes[info['id']]}:{bind}"
        # The file's control endpoint; the environment's metrics port over the file's.
        assert info["control"] == f"tcp://127.0.0.1:{control}"
        assert info["metrics_port"] == env_metrics
        # Published in the GCS with the [security] key pair.
        entry = published_agents()[info["id"]]
        assert entry["endpoint"] == info["endpoint"]
        assert entry["public_key"] == files.public_key
        # `status --json` on its control endpoint.
        status = asyncio.run(query_status(info["control"]))
        assert status["id"] == info["id"]
        out = subprocess.run(
            [sys.executable, "-m", "ray_hyparview.agent", "status", "--json",
             "--control", info["control"]],
            check=False, capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["endpoint"] == info["endpoint"]
        # /metrics, on loopback by default.
        with urllib.request.urlopen(f"http://127.0.0.1:{env_metrics}/metrics", timeout=10) as r:
            page = r.read().decode()
        assert f'ray_hyparview_active_view_size{{node="{info["id"]}"}}' in page
        assert stop(proc) == 0
        assert info["id"] not in published_agents()
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_busy_bind_port_is_one_line(ray_head: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = sidecar(ray_head, "--bind", f"tcp://127.0.0.1:{port}", "--insecure")
        try:
            code = proc.wait(timeout=120)
            assert proc.stderr is not None
            err = [ln for ln in proc.stderr.read().splitlines() if ln.startswith("run: ")]
        finally:
            stop(proc)
    assert code == 1
    assert len(err) == 1, err
    assert "cannot bind the agent" in err[0], err
