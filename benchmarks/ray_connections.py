"""Cross-node TCP connections per Ray node: the actor mesh against plain Ray actor calls.

All-to-all messaging among ``--actors`` actors (default 16) on an embedded ``--nodes``-node
(default 6) Ray cluster whose HyParView agents keep ``--active`` (default 2) active links.
The same actors do the exchange twice in one run: first over the mesh (``m.send`` to every
other actor), then with plain Ray actor calls (``handle.receive.remote()`` to every other
actor). After each phase the benchmark counts, per node, the cross-node TCP connections that
node holds for the traffic.

How connections are counted (Linux ``/proc``)
=============================================
Every Ray node of a local cluster shares this machine's IP address, so an address does not say
which node a connection belongs to; processes do. A node's processes are its raylet (found as
the listener of the node's ``NodeManagerPort`` from ``ray.nodes()``) and all the raylet's
descendants (workers, actors, the plugin's agent); the driver's other descendants (GCS server
and friends) and the driver itself belong to the head node. For each of those processes the
benchmark reads the socket inodes in ``/proc/PID/fd``, matches them to ESTABLISHED entries of
``/proc/net/tcp`` and ``/proc/net/tcp6``, and finds the process at the other end of each
connection: since both ends live on this machine, the remote end is the socket whose local
address is this one's remote address. A socket is *cross-node* when the process at its other
end belongs to another Ray node. A node "holds" every cross-node socket owned by one of its
processes, so one TCP connection between two nodes counts once at each end.

Baseline. Before each phase's traffic (actors created, joined and called once by the driver)
the benchmark takes a snapshot; connections in it are Ray's own control plane (raylet to GCS,
workers to GCS, the driver to each actor, object-manager links) and are subtracted: a
connection counts for a phase only if it was not in that snapshot, identified by (pid, local
address, remote address). One exception, stated rather than hidden: the overlay's links
between agents exist before the mesh traffic (they are what the mesh pays for, traffic or not),
so the mesh figure is the agent-to-agent sockets plus anything else new.

Sampling. While a phase runs the sockets are sampled every ~0.2 s and once after it; a node's
figure is the largest it held in any sample, so a connection opened and closed during the
traffic still counts.
ZeroMQ uses two TCP connections per active link (one dialled each way, see
:mod:`ray_hyparview.transport.zmq`), so the fair comparison with the active view size is the
number of distinct *peer nodes*; socket counts are printed next to it.

Membership timers. The membership protocol opens temporary links of its own to nodes outside
the active view (JOIN, a shuffle reply, a merge probe and its answer), which the agent closes
once the exchange is over. How many are in flight at a time depends on its timers, not on the
traffic: ``--timings local`` (the default) runs the demo's local preset, which probes every 1
to 2 s; ``--timings default`` runs the production timers.

    python benchmarks/ray_connections.py             # 16 actors, 6 nodes, active view 2
    python benchmarks/ray_connections.py --quick     # 8 actors, 4 nodes: a smoke run
    python benchmarks/ray_connections.py --json out.json
    python benchmarks/ray_connections.py --timings default
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_hyparview import cluster as plugin
from ray_hyparview import mesh
from ray_hyparview.cluster.local import connect, demo_config, embedded_cluster, stop

Address = tuple[str, int]

# ----------------------------------------------------------------------------- /proc


@dataclass(frozen=True, slots=True, kw_only=True)
class Socket:
    """One end of an ESTABLISHED TCP connection, owned by a process of a Ray node."""

    node: str
    """The Ray node of the owning process."""
    pid: int
    local: Address
    remote: Address
    peer_node: str
    """The Ray node of the process at the other end ("" if it is no Ray node's process)."""
    peer_pid: int

    @property
    def key(self) -> tuple[int, Address, Address]:
        return (self.pid, self.local, self.remote)

    @property
    def cross_node(self) -> bool:
        return bool(self.peer_node) and self.peer_node != self.node


def _decode_address(text: str) -> Address:
    """``0100007F:1F90`` (little-endian words, as the kernel prints them) -> ("127.0.0.1", 8080)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = ".".join(str(b) for b in reversed(raw))
    else:
        words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
        flat = b"".join(words)
        if flat[:12] == b"\0" * 10 + b"\xff\xff":
            ip = ".".join(str(b) for b in flat[12:])  # an IPv4-mapped IPv6 address
        else:
            ip = ":".join(flat[i : i + 2].hex() for i in range(0, 16, 2))
    return ip, int(port, 16)


def tcp_table() -> dict[int, tuple[Address, Address, str]]:
    """Socket inode -> (local, remote, state) for every TCP socket of this network namespace."""
    table: dict[int, tuple[Address, Address, str]] = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as handle:
                lines = handle.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            inode = int(fields[9])
            if inode:
                table[inode] = (_decode_address(fields[1]), _decode_address(fields[2]), fields[3])
    return table


_ESTABLISHED = "01"
_LISTEN = "0A"


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets open in process ``pid`` (empty if it is gone or not ours)."""
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may itself contain spaces or parentheses.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children[ppid].append(int(entry))
    return children


def _descendants(root: int, children: Mapping[int, list[int]]) -> set[int]:
    found = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def listener_pid(port: int, table: Mapping[int, tuple[Address, Address, str]]) -> int | None:
    """The pid of the process listening on TCP ``port`` (searched among all processes)."""
    inodes = {i for i, (local, _, state) in table.items() if state == _LISTEN and local[1] == port}
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit() and socket_inodes(int(entry)) & inodes:
            return int(entry)
    return None


def node_processes(head: str) -> dict[int, str]:
    """pid -> Ray node id for every process of every alive node of the local cluster."""
    table = tcp_table()
    children = _children()
    owner: dict[int, str] = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node.get("Alive"):
            continue
        raylet = listener_pid(int(node["NodeManagerPort"]), table)
        if raylet is None:
            raise RuntimeError(f"no process listens on the raylet port of {node['NodeID']}")
        for pid in _descendants(raylet, children):
            owner[pid] = node["NodeID"]
    for pid in _descendants(os.getpid(), children):
        owner.setdefault(pid, head)
    return owner


def snapshot(owner: Mapping[int, str]) -> list[Socket]:
    """Every ESTABLISHED TCP socket of the cluster's processes, with the node at the other end."""
    table = tcp_table()
    pid_of: dict[int, int] = {}
    for pid in owner:
        for inode in socket_inodes(pid):
            pid_of[inode] = pid
    by_ends: dict[tuple[Address, Address], int] = {}
    for inode, (local, remote, state) in table.items():
        if state == _ESTABLISHED:
            by_ends[(local, remote)] = inode
    sockets = []
    for inode, pid in pid_of.items():
        entry = table.get(inode)
        if entry is None or entry[2] != _ESTABLISHED:
            continue
        local, remote, _ = entry
        peer_inode = by_ends.get((remote, local))
        peer_pid = pid_of.get(peer_inode, 0) if peer_inode is not None else 0
        sockets.append(
            Socket(
                node=owner[pid],
                pid=pid,
                local=local,
                remote=remote,
                peer_node=owner.get(peer_pid, ""),
                peer_pid=peer_pid,
            )
        )
    return sockets


def cross_node(sockets: Iterable[Socket]) -> list[Socket]:
    return [s for s in sockets if s.cross_node]


def new_since(after: Iterable[Socket], before: Iterable[Socket]) -> list[Socket]:
    """Sockets of ``after`` that did not exist in ``before``."""
    old = {s.key for s in before}
    return [s for s in after if s.key not in old]


# ----------------------------------------------------------------------------- actors


class _Peer:
    """A user actor that talks to all others, once over the mesh and once with Ray calls."""

    def __init__(self) -> None:
        self.m: Any = None
        self.received = 0
        self._drain: asyncio.Task[None] | None = None

    async def join(self, name: str) -> tuple[str, int]:
        self.m = await mesh.join(name)
        self._drain = asyncio.get_running_loop().create_task(self._read_inbox())
        return str(self.m.node_id), os.getpid()

    async def _read_inbox(self) -> None:
        async for _ in self.m.inbox():
            self.received += 1

    async def ping(self) -> int:
        return os.getpid()

    async def mesh_all(self, names: list[str], rounds: int) -> dict[str, int]:
        """Send ``rounds`` messages to every name over the mesh; outcome counts."""

        async def one(name: str, i: int) -> str:
            try:
                await self.m.send(name, (self.m.name, i), timeout=10.0)
            except mesh.DeliveryError as exc:
                return exc.reason
            return "ok"

        results: dict[str, int] = defaultdict(int)
        for i in range(rounds):
            for outcome in await asyncio.gather(*(one(n, i) for n in names)):
                results[outcome] += 1
        return dict(results)

    async def plain_all(self, handles: list[Any], rounds: int) -> int:
        """The same exchange with plain Ray actor calls; returns how many were answered."""
        done = 0
        for i in range(rounds):
            answers = await asyncio.gather(*(h.receive.remote(i) for h in handles))
            done += len(answers)
        return done

    async def receive(self, item: Any) -> bool:
        self.received += 1
        return True

    async def count(self) -> int:
        return self.received

    async def leave(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
        await self.m.leave()


Peer: Any = ray.remote(num_cpus=0)(_Peer)


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRow:
    node: str
    actors: int
    active_view: int
    mesh_peer_nodes: int
    mesh_active_peer_nodes: int
    mesh_sockets: int
    mesh_new_non_overlay: int
    agent_links: int
    plain_peer_nodes: int
    plain_sockets: int
    baseline_sockets: int


def sampled(refs: list[Any], owner: Mapping[int, str]) -> tuple[list[Any], list[list[Socket]]]:
    """Wait for ``refs`` while sampling the cross-node sockets every ~0.2 s (and once after),
    so that a connection opened and closed during the traffic is seen too."""
    samples = []
    pending = list(refs)
    deadline = time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
        samples.append(cross_node(snapshot(owner)))
    results = ray.get(refs, timeout=max(1.0, deadline - time.monotonic()))
    samples.append(cross_node(snapshot(owner)))
    return results, samples


def _per_node(sockets: Iterable[Socket]) -> dict[str, list[Socket]]:
    out: dict[str, list[Socket]] = defaultdict(list)
    for s in sockets:
        out[s.node].append(s)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--actors", type=int, default=16)
    parser.add_argument("--active", type=int, default=2, help="active view size (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="all-to-all rounds per phase")
    parser.add_argument(
        "--timings",
        choices=("local", "default"),
        default="local",
        help="membership timers: the local preset of the demo (shuffle every 2 s, merge probes "
        "every 1-2 s; the default) or the production defaults (shuffle every 10 s, merge "
        "probes every 60-120 s)",
    )
    parser.add_argument("--quick", action="store_true", help="4 nodes, 8 actors, 1 round")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.actors, args.rounds = 4, 8, 1
    if not os.path.exists("/proc/net/tcp"):
        print("this benchmark reads Linux /proc; it cannot run here", file=sys.stderr)
        return 2
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)

    say(f"starting an embedded Ray cluster of {args.nodes} nodes ...")
    cluster = embedded_cluster()
    actors: list[Any] = []
    hv = None
    try:
        connect(cluster, args.nodes)
        head = ray.get_runtime_context().get_node_id()
        config = demo_config(args.active, local_timings=args.timings == "local")
        hv = plugin.start(config, bind_host="127.0.0.1")
        views = hv.wait_converged(timeout=120)
        nodes = sorted(views)
        say(f"overlay up: {len(nodes)} agents, {len(hv.topology())} links")
        print(plugin.views_summary(views))

        names = [f"peer-{i}" for i in range(args.actors)]
        actors = [
            Peer.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    nodes[i % len(nodes)], soft=False
                )
            ).remote()
            for i in range(args.actors)
        ]
        homes = ray.get([a.join.remote(n) for a, n in zip(actors, names, strict=True)])
        ray.get([a.ping.remote() for a in actors])
        owner = node_processes(head)
        actor_pids = {pid for _, pid in homes}
        missing = [pid for pid in actor_pids if pid not in owner]
        if missing:
            say(f"ERROR: actor processes {missing} not found under any raylet")
            return 1
        agent_ports = {
            int(v["endpoint"].rsplit(":", 1)[1]): n for n, v in views.items() if v["endpoint"]
        }
        table = tcp_table()
        agent_pids: dict[int, str] = {}
        for port, n in agent_ports.items():
            pid = listener_pid(port, table)
            if pid is not None:
                agent_pids[pid] = n
        if len(agent_pids) != len(nodes) or any(owner.get(p) != n for p, n in agent_pids.items()):
            say("ERROR: could not place every agent process on its node")
            return 1
        say(f"{args.actors} actors joined; processes mapped to nodes: {len(owner)}")

        # ---- phase 1: the mesh
        before_mesh = cross_node(snapshot(owner))
        t0 = time.monotonic()
        outcomes, mesh_samples = sampled(
            [
                a.mesh_all.remote([m for m in names if m != n], args.rounds)
                for a, n in zip(actors, names, strict=True)
            ],
            owner,
        )
        mesh_seconds = time.monotonic() - t0
        sent: dict[str, int] = defaultdict(int)
        for outcome in outcomes:
            for k, v in outcome.items():
                sent[k] += v
        expected = args.actors * (args.actors - 1) * args.rounds
        say(
            f"mesh all-to-all: {sent.get('ok', 0)} of {expected} sends acknowledged in "
            f"{mesh_seconds:.1f}s ({dict(sent)}); {len(mesh_samples)} /proc samples"
        )

        def overlay(x: Socket) -> bool:
            """A socket between two agents: an overlay link (active or cached)."""
            return x.pid in agent_pids and x.peer_pid in agent_pids

        def mesh_held(sample: list[Socket]) -> list[Socket]:
            """The agents' links plus anything else the mesh phase opened."""
            fresh = {x.key for x in new_since(sample, before_mesh)}
            return [x for x in sample if overlay(x) or x.key in fresh]

        mesh_leaks = {
            x.key: x
            for sample in mesh_samples
            for x in new_since(sample, before_mesh)
            if not overlay(x)
        }

        # ---- phase 2: plain Ray actor calls between the same actors
        before_plain = cross_node(snapshot(owner))
        t0 = time.monotonic()
        answered, plain_samples = sampled(
            [a.plain_all.remote([b for b in actors if b is not a], args.rounds) for a in actors],
            owner,
        )
        plain_seconds = time.monotonic() - t0
        say(
            f"plain Ray all-to-all: {sum(answered)} of {expected} calls in {plain_seconds:.1f}s; "
            f"{len(plain_samples)} /proc samples"
        )

        def plain_held(sample: list[Socket]) -> list[Socket]:
            return [x for x in new_since(sample, before_plain) if not overlay(x)]

        views = hv.views()
        links = {n: st.get("gauges", {}).get("links", -1) for n, st in hv.stats().items()}
        active_of = {n: set(v.get("active", [])) for n, v in views.items()}
        mesh_by_sample = [_per_node(mesh_held(x)) for x in mesh_samples]
        plain_by_sample = [_per_node(plain_held(x)) for x in plain_samples]
        base_by_node = _per_node(x for x in before_mesh if not overlay(x))
        rows = []
        for n in nodes:
            active = active_of.get(n, set())
            peers = [{x.peer_node for x in by[n]} for by in mesh_by_sample]
            rows.append(
                NodeRow(
                    node=n,
                    actors=sum(1 for h, _ in homes if h == n),
                    active_view=len(active),
                    mesh_peer_nodes=max(len(p) for p in peers),
                    mesh_active_peer_nodes=max(len(p & active) for p in peers),
                    mesh_sockets=max(len(by[n]) for by in mesh_by_sample),
                    mesh_new_non_overlay=sum(1 for x in mesh_leaks.values() if x.node == n),
                    agent_links=int(links.get(n, -1)),
                    plain_peer_nodes=max(
                        len({x.peer_node for x in by[n]}) for by in plain_by_sample
                    ),
                    plain_sockets=max(len(by[n]) for by in plain_by_sample),
                    baseline_sockets=len(base_by_node[n]),
                )
            )
        print()
        print(
            f"cross-node TCP connections per node, {args.actors} actors all-to-all "
            f"x {args.rounds}, {args.nodes} nodes, active_view_size={args.active}"
        )
        print("  peers = distinct other nodes connected to; sockets = connection ends held;")
        print("  mesh: agent-to-agent sockets plus any new one; 'on active' = peers in the view;")
        print("  plain: sockets new during the plain phase; baseline = Ray control sockets")
        print("  present before the traffic (subtracted from both)")
        print(
            f"  {'node':8}  {'actors':>6}  {'active':>6}  {'mesh peers':>10}  {'on active':>9}  "
            f"{'mesh sockets':>12}  {'plain peers':>11}  {'plain sockets':>13}  {'baseline':>8}"
        )
        for r in rows:
            print(
                f"  {r.node[:8]}  {r.actors:6d}  {r.active_view:6d}  {r.mesh_peer_nodes:10d}  "
                f"{r.mesh_active_peer_nodes:9d}  {r.mesh_sockets:12d}  {r.plain_peer_nodes:11d}  "
                f"{r.plain_sockets:13d}  {r.baseline_sockets:8d}"
            )
        worst_mesh = max(r.mesh_peer_nodes for r in rows)
        worst_active = max(r.mesh_active_peer_nodes for r in rows)
        summary = {
            "mesh_max_peer_nodes": worst_mesh,
            "mesh_max_peer_nodes_on_active_links": worst_active,
            "mesh_total_sockets": sum(r.mesh_sockets for r in rows),
            "mesh_new_non_overlay_sockets": len(mesh_leaks),
            "plain_max_peer_nodes": max(r.plain_peer_nodes for r in rows),
            "plain_total_sockets": sum(r.plain_sockets for r in rows),
            "samples": {"mesh": len(mesh_samples), "plain": len(plain_samples)},
            "active_view_size": args.active,
            "mesh_delivered": sent.get("ok", 0),
            "plain_answered": sum(answered),
            "expected": expected,
            "mesh_seconds": mesh_seconds,
            "plain_seconds": plain_seconds,
        }
        print()
        say(
            f"summary: mesh: at most {worst_mesh} peer nodes per node ({worst_active} on active "
            f"links, active view {args.active}), {summary['mesh_total_sockets']} sockets in all, "
            f"{len(mesh_leaks)} opened by the traffic outside the agents; plain Ray: up to "
            f"{summary['plain_max_peer_nodes']} peer nodes, {summary['plain_total_sockets']} "
            "new sockets in all"
        )
        if worst_mesh > worst_active:
            say(
                "note: the extra mesh peers are the membership's temporary links (joins, shuffle "
                "replies, merge probes and their answers, each to a node outside the active "
                "view), which the agent closes once the exchange is over; how many are open at "
                "a time depends on the membership timers (--timings), not on the traffic; "
                "'agent links' in hv.stats(): "
                + ", ".join(f"{n[:8]} {links.get(n)}" for n in nodes)
            )
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(
                    {
                        "benchmark": "ray_connections",
                        "nodes": args.nodes,
                        "actors": args.actors,
                        "rounds": args.rounds,
                        "timings": args.timings,
                        "summary": summary,
                        "per_node": [asdict(r) for r in rows],
                    },
                    handle,
                    indent=2,
                )
            say(f"wrote {args.json}")
        ok = sent.get("ok", 0) == expected and sum(answered) == expected
        ok = ok and worst_active <= args.active and not mesh_leaks
        if not ok:
            say("ERROR: a message was lost, or mesh traffic left the active links")
        return 0 if ok else 1
    finally:
        for actor in actors:
            ray.kill(actor)
        stop(cluster, hv)


if __name__ == "__main__":
    sys.exit(main())
