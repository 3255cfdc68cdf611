"""Wire protocol cores back to back, the way h11's ConnectionPair does: no sockets, explicit time.

Messages travel in FIFO order (as over one TCP / ZeroMQ connection) and arrive when ``step`` or
``settle`` is called. A send to a crashed node or across a cut makes the sender's core hear
``link_failed`` at once, like a ZeroMQ ``ROUTER_MANDATORY`` send failure would. A crashed node's
active neighbours are told ``link_failed`` by ``detect``.

This is a test driver, not a protocol: every decision is the core's.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from ray_hyparview.protocol import overlay
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.messages import Action, Message, PeerDown, PeerUp, Send
from ray_hyparview.protocol.peer import NodeId, Peer

__all__ = ["Wiring", "peer"]


def peer(name: str) -> Peer:
    """A peer with a loopback-looking endpoint derived from its name."""
    return Peer(name, f"tcp://127.0.0.1/{name}")


@dataclass
class Wiring:
    """A set of cores, a FIFO of messages in flight and a clock."""

    config: HyParViewConfig = field(default_factory=HyParViewConfig)
    seed: int = 0
    now: float = 0.0
    nodes: dict[NodeId, HyParView] = field(default_factory=dict)
    crashed: set[NodeId] = field(default_factory=set)
    cut: set[frozenset[NodeId]] = field(default_factory=set)
    in_flight: deque[tuple[NodeId, Peer, Message]] = field(default_factory=deque)
    events: list[tuple[NodeId, Action]] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    def add(self, name: str, *, incarnation: int = 0) -> HyParView:
        node = HyParView(
            peer(name),
            self.config,
            rng=random.Random(f"{self.seed}/{name}/{incarnation}"),
            incarnation=incarnation,
        )
        self.nodes[name] = node
        self.crashed.discard(name)
        return node

    def join(self, name: str, *contacts: str) -> None:
        node = self.nodes[name]
        self.apply(name, node.join([self.nodes[c].myself for c in contacts], now=self.now))

    def apply(self, name: str, actions: list[Action]) -> None:
        """Carry out what a core asked for."""
        for action in actions:
            self.trace.append(f"{self.now:.3f} {name} {action!r}")
            match action:
                case Send(to=to, message=message):
                    if self._reachable(name, to.id):
                        self.in_flight.append((name, to, message))
                    else:
                        self.apply(name, self.nodes[name].link_failed(to.id, now=self.now))
                case PeerUp() | PeerDown():
                    self.events.append((name, action))

    def _reachable(self, a: NodeId, b: NodeId) -> bool:
        return b in self.nodes and b not in self.crashed and frozenset((a, b)) not in self.cut

    def step(self) -> bool:
        """Deliver one message; False when none is in flight."""
        if not self.in_flight:
            return False
        sender, to, message = self.in_flight.popleft()
        if sender in self.crashed or not self._reachable(sender, to.id):
            return True
        self.trace.append(f"{self.now:.3f} {to.id} <- {sender} {message!r}")
        self.apply(to.id, self.nodes[to.id].receive(sender, message, now=self.now))
        return True

    def settle(self, max_steps: int = 100_000) -> int:
        """Deliver until nothing is in flight; fail loudly on a message storm."""
        for steps in range(max_steps):
            if not self.step():
                return steps
        raise AssertionError(f"still {len(self.in_flight)} messages in flight after {max_steps}")

    def advance(self, seconds: float, *, tick: float = 0.05) -> None:
        """Let time pass in small ticks, firing due timers and delivering after each."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + tick)
            for name, node in self.nodes.items():
                if name in self.crashed:
                    continue
                deadline = node.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.apply(name, node.on_timer(now=self.now))
            self.settle()

    def crash(self, *names: str) -> None:
        self.crashed.update(names)

    def detect(self) -> None:
        """Every live node with a crashed active neighbour hears that the link failed."""
        for name, node in self.nodes.items():
            if name in self.crashed:
                continue
            for dead in [p for p in node.active_ids if p in self.crashed]:
                self.apply(name, node.link_failed(dead, now=self.now))
        self.settle()

    def partition(self, left: set[str], right: set[str]) -> None:
        self.cut.update(frozenset((a, b)) for a in left for b in right)

    def heal(self) -> None:
        self.cut.clear()

    def live(self) -> dict[NodeId, HyParView]:
        return {n: node for n, node in self.nodes.items() if n not in self.crashed}

    def views(self) -> dict[NodeId, list[NodeId]]:
        """The live nodes' active views."""
        return {name: list(node.active_ids) for name, node in self.live().items()}

    def symmetric(self) -> bool:
        """Every active link among live nodes is held by both ends (a crashed peer not yet
        detected does not count)."""
        found = overlay.problems(self.views(), dead_peers=False)
        return not any(p.check == "symmetric" for p in found)

    def connected(self) -> bool:
        """The live nodes' active views form one component."""
        found = overlay.problems(self.views(), dead_peers=False)
        return not any(p.check == "connected" for p in found)
