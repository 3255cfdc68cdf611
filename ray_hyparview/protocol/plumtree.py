"""Plumtree (epidemic broadcast trees) as a pure state machine.

Theory of operation
===================

Leitão, Pereira and Rodrigues, "Epidemic Broadcast Trees" (SRDS 2007), broadcast over the
HyParView active view by splitting each node's neighbours in two sets:

* *eager push* peers receive the full message (GOSSIP) as soon as it arrives;
* *lazy push* peers receive only its id (IHAVE), later and in batches.

Every neighbour starts eager (section 3.3: the first broadcast floods). A node that receives a
message it already has moves the sender to its lazy set and answers PRUNE, so the sender does the
same: after one broadcast the eager links are the first-arrival tree of that broadcast, a spanning
tree, and the other active links carry only ids. When an IHAVE announces a message that has not
arrived within ``ihave_timeout`` (the paper's *timeout1*), the tree is broken above us: we send
GRAFT to the announcer, which moves the link back to eager and answers with the message; if that
answer does not come within ``graft_timeout`` (*timeout2*) the next announcer is grafted
(section 3.6). With ``optimization_threshold`` set, a message that arrives by GOSSIP ``threshold``
or more rounds later than an IHAVE announced it swaps the tree link to the shorter path: GRAFT
(without asking for the message) to the announcer, PRUNE to the sender (section 3.8).

The membership layer drives the neighbour set: ``neighbor_up`` / ``neighbor_down`` are HyParView's
PeerUp / PeerDown (section 3.5). Plumtree keeps one tree for all topics; the topic travels with
the payload and the layer above filters on it.

The rules this file keeps, beyond the paper's (each departure is marked ``DEPARTURE`` below):

1. Message ids are ``(origin, origin incarnation, sequence)``: unique cluster-wide without
   hashing payloads, and a restarted origin (new incarnation) never collides with its past life.
2. Exactly once. Each message is delivered at most once per node: ids are remembered for
   ``seen_retention`` seconds (at most ``seen_max`` of them); when an id is forgotten, the highest
   forgotten sequence number of its origin is kept as a watermark and anything at or below it
   counts as already seen (dropped as ``dropped.stale``). A message delivered late by more than
   the retention is lost rather than delivered twice.
3. Links are symmetric in the tree: every change of a link's state (PRUNE, GRAFT, the section 3.8
   swap) is made on both ends, so eager links at quiescence form an undirected spanning tree.
4. Bounded memory: payloads answerable to GRAFT (``payload_cache_max``, ``payload_retention``),
   missing-message records (``missing_max``) and per-peer IHAVE queues (``ihave_batch_max``, the
   queue is flushed when full) all have a cap.
5. Only neighbours count. GOSSIP from a node that is not (or no longer) a neighbour is still
   delivered and forwarded, but links are only ever changed for current neighbours, and IHAVE,
   GRAFT and PRUNE from anyone else are dropped (``dropped.not_neighbor``).
6. Remote garbage never raises: it is dropped and counted under ``dropped.<cause>``.
7. Only what the wire carries. Every field has the range its wire field has (the ``MAX_*``
   constants below, which :mod:`ray_hyparview.wire` uses for the field widths): a message with a
   value outside it is dropped and counted, and every value the core derives stays inside it, so
   the codec can encode everything this core emits. The round (one byte on the wire) saturates
   at :data:`MAX_ROUND` instead of growing past it (DEPARTURE: the paper's round is unbounded; a
   saturated round only blunts the section 3.8 comparison on paths longer than 255 hops).
8. Concurrent origins share one tree without tearing it (DEPARTURE). The paper prunes a link
   on every duplicate and swaps links for the origin at hand (section 3.8); with several
   origins in flight at once, each duplicate prunes a link that was redundant for *its*
   message but may be the only path of another, and each swap shortens one origin's path by
   cutting another's. When 100 nodes broadcast at once, the eager links left were far from
   spanning and most messages had to be pulled level by level with IHAVE and GRAFT (p99 of 3 s
   with 1 s timers). So: a duplicate from a neighbour that brought a *first* copy less than
   ``prune_grace`` seconds ago does not prune it (``prune.deferred``); the next duplicate
   after the grace does. And no section 3.8 swap is made while new messages of different
   origins arrived less than ``prune_grace`` apart (``graft.optimize_skipped``). A single
   origin, or broadcasts further apart than the grace, see the paper's rules unchanged; a burst
   on a settled tree keeps the tree, and a burst on fresh links (all eager) keeps them until
   the first broadcast outside a burst prunes them.

Counters (``counters``) the simulator can read: ``sent.<Type>`` / ``received.<Type>`` per message
type, ``delivered``, ``duplicate``, ``graft.timer``, ``graft.optimize``,
``graft.optimize_skipped``, ``graft.unanswered``, ``graft.exhausted``, ``prune.deferred``,
``ihave.ids``, ``ihave.dropped_peer_down``, ``dropped.<cause>``. Relative message redundancy for
one broadcast over N nodes is ``sum(received.Gossip) / (N - 1) - 1`` (paper, section 4.1).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import KeysView
from dataclasses import dataclass, field, fields
from typing import Final

from ray_hyparview.protocol import limits
from ray_hyparview.protocol.errors import ConfigError, HyParViewError
from ray_hyparview.protocol.peer import NodeId

__all__ = [
    "MAX_ID_INT",
    "MAX_IHAVE_ENTRIES",
    "MAX_ORIGIN_LEN",
    "MAX_PAYLOAD",
    "MAX_ROUND",
    "MAX_TOPIC_LEN",
    "Action",
    "Deliver",
    "Gossip",
    "Graft",
    "IHave",
    "MsgId",
    "Plumtree",
    "PlumtreeConfig",
    "PlumtreeError",
    "PlumtreeMessage",
    "Prune",
    "SendTo",
]

MsgId = tuple[str, int, int]
"""A broadcast's id: ``(origin node id, origin incarnation, per-origin sequence number)``."""

