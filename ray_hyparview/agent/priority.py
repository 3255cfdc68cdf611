"""The CPU priority of a process that hosts an agent.

Membership is a promise about time: a neighbour that says nothing for ``keepalive_timeout`` is
failed. On cores that other work oversubscribes, an agent at the default priority is not
scheduled in time to keep it. Measured with the two cores of our test machine shared by
eight busy loops and a 6-node Ray cluster (``benchmarks/README.md``): an agent's event loop
thread was runnable, waiting on the run queue, for 98% of the time (1.86 s of 1.90 s, by
``/proc/thread-self/schedstat``) and on the CPU for 13 ms of it, about 50 ms per wake-up;
its keepalive ticks ran 1 to 4 s late, and its peers, which heard nothing, failed it. The
churn that followed (repairs, merge evictions, copies sent into routes that were gone) cost
the mesh most of its throughput in such runs.

So a process that exists only to run an agent asks the scheduler for a better nice value,
by default ``-10`` (``[agent] nice``): corosync, whose membership has the same promise to
keep, runs at a real-time priority by default for the same reason (its ``-p`` turns that
off). A nice value is a share, not a guarantee: an agent's work is bounded (every queue it
keeps has a byte bound), and a busy agent at ``-10`` still leaves the cores to others when
it waits on its sockets.

On Linux a nice value belongs to a thread, and a new thread starts with its creator's: the
value is set on every thread of the process at the time, so that libzmq's I/O threads and the
event loop's thread, made later from those, have it too. Raising the priority needs
``CAP_SYS_NICE`` or an ``RLIMIT_NICE`` that allows it; without them the agent runs at the
priority it has, with one warning that says how to grant it or turn it off (``nice = 0``).
The value is never lowered: a process already at a better priority keeps it.

Only the entry points that own their process call this (``ray_hyparview.cli`` ``run`` and the
Ray plugin's agent actor), never :class:`~ray_hyparview.agent.node.Agent` itself: an agent
embedded in another program must not change that program's scheduling.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Priority", "check_nice", "process_stats", "raise_priority", "thread_nices"]

log = logging.getLogger("ray_hyparview.agent.priority")

_TASKS = "/proc/self/task"


@dataclass(frozen=True)
class Priority:
    """What :func:`raise_priority` did: ``nice`` is the value asked for, ``threads`` how
    many threads now have it (or better), ``error`` why the others do not (None if all do)."""

    nice: int
    threads: int
    error: str | None = None


def _threads() -> list[int]:
    """Every thread of this process by id (Linux); ``[0]`` (the calling process) elsewhere."""
    try:
        return [int(name) for name in os.listdir(_TASKS)]
    except OSError:
        return [0]


def check_nice(nice: int) -> int:
    """``nice`` if it is a nice value (-20 to 19), else ``ValueError``: for callers that hand
    it to a process that asks for it later (the Ray plugin's agent actors), so that a bad
    value fails where it was given."""
    if not -20 <= nice <= 19:
        raise ValueError(f"a nice value is between -20 and 19, not {nice}")
    return nice


def raise_priority(nice: int) -> Priority:
    """Give every thread of this process the nice value ``nice`` if that is better (lower)
    than the one it has; ``nice=0`` changes nothing. A value out of range is a
    ``ValueError``; a refusal by the system is not raised but logged once as a warning and
    returned."""
    if check_nice(nice) >= 0:
        return Priority(nice, 0)
    done = 0
    error: str | None = None
    for tid in _threads():
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) > nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            done += 1
        except ProcessLookupError:
            continue  # the thread ended meanwhile
        except OSError as exc:
            error = exc.strerror or str(exc)
    if error is not None:
        log.warning(
            "could not raise the agent's priority to nice %d (%s): it runs at the priority it "
            "has, and on oversubscribed cores its peers may fail it for being late. Grant "
            "CAP_SYS_NICE or an RLIMIT_NICE of at least %d, or ask for nice 0 ([agent] nice = 0, "
            "RAY_HYPARVIEW_NICE=0 or --nice 0; the Ray plugin's start(nice=0)) to keep the "
            "default priority without this warning.",
            nice,
            error,
            20 - nice,
        )
    else:
        log.info("agent priority raised to nice %d on %d threads", nice, done)
    return Priority(nice, done, error)


def process_stats(priority: Priority | None) -> dict[str, Any]:
    """This process's part of an agent's stats: ``pid``, and ``priority`` as
    :func:`raise_priority` returned it (None where the process did not ask for one). The Ray
    plugin's agent actors and the standalone agent report it alike, so an operator can see
    whether the agent got the priority it asked for."""
    return {"pid": os.getpid(), "priority": None if priority is None else asdict(priority)}


def thread_nices(pid: int) -> list[int]:
    """The nice value of every thread of process ``pid`` (Linux: field 19 of each thread's
    ``/proc/<pid>/task/<tid>/stat``), to check what a process got."""
    values = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as handle:
                values.append(int(handle.read().rsplit(")", 1)[1].split()[16]))
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return values
