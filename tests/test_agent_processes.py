"""Agents in several OS processes over real ZeroMQ sockets on 127.0.0.1.

Each process is a ``ray_hyparview.testing.agent_host`` program running several agents; the test
talks to it over stdin/stdout (see that module). Crashes are real (``kill -9``), hangs are real
(SIGSTOP freezes the event loop and libzmq's I/O thread alike), and every process a test starts is
killed by pid and reaped in a ``finally`` block, pass or fail.

The partition test cuts traffic with the host's test-only ``block`` hook, which drops every
frame between the two halves at the transport boundary of each agent;
``ray_hyparview/testing/agent_host.py`` explains why this was chosen over network namespaces.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ray_hyparview.protocol.overlay import overlay_problems
from ray_hyparview.testing.agent_host import Host, collect_views, start_hosts
from ray_hyparview.testing.conditions import wait_sync

# Fast enough for a test, slow enough that a loaded 2-core machine raises no false alarms:
# keepalives every 0.3 s, silence of 2 s is a failure; lost peers are probed at most every 3 s
# so that a healed partition merges within seconds. An island formed at start-up (no lost
# peers to probe: see the README on start-up islands) is merged by the partition merge rule, so
# its interval is short here too, as in the local timings.
CONFIG: dict[str, Any] = {
    "active_view_size": 4,
    "passive_view_size": 16,
    "shuffle_interval": 1.0,
    "keepalive_interval": 0.3,
    "keepalive_timeout": 2.0,
    "neighbor_timeout": 1.0,
    "rejoin_backoff_initial": 0.25,
    "rejoin_backoff_max": 2.0,
    "probe_interval_min": 1.0,
    "probe_interval_max": 3.0,
    "merge_interval": 2.0,
}
# Detection bound for a hung process: its kernel still acknowledges, so only the keepalive
# path finds it (no ZMTP heartbeats, see ray_hyparview.transport.zmq), plus slack for a busy
# shared machine.
HANG_BOUND = CONFIG["keepalive_timeout"] + 1.5


@contextmanager
def hosts_running() -> Iterator[list[Host]]:
    """A list the test appends its hosts to; each is killed by pid and reaped at the end."""
    hosts: list[Host] = []
    try:
        yield hosts
    finally:
        for host in hosts:
            host.kill()


def start_overlay(hosts: list[Host], processes: int, per_process: int, tag: str) -> None:
    start_hosts(hosts, processes, per_process, tag, config=CONFIG)


def wait_overlay(hosts: list[Host], *, limit: float) -> float:
    """Wait until the live hosts form a connected, symmetric overlay; return the seconds."""
    start = time.monotonic()
    last: list[str] = []

    def good() -> bool:
        nonlocal last
        last = overlay_problems(collect_views(hosts))
        return not last

    try:
        wait_sync(good, limit=limit, poll=0.2)
    except TimeoutError:
        raise AssertionError(f"overlay not healthy after {limit}s: {last[:5]}") from None
    return time.monotonic() - start


def test_32_agents_in_4_processes_converge_and_repair_after_kill_9() -> None:
    with hosts_running() as hosts:
        start_overlay(hosts, processes=4, per_process=8, tag="k")
        took = wait_overlay(hosts, limit=40)
        views = collect_views(hosts)
        assert len(views) == 32
        assert all(1 <= len(v) <= CONFIG["active_view_size"] for v in views.values())
        print(f"32 agents converged {took:.2f}s after the last start")

        victim = hosts[2]
        dead = set(victim.ids)
        victim.kill()  # kill -9: no goodbye, only socket monitors and keepalives can tell
        killed_at = time.monotonic()
        survivors = [h for h in hosts if h is not victim]
        took = wait_overlay(survivors, limit=40)
        views = collect_views(survivors)
        assert len(views) == 24
        assert not dead & {p for peers in views.values() for p in peers}
        print(f"24 survivors repaired {time.monotonic() - killed_at:.2f}s after kill -9")


def test_sigstopped_process_is_detected_then_rejoins_after_sigcont() -> None:
    with hosts_running() as hosts:
        start_overlay(hosts, processes=4, per_process=4, tag="s")
        wait_overlay(hosts, limit=40)
        frozen = hosts[1]
        others = [h for h in hosts if h is not frozen]
        for host in hosts:
            host.command("events")  # forget the join history
        views = collect_views(others)
        watchers = {
            (node, peer) for node, peers in views.items() for peer in peers if peer in frozen.ids
        }
        assert watchers, "nobody links to the frozen process; the test would prove nothing"

        stopped_at = time.time()
        frozen.signal(signal.SIGSTOP)
        try:
            # The first PeerDown each watcher reports for its frozen peer. The overlay keeps
            # moving (shuffles, evictions), so a link may also end as EVICTED or DISCONNECTED
            # while the peer froze; only FAILED is a detection, and it must be timely.
            first_down: dict[tuple[str, str], tuple[float, str]] = {}

            def all_detected() -> bool:
                for host in others:
                    for node, log in host.command("events").items():
                        for when, kind, peer, reason in log:
                            if kind == "down" and peer in frozen.ids:
                                first_down.setdefault((node, peer), (when - stopped_at, reason))
                return watchers <= first_down.keys()

            wait_sync(all_detected, limit=HANG_BOUND + 5, poll=0.1)
            delays = sorted(first_down[w][0] for w in watchers if first_down[w][1] == "failed")
            assert delays, first_down
            print(
                f"SIGSTOP detected by {len(delays)} neighbours in {delays[0]:.2f}-{delays[-1]:.2f}s"
            )
            assert delays[-1] <= HANG_BOUND, (delays, HANG_BOUND)
            # The others repair among themselves while the frozen agents cannot answer.
            wait_sync(
                lambda: (
                    not overlay_problems(
                        {
                            n: [p for p in v if p not in frozen.ids]
                            for n, v in collect_views(others).items()
                        }
                    )
                    and not any(p in frozen.ids for v in collect_views(others).values() for p in v)
                ),
                limit=30,
                poll=0.2,
            )
        finally:
            frozen.signal(signal.SIGCONT)
        took = wait_overlay(hosts, limit=40)
        views = collect_views(hosts)
        assert all(views[node] for node in frozen.ids)
        print(f"frozen agents rejoined {took:.2f}s after SIGCONT")


def test_partition_between_two_processes_heals_by_itself() -> None:
    with hosts_running() as hosts:
        start_overlay(hosts, processes=2, per_process=8, tag="p")
        wait_overlay(hosts, limit=40)
        left, right = hosts
        left.command("block " + ",".join(right.ids))
        right.command("block " + ",".join(left.ids))
        cut_at = time.monotonic()

        def split_and_whole() -> bool:
            halves = [left.views(), right.views()]
            for half, other in ((halves[0], right.ids), (halves[1], left.ids)):
                active = {n: v["active"] for n, v in half.items()}
                if any(p in other for v in active.values() for p in v):
                    return False
                if overlay_problems(active):
                    return False
            return True

        wait_sync(split_and_whole, limit=30, poll=0.2)
        print(f"halves split and repaired inside {time.monotonic() - cut_at:.2f}s")
        stats = left.command("stats")
        assert (
            stats["_host"].get("partition.dropped_in", 0)
            + stats["_host"].get("partition.dropped_out", 0)
            > 0
        )

        left.command("unblock")
        right.command("unblock")
        healed_at = time.monotonic()
        wait_overlay(hosts, limit=60)
        views = collect_views(hosts)
        crossing = [(n, p) for n in left.ids for p in views[n] if p in right.ids]
        assert crossing, "connected overlay must have a link between the halves"
        print(f"halves merged {time.monotonic() - healed_at:.2f}s after the heal")


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_sigterm_is_a_graceful_leave(signum: int) -> None:
    with hosts_running() as hosts:
        start_overlay(hosts, processes=2, per_process=3, tag="t")
        wait_overlay(hosts, limit=30)
        for host in hosts:
            host.command("events")
        leaving = hosts[1]
        leaving.signal(signum)
        assert leaving.proc.wait(10) == 0
        leaving.kill()  # reaps and closes pipes; the process is already gone

        def saw_left() -> bool:
            log = hosts[0].command("events")
            downs = [e for entries in log.values() for e in entries if e[1] == "down"]
            saw.extend(downs)
            return bool(saw)

        saw: list[list[Any]] = []
        wait_sync(saw_left, limit=10, poll=0.1)
        # Graceful: the neighbours hear it go, none waits for a heartbeat timeout. About one run
        # in four, one neighbour also gets a plain DISCONNECT from the leaving node within a
        # millisecond before its leave (a one-sided link torn down; cause not yet found).
        reasons = {e[3] for e in saw}
        assert "left" in reasons, saw
        assert reasons <= {"left", "disconnected"}, saw


@pytest.mark.slow
def test_32_agents_partitioned_two_processes_against_two_merge_after_heal() -> None:
    with hosts_running() as hosts:
        start_overlay(hosts, processes=4, per_process=8, tag="w")
        wait_overlay(hosts, limit=60)
        halves = (hosts[:2], hosts[2:])
        ids = [{i for h in half for i in h.ids} for half in halves]
        for side, other in ((0, 1), (1, 0)):
            for host in halves[side]:
                host.command("block " + ",".join(sorted(ids[other])))

        def split() -> bool:
            for side, other in ((0, 1), (1, 0)):
                views = collect_views(halves[side])
                if any(p in ids[other] for v in views.values() for p in v):
                    return False
                if overlay_problems(views):
                    return False
            return True

        wait_sync(split, limit=60, poll=0.2)
        for host in hosts:
            host.command("unblock")
        healed_at = time.monotonic()
        wait_overlay(hosts, limit=90)
        views = collect_views(hosts)
        assert any(p in ids[1] for n in ids[0] for p in views[n])
        print(f"32 agents: halves merged {time.monotonic() - healed_at:.2f}s after the heal")