# The wire's widths, by the names the rest of this module uses; their one definition is
# ray_hyparview.protocol.limits, which the codec builds its fields from.
MAX_ROUND: Final = limits.MAX_ROUND
"""Largest round (hops from the origin): the wire carries it in one byte. Rounds derived here
saturate at this value; a received round above it is dropped as ``dropped.out_of_range``."""

MAX_IHAVE_ENTRIES: Final = limits.MAX_IHAVE_ENTRIES
"""Most ``(msg_id, round)`` pairs in one IHAVE on the wire; ``ihave_batch_max`` may not exceed
it, and only this many are read from a longer one (``dropped.ihave_too_long``)."""

MAX_ID_INT: Final = limits.U64_MAX
"""Largest origin incarnation and sequence number in a message id (unsigned 64-bit fields)."""

MAX_ORIGIN_LEN: Final = limits.MAX_PEER_ID_BYTES
"""Longest origin node id in a message id, in UTF-8 bytes (printable only, as on the wire)."""

MAX_TOPIC_LEN: Final = limits.MAX_TEXT
"""Longest topic, in characters (printable only, as on the wire)."""

MAX_PAYLOAD: Final = limits.MAX_ENVELOPE
"""Largest GOSSIP payload in bytes (the wire's field; the mesh's envelopes stay below it)."""

_IHAVE_BYTES_MAX = limits.MAX_ENVELOPE
"""Bound on one IHAVE's encoded size, under the codec's 64 KiB frame: 256 ids of long non-ASCII
origins would not fit, so a queue is also flushed when its estimated size reaches this."""


def _ihave_entry_bytes(msg_id: MsgId) -> int:
    """Upper bound on one announcement's msgpack size: origin at 4 bytes a character, two u64,
    a round and the array and string headers."""
    return 4 * len(msg_id[0]) + 24


