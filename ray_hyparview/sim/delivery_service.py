"""The real delivery core (:mod:`ray_hyparview.protocol.delivery`) as the fuzzer's service.

Theory of operation
-------------------
:class:`DeliveryService` drives one :class:`~ray_hyparview.protocol.delivery.Delivery` per node
life exactly as :class:`~ray_hyparview.agent.meshnode.MeshNode` does over routing, and tells the
history what happened in the note kinds :func:`ray_hyparview.sim.history.check_delivery` reads:

* one actor (:data:`ACTOR`) is registered on every node; ``send(destination, payload)`` sends
  to the actor of that name on ``destination`` with a :data:`TIMEOUT`. The payload the world
  hands over is replaced by the message's name for the checker, ``(node, incarnation, n)``,
  so the receiving side can say which message its actor got (``sent``);
* a ``Route(node, message, ref, attempt)`` is encoded with the real codec and routed
  (``RouteTo``); its tag maps back to ``(ref, attempt)`` so routing's ``Undeliverable`` becomes
  ``route_failed``; a routed frame that arrives is decoded and handed to ``receive``;
* ``Completed`` is noted ``acked``, ``Failed`` as its outcome (``not_delivered`` or
  ``unknown``);
* hand-over: an ``InboxReady`` notes the item ``queued`` (in the actor's inbox, not yet handed
  over) and the actor polls :data:`POLL_DELAY` later, as ``Mesh.inbox()``'s poller wakes after
  the agent's event: it takes, notes each item ``delivered`` and acknowledges it at once. A node
  that crashes in between loses what was queued (the README's Delivery contract: "what the dead
  agent had queued for an actor and not yet handed over is lost"); the world notes the crash
  and the checker counts such items as lost with the crash, never as missing.

A restart is a new service (a new ``Delivery`` with the new incarnation): the dead life's
operations, dedup memory and inbox are gone with it, as in the agent.

Clock steps move only a node's wall clock in the world, as in the agent (whose cores run on
the event loop's monotonic clock), so they never reach the delivery core's dedup memory: with
the steps applied to the cores' clock, a receiver stepped forward by more than ``dedup_slack``
forgot ids early and seed 183 with ``sends=12`` delivered a copy twice.
"""

from __future__ import annotations

import random

from ray_hyparview.protocol import delivery as dl
from ray_hyparview.protocol.peer import NodeId
from ray_hyparview.sim.nodestack import FrameEncodeError, Note, RouteTo, ServiceAction
from ray_hyparview.wire.codec import DecodeError, EncodeError
from ray_hyparview.wire.table import wire_codec

__all__ = ["ACTOR", "POLL_DELAY", "TIMEOUT", "DeliveryService", "delivery_service"]

ACTOR = "actor"
"""The one actor registered on every node."""
TIMEOUT = 8.0
"""Seconds each send may take (retries included) before it fails."""
POLL_DELAY = 0.002
"""Seconds between an item reaching the inbox and the actor's poll taking it."""
_TAGS_MAX = 4096
"""Tags remembered for ``route_failed`` (as the node stack's frame ids): a forgotten one only
makes an outcome *unknown* instead of *not delivered*."""


def _name(payload: bytes) -> tuple[object, ...] | None:
    """The checker's name of a message from its payload, ``None`` if it is not one of ours."""
    try:
        node, incarnation, number = payload.decode().split()
        return (node, int(incarnation), int(number))
    except ValueError:
        return None


