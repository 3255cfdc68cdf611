"""The priority a process that runs an agent asks for (``ray_hyparview.agent.priority``): every
thread gets it, threads made later inherit it, a refusal is a warning and not a failure, and
an agent embedded in another program leaves that program's priority alone. Each case runs in a
process of its own: the test runner's priority must not change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_hyparview.agent.priority import Priority, check_nice, raise_priority, thread_nices
from ray_hyparview.config.strategy import Strategy, StrategyError

from .test_cli import running, status

ROOT = Path(__file__).resolve().parents[1]

linux_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="setting a better nice value and reading every thread's needs root on Linux",
)

_PROBE = """
import json, logging, os, sys, threading
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from ray_hyparview.agent.priority import raise_priority
if sys.argv[2] == "nobody":
    os.setuid(65534)  # drops every capability: no CAP_SYS_NICE, and RLIMIT_NICE stays 0
gate = threading.Event()
before = threading.Thread(target=gate.wait)
before.start()
result = raise_priority(int(sys.argv[1]))
after = threading.Thread(target=gate.wait)  # made by a thread that has the new value
after.start()
nices = {tid: os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")}
gate.set()
out = {"threads": result.threads, "error": result.error, "nices": sorted(nices.values())}
print(json.dumps(out))
"""


def _probe(nice: int, *, as_nobody: bool = False, start_nice: int = 0) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(nice), "nobody" if as_nobody else "root"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        preexec_fn=(lambda: os.setpriority(os.PRIO_PROCESS, 0, start_nice)) if start_nice else None,
    )
    result: dict[str, object] = json.loads(out.stdout)
    result["log"] = out.stderr
    return result


def test_zero_changes_nothing_and_values_out_of_range_are_refused() -> None:
    assert raise_priority(0) == Priority(0, 0)
    assert raise_priority(5) == Priority(5, 0)  # never lowers a priority
    with pytest.raises(ValueError, match="between -20 and 19"):
        raise_priority(-21)
    with pytest.raises(ValueError, match="between -20 and 19"):
        check_nice(20)
    assert check_nice(-20) == -20


@linux_root
def test_every_thread_gets_the_value_and_threads_made_later_inherit_it() -> None:
    result = _probe(-3)
    assert result["error"] is None
    assert result["threads"] == 2  # the main thread and the one started before
    assert result["nices"] == [-3, -3, -3]  # and the one started after


@linux_root
def test_a_better_priority_is_kept() -> None:
    result = _probe(-3, start_nice=-7)
    assert result["error"] is None
    assert result["nices"] == [-7, -7, -7]


@linux_root
def test_a_refused_priority_is_one_warning_and_the_process_goes_on() -> None:
    result = _probe(-3, as_nobody=True)
    assert result["error"]
    assert result["nices"] == [0, 0, 0]
    log = str(result["log"])
    assert log.count("could not raise the agent's priority to nice -3") == 1
    assert "[agent] nice = 0" in log


def test_the_strategy_carries_nice_with_its_bounds() -> None:
    assert Strategy.from_mapping({"node": {"id": "a", "endpoint": "tcp://127.0.0.1:0"}}).nice == -10
    assert (
        Strategy.from_mapping(
            {"node": {"id": "a", "endpoint": "tcp://127.0.0.1:0"}, "agent": {"nice": 0}}
        ).nice
        == 0
    )
    with pytest.raises(StrategyError, match=r"agent\.nice"):
        Strategy.from_mapping(
            {"node": {"id": "a", "endpoint": "tcp://127.0.0.1:0"}, "agent": {"nice": -30}}
        )


@linux_root
@pytest.mark.parametrize(("flags", "expected"), [((), -10), (("--nice", "0"), 0)])
def test_the_standalone_agent_runs_at_the_priority_it_asks_for(
    flags: tuple[str, ...], expected: int
) -> None:
    args = ("--id", "n1", "--bind", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0")
    with running(*args, *flags) as (proc, info):
        nices = thread_nices(proc.pid)
        assert len(nices) >= 3  # the main thread and libzmq's
        assert set(nices) == {expected}
        # ``status`` says what the process asked for and got, as the Ray plugin's stats do.
        reported = status(info["control"])
        assert reported["pid"] == proc.pid
        asked = reported["priority"]
        assert asked["nice"] == expected
        assert asked["error"] is None
        if expected:  # the threads that existed when it asked (libzmq's came later, inheriting)
            assert asked["threads"] >= 1
        else:
            assert asked["threads"] == 0