class PlumtreeError(HyParViewError, ValueError):
    """The local caller passed a bad argument (e.g. a payload that is not bytes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlumtreeConfig:
    """Timers and bounds of the broadcast layer, validated on construction."""

    ihave_timeout: float = 0.2
    """The paper's *timeout1*: seconds to wait for a message announced by IHAVE before GRAFT.
    Should exceed a few link latencies, or the tree keeps being re-grafted needlessly; each
    torn tree level costs about this much (``benchmarks/plumtree_burst.py``)."""

    graft_timeout: float = 0.1
    """The paper's *timeout2*: seconds to wait for the answer to a GRAFT before grafting the
    next announcer (shorter than ``ihave_timeout``, as in the paper)."""

    lazy_flush_interval: float = 0.02
    """Seconds IHAVE ids are held to be batched per peer; 0 sends them at the end of each
    input (one IHAVE per peer per input)."""

    ihave_batch_max: int = 64
    """Most ids queued for one lazy peer; a full queue is flushed at once."""

    optimization_threshold: int | None = 3
    """Section 3.8: swap a tree link when GOSSIP arrives this many rounds after an IHAVE for the
    same message; ``None`` turns the optimisation off."""

    seen_retention: float = 120.0
    """Seconds a delivered id is remembered to discard duplicates."""

    seen_max: int = 100_000
    """Most ids remembered; the oldest is forgotten first (see the watermark rule)."""

    payload_retention: float = 30.0
    """Seconds a delivered payload is kept to answer GRAFT."""

    payload_cache_max: int = 10_000
    """Most payloads kept to answer GRAFT; the oldest goes first."""

    payload_cache_bytes: int = 32 * 1024 * 1024
    """Most payload bytes kept to answer GRAFT (32 MiB); the oldest goes first. With the count
    alone, 10,000 payloads of 60 KB would let a flood of broadcasts pin 600 MB on every node."""

    missing_max: int = 10_000
    """Most announced-but-missing messages tracked at once; further IHAVE ids are dropped."""

    prune_grace: float = 0.5
    """Seconds after a neighbour last brought a message first during which a duplicate from it
    does not prune its link (0: the paper's rule, every duplicate prunes). See rule 8."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "optimization_threshold" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be finite, got {value!r}")
        for name in ("ihave_timeout", "graft_timeout", "seen_retention", "payload_retention"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0, got {getattr(self, name)!r}")
        if self.prune_grace < 0:
            raise ConfigError(f"prune_grace must be >= 0, got {self.prune_grace}")
        if self.lazy_flush_interval < 0:
            raise ConfigError(f"lazy_flush_interval must be >= 0, got {self.lazy_flush_interval}")
        ints = (
            "ihave_batch_max",
            "seen_max",
            "payload_cache_max",
            "payload_cache_bytes",
            "missing_max",
        )
        for name in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.ihave_batch_max > MAX_IHAVE_ENTRIES:
            raise ConfigError(
                f"ihave_batch_max must be <= {MAX_IHAVE_ENTRIES} (one IHAVE on the wire),"
                f" got {self.ihave_batch_max}"
            )
        threshold = self.optimization_threshold
        if threshold is not None and (not isinstance(threshold, int) or threshold < 1):
            raise ConfigError(
                f"optimization_threshold must be an int >= 1 or None, got {threshold}"
            )


# --- messages ------------------------------------------------------------------------------------
# Fields are str / int / bytes / tuples of those (and None), so that any msgpack codec can carry
# them without custom hooks. The sender is not a field: the transport authenticates it.


@dataclass(frozen=True, slots=True, kw_only=True)
class Gossip:
    """A broadcast payload pushed eagerly along a tree link (paper, Algorithm 1)."""

    msg_id: MsgId
    """Cluster-unique id of the broadcast; ``msg_id[0]`` is its origin."""

    round: int
    """Hops the sender is from the origin (0 at the origin); the receiver is ``round + 1``."""

    topic: str
    """Application topic; Plumtree does not look at it."""

    payload: bytes
    """Application bytes."""

    @property
    def origin(self) -> NodeId:
        """The node that broadcast the message."""
        return self.msg_id[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class IHave:
    """Ids of messages the sender has, sent to lazy peers (Algorithm 1, batched per peer)."""

    announcements: tuple[tuple[MsgId, int], ...]
    """``(msg_id, round)`` pairs: the round at which the sender holds each message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Graft:
    """Move the link to eager push, and send ``msg_id`` if it is not ``None`` (section 3.6)."""

    msg_id: MsgId | None
    """The missing message, or ``None`` for a pure tree repair (section 3.8)."""

    round: int
    """The round the grafting node learnt from the IHAVE (informative)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Prune:
    """Move the link to lazy push: the receiver's GOSSIP was a duplicate here."""


PlumtreeMessage = Gossip | IHave | Graft | Prune
"""Every message of the broadcast protocol."""


@dataclass(frozen=True, slots=True)
class SendTo:
    """Send ``message`` to neighbour ``peer_id`` over its active link."""

    peer_id: NodeId
    message: PlumtreeMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Hand a broadcast to the application; emitted exactly once per message per node."""

    msg_id: MsgId
    topic: str
    payload: bytes
    origin: NodeId
    hops: int
    """Overlay hops from the origin along the path this copy took (0 at the origin)."""


Action = SendTo | Deliver
"""What the broadcast core asks of its driver."""


@dataclass(slots=True)
class _Missing:
    """An announced message we do not have (the paper's ``missing`` entries for one id)."""

    announcers: list[tuple[NodeId, int]] = field(default_factory=list)
    """``(peer, round)`` in arrival order; the first one still a neighbour is grafted next."""

    timer_at: float | None = None
    """When the running timer fires, or ``None`` when no timer runs."""


def _valid_text(value: str, max_len: int) -> bool:
    return len(value) <= max_len and value.isprintable()


def _msg_id_fault(value: object) -> str | None:
    """Why ``value`` is no message id the wire carries (a ``dropped.`` cause), or ``None``."""
    match value:
        case (str() as origin, int() as incarnation, int() as seq) if (
            origin and not isinstance(incarnation, bool) and not isinstance(seq, bool)
        ):
            if (
                limits.is_node_id(origin)
                and 0 <= incarnation <= MAX_ID_INT
                and 0 <= seq <= MAX_ID_INT
            ):
                return None
            return "out_of_range"
    return "malformed"


def _round_fault(value: object) -> str | None:
    """Why ``value`` is no round the wire carries (a ``dropped.`` cause), or ``None``."""
    if not isinstance(value, int) or isinstance(value, bool):
        return "malformed"
    return None if 0 <= value <= MAX_ROUND else "out_of_range"


class Plumtree:
    """One node's broadcast state; see the module comment for the rules."""

    def __init__(
        self,
        myself: NodeId,
        config: PlumtreeConfig | None = None,
        *,
        rng: random.Random,
        incarnation: int = 0,
    ) -> None:
        if not isinstance(myself, str) or not myself or not limits.is_node_id(myself):
            raise PlumtreeError(
                f"myself must be a printable node id of 1..{MAX_ORIGIN_LEN} chars, got {myself!r}"
            )
        if isinstance(incarnation, bool) or not isinstance(incarnation, int):
            raise PlumtreeError(f"incarnation must be an int, got {incarnation!r}")
        if not 0 <= incarnation <= MAX_ID_INT:
            raise PlumtreeError(f"incarnation must be in 0..{MAX_ID_INT}, got {incarnation}")
        self.myself = myself
        self.config = config if config is not None else PlumtreeConfig()
        self.incarnation = incarnation
        self.counters: Counter[str] = Counter()
        self._rng = rng
        self._seq = 0
        self._now = -math.inf
        # Insertion-ordered dicts used as sets: iteration order is deterministic.
        self._eager: dict[NodeId, None] = {}
        self._lazy: dict[NodeId, None] = {}
        self._seen: dict[MsgId, float] = {}  # id -> expiry, in expiry order
        self._watermark: dict[tuple[str, int], int] = {}  # (origin, incarnation) -> seq
        self._cache: dict[MsgId, tuple[float, Gossip]] = {}  # id -> (expiry, copy we hold)
        self._cache_bytes = 0  # payload bytes in _cache
        self._missing: dict[MsgId, _Missing] = {}
        self._timers: list[tuple[float, int, MsgId]] = []  # heap; stale entries skipped
        self._timer_seq = 0
        self._queues: dict[NodeId, list[tuple[MsgId, int]]] = {}
        self._queue_bytes: dict[NodeId, int] = {}  # peer -> estimated size of its queue
        self._useful: dict[NodeId, float] = {}  # neighbour -> when it last brought a first copy
        self._last_origin: tuple[NodeId, float] | None = None  # origin of the last new message
        self._concurrent_until = -math.inf  # several origins in flight: no section 3.8 swaps
        self._flush_at: float | None = None

    # --- views -----------------------------------------------------------------------------------

    @property
    def eager_peers(self) -> KeysView[NodeId]:
        """Neighbours that get full messages: this node's tree links."""
        return self._eager.keys()

    @property
    def lazy_peers(self) -> KeysView[NodeId]:
        """Neighbours that get only IHAVE."""
        return self._lazy.keys()

    def _is_neighbor(self, peer: NodeId) -> bool:
        return peer in self._eager or peer in self._lazy

    def _make_eager(self, peer: NodeId) -> None:
        self._lazy.pop(peer, None)
        self._eager[peer] = None

    def _make_lazy(self, peer: NodeId) -> None:
        self._eager.pop(peer, None)
        self._lazy[peer] = None

    # --- inputs ----------------------------------------------------------------------------------

    def neighbor_up(self, peer_id: NodeId, *, now: float) -> list[Action]:
        """A HyParView PeerUp: the new neighbour starts eager (section 3.5, NeighborUp)."""
        self._tick(now)
        if peer_id != self.myself and not self._is_neighbor(peer_id):
            self._eager[peer_id] = None
        return self._finish(now, [])

    def neighbor_down(self, peer_id: NodeId, *, now: float) -> list[Action]:
        """A HyParView PeerDown: forget the peer and its announcements (section 3.5)."""
        self._tick(now)
        self._eager.pop(peer_id, None)
        self._lazy.pop(peer_id, None)
        queue = self._queues.pop(peer_id, None)
        if queue:
            self.counters["ihave.dropped_peer_down"] += len(queue)  # nobody left to tell
        self._queue_bytes.pop(peer_id, None)
        self._useful.pop(peer_id, None)
        for entry in self._missing.values():
            entry.announcers = [(p, r) for p, r in entry.announcers if p != peer_id]
        return self._finish(now, [])

    def broadcast(self, payload: bytes, *, topic: str, now: float) -> tuple[MsgId, list[Action]]:
        """Start a broadcast; it is delivered here too, with ``hops == 0``."""
        if not isinstance(payload, bytes):
            raise PlumtreeError(f"payload must be bytes, got {type(payload).__name__}")
        if not isinstance(topic, str):
            raise PlumtreeError(f"topic must be a str, got {type(topic).__name__}")
        if not _valid_text(topic, MAX_TOPIC_LEN):
            raise PlumtreeError(f"topic must be printable, at most {MAX_TOPIC_LEN} chars")
        if len(payload) > MAX_PAYLOAD:
            raise PlumtreeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        if self._seq >= MAX_ID_INT:
            raise PlumtreeError("sequence numbers exhausted for this incarnation")
        self._tick(now)
        self._seq += 1
        msg_id: MsgId = (self.myself, self.incarnation, self._seq)
        gossip = Gossip(msg_id=msg_id, round=0, topic=topic, payload=payload)
        actions: list[Action] = []
        self._accept(gossip, None, now, actions)
        self.counters["broadcast"] += 1
        return msg_id, self._finish(now, actions)

    def receive(self, sender_id: NodeId, message: object, *, now: float) -> list[Action]:
        """Handle one message from ``sender_id`` (as authenticated by the transport)."""
        self._tick(now)
        actions: list[Action] = []
        match message:
            case Gossip():
                self.counters["received.Gossip"] += 1
                self._on_gossip(sender_id, message, now, actions)
            case IHave():
                self.counters["received.IHave"] += 1
                self._on_ihave(sender_id, message, now)
            case Graft():
                self.counters["received.Graft"] += 1
                self._on_graft(sender_id, message, actions)
            case Prune():
                self.counters["received.Prune"] += 1
                if self._is_neighbor(sender_id):
                    self._make_lazy(sender_id)
                else:
                    self._drop("not_neighbor")
            case _:
                self._drop("unknown_message")
        return self._finish(now, actions)

    def on_timer(self, *, now: float) -> list[Action]:
        """Fire every due missing-message timer and IHAVE flush (call at ``next_deadline``)."""
        self._tick(now)
        actions: list[Action] = []
        while self._timers and self._timers[0][0] <= now:
            deadline, _, msg_id = heapq.heappop(self._timers)
            entry = self._missing.get(msg_id)
            if entry is None or entry.timer_at != deadline:
                continue  # cancelled or re-armed
            self._graft_next(msg_id, entry, now, actions)
        return self._finish(now, actions)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called, or ``None`` if nothing is pending."""
        candidates: list[float] = []
        while self._timers:
            deadline, _, msg_id = self._timers[0]
            entry = self._missing.get(msg_id)
            if entry is not None and entry.timer_at == deadline:
                candidates.append(deadline)
                break
            heapq.heappop(self._timers)
        if self._flush_at is not None:
            candidates.append(self._flush_at)
        if self._seen:
            candidates.append(next(iter(self._seen.values())))
        if self._cache:
            candidates.append(next(iter(self._cache.values()))[0])
        return min(candidates) if candidates else None

    # --- handlers (paper, Algorithm 1) -----------------------------------------------------------

    def _on_gossip(self, sender: NodeId, gossip: Gossip, now: float, actions: list[Action]) -> None:
        topic: object = gossip.topic  # decoded remote data: check, not trust
        payload: object = gossip.payload
        if not isinstance(topic, str) or not isinstance(payload, bytes):
            self._drop("malformed")
            return
        fault = _msg_id_fault(gossip.msg_id) or _round_fault(gossip.round)
        if fault is None and not (
            _valid_text(gossip.topic, MAX_TOPIC_LEN) and len(gossip.payload) <= MAX_PAYLOAD
        ):
            fault = "out_of_range"
        if fault is not None:
            self._drop(fault)
            return
        neighbor = self._is_neighbor(sender)
        if self._is_seen(gossip.msg_id):
            self.counters["duplicate"] += 1
            if not neighbor:
                return
            useful = self._useful.get(sender)
            if useful is not None and now - useful < self.config.prune_grace:
                # Rule 8: the link brought a first copy of another message a moment ago.
                self.counters["prune.deferred"] += 1
                return
            # Algorithm 1: a duplicate means the sender's link is redundant in the tree.
            self._make_lazy(sender)
            self._send(sender, Prune(), actions)
            return
        if not neighbor:
            # DEPARTURE: the paper assumes every sender is a neighbour. A copy racing a
            # PeerDown/PeerUp is still delivered and forwarded, but does not shape the tree.
            self.counters["received.from_not_neighbor"] += 1
        announced = self._missing.pop(gossip.msg_id, None)  # cancels the timer
        relayed = Gossip(
            msg_id=gossip.msg_id,
            round=min(gossip.round + 1, MAX_ROUND),  # saturates: the wire's round is a byte
            topic=gossip.topic,
            payload=gossip.payload,
        )
        # Peers that announced the message have it: no IHAVE back to them (not in the paper).
        holders = {peer for peer, _ in announced.announcers} if announced is not None else set()
        self._accept(relayed, sender, now, actions, holders)
        if not neighbor:
            return
        self._useful[sender] = now
        self._make_eager(sender)
        if announced is not None:
            self._optimize(gossip, sender, announced, now, actions)

    def _accept(
        self,
        gossip: Gossip,
        sender: NodeId | None,
        now: float,
        actions: list[Action],
        holders: set[NodeId] | None = None,
    ) -> None:
        """Deliver a new message, remember it and push it on (eagerPush + lazyPush)."""
        msg_id = gossip.msg_id
        self._remember(msg_id, gossip, now)
        grace = self.config.prune_grace
        last = self._last_origin
        if last is not None and last[0] != msg_id[0] and now - last[1] < grace:
            self._concurrent_until = now + grace
        self._last_origin = (msg_id[0], now)
        actions.append(
            Deliver(
                msg_id=msg_id,
                topic=gossip.topic,
                payload=gossip.payload,
                origin=msg_id[0],
                hops=gossip.round,
            )
        )
        self.counters["delivered"] += 1
        for peer in self._eager:
            if peer != sender:
                self._send(peer, gossip, actions)
        for peer in self._lazy:
            if peer != sender and not (holders and peer in holders):
                self._enqueue_ihave(peer, msg_id, gossip.round, now, actions)

    def _optimize(
        self,
        gossip: Gossip,
        sender: NodeId,
        announced: _Missing,
        now: float,
        actions: list[Action],
    ) -> None:
        """Section 3.8: if an IHAVE came from much closer to the origin, use that link."""
        threshold = self.config.optimization_threshold
        if threshold is None:
            return
        best: tuple[NodeId, int] | None = None
        for peer, rnd in announced.announcers:
            if peer != sender and self._is_neighbor(peer) and (best is None or rnd < best[1]):
                best = (peer, rnd)
        if best is None:
            return
        peer, rnd = best
        if rnd < gossip.round and gossip.round - rnd >= threshold:
            if now < self._concurrent_until:
                # DEPARTURE (rule 8): the shorter path for this origin may be the only path of
                # another one in flight; swaps made for several origins at once cut the tree.
                self.counters["graft.optimize_skipped"] += 1
                return
            self.counters["graft.optimize"] += 1
            self._make_eager(peer)
            self._send(peer, Graft(msg_id=None, round=rnd), actions)
            self._make_lazy(sender)
            self._send(sender, Prune(), actions)

    def _on_ihave(self, sender: NodeId, ihave: IHave, now: float) -> None:
        if not self._is_neighbor(sender):
            self._drop("not_neighbor")
            return
        announcements: object = ihave.announcements  # decoded remote data: check, not trust
        if not isinstance(announcements, tuple | list):
            self._drop("malformed")
            return
        if len(announcements) > MAX_IHAVE_ENTRIES:
            self._drop("ihave_too_long")
        for item in announcements[:MAX_IHAVE_ENTRIES]:
            match item:
                case (msg_id, rnd):
                    fault = _msg_id_fault(msg_id) or _round_fault(rnd)
                case _:
                    fault = "malformed"
            if fault is not None:
                self._drop(fault)
                continue
            if self._is_seen(msg_id):
                continue
            entry = self._missing.get(msg_id)
            if entry is None:
                if len(self._missing) >= self.config.missing_max:
                    self._drop("missing_full")
                    continue
                entry = self._missing[msg_id] = _Missing()
            if entry.timer_at is None:
                self._arm(msg_id, entry, now + self.config.ihave_timeout)
            if all(p != sender for p, _ in entry.announcers):
                entry.announcers.append((sender, rnd))

    def _graft_next(
        self, msg_id: MsgId, entry: _Missing, now: float, actions: list[Action]
    ) -> None:
        """Timer(mID) expired: graft the first announcer still linked, re-arm with timeout2."""
        while entry.announcers:
            peer, rnd = entry.announcers.pop(0)
            if self._is_neighbor(peer):
                self.counters["graft.timer"] += 1
                self._make_eager(peer)
                self._send(peer, Graft(msg_id=msg_id, round=rnd), actions)
                self._arm(msg_id, entry, now + self.config.graft_timeout)
                return
        # Nobody left to ask. A later IHAVE starts over with a fresh timeout1.
        self.counters["graft.exhausted"] += 1
        del self._missing[msg_id]

    def _on_graft(self, sender: NodeId, graft: Graft, actions: list[Action]) -> None:
        if not self._is_neighbor(sender):
            self._drop("not_neighbor")
            return
        fault = _round_fault(graft.round)
        if graft.msg_id is not None:
            fault = _msg_id_fault(graft.msg_id) or fault
        if fault is not None:
            self._drop(fault)
            return
        self._make_eager(sender)
        if graft.msg_id is None:
            return
        cached = self._cache.get(graft.msg_id)
        if cached is None:
            # Expired from the payload cache (or never here): the grafter asks someone else.
            self.counters["graft.unanswered"] += 1
            return
        self._send(sender, cached[1], actions)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        """Time never runs backwards here; expire what is due."""
        now = max(now, self._now)
        self._now = now
        while self._seen:
            msg_id, expiry = next(iter(self._seen.items()))
            if expiry > now:
                break
            self._forget(msg_id)
        while self._cache:
            msg_id, (expiry, _) = next(iter(self._cache.items()))
            if expiry > now:
                break
            self._uncache(msg_id)

    def _is_seen(self, msg_id: MsgId) -> bool:
        if msg_id in self._seen:
            return True
        floor = self._watermark.get((msg_id[0], msg_id[1]))
        if floor is not None and msg_id[2] <= floor:
            self.counters["dropped.stale"] += 1
            return True
        return False

    def _remember(self, msg_id: MsgId, gossip: Gossip, now: float) -> None:
        self._seen[msg_id] = max(now, self._now) + self.config.seen_retention
        while len(self._seen) > self.config.seen_max:
            self._forget(next(iter(self._seen)))
        old = self._cache.pop(msg_id, None)
        if old is not None:
            self._cache_bytes -= len(old[1].payload)
        self._cache[msg_id] = (max(now, self._now) + self.config.payload_retention, gossip)
        self._cache_bytes += len(gossip.payload)
        limit, byte_limit = self.config.payload_cache_max, self.config.payload_cache_bytes
        while self._cache and (len(self._cache) > limit or self._cache_bytes > byte_limit):
            self._uncache(next(iter(self._cache)))
            self.counters["cache.evicted"] += 1

    def _uncache(self, msg_id: MsgId) -> None:
        _expiry, gossip = self._cache.pop(msg_id)
        self._cache_bytes -= len(gossip.payload)

    @property
    def cache_bytes(self) -> int:
        """Payload bytes held to answer GRAFT (at most ``payload_cache_bytes``)."""
        return self._cache_bytes

    def _forget(self, msg_id: MsgId) -> None:
        del self._seen[msg_id]
        key = (msg_id[0], msg_id[1])
        self._watermark[key] = max(self._watermark.pop(key, -1), msg_id[2])  # re-insert: LRU
        while len(self._watermark) > self.config.seen_max:
            del self._watermark[next(iter(self._watermark))]

    def _arm(self, msg_id: MsgId, entry: _Missing, deadline: float) -> None:
        entry.timer_at = deadline
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, msg_id))

    def _enqueue_ihave(
        self, peer: NodeId, msg_id: MsgId, rnd: int, now: float, actions: list[Action]
    ) -> None:
        queue = self._queues.setdefault(peer, [])
        cost = _ihave_entry_bytes(msg_id)
        size = self._queue_bytes.get(peer, 0)
        if queue and size + cost > _IHAVE_BYTES_MAX:
            self._send(peer, IHave(announcements=tuple(queue)), actions)
            queue.clear()
            size = 0
        queue.append((msg_id, rnd))
        self._queue_bytes[peer] = size + cost
        self.counters["ihave.ids"] += 1
        if len(queue) >= self.config.ihave_batch_max:
            self._send(peer, IHave(announcements=tuple(queue)), actions)
            queue.clear()
            self._queue_bytes[peer] = 0
        elif self._flush_at is None:
            # Jitter de-synchronises the flushes of nodes that got the message together.
            interval = self.config.lazy_flush_interval
            self._flush_at = now + interval * (0.5 + 0.5 * self._rng.random())

    def _finish(self, now: float, actions: list[Action]) -> list[Action]:
        """End of every input: send the IHAVE batches that are due."""
        if self._flush_at is not None and (
            self.config.lazy_flush_interval == 0 or self._flush_at <= now
        ):
            self._flush_at = None
            # Every queued announcement is owed: a peer that turned eager since (a GRAFT, or its
            # GOSSIP arriving first) still needs the ids queued before, or it never learns of
            # them from us. An IHAVE to an eager peer is harmless. Departed peers have no queue
            # (``neighbor_down`` drops it).
            for peer, queue in self._queues.items():
                if queue:
                    self._send(peer, IHave(announcements=tuple(queue)), actions)
            self._queues.clear()
            self._queue_bytes.clear()
        return actions

    def _send(self, peer: NodeId, message: PlumtreeMessage, actions: list[Action]) -> None:
        self.counters["sent." + type(message).__name__] += 1
        actions.append(SendTo(peer, message))

    def _drop(self, cause: str) -> None:
        self.counters["dropped." + cause] += 1
