"""HyParView with Plumtree stacked on top, as a node type of the simulator.

Theory of operation
-------------------
The agent stacks the two pure cores the same way: HyParView keeps the active view, and its
``PeerUp`` / ``PeerDown`` actions are Plumtree's ``neighbor_up`` / ``neighbor_down`` (Leitão,
Pereira and Rodrigues, "Epidemic Broadcast Trees", SRDS 2007, section 3.5). :class:`BroadcastNode`
does exactly that inside :class:`~ray_hyparview.sim.engine.Simulation`:

* Messages are told apart by type: Plumtree's (GOSSIP, IHAVE, GRAFT, PRUNE) go to the tree, the
  rest to the membership core. Both share the simulated wire and its latency, loss, crash and
  partition model, so a dead tree link is found the same way a dead membership link is.
* Plumtree's ``SendTo`` becomes the simulator's ``Send``; ``Deliver`` is recorded on the node
  (:attr:`BroadcastNode.delivered`) for the driver to count.
* One timer per node: the earlier of the two cores' deadlines. When it fires, only the core that
  is due is woken. Each core's deadline is read once after each call into that core and kept:
  the simulator asks for the node's deadline after every event, and most events touch only
  one core (asking both every time cost about a tenth of a 3,000-node run). So drive the
  cores through the node's methods only, never ``node.tree`` or ``node.membership`` directly.

:func:`broadcast` starts one broadcast from a live node, runs the clock for a while and returns
the paper's figures for it (section 4.1): reliability (share of live nodes that delivered),
relative message redundancy ``RMR = GOSSIP received / (delivered - 1) - 1``, the last delivery
hop, and when each node delivered (simulated seconds, so reliability can be read at any instant
of the run, e.g. before failure detection has done its part). It measures one broadcast at a
time, so the GOSSIP counted are this broadcast's (GRAFT answers included, as in the paper).
"""

from __future__ import annotations

import bisect
import functools
import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ray_hyparview.protocol import messages as hv
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.protocol.plumtree import (
    Action,
    Deliver,
    Gossip,
    Graft,
    IHave,
    MsgId,
    Plumtree,
    PlumtreeConfig,
    Prune,
    SendTo,
)
from ray_hyparview.sim.engine import NodeFactory, Simulation, SimulationError

__all__ = [
    "SIM_TREE_CONFIG",
    "BroadcastNode",
    "BroadcastResult",
    "broadcast",
    "broadcast_node_factory",
]

SIM_TREE_CONFIG = PlumtreeConfig()
"""Plumtree's defaults, which suit the simulator's default latency (1-5 ms one way) as they
suit a LAN: a missing message is grafted after 200 ms, about 20 hops of silence."""

_TREE_MESSAGES = frozenset({Gossip, IHave, Graft, Prune})


