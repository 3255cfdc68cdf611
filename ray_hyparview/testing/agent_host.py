"""Run K agents in one process and let another process observe and steer them (test helper).

Theory of operation
===================
Multi-process tests and benchmarks need agents that live in *other* processes, so that kill -9,
SIGSTOP and SIGCONT hit real sockets, libzmq I/O threads and event loops, as on a cluster. This
module is both halves of that arrangement:

* ``python -m ray_hyparview.testing.agent_host --count K --prefix p0 [--contact ID=ENDPOINT
  ...]`` starts K agents on 127.0.0.1 (ephemeral ports) in one asyncio loop. Agent 0 joins the
  given contacts; agents 1..K-1 join agent 0 and the given contacts, so one process is enough to
  start an overlay and later processes join it through any listed agent. When every agent is bound
  it prints one JSON line per agent (``id``, ``endpoint``, ``pid``), then answers line commands
  on stdin, one JSON line per command:

  ``views``    ``{id: {"active": [...], "passive": [...]}}``
  ``stats``    ``{id: agent.stats()}``
  ``events``   ``{id: [[wall_time, "up"|"down", peer_id, reason], ...]}`` since the last call
  ``block A,B`` drop every frame to and from these node ids (test-only partition hook)
  ``unblock``  lift every block
  ``fds``      ``{"fds": N, "rss_kb": N, "threads": N}`` for this process, from ``/proc``
  ``quit``     graceful leave of every agent, then exit 0 (SIGTERM and EOF on stdin do the same)

* :class:`Host` is the client the tests use: it starts the program, reads the agent lines,
  sends commands with a deadline (a stopped process cannot answer; a reader thread keeps the
  wait bounded), and stops the process by its pid, always (kill + wait), however the test ends.

The partition hook (``block``) filters frames at the transport boundary of every agent in the
process, in both directions: what the protocol core sees is exactly a network partition (no
frame passes, no link event), so detection must come from the application keepalives and the
repair from the core's probes and re-joins. Network namespaces with nftables would also cut
libzmq's ZMTP heartbeats, but they need root, per-process veth plumbing and a package install
that other test runs on a shared machine cannot rely on; the transport-level path (heartbeats
dropping a silent connection) is exercised instead by SIGSTOP, which freezes the libzmq I/O
thread along with the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zmq.asyncio

from ray_hyparview import agent as agent_module
from ray_hyparview.agent.node import Agent
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.messages import PeerDown, PeerUp
from ray_hyparview.protocol.overlay import overlay_problems
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.transport.base import LinkFailed, Transport

__all__ = [
    "AgentInfo",
    "Host",
    "collect_views",
    "main",
    "percentile",
    "start_hosts",
    "wait_healthy",
]

REPO = Path(__file__).resolve().parents[1]
_EVENTS_MAX = 100_000


# ------------------------------------------------------------------------------ the program


class BlockingTransport:
    """A transport wrapper that drops frames to and from blocked node ids (partition hook)."""

    def __init__(self, inner: Transport, blocked: set[NodeId], counters: Counter[str]) -> None:
        self._inner = inner
        self._blocked = blocked
        self._drops = counters

    @property
    def node_id(self) -> NodeId:
        return self._inner.node_id

    @property
    def endpoint(self) -> str:
        return self._inner.endpoint

    @property
    def counters(self) -> Counter[str]:
        return self._inner.counters

    @property
    def authenticated(self) -> bool:
        return self._inner.authenticated

    async def start(self) -> str:
        return await self._inner.start()

    def send(self, peer: Peer, data: bytes) -> bool:
        if peer.id in self._blocked:
            self._drops["partition.dropped_out"] += 1
            return True  # a partition loses frames silently, it does not refuse them
        return self._inner.send(peer, data)

    def open_link(self, peer: Peer) -> None:
        self._inner.open_link(peer)

    def close_link(self, peer_id: NodeId) -> None:
        self._inner.close_link(peer_id)

    def release_link(self, peer_id: NodeId) -> None:
        self._inner.release_link(peer_id)

    def linked(self) -> frozenset[NodeId]:
        return self._inner.linked()

    async def recv_batch(self) -> list[tuple[NodeId, bytes]]:
        while True:
            batch = await self._inner.recv_batch()
            if not self._blocked:
                return batch
            kept = [(sender, data) for sender, data in batch if sender not in self._blocked]
            self._drops["partition.dropped_in"] += len(batch) - len(kept)
            if kept:
                return kept

    async def link_events(self) -> list[LinkFailed]:
        return await self._inner.link_events()

    async def aclose(self, *, linger: float = 0.0) -> None:
        if linger:
            await self._inner.aclose(linger=linger)
        else:
            await self._inner.aclose()


def _proc_figures() -> dict[str, int]:
    fds = len(os.listdir("/proc/self/fd"))
    rss_kb = threads = 0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return {"fds": fds, "rss_kb": rss_kb, "threads": threads}


def _parse_contacts(texts: Iterable[str]) -> list[Peer]:
    """``ID=ENDPOINT`` items, or one JSON list of ``[id, endpoint]`` / ``{"id", "endpoint"}``."""
    peers: list[Peer] = []
    for item_text in texts:
        text = item_text.strip()
        if text.startswith("["):
            for item in json.loads(text):
                if isinstance(item, dict):
                    peers.append(Peer(item["id"], item["endpoint"]))
                else:
                    peers.append(Peer(item[0], item[1]))
        else:
            node_id, _, endpoint = text.partition("=")
            peers.append(Peer(node_id, endpoint))
    return peers


async def _serve(args: argparse.Namespace) -> int:
    config = HyParViewConfig(**json.loads(args.config)) if args.config else HyParViewConfig()
    contacts = _parse_contacts(args.contact)
    blocked: set[NodeId] = set()
    drops: Counter[str] = Counter()
    events: dict[NodeId, list[list[Any]]] = {}
    context = None if args.own_context else zmq.asyncio.Context()
    if context is not None:
        # One context serves every agent here: lift libzmq's per-context socket cap (1023 by
        # default; each link is a DEALER plus monitor sockets), as one agent per process
        # never needs to.
        context.set(zmq.MAX_SOCKETS, min(65535, context.get(zmq.SOCKET_LIMIT)))
    agents: list[Agent] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rng = random.Random(args.seed) if args.seed is not None else random.Random()
    leave = asyncio.Event()
    keepers: list[asyncio.Task[None]] = []
    failures = _failures
    try:
        for index in range(args.count):
            node_id = f"{args.prefix}-{index}"
            mine = list(contacts) if index == 0 else [agents[0].myself, *contacts]
            strategy = Strategy(
                local_peer=Peer(node_id, "tcp://127.0.0.1:0"),
                contacts=tuple(mine),
                hyparview_config=config,
                heartbeat_interval=args.heartbeat_interval,
                heartbeat_timeout=args.heartbeat_timeout,
            )
            # The production factory, with one shared context unless --own-context.
            inner: Transport = agent_module.make_transport(strategy, context=context)
            agent = Agent(
                strategy,
                transport=BlockingTransport(inner, blocked, drops),
                rng=random.Random(rng.random()),
            )
            log_ = events.setdefault(node_id, [])

            def record(event: PeerUp | PeerDown, log_: list[list[Any]] = log_) -> None:
                if len(log_) >= _EVENTS_MAX:
                    return
                if isinstance(event, PeerUp):
                    log_.append([time.time(), "up", event.peer.id, None])
                else:
                    log_.append([time.time(), "down", event.peer.id, event.reason.value])

            started: asyncio.Future[None] = loop.create_future()
            keepers.append(
                asyncio.create_task(_keep(agent, started, leave), name=f"keeper-{node_id}")
            )
            await started
            agent.subscribe(record)
            agents.append(agent)
        for agent in agents:
            line = {"id": agent.myself.id, "endpoint": agent.myself.endpoint, "pid": os.getpid()}
            print(json.dumps(line), flush=True)
        await _command_loop(agents, blocked, drops, events, stop, failures=failures)
    finally:
        leave.set()
        await asyncio.gather(*keepers, return_exceptions=True)
        if context is not None:
            context.term()
    return 1 if failures else 0


async def _keep(agent: Agent, started: asyncio.Future[None], leave: asyncio.Event) -> None:
    """Own one agent in a task of its own. The agent's task group is bound to the task that
    started it and cancels that task if one of the agent's loops fails; with a keeper per
    agent such a failure ends that agent alone and is logged with its cause (raised by the
    task group on close), instead of cancelling the whole host."""
    node_id = agent.strategy.local_peer.id
    try:
        await agent.start()
        started.set_result(None)
        await leave.wait()
    except asyncio.CancelledError:
        _failed(node_id, "its task group cancelled its owner: one of its loops failed")
    except Exception as exc:
        if not started.done():
            started.set_exception(exc)
        _failed(node_id, f"{type(exc).__name__}: {exc}")
    finally:
        try:
            await agent.aclose()
        except BaseException as exc:  # the loop's own error, as the task group reports it
            _failed(node_id, "closed with an error", exc)


_failures: list[str] = []


def _failed(node_id: NodeId, what: str, exc: BaseException | None = None) -> None:
    _failures.append(f"{node_id}: {what}")
    logging.getLogger("ray_hyparview.testing.agent_host").error(
        "agent %s: %s", node_id, what, exc_info=exc
    )


async def _command_loop(
    agents: Sequence[Agent],
    blocked: set[NodeId],
    drops: Counter[str],
    events: dict[NodeId, list[list[Any]]],
    stop: asyncio.Event,
    *,
    failures: list[str],
) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            reading = asyncio.ensure_future(reader.readline())
            done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                reading.cancel()
                return
            raw = reading.result()
            if not raw:
                return  # EOF: the controlling process is gone
            command, _, arg = raw.decode().strip().partition(" ")
            reply: Any
            match command:
                case "views":
                    reply = {
                        a.myself.id: {
                            "active": [p.id for p in a.active_view],
                            "passive": [p.id for p in a.passive_view],
                        }
                        for a in agents
                    }
                case "stats":
                    reply = {a.myself.id: a.stats() for a in agents}
                    reply["_host"] = dict(drops)
                    reply["_failures"] = list(failures)
                case "events":
                    reply = {k: list(v) for k, v in events.items()}
                    for v in events.values():
                        v.clear()
                case "block":
                    blocked.update(x for x in arg.split(",") if x)
                    reply = {"blocked": sorted(blocked)}
                case "unblock":
                    blocked.clear()
                    reply = {"blocked": []}
                case "fds":
                    reply = _proc_figures()
                case "quit":
                    print(json.dumps({"bye": True}), flush=True)
                    return
                case _:
                    reply = {"error": f"unknown command {command!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        stopping.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1, help="agents in this process")
    parser.add_argument("--prefix", default="n", help="node ids are PREFIX-0 .. PREFIX-(K-1)")
    parser.add_argument(
        "--contact", action="append", default=[], help="ID=ENDPOINT, or a JSON list; repeatable"
    )
    parser.add_argument("--config", default="", help="HyParViewConfig fields as a JSON object")
    parser.add_argument("--heartbeat-interval", type=float, default=0.5)
    parser.add_argument("--heartbeat-timeout", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--own-context",
        action="store_true",
        help="one ZeroMQ context (I/O thread) per agent, as in production, not one per process",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s")
    return asyncio.run(_serve(args))


# ------------------------------------------------------------------------------- the client


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One agent of a host process, as it announced itself."""

    id: NodeId
    endpoint: str
    pid: int

    @property
    def contact(self) -> str:
        return f"{self.id}={self.endpoint}"


