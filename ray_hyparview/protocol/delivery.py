"""The actor mesh's delivery protocol, as a pure state machine.

Theory of operation
===================

The mesh promises a sender one of three answers for every ``send``: *delivered* (the target
node put the message in the target actor's inbox, once), *not delivered* (no copy can ever be
delivered), or *outcome unknown* (the deadline passed while a copy may have arrived: its
acknowledgement may be the thing that got lost). No protocol can turn the third answer into one
of the first two, since the last message of any exchange can always be lost (the two generals'
problem); what this module does is make the first two true and give the caller a safe way to
retry the third (an idempotency key). It sits on top of routing: it hands frames to route as
:class:`Route` actions and takes what routing delivered (``Arrived``) through :meth:`receive`;
it never looks at links. The asyncio shell (:mod:`ray_hyparview.agent.meshnode`) and the simulator
drive the same object.

The rules this file keeps:

1. **Ids name one message of one life.** A message is named by ``(source node, source
   incarnation, msg id)``; msg ids count from 1 in every life, so the incarnation is what keeps
   a restarted sender's first messages apart from its last life's. Request ids are the msg ids
   of the requests. An ACK or a reply is accepted only when it comes from the node the message
   was sent to and echoes our own incarnation; anything else is counted (``ack.ignored.*``,
   ``reply.ignored.*``) and dropped.
2. **Retry under one id until the deadline, backing off.** A send is copied again under the
   same id until it is answered or its deadline passes. Each copy carries its *attempt* number
   and the sender's *remaining horizon* (seconds until its deadline, relative because clocks of
   two nodes differ). A copy that routing reports undeliverable (``route_failed``) or that the
   receiver refused as ``busy`` is *accounted*: it never reached the actor and never will.
   The wait before the next copy is TCP's retransmission timer (RFC 6298): the target node's
   smoothed round trip plus four times its variation, measured from the answers (an ACK echoes
   its copy's attempt, so the first and the latest copy give unambiguous samples; Karn's
   problem does not arise), never below ``retry_interval`` nor above ``retry_max_interval``;
   and it doubles for each earlier copy still unaccounted (RFC 6298 5.5). A fixed interval
   made an overloaded path worse: once messages queued for longer than the interval, every
   one of them was copied again each interval, and the copies took the capacity the originals
   needed (20,000 sends through two agents took twice as long, with 1.4 copies per message).
   A copy known lost does not double the wait: nothing of it is queued anywhere. And when
   the latest copy is known lost, the next one goes ``retry_interval`` after the report, not
   at the end of a timeout meant for a copy that may still be answered: under load that
   timeout is the measured round trip, seconds long, and a copy lost while the overlay
   repaired used to wait it out (``send.lost_early`` counts the copies moved up).
   A target that stops answering is probed by one message at a time, as TCP after a timeout
   sends one segment, not its window (RFC 5681 3.1): the first operation to time out toward a
   silent target sends its copy, and each other timed-out copy toward it is *held*
   (``send.held``) until the target answers anything. An agent starved of CPU answers a whole
   window seconds late at once, and each message's own timer used to copy it again, doubling
   the traffic to a node that could not keep up (8 busy loops on 2 cores: 1,577 copies for
   3,000 messages, each for a message that was delivered). When the target answers, a held
   copy goes at once if the answered copy left after it (its own was most likely lost, as in
   a fast retransmit), else one fresh timeout later: its answer is most likely behind the one
   that came, and ``send.spurious`` counts first copies answered after a second one left
   (Eifel's detection, RFC 3522, by the attempt each ACK echoes). A copy known lost is never
   held, nor one whose target answered a copy that left after it: that copy was lost, not held
   up. If the probe reaches its deadline unanswered, the next held operation probes.
3. **Dedup by time, refuse when full.** The receiver remembers each id with the answer it gave
   until its own ``now + horizon + dedup_slack``, refreshed by every copy, so a copy the sender
   may still send is answered from memory, never delivered twice. The memory holds at most
   ``dedup_capacity`` ids; when it is full a new id is refused (NACK ``busy``, not delivered,
   ``dedup.refused``), never made room for by forgetting a live id. Ids are released earlier
   when their sender says it is done with them: each copy carries ``done_below``, the lowest id
   its sender still has open; the receiver forgets that life's ids below it
   (``dedup.released``) and keeps one *floor* per sender life instead, for as long as those ids
   would have been kept, which turns away any late copy below it (``dedup.finished``: not
   delivered, not answered; its sender already has its outcome).
4. **Negative answers are remembered too.** ``unknown_name`` and ``inbox_full`` are final: the
   receiver remembers them like ``ok``, so every later copy gets the same answer and a sender
   that reported *not delivered* was right. ``busy`` is per copy (the receiver could not
   remember it); the sender reports *not delivered* for it only once every copy it sent is
   accounted, and otherwise keeps retrying: room may come back.
5. **The deadline decides between the two failures.** At the deadline a send whose copies are
   all accounted failed is *not delivered* (with the last reason: ``no_route``, ``hop_limit``,
   ``busy``); one with a copy unaccounted is *unknown* (``timeout``). A request that was
   acknowledged but not answered is *unknown* (``no_reply``). Closing fails what is pending the
   same way, with the reason ``closed``.
6. **Idempotency keys.** A send may carry a key; the receiver remembers the *first outcome*
   of ``(sender actor, target actor, key)`` (delivered, or why not) for ``key_retention``
   seconds (at most ``key_capacity`` keys; a new key that finds the table full is refused
   ``busy`` and not remembered) and answers every later message with that key the same way,
   without a second delivery. So a caller that got *unknown* may retry with the same key within
   ``key_retention`` and the message is in the inbox at most once, and a *not delivered* answer
   to a keyed message holds for every copy of every send with that key (even a late copy of an
   earlier attempt). A key that was refused stays refused: send under a new key to try again.
7. **Hand-over loses nothing.** Each actor's inbox numbers its items (``seq``). :meth:`take`
   lends items without removing them; :meth:`ack` removes them up to the last one the actor
   really consumed. A hand-over that fails (a lost poll reply, a consumer that stopped in the
   middle of a batch) is repeated by the next ``take``. :meth:`unregister` returns what was
   never acknowledged, so leaving never drops silently.
8. **Publications** are handed to each subscriber of this node once per call of
   :meth:`publication` (the broadcast layer calls it once per message); one that finds an inbox
   full is counted (``publish.inbox_full``), added to the subscriber's ``missed`` count and
   reported as a :class:`Missed` action, never silently dropped.
9. **Remote garbage never raises.** Values outside what the wire carries are counted under
   ``dropped.<cause>``; local misuse (bad names, a timeout longer than ``max_timeout``) raises
   :class:`DeliveryUsageError`.

Known limits, stated in the README's delivery contract: a receiving node that restarts forgets
its dedup and key memory (a copy retried into its new life may be delivered again); a copy held
in the network longer than ``dedup_slack`` past its sender's deadline, or a network that
duplicates an unkeyed copy that was refused ``busy``, can be delivered after the sender gave up;
a receiver whose clock jumps forward by more than ``dedup_slack`` forgets ids early (the agent
drives this core with a monotonic clock); a sender flooding a node can fill its id memory, and
then everyone's new messages to that node are refused ``busy`` until ids expire.

Driving it (the agent's :class:`~ray_hyparview.agent.meshnode.MeshNode` does exactly this; a
simulator does the same without asyncio):

* ``ref, actions = send(src, dst, node, payload, now=, timeout=, kind=, key=)`` after resolving
  the target actor's node; ``reply(item.request, payload, now=)`` for a request.
* For each ``Route(node, message, ref, attempt)``: encode ``message`` (``ray_hyparview.wire``),
  hand the bytes to the router (``frame_id, acts = router.route(node, data, now=)``) and keep
  ``frame_id -> (ref, attempt)`` when ``ref``; on the router's ``Undeliverable(frame_id, reason)``
  call ``route_failed(ref, attempt, reason, now=)``. A forgotten frame only makes an outcome
  *unknown* instead of *not delivered*.
* For the router's ``Arrived(source, payload)``: decode the payload and, if it is a
  :class:`MeshSend`, :class:`MeshAck` or :class:`MeshReply`, call ``receive(source, message,
  now=)``; count anything else. Publications delivered by Plumtree go to ``publication(...)``.
* ``Completed(ref, reply)`` and ``Failed(ref, outcome, reason)`` end operation ``ref`` (exactly
  one of them per ref, at the latest at its deadline); ``InboxReady(name)`` wakes a poller;
  ``Missed(name, topic, origin)`` is worth a log line.
* Hand-over: ``take(name, limit=)`` lends items, ``ack(name, seq)`` removes what the actor
  consumed, ``unregister(name)`` returns what is left.
* Call ``on_timer(now=)`` when ``next_deadline()`` is due; ``close(now=)`` when shutting down.

Counters (``counters``): ``send.<kind>``, ``send.local``, ``send.retried``, ``send.lost_early``,
``send.held``, ``send.spurious``,
``send.ok``, ``rtt.samples``, ``send.failed.<outcome>.<reason>``, ``deliver.<status>``,
``deliver.duplicate``, ``dedup.refused``, ``dedup.expired``, ``key.repeat``, ``key.refused``,
``ack.ignored.<why>``, ``reply.ignored.<why>``, ``reply.sent``, ``inbox.taken``, ``inbox.acked``,
``publish.delivered``, ``publish.inbox_full``, ``dropped.<cause>``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from ray_hyparview.protocol.delivery_values import (
    KINDS,
    MAX_ATTEMPT,
    MAX_HORIZON_MS,
    MAX_ID,
    MAX_KEY_LEN,
    MAX_NAME_LEN,
    MAX_PAYLOAD,
    STATUSES,
    Action,
    Completed,
    DeliveryConfig,
    DeliveryMessage,
    DeliveryUsageError,
    Failed,
    InboxItem,
    InboxReady,
    MeshAck,
    MeshPublish,
    MeshReply,
    MeshSend,
    Missed,
    Outcome,
    Route,
)
from ray_hyparview.protocol.peer import NodeId

__all__ = [
    "KINDS",
    "MAX_ATTEMPT",
    "MAX_HORIZON_MS",
    "MAX_ID",
    "MAX_KEY_LEN",
    "MAX_NAME_LEN",
    "MAX_PAYLOAD",
    "STATUSES",
    "Action",
    "Completed",
    "Delivery",
    "DeliveryConfig",
    "DeliveryMessage",
    "DeliveryUsageError",
    "Failed",
    "InboxItem",
    "InboxReady",
    "MeshAck",
    "MeshPublish",
    "MeshReply",
    "MeshSend",
    "Missed",
    "Outcome",
    "Route",
]

_FORGET_DELAY = 1.0


@dataclass(slots=True)
class _Outgoing:
    ref: int
    target: NodeId
    kind: str
    message: MeshSend
    deadline: float
    next_retry: float
    attempts: int = 0
    accounted: set[int] = field(default_factory=set)
    """Attempts known never to reach the actor (route failure, ``busy``)."""
    acked: bool = False
    last_reason: str = "no_route"
    first_sent: float = 0.0
    """When attempt 1 left (its ACK gives a round-trip sample)."""
    last_sent: float = 0.0
    """When the latest attempt left (likewise)."""


@dataclass(slots=True)
class _Silence:
    """A target that has not answered since ``probe``, an operation to it, timed out."""

    probe: int
    waiting: dict[int, None] = field(default_factory=dict)
    """Refs whose next copy waits for the target's next answer (insertion ordered)."""