class DeliveryService:
    """One node life's delivery core, wired to routing as the mesh wires it."""

    def __init__(
        self,
        node: NodeId,
        incarnation: int,
        rng: random.Random,
        *,
        config: dl.DeliveryConfig | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.node = node
        self.incarnation = incarnation
        self.timeout = timeout
        self.core = dl.Delivery(node, config, rng=rng, incarnation=incarnation)
        self.core.register(ACTOR)
        self.dropped = 0
        """Routed frames that were not delivery messages (decode errors, other types)."""
        self._codec = wire_codec()
        self._count = 0
        self._names: dict[int, tuple[object, ...]] = {}  # ref -> the checker's name
        self._tags: dict[int, tuple[int, int]] = {}  # tag -> (ref, attempt)
        self._next_tag = 0
        self._noted = 0  # highest inbox seq noted ``queued``
        self._poll: float | None = None

    # -- the Service protocol -------------------------------------------------------------------

    def send(self, destination: NodeId, payload: bytes, *, now: float) -> list[ServiceAction]:
        self._count += 1
        name = (self.node, self.incarnation, self._count)
        body = f"{self.node} {self.incarnation} {self._count}".encode()
        ref, actions = self.core.send(
            ACTOR, ACTOR, destination, body, now=now, timeout=self.timeout
        )
        self._names[ref] = name
        return [Note("sent", name, destination), *self._apply(actions, now)]

    def arrived(self, source: NodeId, payload: bytes, *, now: float) -> list[ServiceAction]:
        message = self._codec.decode(payload)
        if isinstance(message, DecodeError) or not isinstance(
            message, dl.MeshSend | dl.MeshAck | dl.MeshReply
        ):
            self.dropped += 1
            return []
        return self._apply(self.core.receive(source, message, now=now), now)

    def undeliverable(self, tag: int, reason: str, *, now: float) -> list[ServiceAction]:
        found = self._tags.pop(tag, None)
        if found is None:
            return []
        ref, attempt = found
        return self._apply(self.core.route_failed(ref, attempt, reason, now=now), now)

    def on_timer(self, *, now: float) -> list[ServiceAction]:
        out: list[ServiceAction] = []
        if self._poll is not None and self._poll <= now:
            self._poll = None
            out += self._hand_over()
        due = self.core.next_deadline()
        if due is not None and due <= now:
            out += self._apply(self.core.on_timer(now=now), now)
        return out

    def next_deadline(self) -> float | None:
        due = self.core.next_deadline()
        if self._poll is not None and (due is None or self._poll < due):
            return self._poll
        return due

    # -- actions --------------------------------------------------------------------------------

    def _apply(self, actions: list[dl.Action], now: float) -> list[ServiceAction]:
        out: list[ServiceAction] = []
        for action in actions:
            match action:
                case dl.Route(node=node, message=message, ref=ref, attempt=attempt):
                    try:
                        data = self._codec.encode(message)
                    except EncodeError as exc:
                        raise FrameEncodeError(type(message).__name__, str(exc)) from None
                    tag = 0
                    if ref:
                        self._next_tag += 1
                        tag = self._next_tag
                        self._tags[tag] = (ref, attempt)
                        while len(self._tags) > _TAGS_MAX:
                            del self._tags[next(iter(self._tags))]
                    out.append(RouteTo(node, data, tag))
                case dl.Completed(ref=ref):
                    name = self._names.pop(ref, None)
                    if name is not None:
                        out.append(Note("acked", name))
                case dl.Failed(ref=ref, outcome=outcome):
                    name = self._names.pop(ref, None)
                    if name is not None:
                        out.append(Note(outcome, name))
                case dl.InboxReady(name=actor):
                    out += self._queued(actor)
                    if self._poll is None:
                        self._poll = now + POLL_DELAY
        return out

    def _queued(self, actor: str) -> list[ServiceAction]:
        """Note the items that reached the inbox since the last note (lent, not acknowledged:
        the actor's poll takes them again)."""
        out: list[ServiceAction] = []
        for item in self.core.take(actor, limit=self.core.config.inbox_capacity):
            if item.seq > self._noted:
                self._noted = item.seq
                name = _name(item.payload)
                if name is not None:
                    out.append(Note("queued", name))
        return out

    def _hand_over(self) -> list[ServiceAction]:
        """The actor's poll: take everything, note it delivered, acknowledge it."""
        out: list[ServiceAction] = []
        while items := self.core.take(ACTOR):
            for item in items:
                name = _name(item.payload)
                if name is not None:
                    out.append(Note("delivered", name))
            self.core.ack(ACTOR, items[-1].seq)
        return out


def delivery_service(node: NodeId, incarnation: int, rng: random.Random) -> DeliveryService:
    """The :data:`~ray_hyparview.sim.nodestack.ServiceFactory` of the real delivery core."""
    return DeliveryService(node, incarnation, rng)