class BroadcastNode:
    """HyParView and Plumtree stacked as the agent stacks them; a :class:`SimNode`.

    Build it through :func:`broadcast_node_factory` (the simulator's ``node_factory``). Both
    cores draw from the simulator's shared protocol generator, so a seed replays a run.
    """

    __slots__ = (
        "_membership_due",
        "_peers",
        "_tree_due",
        "delivered",
        "delivered_at",
        "membership",
        "myself",
        "tree",
    )

    def __init__(
        self,
        myself: Peer,
        config: HyParViewConfig,
        rng: random.Random,
        tree_config: PlumtreeConfig = SIM_TREE_CONFIG,
    ) -> None:
        self.myself = myself
        self.membership = HyParView(myself, config, rng=rng)
        self.tree = Plumtree(myself.id, tree_config, rng=rng)
        self.delivered: list[Deliver] = []
        """Every broadcast this node delivered, in order (the driver may clear it)."""
        self.delivered_at: list[float] = []
        """When each of :attr:`delivered` was delivered (cleared along with it)."""
        self._peers: dict[NodeId, Peer] = {}  # Peer objects for tree sends, built once per id
        self._membership_due = self.membership.next_deadline()
        self._tree_due = self.tree.next_deadline()

    # -- the SimNode interface -------------------------------------------------------------------

    @property
    def active_ids(self) -> Collection[NodeId]:
        """The membership core's active view."""
        return self.membership.active_ids

    @property
    def passive_view(self) -> tuple[Peer, ...]:
        """The membership core's passive view."""
        return self.membership.passive_view

    @property
    def counters(self) -> Counter[str]:
        """Both cores' counters summed (names do not overlap: Plumtree's types are its own)."""
        return self.membership.counters + self.tree.counters

    def join(self, contacts: Sequence[Peer], *, now: float) -> list[hv.Action]:
        """Join the overlay through ``contacts`` (membership only; the tree follows PeerUp)."""
        return self._lift(self.membership.join(contacts, now=now), now)

    def receive(self, sender: NodeId, message: object, *, now: float) -> list[hv.Action]:
        """Route one message to the core that speaks its type."""
        if type(message) in _TREE_MESSAGES:
            told = self.membership.heard(sender, now=now)
            tree = self._tree(self.tree.receive(sender, message, now=now), now)
            return self._lift(told, now) + tree if told else tree
        if not isinstance(message, hv.Message):
            raise SimulationError(f"{sender!r} sent an unknown message {message!r}")
        return self._lift(self.membership.receive(sender, message, now=now), now)

    def link_failed(self, peer: NodeId, *, now: float) -> list[hv.Action]:
        """A failed link is the membership core's business; its PeerDown reaches the tree."""
        return self._lift(self.membership.link_failed(peer, now=now), now)

    def on_timer(self, *, now: float) -> list[hv.Action]:
        """Wake whichever core is due (both when both are)."""
        out: list[hv.Action] = []
        due = self._membership_due
        if due is not None and due <= now:
            out = self._lift(self.membership.on_timer(now=now), now)
        due = self._tree_due
        if due is not None and due <= now:
            out += self._tree(self.tree.on_timer(now=now), now)
        return out

    def next_deadline(self) -> float | None:
        """The earlier of the two cores' deadlines."""
        mine = self._membership_due
        tree = self._tree_due
        if mine is None:
            return tree
        if tree is None or mine <= tree:
            return mine
        return tree

    # -- the application's side ------------------------------------------------------------------

    def broadcast(
        self, payload: bytes, *, topic: str = "", now: float
    ) -> tuple[MsgId, list[hv.Action]]:
        """Start a broadcast here; hand the actions to :meth:`Simulation.apply_actions`."""
        msg_id, actions = self.tree.broadcast(payload, topic=topic, now=now)
        return msg_id, self._tree(actions, now)

    # -- plumbing --------------------------------------------------------------------------------

    def _lift(self, actions: list[hv.Action], now: float) -> list[hv.Action]:
        """Membership actions, plus the tree's reaction to each PeerUp / PeerDown among them.

        Called right after every call into the membership core: its deadline is read here."""
        self._membership_due = self.membership.next_deadline()
        out: list[hv.Action] = []
        for action in actions:
            out.append(action)
            kind = type(action)
            if kind is hv.PeerUp:
                assert isinstance(action, hv.PeerUp)
                out += self._tree(self.tree.neighbor_up(action.peer.id, now=now), now)
            elif kind is hv.PeerDown:
                assert isinstance(action, hv.PeerDown)
                out += self._tree(self.tree.neighbor_down(action.peer.id, now=now), now)
        return out

    def _tree(self, actions: list[Action], now: float) -> list[hv.Action]:
        """Plumtree's sends as the simulator's; deliveries recorded.

        Called right after every call into the tree: its deadline is read here."""
        self._tree_due = self.tree.next_deadline()
        out: list[hv.Action] = []
        peers = self._peers
        for action in actions:
            match action:
                case SendTo(peer_id=peer_id, message=message):
                    peer = peers.get(peer_id)
                    if peer is None:
                        peer = peers[peer_id] = Peer(peer_id)
                    # The simulator carries any message value; only HyParView's are typed.
                    out.append(hv.Send(peer, message))  # type: ignore[arg-type]
                case Deliver():
                    self.delivered.append(action)
                    self.delivered_at.append(now)
        return out