@dataclass(slots=True)
class _Endpoint:
    name: str
    items: deque[InboxItem] = field(default_factory=deque)
    next_seq: int = 1
    lent: int = 0
    """Highest seq handed out by ``take``."""
    topics: set[str] = field(default_factory=set)
    missed: int = 0


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_text(value: object, low: int, high: int) -> bool:
    return type(value) is str and low <= len(value) <= high and value.isprintable()


class Delivery:
    """One node's delivery state; see the module comment for the rules."""

    def __init__(
        self,
        myself: NodeId,
        config: DeliveryConfig | None = None,
        *,
        rng: random.Random,
        incarnation: int,
    ) -> None:
        if not isinstance(myself, str) or not myself:
            raise DeliveryUsageError(f"myself must be a non-empty node id, got {myself!r}")
        if not _is_int(incarnation, 0, MAX_ID):
            raise DeliveryUsageError(f"incarnation must be an int in 0..2**63-1: {incarnation!r}")
        self.myself = myself
        self.config = config if config is not None else DeliveryConfig()
        self.incarnation = incarnation
        self.counters: Counter[str] = Counter()
        self._rng = rng  # kept for drivers that share one seed tree; no rule is random yet
        self._now = -math.inf
        self._next_id = 1
        self._outgoing: dict[int, _Outgoing] = {}
        self._timers: list[tuple[float, int]] = []  # (when, ref), lazily invalidated
        self._seen: dict[tuple[NodeId, int, int], tuple[str, float]] = {}  # -> (status, expiry)
        self._seen_heap: list[tuple[float, tuple[NodeId, int, int]]] = []
        self._by_life: dict[tuple[NodeId, int], dict[int, None]] = {}  # ids in arrival order
        self._floors: dict[tuple[NodeId, int], tuple[int, float]] = {}  # -> (floor, expiry)
        self._floors_heap: list[tuple[float, tuple[NodeId, int]]] = []
        self._open: list[int] = []  # refs of remote operations, lazily invalidated
        self._keys: dict[tuple[str, str, str], tuple[str, float]] = {}  # -> (status, expiry)
        self._keys_heap: list[tuple[float, tuple[str, str, str]]] = []
        self._endpoints: dict[str, _Endpoint] = {}
        self._inbox_bytes = 0  # payload bytes in every inbox here (at most inbox_bytes)
        # Round-trip estimate per target node: (smoothed, variation), least recently answered
        # first; at most config.rtt_nodes of them.
        self._rtt: dict[NodeId, tuple[float, float]] = {}
        # Per target node, when the latest copy it answered left (a lower bound), least
        # recently answered first; at most config.rtt_nodes of them.
        self._answered_sent: dict[NodeId, float] = {}
        # Targets with a timed-out copy out and no answer since (rule 2): at most one per
        # operation in flight, so bounded by them.
        self._silent: dict[NodeId, _Silence] = {}

    # --- queries ---------------------------------------------------------------------------------

    def registered(self, name: str) -> bool:
        return name in self._endpoints

    def names(self) -> list[str]:
        return sorted(self._endpoints)

    @property
    def inbox_bytes(self) -> int:
        """Payload bytes in every inbox of this node (at most ``config.inbox_bytes``)."""
        return self._inbox_bytes

    def pending(self, name: str) -> int:
        """Items in ``name``'s inbox not yet acknowledged (lent ones included)."""
        endpoint = self._endpoints.get(name)
        return len(endpoint.items) if endpoint is not None else 0

    def missed(self, name: str) -> int:
        """Publications ``name`` missed because its inbox was full."""
        endpoint = self._endpoints.get(name)
        return endpoint.missed if endpoint is not None else 0

    def in_flight(self) -> int:
        """Operations waiting for an answer."""
        return len(self._outgoing)

    def remembered(self) -> int:
        """Ids in the dedup memory."""
        return len(self._seen)

    def retry_timeout(self, node: NodeId) -> float:
        """Seconds before the first copy to ``node`` is sent again if unanswered: RFC 6298's
        RTO (smoothed round trip + 4 x its variation) of the answers from ``node``, within
        ``retry_interval .. retry_max_interval``; ``retry_interval`` before any answer."""
        config = self.config
        estimate = self._rtt.get(node)
        if estimate is None:
            return config.retry_interval
        srtt, rttvar = estimate
        return min(config.retry_max_interval, max(config.retry_interval, srtt + 4 * rttvar))

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` should run next (an early call is harmless)."""
        # Forgetting may be a little late (memory is only ever kept longer): one wake-up per
        # second at most for it, not one per id.
        heaps = (self._seen_heap, self._keys_heap, self._floors_heap)
        due = [h[0][0] + _FORGET_DELAY for h in heaps if h]
        timers = self._timers
        # Entries of finished operations are invalidated lazily. Drop them here, not in
        # on_timer: a driver that sleeps until a finished send's retry time would otherwise wake
        # once per message for nothing (each entry is popped once).
        while timers and timers[0][1] not in self._outgoing:
            heapq.heappop(timers)
        if timers:
            due.append(timers[0][0])
        return min(due) if due else None

    # --- names and the inbox ---------------------------------------------------------------------

    def register(self, name: str) -> None:
        """Open an inbox for actor ``name`` on this node."""
        if not _is_text(name, 1, MAX_NAME_LEN):
            raise DeliveryUsageError(f"a mesh name is 1..{MAX_NAME_LEN} printable chars: {name!r}")
        if name in self._endpoints:
            raise DeliveryUsageError(f"{name!r} is already registered here")
        self._endpoints[name] = _Endpoint(name)

    def unregister(self, name: str) -> list[InboxItem]:
        """Close ``name``'s inbox; returns the items it still held (never silently dropped)."""
        endpoint = self._endpoints.pop(name, None)
        if endpoint is None:
            return []
        self._inbox_bytes -= sum(len(item.payload) for item in endpoint.items)
        return list(endpoint.items)

    def subscribe(self, name: str, topic: str) -> None:
        self._endpoint(name).topics.add(topic)

    def unsubscribe(self, name: str, topic: str) -> None:
        self._endpoint(name).topics.discard(topic)

    def take(self, name: str, *, limit: int = 100, after: int = 0) -> list[InboxItem]:
        """Lend up to ``limit`` items from the head of ``name``'s inbox, skipping those whose
        seq is at most ``after`` (a lender that already holds them asks only for the rest).
        They stay there until :meth:`ack`; the next ``take`` lends them again."""
        endpoint = self._endpoints.get(name)
        if endpoint is None or limit <= 0 or not endpoint.items:
            return []
        held = endpoint.items
        # Seqs in an inbox are consecutive (appended in order, removed from the head only), so
        # the first item above ``after`` is found by arithmetic, not by a scan.
        start = max(0, after - held[0].seq + 1)
        items = list(itertools.islice(held, start, start + limit))
        if items:
            endpoint.lent = max(endpoint.lent, items[-1].seq)
            self.counters["inbox.taken"] += len(items)
        return items

    def ack(self, name: str, upto: int) -> int:
        """The actor consumed every item of ``name`` up to seq ``upto``: remove them. Only lent
        items can be acknowledged. Returns how many were removed."""
        endpoint = self._endpoints.get(name)
        if endpoint is None or not isinstance(upto, int):
            return 0
        upto = min(upto, endpoint.lent)
        removed = 0
        while endpoint.items and endpoint.items[0].seq <= upto:
            self._inbox_bytes -= len(endpoint.items.popleft().payload)
            removed += 1
        self.counters["inbox.acked"] += removed
        return removed

    # --- sending ---------------------------------------------------------------------------------

    def send(
        self,
        src_name: str,
        dst_name: str,
        node: NodeId,
        payload: bytes,
        *,
        now: float,
        timeout: float = 10.0,
        kind: str = "send",
        key: str = "",
    ) -> tuple[int, list[Action]]:
        """Send ``payload`` from actor ``src_name`` to actor ``dst_name`` on ``node``.

        Returns the operation's ``ref`` and the actions; the operation ends with exactly one
        :class:`Completed` or :class:`Failed` carrying that ref (for a request, ``Completed``
        carries the reply), at the latest at ``now + timeout``.
        """
        self._check_send(src_name, dst_name, node, payload, timeout=timeout, kind=kind, key=key)
        now = self._tick(now)
        ref = self._next_id
        self._next_id += 1
        self.counters["send." + kind] += 1
        deadline = now + timeout
        message = MeshSend(
            msg_id=ref,
            incarnation=self.incarnation,
            attempt=0,
            horizon_ms=0,
            src_name=src_name,
            dst_name=dst_name,
            kind=kind,
            key=key,
            payload=payload,
        )
        actions: list[Action] = []
        if node == self.myself:
            self.counters["send.local"] += 1
            status = self._accept(node, message, now, remember=False, actions=actions)
            if status != "ok":
                self._finish_failed(ref, "not_delivered", status, actions)
            elif kind == "send":
                self.counters["send.ok"] += 1
                actions.append(Completed(ref))
            else:
                out = _Outgoing(ref, node, kind, message, deadline, deadline, acked=True)
                self._outgoing[ref] = out
                heapq.heappush(self._timers, (deadline, ref))
            return ref, actions
        out = _Outgoing(ref, node, kind, message, deadline, now)
        self._outgoing[ref] = out
        heapq.heappush(self._open, ref)
        self._transmit(out, now, actions)
        return ref, actions

    def reply(
        self, request: tuple[NodeId, int, int], payload: bytes, *, now: float
    ) -> list[Action]:
        """Answer a request (``InboxItem.request``); not acknowledged."""
        if (
            not isinstance(request, tuple | list)
            or len(request) != 3
            or not isinstance(request[0], str)
            or not _is_int(request[1], 0, MAX_ID)
            or not _is_int(request[2], 1, MAX_ID)
        ):
            raise DeliveryUsageError(f"not a request handle: {request!r}")
        if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
            raise DeliveryUsageError(f"a payload is bytes of at most {MAX_PAYLOAD}")
        now = self._tick(now)
        node, incarnation, request_id = request[0], request[1], request[2]
        message = MeshReply(request_id=request_id, incarnation=incarnation, payload=payload)
        self.counters["reply.sent"] += 1
        if node == self.myself:
            actions: list[Action] = []
            self._on_reply(node, message, actions)
            return actions
        return [Route(node, message)]

    def route_failed(self, ref: int, attempt: int, reason: str, *, now: float) -> list[Action]:
        """Routing reported that copy ``attempt`` of operation ``ref`` will not arrive."""
        now = self._tick(now)
        out = self._outgoing.get(ref)
        if out is not None and 1 <= attempt <= out.attempts and not out.acked:
            out.accounted.add(attempt)
            out.last_reason = reason if reason in ("no_route", "hop_limit") else "no_route"
            if attempt == min(out.attempts, MAX_ATTEMPT):
                # The latest copy is known lost: there is no answer to wait for, so the next
                # copy goes after the plain interval, not after a timeout measured for copies
                # that do arrive (rule 2).
                retry = now + self.config.retry_interval
                if retry < out.next_retry:
                    out.next_retry = retry
                    self.counters["send.lost_early"] += 1
                    heapq.heappush(self._timers, (min(retry, out.deadline), out.ref))
        return []

    # --- receiving -------------------------------------------------------------------------------

    def receive(self, source: NodeId, message: object, *, now: float) -> list[Action]:
        """Handle one message that routing delivered here from node ``source``."""
        now = self._tick(now)
        actions: list[Action] = []
        if not _is_text(source, 1, 240):
            self._drop("bad_source")
            return actions
        match message:
            case MeshSend():
                self._on_send(source, message, now, actions)
            case MeshAck():
                self._on_ack(source, message, now, actions)
            case MeshReply():
                if not (
                    _is_int(message.request_id, 1, MAX_ID)
                    and _is_int(message.incarnation, 0, MAX_ID)
                    and isinstance(message.payload, bytes)
                ):
                    self._drop("bad_reply")
                else:
                    self._on_reply(source, message, actions)
            case _:
                self._drop("unknown_message")
        return actions

    def publication(
        self, origin: NodeId, topic: str, src_name: str, payload: bytes, *, now: float
    ) -> list[Action]:
        """The broadcast layer delivered a publication here (once per message): hand it to every
        local subscriber of ``topic``."""
        self._tick(now)
        actions: list[Action] = []
        for name in sorted(self._endpoints):
            endpoint = self._endpoints[name]
            if topic not in endpoint.topics:
                continue
            item = InboxItem(
                kind="publish", sender=src_name, payload=payload, topic=topic, sender_node=origin
            )
            if self._enqueue(endpoint, item, actions):
                self.counters["publish.delivered"] += 1
            else:
                endpoint.missed += 1
                self.counters["publish.inbox_full"] += 1
                actions.append(Missed(name, topic, origin))
        return actions

    def on_timer(self, *, now: float) -> list[Action]:
        """Retry, give up at deadlines, forget expired ids and keys."""
        now = self._tick(now)
        actions: list[Action] = []
        self._expire(now)
        while self._timers and self._timers[0][0] <= now:
            _, ref = heapq.heappop(self._timers)
            out = self._outgoing.get(ref)
            if out is None:
                continue
            if now >= out.deadline:
                self._give_up(out, actions)
            elif not out.acked and now >= out.next_retry:
                if self._hold(out):
                    heapq.heappush(self._timers, (out.deadline, ref))
                    continue
                self.counters["send.retried"] += 1
                self._transmit(out, now, actions)
            elif not out.acked:
                heapq.heappush(self._timers, (min(out.next_retry, out.deadline), ref))
            else:
                heapq.heappush(self._timers, (out.deadline, ref))
        return actions

    def close(self, *, now: float) -> list[Action]:
        """Fail every pending operation (reason ``closed``) and close every inbox."""
        self._tick(now)
        actions: list[Action] = []
        for ref in sorted(self._outgoing):
            out = self._outgoing[ref]
            maybe = out.acked or self._maybe_delivered(out)
            outcome: Outcome = "unknown" if maybe else "not_delivered"
            self._finish_failed(ref, outcome, "closed", actions)
        self._timers.clear()
        return actions

    # --- internals: sender -----------------------------------------------------------------------

    def _check_send(
        self,
        src_name: str,
        dst_name: str,
        node: NodeId,
        payload: bytes,
        *,
        timeout: float,
        kind: str,
        key: str,
    ) -> None:
        if not _is_text(src_name, 1, MAX_NAME_LEN) or not _is_text(dst_name, 1, MAX_NAME_LEN):
            raise DeliveryUsageError(f"mesh names are 1..{MAX_NAME_LEN} printable chars")
        if not isinstance(node, str) or not node:
            raise DeliveryUsageError(f"a node id is a non-empty string, got {node!r}")
        if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
            raise DeliveryUsageError(f"a payload is bytes of at most {MAX_PAYLOAD}")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= self.config.max_timeout
        ):
            raise DeliveryUsageError(
                f"timeout must be in (0, {self.config.max_timeout:g}] s, got {timeout!r}"
            )
        if kind not in KINDS:
            raise DeliveryUsageError(f"kind must be one of {KINDS}, got {kind!r}")
        if not _is_text(key, 0, MAX_KEY_LEN):
            raise DeliveryUsageError(f"a key is at most {MAX_KEY_LEN} printable chars")
        if key and kind != "send":
            raise DeliveryUsageError("idempotency keys are for sends, not requests")

    def _transmit(self, out: _Outgoing, now: float, actions: list[Action]) -> None:
        # Copies that may still be on their way: each doubles the wait for the next (a path
        # that is slow because it is full is not given more to carry).
        unaccounted = out.attempts - len(out.accounted)
        out.attempts += 1
        if out.attempts == 1:
            out.first_sent = now
        out.last_sent = now
        horizon = min(MAX_HORIZON_MS, max(0, math.ceil((out.deadline - now) * 1000)))
        copy = MeshSend(
            msg_id=out.ref,
            incarnation=self.incarnation,
            attempt=min(out.attempts, MAX_ATTEMPT),
            horizon_ms=horizon,
            done_below=self._done_below(),
            src_name=out.message.src_name,
            dst_name=out.message.dst_name,
            kind=out.kind,
            key=out.message.key,
            payload=out.message.payload,
        )
        wait = self.retry_timeout(out.target) * 2 ** min(unaccounted, 32)
        out.next_retry = now + min(wait, self.config.retry_max_interval)
        heapq.heappush(self._timers, (min(out.next_retry, out.deadline), out.ref))
        actions.append(Route(out.target, copy, out.ref, copy.attempt))

    def _hold(self, out: _Outgoing) -> bool:
        """Whether ``out``'s timed-out copy waits for its target's next answer (rule 2).

        A copy known lost is never held: nothing of it waits anywhere; nor one whose target
        answered a copy that left after it: copies get through, this one was most likely
        lost (TCP's fast retransmit reasons the same way). Otherwise the first timed-out
        operation to a target probes it, and until the target answers, every other timed-out
        copy to it is held. Answers to copies older than this one do not count: a target
        working through a queue answers those in order, before this one's turn comes.
        """
        if out.attempts == len(out.accounted):
            return False
        if self._answered_sent.get(out.target, -math.inf) > out.last_sent:
            return False
        silence = self._silent.get(out.target)
        if silence is None:
            self._silent[out.target] = _Silence(out.ref)
            return False
        if silence.probe == out.ref:
            return False
        silence.waiting[out.ref] = None
        out.next_retry = out.deadline
        self.counters["send.held"] += 1
        return True

    def _answered(self, out: _Outgoing, sent: float, now: float) -> None:
        """``out.target`` answered a copy of ``out`` that left at ``sent`` (or later)."""
        latest = max(sent, self._answered_sent.pop(out.target, -math.inf))
        self._answered_sent[out.target] = latest
        if len(self._answered_sent) > self.config.rtt_nodes:
            del self._answered_sent[next(iter(self._answered_sent))]
        silence = self._silent.pop(out.target, None)
        if silence is not None:
            self._end_silence(silence, answered_sent=sent, now=now)

    def _end_silence(self, silence: _Silence, *, answered_sent: float, now: float) -> None:
        """End a silence: each held copy is due now if a copy sent after its own was answered
        (its own is likely lost), else one fresh timeout from now (its answer is likely on
        the way behind the one that came)."""
        for ref in silence.waiting:
            out = self._outgoing.get(ref)
            if out is None or out.acked:
                continue
            if answered_sent > out.last_sent:
                out.next_retry = now
            else:
                out.next_retry = now + self.retry_timeout(out.target)
            heapq.heappush(self._timers, (min(out.next_retry, out.deadline), ref))

    def _done_below(self) -> int:
        """The lowest id still open here: every id below it is finished."""
        while self._open and self._open[0] not in self._outgoing:
            heapq.heappop(self._open)
        return self._open[0] if self._open else self._next_id

    @staticmethod
    def _maybe_delivered(out: _Outgoing) -> bool:
        return len(out.accounted) < out.attempts

    def _give_up(self, out: _Outgoing, actions: list[Action]) -> None:
        if out.acked:
            self._finish_failed(out.ref, "unknown", "no_reply", actions)
        elif self._maybe_delivered(out):
            self._finish_failed(out.ref, "unknown", "timeout", actions)
        else:
            self._finish_failed(out.ref, "not_delivered", out.last_reason, actions)

    def _finish_failed(
        self, ref: int, outcome: Outcome, reason: str, actions: list[Action]
    ) -> None:
        out = self._outgoing.pop(ref, None)
        if out is not None and (silence := self._silent.get(out.target)) is not None:
            silence.waiting.pop(ref, None)
            if silence.probe == ref:
                # The probe ended unanswered (its deadline, or closing): the copies it held
                # go through the rule again at once, and the first of them probes.
                del self._silent[out.target]
                self._end_silence(silence, answered_sent=math.inf, now=self._now)
        self.counters[f"send.failed.{outcome}.{reason}"] += 1
        actions.append(Failed(ref, outcome, reason))

    def _on_ack(self, source: NodeId, ack: MeshAck, now: float, actions: list[Action]) -> None:
        if not (
            _is_int(ack.msg_id, 1, MAX_ID)
            and _is_int(ack.incarnation, 0, MAX_ID)
            and _is_int(ack.attempt, 1, MAX_ATTEMPT)
            and ack.status in STATUSES
        ):
            self._drop("bad_ack")
            return
        out = self._outgoing.get(ack.msg_id)
        if ack.incarnation != self.incarnation:
            self.counters["ack.ignored.other_life"] += 1
            return
        if out is None or out.acked:
            self.counters["ack.ignored.late"] += 1
            return
        if source != out.target:
            self.counters["ack.ignored.wrong_node"] += 1
            return
        if ack.attempt > out.attempts:
            self.counters["ack.ignored.bad_attempt"] += 1
            return
        sent = out.first_sent  # the answered copy left then or later
        if out.attempts < MAX_ATTEMPT:  # below it, the attempt names one copy
            if ack.attempt == out.attempts:
                sent = out.last_sent
                self._observe_rtt(out.target, now - out.last_sent)
            elif ack.attempt == 1:
                self._observe_rtt(out.target, now - out.first_sent)
        if ack.attempt == 1 < out.attempts:  # the first copy came: the rest were not needed
            self.counters["send.spurious"] += 1
        self._answered(out, sent, now)
        if ack.status == "ok":
            if out.kind == "send":
                self._outgoing.pop(out.ref)
                self.counters["send.ok"] += 1
                actions.append(Completed(out.ref))
            else:
                out.acked = True  # now wait for the reply until the deadline
        elif ack.status == "busy":
            out.accounted.add(ack.attempt)
            out.last_reason = "busy"
            if not self._maybe_delivered(out):
                self._finish_failed(out.ref, "not_delivered", "busy", actions)
        else:  # unknown_name, inbox_full: the receiver remembers it for every copy
            self._finish_failed(out.ref, "not_delivered", ack.status, actions)

    def _observe_rtt(self, node: NodeId, sample: float) -> None:
        """RFC 6298 2.2 and 2.3: the first sample R sets SRTT = R, RTTVAR = R/2; each later
        one RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, then SRTT = 7/8 SRTT + 1/8 R."""
        sample = max(0.0, sample)
        self.counters["rtt.samples"] += 1
        estimate = self._rtt.pop(node, None)
        if estimate is None:
            srtt, rttvar = sample, sample / 2
        else:
            srtt, rttvar = estimate
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - sample)
            srtt = 0.875 * srtt + 0.125 * sample
        self._rtt[node] = (srtt, rttvar)
        if len(self._rtt) > self.config.rtt_nodes:
            del self._rtt[next(iter(self._rtt))]

    def _on_reply(self, source: NodeId, reply: MeshReply, actions: list[Action]) -> None:
        if reply.incarnation != self.incarnation:
            self.counters["reply.ignored.other_life"] += 1
            return
        out = self._outgoing.get(reply.request_id)
        if out is None or out.kind != "request":
            self.counters["reply.ignored.late"] += 1
            return
        if source != out.target:
            self.counters["reply.ignored.wrong_node"] += 1
            return
        self._answered(out, out.first_sent, self._now)
        self._outgoing.pop(out.ref)
        self.counters["reply.accepted"] += 1
        actions.append(Completed(out.ref, reply.payload))

    # --- internals: receiver ---------------------------------------------------------------------

    def _on_send(self, source: NodeId, m: MeshSend, now: float, actions: list[Action]) -> None:
        if not (
            _is_int(m.msg_id, 1, MAX_ID)
            and _is_int(m.incarnation, 0, MAX_ID)
            and _is_int(m.attempt, 1, MAX_ATTEMPT)
            and _is_int(m.horizon_ms, 0, MAX_HORIZON_MS)
            and _is_int(m.done_below, 0, MAX_ID)
            and _is_text(m.src_name, 1, MAX_NAME_LEN)
            and _is_text(m.dst_name, 1, MAX_NAME_LEN)
            and m.kind in KINDS
            and _is_text(m.key, 0, MAX_KEY_LEN)
            and isinstance(m.payload, bytes)
            and len(m.payload) <= MAX_PAYLOAD
        ):
            self._drop("bad_send")
            return
        life = (source, m.incarnation)
        if m.done_below:
            self._release(life, m.done_below, now)
        floor = self._floors.get(life)
        if floor is not None and m.msg_id < floor[0]:
            # Its sender has its answer or gave up: the copy can only be late. Not delivered,
            # not answered (nobody waits for the answer).
            self.counters["dedup.finished"] += 1
            return
        status = self._accept(source, m, now, remember=True, actions=actions)
        ack = MeshAck(msg_id=m.msg_id, incarnation=m.incarnation, attempt=m.attempt, status=status)
        actions.append(Route(source, ack))

    def _accept(
        self, source: NodeId, m: MeshSend, now: float, *, remember: bool, actions: list[Action]
    ) -> str:
        """Deliver ``m`` once; the same id again gets the same answer."""
        self._expire(now)
        dedup_key = (source, m.incarnation, m.msg_id)
        expiry = now + m.horizon_ms / 1000 + self.config.dedup_slack
        if remember:
            seen = self._seen.get(dedup_key)
            if seen is not None:
                self.counters["deliver.duplicate"] += 1
                if expiry > seen[1]:
                    self._remember(dedup_key, seen[0], expiry)
                return seen[0]
        key = (m.src_name, m.dst_name, m.key) if m.key else None
        if key is not None and key in self._keys:
            # A key answers every message that carries it with its first outcome; that needs
            # no id memory of its own, so it is answered even when the id memory is full.
            self.counters["key.repeat"] += 1
            status = self._keys[key][0]
            if remember and not self._full():
                self._remember(dedup_key, status, expiry)
            return status
        if key is not None and len(self._keys) >= self.config.key_capacity:
            self.counters["key.refused"] += 1
            self.counters["deliver.busy"] += 1
            return "busy"
        if remember and self._full():
            self.counters["dedup.refused"] += 1
            self.counters["deliver.busy"] += 1
            status = "busy"
        else:
            status = self._deliver(source, m, actions)
            if remember:
                self._remember(dedup_key, status, expiry)
        if key is not None:
            until = now + self.config.key_retention
            self._keys[key] = (status, until)
            heapq.heappush(self._keys_heap, (until, key))
        return status

    def _deliver(self, source: NodeId, m: MeshSend, actions: list[Action]) -> str:
        endpoint = self._endpoints.get(m.dst_name)
        if endpoint is None:
            status = "unknown_name"
        else:
            request = (source, m.incarnation, m.msg_id) if m.kind == "request" else None
            item = InboxItem(
                kind="request" if m.kind == "request" else "send",
                sender=m.src_name,
                payload=m.payload,
                request=request,
                sender_node=source,
            )
            status = "ok" if self._enqueue(endpoint, item, actions) else "inbox_full"
        self.counters["deliver." + status] += 1
        return status

    def _enqueue(self, endpoint: _Endpoint, item: InboxItem, actions: list[Action]) -> bool:
        if len(endpoint.items) >= self.config.inbox_capacity:
            return False
        if self._inbox_bytes + len(item.payload) > self.config.inbox_bytes:
            self.counters["inbox.bytes_full"] += 1
            return False
        self._inbox_bytes += len(item.payload)
        item = InboxItem(
            kind=item.kind,
            sender=item.sender,
            payload=item.payload,
            topic=item.topic,
            request=item.request,
            sender_node=item.sender_node,
            seq=endpoint.next_seq,
            life=self.incarnation,
        )
        endpoint.next_seq += 1
        endpoint.items.append(item)
        actions.append(InboxReady(endpoint.name))
        return True

    def _full(self) -> bool:
        return len(self._seen) + len(self._floors) >= self.config.dedup_capacity

    def _remember(self, key: tuple[NodeId, int, int], status: str, expiry: float) -> None:
        if key not in self._seen:
            self._by_life.setdefault((key[0], key[1]), {})[key[2]] = None
        self._seen[key] = (status, expiry)
        heapq.heappush(self._seen_heap, (expiry, key))
        if len(self._seen_heap) > 2 * len(self._seen) + 1024:  # refreshed ids leave stale rows
            self._seen_heap = [(e, k) for k, (_, e) in self._seen.items()]
            heapq.heapify(self._seen_heap)

    def _expire(self, now: float) -> None:
        heap = self._seen_heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            seen = self._seen.get(key)
            if seen is not None and seen[1] <= now:
                self._forget(key)
                self.counters["dedup.expired"] += 1
        floors = self._floors_heap
        while floors and floors[0][0] <= now:
            _, life = heapq.heappop(floors)
            floor = self._floors.get(life)
            if floor is not None and floor[1] <= now:
                del self._floors[life]
        keys = self._keys_heap
        while keys and keys[0][0] <= now:
            _, k = heapq.heappop(keys)
            pinned = self._keys.get(k)
            if pinned is not None and pinned[1] <= now:
                del self._keys[k]

    def _forget(self, key: tuple[NodeId, int, int]) -> None:
        del self._seen[key]
        life = (key[0], key[1])
        ids = self._by_life.get(life)
        if ids is not None:
            ids.pop(key[2], None)
            if not ids:
                del self._by_life[life]

    def _release(self, life: tuple[NodeId, int], below: int, now: float) -> None:
        """The sender of ``life`` finished every id below ``below``: forget them now, and keep
        one floor instead that turns away late copies for as long as their ids would have
        been kept (rule 3 holds: no copy below the floor is ever delivered)."""
        floor = self._floors.get(life)
        if floor is not None and below <= floor[0]:
            return
        until = floor[1] if floor is not None else -math.inf
        ids = self._by_life.get(life)
        while ids:
            msg_id = next(iter(ids))  # arrival order: an id that came early stays until expiry
            if msg_id >= below:
                break
            until = max(until, self._seen[(life[0], life[1], msg_id)][1])
            self._forget((life[0], life[1], msg_id))
            self.counters["dedup.released"] += 1
        if until > now:
            self._floors[life] = (below, until)
            heapq.heappush(self._floors_heap, (until, life))

    # --- internals: misc -------------------------------------------------------------------------

    def _endpoint(self, name: str) -> _Endpoint:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise DeliveryUsageError(f"{name!r} is not registered on this node")
        return endpoint

    def _tick(self, now: float) -> float:
        # Time never goes backwards inside the core, whatever the driver's clock does.
        self._now = max(self._now, now)
        return self._now

    def _drop(self, cause: str) -> None:
        self.counters["dropped." + cause] += 1
