"""One node's whole protocol stack, driven by the fuzzer as the agent and the mesh drive it.

Theory of operation
-------------------
:class:`NodeStack` holds the same three core objects an agent with a mesh holds (HyParView,
:class:`~ray_hyparview.protocol.routing.Router`, :class:`~ray_hyparview.protocol.plumtree.Plumtree`)
and wires them exactly as ``agent/node.py`` and ``agent/meshnode.py`` do; it decides nothing itself:

* every frame in and out goes through the real codec (``wire_codec``), so a value a core derives
  that the wire cannot carry raises :class:`~ray_hyparview.wire.codec.EncodeError` here, where the
  agent's task would die of it; a frame that does not decode is counted and dropped;
* HyParView's ``PeerUp`` / ``PeerDown`` become ``router.link_up`` / ``link_down`` and
  ``tree.neighbor_up`` / ``neighbor_down``, in that order (``MeshNode._on_membership``);
* a HyParView ``Send`` goes to any peer (the agent dials); a routing or Plumtree ``SendTo`` goes
  out only over an active link, and a routed frame that cannot is handed back with
  ``router.forward_failed`` (``MeshNode._apply_routing``);
* a data frame from an active neighbour that only passes through goes on as its field values
  when ``router.pass_on`` names its next hop, never decoded (``MeshNode._pass_on``);
* routing's ``Arrived`` and ``Undeliverable`` go to the :class:`Service` plugged on top (the
  delivery layer), and what the service returns is routed or recorded;
* one timer: the earliest of the cores' deadlines; when it fires, every core that is due runs.

The stack never reads a clock: the world passes ``now`` (already made monotonic per node).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ray_hyparview.protocol import messages as hv
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.peer import NodeId, Peer
from ray_hyparview.wire.codec import DecodeError, EncodeError
from ray_hyparview.wire.table import wire_codec

__all__ = [
    "FrameEncodeError",
    "NodeStack",
    "Note",
    "RouteTo",
    "Service",
    "ServiceAction",
    "ServiceFactory",
]

_HV_TYPES = hv.MESSAGE_TYPES  # the one list the agent dispatches on too
_RT_TYPES = (rt.RouteUpdate, rt.SeqnoRequest, rt.DataFrame, rt.RouteError)
_PT_TYPES = (pt.Gossip, pt.IHave, pt.Graft, pt.Prune)
_FRAMES_MAX = 4096
"""Router frame ids remembered for the service's ``undeliverable`` (as ``MeshNode._frames``)."""


@dataclass(frozen=True, slots=True)
class RouteTo:
    """Route ``payload`` to node ``destination``; ``tag`` comes back with ``undeliverable``."""

    destination: NodeId
    payload: bytes
    tag: int = 0


@dataclass(frozen=True, slots=True)
class Note:
    """A line of the history for the checker, e.g. ``Note("acked", key)``.

    Delivery kinds the checker knows: ``sent`` (key, destination node), ``acked``,
    ``delivered`` (recorded on the node whose actor got it), ``not_delivered``, ``unknown``.
    """

    kind: str
    key: tuple[object, ...]
    destination: NodeId = ""


ServiceAction = RouteTo | Note


class Service(Protocol):
    """A service on top of routing (the delivery layer): the same shape as the cores."""

    def send(self, destination: NodeId, payload: bytes, *, now: float) -> list[ServiceAction]:
        """The application sends ``payload`` to an actor on node ``destination``."""
        ...

    def arrived(self, source: NodeId, payload: bytes, *, now: float) -> list[ServiceAction]:
        """A routed frame from ``source`` reached this node."""
        ...

    def undeliverable(self, tag: int, reason: str, *, now: float) -> list[ServiceAction]:
        """A frame this node routed (``RouteTo.tag``) will not arrive."""
        ...

    def on_timer(self, *, now: float) -> list[ServiceAction]: ...

    def next_deadline(self) -> float | None: ...