def broadcast_node_factory(tree_config: PlumtreeConfig = SIM_TREE_CONFIG) -> NodeFactory:
    """A ``node_factory`` for :class:`Simulation` that builds :class:`BroadcastNode` s.

    A ``functools.partial`` rather than a closure, so that :meth:`Simulation.snapshot` (which
    pickles the simulation, factory included) works on stacked runs too.
    """
    return functools.partial(BroadcastNode, tree_config=tree_config)


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastResult:
    """The paper's figures for one broadcast (section 4.1)."""

    msg_id: MsgId
    """The broadcast's id."""

    alive: int
    """Live nodes when the measurement ended."""

    delivered: int
    """Live nodes that delivered it, the origin included."""

    duplicates: int
    """Extra deliveries of it (a node delivering twice); Plumtree promises 0."""

    gossip: int
    """GOSSIP messages received by all nodes while it spread (payload copies)."""

    last_hop: int
    """Largest hop count at which a node delivered it."""

    delivery_times: tuple[float, ...]
    """Seconds from the start to each live node's delivery, sorted (the origin's is 0)."""

    def reliability_by(self, seconds: float) -> float:
        """Share of live nodes that had delivered ``seconds`` after the start."""
        if not self.alive:
            return 0.0
        return bisect.bisect_right(self.delivery_times, seconds) / self.alive

    @property
    def last_delivery(self) -> float:
        """Seconds from the start to the last delivery."""
        return self.delivery_times[-1] if self.delivery_times else 0.0

    @property
    def reliability(self) -> float:
        """Share of live nodes that delivered."""
        return self.delivered / self.alive if self.alive else 0.0

    @property
    def rmr(self) -> float:
        """Relative message redundancy: ``gossip / (delivered - 1) - 1`` (0 when alone)."""
        if self.delivered <= 1:
            return 0.0
        return self.gossip / (self.delivered - 1) - 1.0


def _node(sim: Simulation, node_id: NodeId) -> BroadcastNode:
    node = sim.node(node_id)
    if not isinstance(node, BroadcastNode):
        raise SimulationError(f"node {node_id!r} is a {type(node).__name__}, not a BroadcastNode")
    return node


def _gossip_received(sim: Simulation) -> int:
    total = 0
    for _, node in sim.nodes():
        if isinstance(node, BroadcastNode):
            total += node.tree.counters["received.Gossip"]
    return total


def broadcast(
    sim: Simulation, origin: NodeId, payload: bytes = b"", *, settle: float = 2.0
) -> BroadcastResult:
    """Broadcast from ``origin`` now, run the clock ``settle`` seconds, and measure.

    Other traffic (membership, other nodes' timers) runs on meanwhile; only GOSSIP counts toward
    the redundancy, and no other broadcast should be in flight.
    """
    before = _gossip_received(sim)
    start = sim.now
    msg_id, actions = _node(sim, origin).broadcast(payload, now=sim.now)
    sim.apply_actions(origin, actions)
    sim.run_for(settle)
    delivered = duplicates = last_hop = 0
    times: list[float] = []
    alive = sim.alive_ids
    for node_id in alive:
        node = _node(sim, node_id)
        got = [
            (at, d.hops)
            for d, at in zip(node.delivered, node.delivered_at, strict=True)
            if d.msg_id == msg_id
        ]
        if got:
            delivered += 1
            duplicates += len(got) - 1
            at, hops = min(got)
            last_hop = max(last_hop, hops)
            times.append(at - start)
    return BroadcastResult(
        msg_id=msg_id,
        alive=len(alive),
        delivered=delivered,
        duplicates=duplicates,
        gossip=_gossip_received(sim) - before,
        last_hop=last_hop,
        delivery_times=tuple(sorted(times)),
    )