class Host:
    """One ``agent_host`` process, seen from the test: start, command, signal, stop by pid."""

    def __init__(
        self,
        prefix: str,
        count: int,
        *,
        contacts: Sequence[AgentInfo] = (),
        config: Mapping[str, Any] | None = None,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 1.5,
        own_context: bool = False,
        seed: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.prefix = prefix
        cmd = [
            sys.executable,
            "-m",
            "ray_hyparview.testing.agent_host",
            "--count",
            str(count),
            "--prefix",
            prefix,
            "--heartbeat-interval",
            str(heartbeat_interval),
            "--heartbeat-timeout",
            str(heartbeat_timeout),
        ]
        for contact in contacts:
            cmd += ["--contact", contact.contact]
        if config:
            cmd += ["--config", json.dumps(dict(config))]
        if own_context:
            cmd.append("--own-context")
        if seed is not None:
            cmd += ["--seed", str(seed)]
        self._stderr: IO[bytes] | int = (
            open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
        )
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"host-{prefix}", daemon=True)
        self._reader.start()
        self.agents: list[AgentInfo] = []
        self.stopped = False
        try:
            for _ in range(count):
                info = json.loads(self._next_line(start_timeout))
                self.agents.append(AgentInfo(info["id"], info["endpoint"], info["pid"]))
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def _next_line(self, timeout: float) -> bytes:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"host {self.prefix} (pid {self.pid}) silent for {timeout}s"
            ) from None
        if not line:
            raise RuntimeError(f"host {self.prefix} (pid {self.pid}) exited: {self.proc.poll()}")
        return line

    @property
    def ids(self) -> list[NodeId]:
        return [a.id for a in self.agents]

    def command(self, text: str, *, timeout: float = 10.0) -> Any:
        """Send one command line and return its decoded JSON reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return json.loads(self._next_line(timeout))

    def views(self, timeout: float = 10.0) -> dict[NodeId, dict[str, list[NodeId]]]:
        result: dict[NodeId, dict[str, list[NodeId]]] = self.command("views", timeout=timeout)
        return result

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def quit(self, timeout: float = 10.0) -> int:
        """Graceful leave of every agent; returns the exit code (kills after ``timeout``)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                self.command("quit", timeout=timeout)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 by pid (resuming a stopped process is not needed for SIGKILL), then reap."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self.stopped = True
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if not isinstance(self._stderr, int):
            self._stderr.close()
        self._reader.join(timeout=5)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def collect_views(hosts: Iterable[Host], timeout: float = 10.0) -> dict[NodeId, list[NodeId]]:
    """Active views of every agent in every live host."""
    views: dict[NodeId, list[NodeId]] = {}
    for host in hosts:
        for node_id, view in host.views(timeout).items():
            views[node_id] = view["active"]
    return views


def start_hosts(
    hosts: list[Host], processes: int, per_process: int, tag: str, **options: Any
) -> None:
    """Start ``processes`` hosts of ``per_process`` agents, appending each to ``hosts`` as soon
    as it runs (so the caller's ``finally`` can kill it). Host i joins through one agent of the
    first host and the first agent of host i-1: a join survives the loss of either."""
    first = Host(f"{tag}0", per_process, seed=0, **options)
    hosts.append(first)
    for index in range(1, processes):
        contacts = [first.agents[index % per_process], hosts[-1].agents[0]]
        hosts.append(Host(f"{tag}{index}", per_process, contacts=contacts, seed=index, **options))


def wait_healthy(hosts: Sequence[Host], *, limit: float, poll: float = 0.1) -> float:
    """Wait until the agents of ``hosts`` form a connected, symmetric overlay with no unknown
    peer in any active view; return the seconds it took, or raise ``TimeoutError`` naming the
    remaining problems."""
    start = time.monotonic()
    deadline = start + limit
    while True:
        problems = overlay_problems(collect_views(hosts))
        if not problems:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise TimeoutError(f"overlay not healthy after {limit}s: {problems[:5]}")
        time.sleep(poll)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


if __name__ == "__main__":
    raise SystemExit(main())