ServiceFactory = Callable[[NodeId, int, random.Random], Service]
"""Builds the service of one node life: ``factory(node_id, incarnation, rng)``."""


class FrameEncodeError(Exception):
    """A core asked to send a value the wire cannot carry: the agent would die of it."""

    def __init__(self, message_type: str, detail: str) -> None:
        super().__init__(f"{message_type}: {detail}")
        self.message_type = message_type


class NodeStack:
    """HyParView + routing + Plumtree (+ a service) of one node life."""

    def __init__(
        self,
        myself: Peer,
        *,
        incarnation: int,
        rng: random.Random,
        membership: HyParViewConfig,
        routing: rt.RoutingConfig,
        plumtree: pt.PlumtreeConfig,
        service: ServiceFactory | None = None,
        record: Callable[[str, tuple[object, ...]], None],
    ) -> None:
        self.myself = myself
        self.incarnation = incarnation
        self.membership = HyParView(
            myself, membership, rng=random.Random(rng.random()), incarnation=incarnation
        )
        self.router = rt.Router(
            myself.id, routing, rng=random.Random(rng.random()), incarnation=incarnation
        )
        self.tree = pt.Plumtree(
            myself.id, plumtree, rng=random.Random(rng.random()), incarnation=incarnation
        )
        self.service = (
            service(myself.id, incarnation, random.Random(rng.random())) if service else None
        )
        self.counters: Counter[str] = Counter()
        self.outbox: list[tuple[NodeId, bytes]] = []
        """Frames to put on the wire, in order; the world takes them after each input."""
        self._codec = wire_codec()
        self._data_prefix = self._codec.prefix(rt.DataFrame)
        self._record = record
        self._frames: dict[int, int] = {}
        self.router_touched = True
        """Set whenever the router got an input: the world's loop check runs only then."""

    # -- inputs ---------------------------------------------------------------------------------

    def join(self, contacts: Sequence[Peer], *, now: float) -> None:
        self._membership(self.membership.join(contacts, now=now), now)

    def receive(self, sender: NodeId, data: bytes, *, now: float) -> None:
        """One frame from ``sender`` (as the transport authenticated it)."""
        values = None
        if data.startswith(self._data_prefix) and sender in self.membership.active_ids:
            values = self._codec.fields(data, rt.DataFrame)
        if values is None:
            message = self._codec.decode(data)
        elif self._pass_on(sender, values, now):
            return
        else:
            message = self._codec.decode_fields(rt.DataFrame, values)
        if isinstance(message, DecodeError):
            self.counters["dropped." + message.cause] += 1
            return
        if isinstance(message, _HV_TYPES):
            self._membership(self.membership.receive(sender, message, now=now), now)
        elif isinstance(message, _RT_TYPES):
            self._membership(self.membership.heard(sender, now=now), now)
            self._routing(self.router.receive(sender, message, now=now), now)
        elif isinstance(message, _PT_TYPES):
            self._membership(self.membership.heard(sender, now=now), now)
            self._tree(self.tree.receive(sender, message, now=now), now)
        else:
            self.counters["dropped.unhandled_type"] += 1

    def _pass_on(self, sender: NodeId, values: list[object], now: float) -> bool:
        """A data frame that only passes through goes on as its field values, as the agent's
        pass-through sends it (``MeshNode._pass_on``); False: it is decoded as usual."""
        hop = self.router.pass_on(sender, values, now=now)
        if hop is None:
            return False
        self.router_touched = True
        self._membership(self.membership.heard(sender, now=now), now)
        if hop in self.membership.active_ids:
            self.outbox.append((hop, self._codec.encode_fields(rt.DataFrame, values)))
        else:
            self._routing(self.router.forward_failed(rt.data_frame(values), hop, now=now), now)
        return True

    def link_failed(self, peer: NodeId, *, now: float) -> None:
        self._membership(self.membership.link_failed(peer, now=now), now)

    def on_timer(self, *, now: float) -> None:
        due = self.membership.next_deadline()
        if due is not None and due <= now:
            self._membership(self.membership.on_timer(now=now), now)
        due = self.router.next_deadline()
        if due is not None and due <= now:
            self._routing(self.router.on_timer(now=now), now)
        due = self.tree.next_deadline()
        if due is not None and due <= now:
            self._tree(self.tree.on_timer(now=now), now)
        if self.service is not None:
            due = self.service.next_deadline()
            if due is not None and due <= now:
                self._service(self.service.on_timer(now=now), now)

    def next_deadline(self) -> float | None:
        best: float | None = None
        deadlines = [
            self.membership.next_deadline(),
            self.router.next_deadline(),
            self.tree.next_deadline(),
            self.service.next_deadline() if self.service is not None else None,
        ]
        for due in deadlines:
            if due is not None and (best is None or due < best):
                best = due
        return best

    def publish(self, payload: bytes, *, topic: str, now: float) -> pt.MsgId:
        msg_id, actions = self.tree.broadcast(payload, topic=topic, now=now)
        self._tree(actions, now)
        return msg_id

    def send(self, destination: NodeId, payload: bytes, *, now: float) -> None:
        if self.service is not None:
            self._service(self.service.send(destination, payload, now=now), now)

    def inject(self, to: NodeId, message: object) -> None:
        """Put a frame of our own making on the wire (hostile peers); no core sees it."""
        self._put(to, message)

    # -- actions --------------------------------------------------------------------------------

    def _put(self, to: NodeId, message: object) -> None:
        try:
            data = self._codec.encode(message)
        except EncodeError as exc:
            raise FrameEncodeError(type(message).__name__, str(exc)) from None
        self.outbox.append((to, data))

    def _membership(self, actions: list[hv.Action], now: float) -> None:
        for action in actions:
            match action:
                case hv.Send(to=to, message=message):
                    self._put(to.id, message)
                case hv.PeerUp(peer=peer):
                    self._routing(self.router.link_up(peer.id, now=now), now)
                    self._tree(self.tree.neighbor_up(peer.id, now=now), now)
                case hv.PeerDown(peer=peer):
                    self._routing(self.router.link_down(peer.id, now=now), now)
                    self._tree(self.tree.neighbor_down(peer.id, now=now), now)

    def _routing(self, actions: list[rt.Action], now: float) -> None:
        self.router_touched = True
        for action in actions:
            match action:
                case rt.SendTo(peer_id=peer_id, message=message):
                    if peer_id in self.membership.active_ids:
                        self._put(peer_id, message)
                    elif isinstance(message, rt.DataFrame | rt.RouteError):
                        self._routing(self.router.forward_failed(message, peer_id, now=now), now)
                case rt.Arrived(source=source, payload=payload):
                    if self.service is not None:
                        self._service(self.service.arrived(source, payload, now=now), now)
                case rt.Undeliverable(frame_id=frame_id, reason=reason):
                    tag = self._frames.pop(frame_id, None)
                    if tag is not None and self.service is not None:
                        self._service(self.service.undeliverable(tag, reason, now=now), now)

    def _tree(self, actions: list[pt.Action], now: float) -> None:
        for action in actions:
            match action:
                case pt.SendTo(peer_id=peer_id, message=message):
                    if peer_id in self.membership.active_ids:
                        self._put(peer_id, message)
                case pt.Deliver(msg_id=msg_id, topic=topic):
                    self._record("publish_delivered", (msg_id, topic))

    def _service(self, actions: list[ServiceAction], now: float) -> None:
        for action in actions:
            match action:
                case RouteTo(destination=destination, payload=payload, tag=tag):
                    frame_id, routed = self.router.route(destination, payload, now=now)
                    if tag:
                        self._frames[frame_id] = tag
                        while len(self._frames) > _FRAMES_MAX:
                            del self._frames[next(iter(self._frames))]
                    self._routing(routed, now)
                case Note(kind=kind, key=key, destination=destination):
                    self._record(kind, (key, destination))
