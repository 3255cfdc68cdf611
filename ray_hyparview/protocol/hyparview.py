"""The HyParView membership protocol as a pure state machine.

Theory of operation
===================

Leitão, Pereira and Rodrigues, "HyParView: a membership protocol for reliable gossip-based
broadcast" (DSN 2007), keep two views per node:

* the *active view*, small (``active_view_size``, about log10(N) + 1) and symmetric: every member
  holds an open, monitored link, and gossip floods along these links only;
* the *passive view*, larger (``passive_view_size``): ids the node knows of but is not linked to,
  refreshed by periodic SHUFFLE walks and used to replace failed active peers.

This module holds every protocol decision and nothing else. It reads no clock (each input takes
``now``), draws randomness only from the ``random.Random`` it is given, and does no I/O: each
input returns a list of :data:`~ray_hyparview.protocol.messages.Action` values that the driver
(the asyncio agent, or the simulator) carries out. ``next_deadline()`` says when to call
``on_timer`` again. Same seed, same inputs, same outputs.

The rules this file keeps, beyond the paper's (each departure is marked ``DEPARTURE`` below):

1. A link is up only when both sides agreed. The node that is asked (JOIN or NEIGHBOR) adds the
   asker and answers NEIGHBOR_REPLY(accepted); the asker adds the answerer when that reply comes.
   ``PeerUp`` is emitted at the moment a peer enters the active view, on each side.
2. Symmetry repair. A message that only travels along active links (FORWARD_JOIN, SHUFFLE,
   KEEPALIVE, and the frames of the layers above, which the driver reports with
   :meth:`heard`) from a node that is neither in our active view nor one we asked means that
   node believes in a link we do not have: we answer DISCONNECT so that it drops the link too
   (for the layers above, at most once per ``keepalive_interval`` per sender).
3. Incarnations. Every message carries its sender's incarnation. A message from an older
   incarnation than the one we know is dropped; a newer one means the peer restarted: its old
   link is reported failed, the new life goes to the passive view and the slot is refilled.
   Peers whose link failed or that left are kept for ``lost_retention`` seconds in a *lost*
   set, with the incarnation of that life, so that a late NEIGHBOR_REPLY cannot resurrect
   them; every entry expires, a message of a newer life drops it, and so does a FORWARD_JOIN
   walk for the peer (a join happening now: most likely a new life).
4. Isolation. A repair round ends on its last answer, or ``2 * neighbor_timeout`` after it
   began; a node whose active view stays below ``min_active_size`` then retries its passive
   view and re-joins through its contacts, round-robin, with capped exponential backoff. Ids
   evicted from the passive view go to a bounded *reserve* that a cut-off node recalls once
   its passive view runs dry (after a 95% crash, a fifth of the survivors know no live id in
   their passive view). A node whose first JOIN is accepted while it already holds active
   peers (it was the contact of others before it had joined) walks each of them into the
   overlay through the contact, as the contact walks it: otherwise they can close into a full
   island of their own (see ``_introduce``).
5. Partitions (the paper has no answer). Each node holds a component marker
   (:mod:`~ray_hyparview.protocol.merge`): the least id of its component, flooded along
   active links and kept alive by its root's beats. Now and then (lost peers first and soon
   after a failure, else once a ``merge_interval``) a node sends MERGE_PROBE to one known id
   that is not an active peer; the answer carries that node's marker. When the markers say
   another component, or a peer whose link failed answers, the node opens exactly one link
   (NEIGHBOR with priority MERGE: a free slot, or one eviction per ``2 * merge_interval`` at
   most on either side, no FORWARD_JOIN walk); the markers then meet and flood, and the
   other nodes see one component again. Splits of any length merge, and a heal costs a few
   links instead of rewiring the overlay.
6. Remote garbage never raises: messages that fail a check are dropped and counted in
   ``counters`` under ``dropped.<cause>``.
7. Silence is measured in time this node listened. An active peer is failed when nothing of
   it was read for ``keepalive_timeout``: any frame counts, a KEEPALIVE, any other membership
   message, or a frame of the layers above (the driver calls :meth:`heard`), since on a busy
   link the KEEPALIVE waits behind them. The keepalive tick comes every ``keepalive_interval``,
   and sooner when a peer's silence would pass the timeout before the next one, so a silent
   peer is failed at the timeout itself. A keepalive tick that runs late (the node itself was
   starved or stopped, and its peers' frames waited unread) credits the time it was late to
   every peer, and to the component marker's age (rule 5), whose next beat may be waiting
   unread as well. On a machine with every core taken, these kept live neighbours from being
   failed (``_keepalive_tick``) and live links from being evicted for a split that was not
   there.
"""

from __future__ import annotations

import enum
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, KeysView, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import StateError
from ray_hyparview.protocol.merge import ComponentMarker, Marker
from ray_hyparview.protocol.messages import (
    MESSAGE_TYPES,
    Action,
    ComponentMark,
    Disconnect,
    DownReason,
    ForwardJoin,
    Join,
    KeepAlive,
    MergeProbe,
    Message,
    Neighbor,
    NeighborReply,
    PeerDown,
    PeerUp,
    Priority,
    Send,
    Shuffle,
    ShuffleReply,
    build_component_mark,
    build_disconnect,
    build_forward_join,
    build_join,
    build_merge_probe,
    build_neighbor,
    build_neighbor_reply,
    build_shuffle,
    build_shuffle_reply,
)
from ray_hyparview.protocol.peer import NodeId, Peer

__all__ = ["HyParView"]

_T = TypeVar("_T")
_NONCE_SPAN = 2**53  # a shuffle nonce: 53 bits from one random() call, never 0

# Messages are tallied by type in two lists of ints, indexed by _KIND, and merged into
# ``counters`` on read: one message in, one out per event, and a ``Counter`` increment (a dict
# subclass, so every ``+=`` is two method calls through its type) was 7% of a compiled run.
_TYPES = MESSAGE_TYPES
_KIND: dict[type, int] = {cls: index for index, cls in enumerate(_TYPES)}
_RECEIVED = tuple("received." + cls.__name__ for cls in _TYPES)
_SENT = tuple("sent." + cls.__name__ for cls in _TYPES)
_SHUFFLE = _KIND[Shuffle]

_QUIET_MAX = 64
"""Senders remembered by each per-sender rate limit below (the oldest is forgotten first:
forgetting one costs at most one more answer to it)."""
_STRAY_QUIET = 0.5
"""Seconds between DISCONNECTs to one sender of one-sided frames when keepalives are off."""
_PROBE_QUIET_SHARE = 0.25
"""Answers to one sender's MERGE_PROBEs are at least this share of ``probe_interval_min``
apart. A node's probe timer fires at most every half ``probe_interval_min`` (its jitter draws
0.5 to 1.0 of the delay), so its probes are not refused; an escalation's probe may rarely
follow one at once. A refused answer costs an honest prober what a lost one costs: a LOW
probe is counted as failed, a HIGH one escalates to a HIGH NEIGHBOR request."""
_SILENCE_MARGIN = 0.001
"""Seconds after a peer's silence reaches ``keepalive_timeout`` that the tick checking it runs:
the check is strict (``>``), so a tick at exactly that moment would not see it."""

# Refused periodic refills before a short node escalates (see _escalate), doubling up to the cap.
_STARVE_MIN = 3
_STARVE_MAX = 48


class _Ask(enum.Enum):
    """What an outstanding request was for."""

    JOIN = "join"  # JOIN to a contact, on start or re-join
    PROBE = "probe"  # JOIN asked for by the driver (probe())
    NEIGHBOR = "neighbor"  # NEIGHBOR to a passive peer or to a FORWARD_JOIN newcomer
    # MERGE_PROBE: which component is that node in? Asked with priority HIGH by an escalation
    # (see _escalate): unless the answer says "ours", a HIGH NEIGHBOR request follows.
    MERGE_PROBE = "merge_probe"
    MERGE = "merge"  # NEIGHBOR(MERGE) to a node found in another component


# The two records below spell out their __init__: mypyc compiles written methods only, and the
# one ``dataclass`` generates would stay interpreted (see messages._direct_init).


@dataclass(slots=True)
class _Pending:
    peer: Peer
    ask: _Ask
    priority: Priority
    deadline: float
    marker: Marker | None

    def __init__(
        self,
        peer: Peer,
        ask: _Ask,
        priority: Priority,
        deadline: float,
        marker: Marker | None = None,
    ) -> None:
        self.peer = peer
        self.ask = ask
        self.priority = priority
        self.deadline = deadline
        self.marker = marker


@dataclass(slots=True)
class _Lost:
    peer: Peer
    incarnation: int
    reason: DownReason
    expires: float

    def __init__(self, peer: Peer, incarnation: int, reason: DownReason, expires: float) -> None:
        self.peer = peer
        self.incarnation = incarnation
        self.reason = reason
        self.expires = expires


class HyParView:
    """One node's HyParView state. Drive it with :meth:`join`, :meth:`receive`,
    :meth:`link_failed`, :meth:`on_timer` and :meth:`leave`; carry out what they return."""

    def __init__(
        self,
        myself: Peer,
        config: HyParViewConfig | None = None,
        *,
        rng: random.Random,
        incarnation: int = 0,
    ) -> None:
        if not isinstance(rng, random.Random):
            raise TypeError("rng must be a random.Random instance (seed it for reproducible runs)")
        self.myself = myself
        self.config = config if config is not None else HyParViewConfig()
        self.incarnation = incarnation
        self._events: Counter[str] = Counter()
        self._received = [0] * len(_TYPES)
        self._sent = [0] * len(_TYPES)
        self._rng = rng
        self._rand = rng.random
        # Insertion-ordered dicts, never sets: sampling order must not depend on hashing.
        self._active: dict[NodeId, Peer] = {}
        self._active_cache: tuple[Peer, ...] | None = None
        self._active_incarnation: dict[NodeId, int] = {}
        self._last_heard: dict[NodeId, float] = {}
        self._last_sent: dict[NodeId, float] = {}
        self._keepalives = self.config.keepalive_interval is not None
        self._passive: dict[NodeId, Peer] = {}
        self._reserve: dict[NodeId, Peer] = {}
        self._pending: dict[NodeId, _Pending] = {}
        self._lost: dict[NodeId, _Lost] = {}
        self._contacts: list[Peer] = []
        self._next_contact = 0
        self._repairing = False
        self._round_deadline: float | None = None
        self._tried: dict[NodeId, None] = {}
        self._last_shuffle: tuple[Peer, ...] = ()
        self._shuffle_nonce = 0  # of our open shuffle; 0: none open
        self._next_shuffle: float | None = None
        self._next_keepalive: float | None = None
        self._next_rejoin: float | None = None
        self._rejoin_attempts = 0
        self._next_probe: float | None = None
        # min(_next_probe, the marker's next beat), and the earliest of that and the shuffle,
        # keepalive, re-join and round timers: kept by _retime() wherever one of them changes
        # (a few times per shuffle period), so that next_deadline, called after every input,
        # reads one timer and the pending requests instead of comparing six.
        self._next_merge: float | None = None
        self._next_timer: float | None = None
        self._probe_delay = self.config.probe_interval_min
        self._starved = 0
        self._starve_limit = _STARVE_MIN
        self._component = ComponentMarker(myself, incarnation, self.config.merge_interval)
        self._merge_budget = -math.inf  # no eviction for a merge link before this time
        self._left = False
        self._joined = False  # one of our JOINs was accepted (see _introduce)
        # Senders of frames on a one-sided link, and until when they are not told again.
        self._stray_told: dict[NodeId, float] = {}
        # Senders of MERGE_PROBEs, and until when they are not answered again.
        self._probe_answered: dict[NodeId, float] = {}

    # ------------------------------------------------------------------ views

    @property
    def active_view(self) -> tuple[Peer, ...]:
        """Peers we hold a confirmed link to, oldest first."""
        return self._active_tuple()

    def _active_tuple(self) -> tuple[Peer, ...]:
        cached = self._active_cache
        if cached is None:
            cached = self._active_cache = tuple(self._active.values())
        return cached

    @property
    def passive_view(self) -> tuple[Peer, ...]:
        """Peers we know of but are not linked to."""
        return tuple(self._passive.values())

    @property
    def active_ids(self) -> KeysView[NodeId]:
        """The active view's ids, without copying."""
        return self._active.keys()

    @property
    def passive_ids(self) -> KeysView[NodeId]:
        """The passive view's ids, without copying."""
        return self._passive.keys()

    @property
    def pending_ids(self) -> KeysView[NodeId]:
        """Ids of the peers asked something that has not been answered yet (JOIN, NEIGHBOR,
        a merge probe), without copying."""
        return self._pending.keys()

    @property
    def reserve_ids(self) -> KeysView[NodeId]:
        """Ids recently evicted from the passive view, newest last (see ``reserve_size``)."""
        return self._reserve.keys()

    @property
    def counters(self) -> Counter[str]:
        """What this node has done, by name: messages received and sent by type
        (``received.Shuffle``, ``sent.Join``), drops by cause (``dropped.<cause>``), links
        (``peer_up``, ``peer_down.<reason>``), repairs, probes and re-joins. A new copy on each
        read; names that never happened are absent."""
        merged = Counter(self._events)
        for names, tallies in ((_RECEIVED, self._received), (_SENT, self._sent)):
            for name, count in zip(names, tallies, strict=True):
                if count:
                    merged[name] = count
        return merged

    @property
    def repairing(self) -> bool:
        """True while a repair round is open. A round ends on its last answer or, at the
        latest, ``2 * neighbor_timeout`` after it started."""
        return self._repairing

    @property
    def asking(self) -> int:
        """How many NEIGHBOR requests are waiting for an answer."""
        return sum(1 for p in self._pending.values() if p.ask is _Ask.NEIGHBOR)

    @property
    def has_left(self) -> bool:
        """True once :meth:`leave` was called."""
        return self._left

    def __repr__(self) -> str:
        return (
            f"HyParView({self.myself.id!r}, active={list(self._active)},"
            f" passive={len(self._passive)})"
        )

    # ----------------------------------------------------------------- inputs

    def join(self, contacts: Sequence[Peer], *, now: float) -> list[Action]:
        """Start: remember ``contacts`` for re-joins, start the timers and JOIN the first one.

        With no contacts (the first node of an overlay) the node simply waits to be joined.
        May be called again to add contacts; it then JOINs the next one.
        """
        if self._left:
            raise StateError("this node has left the overlay; make a new HyParView to re-join")
        known = {c.id for c in self._contacts}
        for given in contacts:
            if not isinstance(given, Peer):
                raise TypeError(f"contacts must be Peer values, got {given!r}")
            if given.id != self.myself.id and given.id not in known:
                self._contacts.append(given)
                known.add(given.id)
        if self._next_shuffle is None:
            self._next_shuffle = now + self._rng.uniform(0.0, self.config.shuffle_interval)
        if self._next_keepalive is None and self.config.keepalive_interval is not None:
            self._next_keepalive = now + self.config.keepalive_interval
        self._component.start(now)
        if self._next_probe is None:
            # A healthy node probes once a merge_interval; a failed link speeds it up.
            self._next_probe = now + self.config.merge_interval * self._rng.uniform(0.5, 1.0)
        self._retime()
        out: list[Action] = []
        contact = self._pick_contact()
        if contact is not None:
            self._ask(out, contact, _Ask.JOIN, Priority.HIGH, now)
        return out

    def learn(self, peers: Iterable[Peer], *, now: float) -> list[Action]:
        """Add peers found by discovery (a GCS listing, a config file) to the passive view."""
        if self._left:
            raise StateError("this node has left the overlay")
        self._merge_passive(tuple(peers), ())
        out: list[Action] = []
        if len(self._active) < self.config.min_active_size:
            self._start_repair(out, now)
        return out

    def probe(self, peer: Peer, *, now: float) -> list[Action]:
        """JOIN ``peer`` now.

        For a driver that knows more than the protocol does. The core merges components by
        itself (rule 5 of the module docstring), from about 1.5 ``merge_interval`` after a
        split; a layer that sees sooner that ``peer`` is alive but unreachable over the overlay
        (the mesh's router does) may call this. ``peer`` takes us in, evicting at random, and
        the FORWARD_JOIN walks link the rest: a heavier rewiring than the core's merge link.
        """
        if self._left:
            raise StateError("this node has left the overlay")
        out: list[Action] = []
        if (
            peer.id != self.myself.id
            and peer.id not in self._active
            and peer.id not in self._pending
        ):
            self._events["probe.external"] += 1
            self._ask(out, peer, _Ask.PROBE, Priority.HIGH, now)
        return out

    def heard(self, sender: NodeId, *, now: float) -> list[Action]:
        """A frame of another layer (routing, broadcast, the mesh) came from ``sender`` over
        its link: for an active peer, that is proof of life as good as a KEEPALIVE; from a
        node that is neither active nor asked, it is a link only the sender believes in, and
        the answer is DISCONNECT (rule 2), at most once per ``keepalive_interval`` per sender.

        The link carries every layer's frames in one order, so a KEEPALIVE queued behind a
        burst of data reaches the core only after that burst is read. On a starved machine
        that can take longer than ``keepalive_timeout``, and a live, busy neighbour was failed
        while its data was still arriving (24 false timeouts in one all-to-all run with the
        two cores shared by eight busy loops; the churn that followed cost most of the run).
        QUIC restarts its idle timer on any packet processed from the peer (RFC 9000, 10.1)
        for the same reason. A crashed or cut-off peer sends nothing, of any layer, so it is
        failed as before, ``keepalive_timeout`` after the last of its frames was read.

        The frames of a one-sided link are dropped by the layers here (they take frames only
        from active peers), while their sender keeps routing through us: before, it learnt
        of the one-sided link only when its next KEEPALIVE drew a DISCONNECT. Under load that
        was more than a second, and the frames dropped meanwhile (821 in one all-to-all run
        on starved cores) each waited out its sender's retransmission timer."""
        last_heard = self._last_heard  # keyed by exactly the active peers
        if sender in last_heard:
            last_heard[sender] = now
            return []
        if sender in self._pending or self._left:
            return []
        return self._tell_stray(sender, now)

    def _tell_stray(self, sender: NodeId, now: float) -> list[Action]:
        told = self._stray_told
        if told.get(sender, -math.inf) > now:
            return []
        peer = self._passive.get(sender) or self._reserve.get(sender)
        if peer is None:
            lost = self._lost.get(sender)
            if lost is None:
                self._events["stray.unknown"] += 1
                return []  # no endpoint to answer on; its own keepalives will draw one
            peer = lost.peer
        _quiet_until(told, sender, now + (self.config.keepalive_interval or _STRAY_QUIET))
        self._events["stray.told"] += 1
        out: list[Action] = []
        self._send(out, peer, self._disconnect(), now)
        return out

    def receive(self, sender: NodeId, message: Message, *, now: float) -> list[Action]:
        """Handle ``message``, which the transport says came from node ``sender``."""
        if self._left:
            return self._drop("after_leave")
        source_id = message.sender.id
        if source_id != sender:
            return self._drop("spoofed_sender")
        if source_id == self.myself.id:
            return self._drop("from_self")
        self._received[_KIND[type(message)]] += 1
        out: list[Action] = []
        incarnation = message.incarnation
        known = self._active_incarnation.get(source_id)
        restarted = False
        if known is not None:
            if incarnation == known:
                if self._keepalives:
                    self._last_heard[source_id] = now
            elif incarnation < known:
                return self._drop("stale_incarnation")
            else:
                # The peer restarted: whatever link we had with its earlier life is gone. It is
                # alive, so it goes to the passive view, and the slot is refilled below (a
                # restart seen through its DISCONNECT used to leave the view one short).
                self._remove_active(out, source_id, DownReason.FAILED)
                restarted = True
        was_lost = False
        if self._lost:
            lost = self._lost.get(source_id)
            if lost is not None:
                if incarnation < lost.incarnation:
                    return self._drop("stale_incarnation")
                if incarnation == lost.incarnation and lost.reason is DownReason.LEFT:
                    return self._drop("from_departed")
                # Any message proves the node alive again (a partition healed, or a restart).
                del self._lost[source_id]
                was_lost = incarnation == lost.incarnation
        # Most frequent first: a shuffle walk is most of the traffic, joins the next.
        match message:
            case Shuffle():
                self._on_shuffle(out, message, now)
            case ForwardJoin():
                self._on_forward_join(out, message, now)
            case ShuffleReply():
                self._on_shuffle_reply(out, message, now)
            case NeighborReply():
                self._on_neighbor_reply(out, message, was_lost, now)
            case Neighbor():
                self._on_neighbor(out, message, now)
            case Disconnect():
                self._on_disconnect(out, message, now)
            case Join():
                self._on_join(out, message, now)
            case KeepAlive():
                self._on_keepalive(out, message, now)
            case ComponentMark():
                self._on_mark(out, message, now)
            case MergeProbe():
                self._on_merge_probe(out, message, was_lost, now)
        if restarted and source_id not in self._active:
            self._events["peer_restarted"] += 1
            self._merge_passive((message.sender,), ())
            self._start_repair(out, now, exclude=source_id)
        if self._repairing:
            self._round_answered(now)
        return out

    def link_failed(self, peer: NodeId, *, now: float) -> list[Action]:
        """The driver saw the link to ``peer`` fail: a socket closed, a dial or send failed.

        Paper, section 4.3: a failed active peer is dropped (not moved to the passive view) and
        replaced from the passive view. A passive or pending peer that cannot be reached is
        forgotten.
        """
        if self._left:
            return []
        out: list[Action] = []
        if peer in self._active:
            self._fail_active(out, peer, now)
        elif peer in self._pending:
            self._pending_failed(out, self._pending.pop(peer), now)
        elif self._passive.pop(peer, None) is not None:
            self._events["passive.unreachable"] += 1
        if self._repairing:
            self._round_answered(now)
        return out

    def on_timer(self, *, now: float) -> list[Action]:
        """Run whatever is due at ``now``: timeouts, keepalives, shuffle, re-join, probes."""
        if self._left:
            return []
        out: list[Action] = []
        if self._pending:  # empty at most wake-ups: no list built
            for peer_id in [p for p, pend in self._pending.items() if pend.deadline <= now]:
                self._events["request.timeout"] += 1
                self._pending_failed(out, self._pending.pop(peer_id), now)
        if self._next_keepalive is not None and now >= self._next_keepalive:
            self._keepalive_tick(out, now)
        if self._next_shuffle is not None and now >= self._next_shuffle:
            self._next_shuffle = now + self.config.shuffle_interval
            self._retime()
            self._shuffle_tick(out, now)
        if self._next_rejoin is not None and now >= self._next_rejoin:
            self._next_rejoin = None
            self._retime()
            self._rejoin_tick(out, now)
        if self._next_merge is not None and now >= self._next_merge:
            if self._next_probe is not None and now >= self._next_probe:
                self._probe_tick(out, now)
            beat = self._component.next_beat
            if beat is not None and now >= beat and self._component.tick(now):
                self._flood_mark(out, None, now)
            self._retime()
        if self._round_deadline is not None and now >= self._round_deadline:
            # A round whose answers never all came (lost, or taken by other paths) ends here.
            self._events["repair.round_expired"] += 1
            self._end_round()
        self._schedule_rejoin(now)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must run next, or ``None`` when nothing is scheduled."""
        # Called after every input by both drivers: the common case (no request outstanding)
        # reads one attribute. After leave() both are empty, so None comes back.
        best = self._next_timer
        if self._pending:
            for pend in self._pending.values():
                t = pend.deadline
                if best is None or t < best:
                    best = t
        return best

    def leave(self, *, now: float) -> list[Action]:
        """Leave gracefully: DISCONNECT(leaving) to every active peer, so they repair at once."""
        if self._left:
            return []
        out: list[Action] = []
        for peer in self._active_tuple():
            self._send(
                out,
                peer,
                build_disconnect(sender=self.myself, incarnation=self.incarnation, leaving=True),
                now,
            )
            self._remove_active(out, peer.id, DownReason.LEFT)
        self._passive.clear()
        self._reserve.clear()
        self._pending.clear()
        self._lost.clear()
        self._left = True
        self._next_timer = None  # no timer runs after leaving (next_deadline reads this)
        return out

    # --------------------------------------------------------------- handlers

    def _on_join(self, out: list[Action], msg: Join, now: float) -> None:
        # Paper 4.2, JOIN: the contact takes the newcomer in (evicting if full) and starts one
        # FORWARD_JOIN walk per other active peer.
        new = msg.sender
        if new.id in self._active:
            # A re-join from a peer we still hold: confirm it, do not walk again.
            self._reply(out, new, True, now)
            return
        self._pending.pop(new.id, None)
        self._add_active(out, new, msg.incarnation, now)
        self._reply(out, new, True, now)
        walk = build_forward_join(
            sender=self.myself, incarnation=self.incarnation, new_peer=new, ttl=self.config.arwl
        )
        for peer in self._active_tuple():
            if peer.id != new.id:
                self._send(out, peer, walk, now)

    def _on_forward_join(self, out: list[Action], msg: ForwardJoin, now: float) -> None:
        if msg.sender.id not in self._active:
            self._one_sided(out, msg.sender, now)
            return
        new = msg.new_peer
        if new.id == self.myself.id:
            return
        if self._lost and self._lost.pop(new.id, None) is not None:
            # The walk is a JOIN happening now: the node lives, most likely a new life of the
            # one we lost (a restart after leaving or crashing). Its old entry must not swallow
            # the walk, or it comes back with one link instead of a full view (finding 8).
            self._events["lost.rejoined"] += 1
        # DEPARTURE: a walk is never longer than our own ARWL, whatever TTL it claims. A hostile
        # TTL of 255 on a network that duplicates frames multiplied into a storm (the fuzzer
        # found walks growing as (1 + dup)^ttl).
        arwl = self.config.arwl
        ttl = msg.ttl if msg.ttl < arwl else arwl  # compared, not min(): every walk hop
        # Paper 4.2, FORWARD_JOIN. The prose says "the receiver has only one active peer", the
        # pseudocode "zero": with zero the walk could never stop early, so we follow the prose.
        if ttl <= 0 or len(self._active) <= 1:
            self._link_newcomer(out, new, now)
            return
        if ttl == self.config.prwl:
            self._merge_passive((new,), ())
        # Every active peer but the sender (one, by the check above) and the newcomer, deleted
        # from a copy by position rather than testing each peer.
        active = self._active
        candidates = list(active.values())
        keys = list(active)
        sender_id = msg.sender.id
        i = keys.index(sender_id)
        del keys[i]
        del candidates[i]
        if new.id in active and new.id != sender_id:
            del candidates[keys.index(new.id)]
        if not candidates:
            self._link_newcomer(out, new, now)
            return
        nxt = _pick(self._rand, candidates)
        walk = build_forward_join(
            sender=self.myself, incarnation=self.incarnation, new_peer=new, ttl=ttl - 1
        )
        self._send(out, nxt, walk, now)

    def _link_newcomer(self, out: list[Action], new: Peer, now: float) -> None:
        # DEPARTURE: the paper adds the newcomer directly; we ask it first (NEIGHBOR, HIGH as
        # the paper's newcomer must accept) so that the link is confirmed on both sides.
        if new.id in self._active or new.id in self._pending:
            return
        self._ask(out, new, _Ask.NEIGHBOR, Priority.HIGH, now)

    def _on_neighbor(self, out: list[Action], msg: Neighbor, now: float) -> None:
        # Paper 4.3, NEIGHBOR: HIGH is always accepted, LOW only into a free slot.
        asker = msg.sender
        if asker.id in self._active:
            self._reply(out, asker, True, now)
            return
        # DEPARTURE: during a repair round, a slot promised to one of our own outstanding
        # requests is not free. Without this, three nodes repairing at once and asking each
        # other in a ring (A asks B, B asks C, C asks A) each accept the request they receive,
        # find themselves full when their own request is accepted, refuse that link with
        # DISCONNECT, and the freed slots start the same ring again, forever on a network
        # without jitter (the property test found it). A request from the very peer we are
        # asking fills that slot, so it is accepted. Outside a repair round (the periodic
        # refill) a free slot is free: two short nodes refilling at the same time must not
        # refuse each other, or islands of a healed partition would never merge.
        free = len(self._active) < self.config.active_view_size and (
            not self._repairing or self._missing() > 0 or asker.id in self._pending
        )
        if msg.priority is Priority.MERGE:
            # A node of another component asks for the one link that merges the two: a free
            # slot, or one eviction per 2 * merge_interval at most (issue 9, finding 7: a heal
            # used to evict 238 times among 40 nodes).
            free = len(self._active) < self.config.active_view_size
            if not free and now >= self._merge_budget:
                self._merge_budget = now + 2 * self.config.merge_interval
                self._events["merge.evicted"] += 1
                free = True
        if msg.priority is Priority.HIGH or free:
            self._pending.pop(asker.id, None)
            self._add_active(out, asker, msg.incarnation, now)
            self._reply(out, asker, True, now)
        else:
            self._events["neighbor.refused"] += 1
            self._reply(out, asker, False, now)
            self._merge_passive((asker,), ())

    def _on_neighbor_reply(
        self, out: list[Action], msg: NeighborReply, was_lost: bool, now: float
    ) -> None:
        peer = msg.sender
        pend = self._pending.pop(peer.id, None)
        if peer.id in self._active:
            return
        if pend is not None and pend.ask is _Ask.MERGE:
            self._merge_answered(out, pend, msg, now)
            return
        if not msg.accepted:
            self._events["repair.refused"] += 1
            self._merge_passive((peer,), ())
            # Paper 4.3: on refusal, try another passive peer. DEPARTURE: only while the node
            # is below min_active_size. Above it a refusal ends the round and the shuffle
            # timer retries one passive peer per period (escalating now and then): walking the
            # whole passive view after every refusal cost 62 refused NEIGHBORs per join at
            # 10,000 nodes, half of all messages, and healed no faster.
            if len(self._active) < self.config.min_active_size:
                self._repair(out, now)
            else:
                self._starved += 1
            return
        urgent = pend is not None and (
            pend.ask is not _Ask.NEIGHBOR or pend.priority is Priority.HIGH
        )
        full = len(self._active) >= self.config.active_view_size
        if (pend is None and (was_lost or full)) or (pend is not None and full and not urgent):
            # A late acceptance we no longer want (or one from a peer we declared dead): tell
            # the peer so that it drops its half of the link.
            self._events["reply.unwanted"] += 1
            self._send(out, peer, self._disconnect(), now)
            if not was_lost:
                self._merge_passive((peer,), ())
            return
        first_join = pend is not None and pend.ask is _Ask.JOIN and not self._joined
        if first_join:
            self._joined = True
        held = self._active_tuple() if first_join else ()
        self._add_active(out, peer, msg.incarnation, now)
        if pend is not None and pend.ask is _Ask.NEIGHBOR:
            self._events["repair.succeeded"] += 1
        if pend is not None and pend.ask is _Ask.PROBE:
            self._probe_succeeded()
        if held:
            self._introduce(out, peer, held, now)

    def _introduce(
        self, out: list[Action], contact: Peer, held: tuple[Peer, ...], now: float
    ) -> None:
        """DEPARTURE: our first JOIN was accepted while we already held active peers; walk
        each of them into the overlay through the contact, as the contact walks us (paper 4.2).

        The paper's newcomer joins with an empty view. Ours may not: a node whose own JOIN is
        still on its way can be the contact of others (the agents of one host all join the
        host's first agent, which joins another host). Those peers joined only what we were
        then: their FORWARD_JOIN walks ran among themselves. Once we are in, the HIGH requests
        our own walks bring in evict them one by one, each refills from its own passive view
        (full of the same few ids), and they close into a full island, every view full, that
        nothing short ever repairs; the merge rule needs 1.5 ``merge_interval`` (minutes at
        the defaults) to find it. One walk per peer held gives each a link into the overlay
        we joined instead.

        Only the first JOIN: the peers a re-joining node holds were in the overlay already,
        and walking them in again only adds evictions (the fuzzer's seed 9912 split a small
        overlay that way, the merge rule healing it after the bound)."""
        walks = 0
        for held_peer in held:
            if held_peer.id == contact.id:
                continue
            walk = build_forward_join(
                sender=self.myself,
                incarnation=self.incarnation,
                new_peer=held_peer,
                ttl=self.config.arwl,
            )
            self._send(out, contact, walk, now)
            walks += 1
        self._events["join.introduced"] += walks

    def _merge_answered(
        self, out: list[Action], pend: _Pending, msg: NeighborReply, now: float
    ) -> None:
        peer = msg.sender
        if not msg.accepted:
            self._events["merge.refused"] += 1
            return
        if len(self._active) >= self.config.active_view_size:
            if now < self._merge_budget:
                # Full again since we asked, and our one eviction is spent: undo the link.
                self._events["merge.unwanted"] += 1
                self._send(out, peer, self._disconnect(), now)
                return
            self._merge_budget = now + 2 * self.config.merge_interval
            self._events["merge.evicted"] += 1
        self._events["merge.linked"] += 1
        self._add_active(out, peer, msg.incarnation, now)
        theirs = pend.marker
        if theirs is not None:
            asked = pend.deadline - self.config.neighbor_timeout
            aged = Marker(
                theirs.root,
                theirs.root_incarnation,
                theirs.seq,
                theirs.age + max(0.0, now - asked),
                theirs.settled,
            )
            if self._component.offer(aged, now):
                self._flood_mark(out, peer.id, now)
        self._send(out, peer, self._mark_message(now), now)

    def _on_disconnect(self, out: list[Action], msg: Disconnect, now: float) -> None:
        # Paper 4.3, DISCONNECT: move the sender to the passive view and refill from it.
        peer = msg.sender
        pend = self._pending.pop(peer.id, None)
        if peer.id not in self._active:
            if pend is not None:
                self._pending_failed(out, pend, now)
            self._events["disconnect.ignored"] += 1
            return
        reason = DownReason.LEFT if msg.leaving else DownReason.DISCONNECTED
        self._remove_active(out, peer.id, reason)
        if msg.leaving:
            self._remember_lost(peer, msg.incarnation, DownReason.LEFT, now)
        else:
            self._merge_passive((peer,), ())
        self._start_repair(out, now, exclude=peer.id)

    def _on_shuffle(self, out: list[Action], msg: Shuffle, now: float) -> None:
        # Paper 4.4: the walk goes on while ttl > 0 and the receiver has another active peer;
        # where it stops, the receiver answers the origin with as many passive ids and merges.
        sender_id = msg.sender.id
        if sender_id not in self._active:
            self._one_sided(out, msg.sender, now)
            return
        # DEPARTURE: as for FORWARD_JOIN, a shuffle walk is never longer than our own TTL.
        ttl = msg.ttl - 1
        if ttl >= self.config.shuffle_ttl:  # compared, not min(): this runs on every hop
            ttl = self.config.shuffle_ttl - 1
        if ttl > 0 and len(self._active) > 1:
            # A uniform pick among the active peers other than the sender, without building a
            # list per hop (this is the most frequent message of all, so _pick, the active
            # tuple's cache and _send are inlined).
            active = self._active_cache
            if active is None:
                active = self._active_tuple()
            rand = self._rand
            n = len(active)
            nxt = active[int(rand() * n)]
            while nxt.id == sender_id:
                nxt = active[int(rand() * n)]
            walk = build_shuffle(
                sender=self.myself,
                incarnation=self.incarnation,
                origin=msg.origin,
                peers=msg.peers,
                ttl=ttl,
                nonce=msg.nonce,
            )
            self._sent[_SHUFFLE] += 1
            if self._keepalives and nxt.id in self._last_sent:
                self._last_sent[nxt.id] = now
            out.append(Send(nxt, walk))
            return
        if msg.origin.id == self.myself.id:
            return
        passive = self._passive
        k = len(msg.peers) if len(msg.peers) < len(passive) else len(passive)  # not min()
        answer = tuple(_sample_in_place(self._rand, list(passive.values()), k))
        reply = build_shuffle_reply(
            sender=self.myself, incarnation=self.incarnation, peers=answer, nonce=msg.nonce
        )
        self._send(out, msg.origin, reply, now)
        self._merge_passive(msg.peers, answer)

    def _on_shuffle_reply(self, out: list[Action], msg: ShuffleReply, now: float) -> None:
        # DEPARTURE: only the answer to our own open shuffle, proved by its nonce, may change
        # the passive view; one unsolicited reply once made 11 of 12 passive ids fake, and
        # shuffles spread them to every node.
        if not self._shuffle_nonce or msg.nonce != self._shuffle_nonce:
            self._events["dropped.unsolicited_shuffle_reply"] += 1
            return
        self._merge_passive(msg.peers, self._last_shuffle)
        self._last_shuffle = ()
        self._shuffle_nonce = 0

    def _on_keepalive(self, out: list[Action], msg: KeepAlive, now: float) -> None:
        self._one_sided(out, msg.sender, now)

    # ------------------------------------------------------------------ merge

    def _probe_message(self, now: float, *, reply: bool) -> MergeProbe:
        c = self._component
        return build_merge_probe(
            sender=self.myself,
            incarnation=self.incarnation,
            root=c.root,
            root_incarnation=c.root_incarnation,
            seq=c.seq,
            age=c.age(now),
            settled=c.settled(now),
            reply=reply,
        )

    def _mark_message(self, now: float) -> ComponentMark:
        c = self._component
        return build_component_mark(
            sender=self.myself,
            incarnation=self.incarnation,
            root=c.root,
            root_incarnation=c.root_incarnation,
            seq=c.seq,
            age=c.age(now),
            settled=c.settled(now),
        )

    def _flood_mark(self, out: list[Action], skip: NodeId | None, now: float) -> None:
        if not self._active:
            return
        mark = self._mark_message(now)
        for peer in self._active_tuple():
            if peer.id != skip:
                self._send(out, peer, mark, now)

    def _on_mark(self, out: list[Action], msg: ComponentMark, now: float) -> None:
        component = self._component
        if component.offer(msg, now):  # read in place: no Marker copy per mark
            self._flood_mark(out, msg.sender.id, now)
        elif (
            msg.sender.id in self._active
            and msg.root.id != component.root.id
            and component.fresh(now)
        ):
            # A neighbour with a worse root (a link across two former components): tell it
            # ours, it floods it on. Only a fresh marker is told, so two stale ones never
            # bounce between two nodes.
            self._send(out, msg.sender, self._mark_message(now), now)

    def _on_merge_probe(
        self, out: list[Action], msg: MergeProbe, was_lost: bool, now: float
    ) -> None:
        peer = msg.sender
        if not msg.reply:
            # Answering may dial a link (the prober is seldom a neighbour): a flood of probes
            # under one id must not make one dial each.
            answered = self._probe_answered
            if answered.get(peer.id, -math.inf) > now:
                self._events["dropped.probe_flood"] += 1
                return
            quiet = self.config.probe_interval_min * _PROBE_QUIET_SHARE
            _quiet_until(answered, peer.id, now + quiet)
            self._send(out, peer, self._probe_message(now, reply=True), now)
            return
        pend = self._pending.get(peer.id)
        if pend is None or pend.ask is not _Ask.MERGE_PROBE:
            self._events["dropped.unasked_probe_reply"] += 1
            return
        del self._pending[peer.id]
        if was_lost:
            self._probe_succeeded()
        if peer.id in self._active:
            return
        # It answered: alive. A lost entry of an earlier life was dropped by receive(); the
        # new life becomes a repair candidate again.
        self._merge_passive((peer,), ())
        if self._component.elsewhere(msg, now):
            self._events["merge.found"] += 1
        elif was_lost:
            # A peer whose link failed answers: a partition healed before the markers could
            # tell (a split shorter than 1.5 merge_interval). Linking it again is what the
            # paper's overlay would have; what bounds the cost is the eviction budget below.
            self._events["merge.relink"] += 1
        elif pend.priority is Priority.HIGH and not self._component.together(msg, now):
            self._escalate_high(out, peer, now)
            return
        else:
            if pend.priority is Priority.HIGH:
                self._events["repair.escalation_spared"] += 1
            return
        # Open exactly one link, with no FORWARD_JOIN walk. The marker is adopted (or ours
        # sent over) once the link is up, which tells the other nodes of both components that
        # they are one again.
        self._probe_delay = self.config.probe_interval_min
        if len(self._active) >= self.config.active_view_size and now < self._merge_budget:
            self._events["merge.deferred"] += 1
            return
        theirs = Marker(msg.root, msg.root_incarnation, msg.seq, msg.age, msg.settled)
        self._ask(out, peer, _Ask.MERGE, Priority.MERGE, now, marker=theirs)

    # ----------------------------------------------------------------- timers

    def _keepalive_tick(self, out: list[Action], now: float) -> None:
        interval = self.config.keepalive_interval
        assert interval is not None
        due = self._next_keepalive
        # DEPARTURE (the paper assumes timely processes): silence is measured in time this
        # node listened. A tick that comes late means the node itself did not run (a starved
        # or stopped process): its peers' frames wait unread in its own socket, so the time
        # it was late is credited to every peer, as Cassandra's failure detector ignores a
        # local pause. With the two cores shared by eight busy loops, an agent's timer ran 1
        # to 2 s late, and five of six keepalive timeouts in one run were on such ticks.
        # A tick late by less than a quarter interval is a timer's jitter and credits nothing,
        # so a driver that calls on time (the simulator, a quiet agent) sees no change.
        paused = now - due if due is not None and now - due > interval / 4 else 0.0
        if paused:
            self._events["keepalive.paused"] += 1
            # The component marker's age is listening time too: the root's next beat may be
            # waiting unread here, and the merge rule must not see a split in it.
            self._component.credit(paused, now)
        self._next_keepalive = now + interval
        timeout = self.config.keepalive_timeout
        last_heard = self._last_heard
        for peer in self._active_tuple():
            if paused:
                last_heard[peer.id] = min(now, last_heard[peer.id] + paused)
            if now - last_heard[peer.id] > timeout:
                self._events["keepalive.timeout"] += 1
                self._fail_active(out, peer.id, now)
            elif now - self._last_sent[peer.id] >= interval / 2:
                self._send(
                    out, peer, KeepAlive(sender=self.myself, incarnation=self.incarnation), now
                )
        if last_heard:  # keyed by exactly the active peers
            # The next tick comes just after the silence of the quietest peer reaches the
            # timeout, if that is sooner: a silent peer is failed ``keepalive_timeout`` after
            # its last frame, not up to one more interval later. A peer heard meanwhile only
            # makes that tick check and send as any other.
            silent = min(last_heard.values()) + timeout + _SILENCE_MARGIN
            self._next_keepalive = min(now + interval, silent)
        self._retime()

    def _shuffle_tick(self, out: list[Action], now: float) -> None:
        if self._active:
            cfg = self.config
            active = self._active_tuple()
            passive = self._passive
            sample = (
                *_sample(self._rand, active, min(cfg.shuffle_active, len(active))),
                *_sample(self._rand, passive.values(), min(cfg.shuffle_passive, len(passive))),
            )
            self._last_shuffle = sample
            self._shuffle_nonce = 1 + int(self._rand() * _NONCE_SPAN)
            walk = build_shuffle(
                sender=self.myself,
                incarnation=self.incarnation,
                origin=self.myself,
                peers=(self.myself, *sample),
                ttl=cfg.shuffle_ttl,
                nonce=self._shuffle_nonce,
            )
            self._send(out, _pick(self._rand, active), walk, now)
        # DEPARTURE: the paper refills only on a loss. A node left short after a loss round
        # (every candidate refused) retries one passive peer per shuffle period, so that views
        # fill up again as the overlay changes. If it keeps being refused it escalates now and
        # then: in a small cluster an eviction can cut off a few nodes whose LOW requests every
        # full node refuses forever (the paper's overlays are large enough for this to be
        # negligible; a Ray cluster of six nodes is not). A node with no link left asks with
        # HIGH; one with links asks the peer's component first and asks with HIGH unless the
        # settled markers say one component (see _escalate). The escalation period doubles up
        # to _STARVE_MAX.
        short = not self._repairing and self._missing() > 0  # once: it scans the requests
        if short and not self._passive:
            # Nobody to ask but the contacts: a node whose JOIN was lost can end up in a small
            # island with later joiners, every passive view empty, each at min_active_size or
            # more, so it never re-joins; asking a contact (one a period) merges the island.
            contact = self._pick_contact()
            if contact is not None:
                self._events["rejoin.short"] += 1
                self._ask(out, contact, _Ask.JOIN, Priority.HIGH, now)
        elif short:
            self._tried.clear()
            # Only a node hanging by one link (or below the minimum) escalates: in a large
            # overlay many nodes sit one short of full, and letting them all steal slots
            # kept about 2% of the links changing every period for nothing.
            escalate = self._starved >= self._starve_limit and len(self._active) <= max(
                1, self.config.min_active_size
            )
            if escalate:
                self._events["repair.escalated"] += 1
                self._starved = 0
                self._starve_limit = min(self._starve_limit * 2, _STARVE_MAX)
                if self._active:
                    self._escalate(out, now)
                    self._schedule_rejoin(now)
                    return
            self._repair(out, now, limit=1)

    def _escalate(self, out: list[Action], now: float) -> None:
        """DEPARTURE: a short node that still holds links and whose refills keep being refused
        asks one passive peer which component it is in (MERGE_PROBE) before it steals a slot
        with a HIGH request. If both markers are settled and name one component, it asks no
        more; if they name two, the merge rule links the two; otherwise (a marker unsettled,
        or no answer) it asks that peer with HIGH, as before (``_escalate_high``).

        Leitão et al. 2007, section 4.3, send HIGH only from a node whose active view is
        empty: such a node is cut off, so the link it takes is a gain whatever the eviction it
        causes costs. A node with links gains nothing by the trade unless it is cut off from
        the node it asks, and the eviction can cost a bridge: in fuzz seed 7986 (9 nodes,
        active view 3, so one node is always one short) a node of a full group of four, at 2
        links, asked with HIGH the one node of that group still linked to the other five; it
        evicted that link, and the two halves stayed apart, every view but the evicted node's
        full and its LOW requests refused, until the merge rule found them 8 s later. There
        the markers were settled and said one component, and that answer is what spares the
        bridge. But markers settle only 1.5 ``merge_interval`` after a change (180 s at the
        default): a pair cut off from a full group a minute ago (the property test's example)
        cannot be told from its group by them, and leaving it to the merge rule kept it apart
        for minutes. So only a settled "same component" stops the HIGH request; the node with
        no link left asks with HIGH at once (``_repair``)."""
        candidates = self._untried()
        if not candidates:
            return
        target = _pick(self._rand, candidates)
        self._tried[target.id] = None
        self._events["merge.probe"] += 1
        self._ask(out, target, _Ask.MERGE_PROBE, Priority.HIGH, now)

    def _escalate_high(self, out: list[Action], peer: Peer, now: float) -> None:
        """The answer to an escalation's MERGE_PROBE did not show ``peer`` in our component
        (its marker or ours unsettled, or no answer at all): ask it with HIGH, the paper's
        request of a node that may be cut off (section 4.3), if we are still short."""
        if peer.id in self._active or peer.id in self._pending or self._missing() <= 0:
            return
        self._events["repair.attempted"] += 1
        self._events["repair.escalated_high"] += 1
        self._ask(out, peer, _Ask.NEIGHBOR, Priority.HIGH, now)

    def _rejoin_tick(self, out: list[Action], now: float) -> None:
        if len(self._active) >= self.config.min_active_size:
            self._rejoin_attempts = 0
            return
        self._rejoin_attempts += 1
        self._events["rejoin"] += 1
        self._start_repair(out, now)
        contact = self._pick_contact()
        if contact is not None:
            self._ask(out, contact, _Ask.JOIN, Priority.HIGH, now)

    def _probe_tick(self, out: list[Action], now: float) -> None:
        """Expire lost entries, then ask one known id that is not an active peer which
        component it is in (see :mod:`ray_hyparview.protocol.merge`).

        Lost peers (the likeliest to be across a healed partition) come first, then the
        passive view, the reserve and the contacts: a partition of any length merges again as
        long as one node of a half knows one live id of the other. The delay doubles after
        each probe up to ``probe_interval_max`` and falls back to ``probe_interval_min`` when a
        link fails or another component is found. With nothing lost, one probe per
        ``merge_interval`` (jittered): a healthy overlay costs a probe and its answer per node
        and interval."""
        lost = self._lost
        if lost:
            for peer_id in [p for p, entry in lost.items() if entry.expires <= now]:
                del lost[peer_id]
        active, pending = self._active, self._pending
        candidates = [p.peer for p in lost.values() if p.peer.id not in pending]
        if candidates:
            delay = self._probe_delay
            self._probe_delay = min(delay * 2, self.config.probe_interval_max)
        else:
            # Nothing lost: a split shows in the markers 1.5 merge_interval after it began at
            # the earliest, so probing faster than once an interval finds nothing sooner.
            delay = self.config.merge_interval
        self._next_probe = now + delay * self._rng.uniform(0.5, 1.0)
        target = _pick(self._rand, candidates) if candidates else None
        if target is None:
            # Half of the probes go to the passive view, a quarter each to the reserve and to
            # the contacts (a standalone agent's contacts may be all it knows of the other
            # half after a long split). Picked without building the union: this runs on every
            # node once an interval.
            draw = self._rand()
            sources: tuple[dict[NodeId, Peer] | list[Peer], ...]
            sources = (self._passive, self._reserve, self._contacts)
            if draw >= 0.75:
                sources = (self._contacts, self._passive, self._reserve)
            elif draw >= 0.5:
                sources = (self._reserve, self._passive, self._contacts)
            for source in sources:
                if not source:
                    continue
                pool = tuple(source.values()) if isinstance(source, dict) else tuple(source)
                for _ in range(3):
                    peer = _pick(self._rand, pool)
                    if peer.id not in active and peer.id not in pending:
                        target = peer
                        break
                if target is not None:
                    break
        if target is not None:
            self._events["merge.probe"] += 1
            self._ask(out, target, _Ask.MERGE_PROBE, Priority.LOW, now)

    def _retime(self) -> None:
        """Recompute ``_next_merge`` and ``_next_timer`` from the timers they stand for; called
        wherever the shuffle, probe, beat, keepalive, re-join or round timer changes."""
        best, beat = self._next_probe, self._component.next_beat
        if best is None or (beat is not None and beat < best):
            best = beat
        self._next_merge = best
        for t in (
            self._next_shuffle,
            self._next_keepalive,
            self._next_rejoin,
            self._round_deadline,
        ):
            if t is not None and (best is None or t < best):
                best = t
        self._next_timer = best

    def _schedule_rejoin(self, now: float) -> None:
        if (
            self._next_rejoin is not None
            or len(self._active) >= self.config.min_active_size
            or self._repairing
            or self._waiting_on(_Ask.JOIN)
            or (not self._contacts and not self._passive)
        ):
            return
        cfg = self.config
        delay = min(cfg.rejoin_backoff_max, cfg.rejoin_backoff_initial * 2.0**self._rejoin_attempts)
        self._next_rejoin = now + delay * self._rng.uniform(0.5, 1.0)
        self._retime()

    # ----------------------------------------------------------------- repair

    def _missing(self) -> int:
        missing = self.config.active_view_size - len(self._active)
        if self._pending:  # asked every shuffle period by every node: skip the scan when idle
            for pend in self._pending.values():  # a loop, not sum() over a generator
                if pend.ask is _Ask.NEIGHBOR or pend.ask is _Ask.JOIN:
                    missing -= 1
        return missing

    def _start_repair(self, out: list[Action], now: float, exclude: NodeId | None = None) -> None:
        self._tried.clear()
        if exclude is not None:
            self._tried[exclude] = None
        self._repairing = True
        # Every round ends: on its last answer of any kind (see _round_answered) or, at the
        # latest, here. An open round blocks the periodic refill and the re-join.
        self._round_deadline = now + 2 * self.config.neighbor_timeout
        self._retime()
        self._repair(out, now)

    def _repair(self, out: list[Action], now: float, limit: int | None = None) -> None:
        """Ask passive peers to fill the free active slots (paper 4.3)."""
        missing = self._missing()
        if limit is not None:
            missing = min(missing, limit)
        if missing > 0:
            candidates = self._untried()
            if not candidates and self._reserve and len(self._active) < self.config.min_active_size:
                candidates = self._recall()
            if missing == 1 and candidates:
                picks = [_pick(self._rand, candidates)]
            else:
                picks = _sample_in_place(self._rand, candidates, min(missing, len(candidates)))
            for peer in picks:
                self._tried[peer.id] = None
                priority = Priority.LOW if self._active else Priority.HIGH
                self._events["repair.attempted"] += 1
                self._ask(out, peer, _Ask.NEIGHBOR, priority, now)
        if len(self._active) >= self.config.active_view_size or not self._waiting_on(_Ask.NEIGHBOR):
            self._end_round()
        self._schedule_rejoin(now)

    def _untried(self) -> list[Peer]:
        """The passive peers neither tried in this round nor waited on, in view order.

        Every node asks this each shuffle period while it is short: the few ids to leave out
        are deleted from a copy by position, instead of testing each of dozens of passive ids
        against both tables."""
        passive = self._passive
        candidates = list(passive.values())
        tried, pending = self._tried, self._pending
        if tried or pending:
            drop: list[NodeId] = []
            for pid in tried:
                if pid in passive:
                    drop.append(pid)
            for pid in pending:
                if pid in passive and pid not in tried:
                    drop.append(pid)
            if drop:
                keys = list(passive)
                for pid in drop:
                    i = keys.index(pid)
                    del keys[i]
                    del candidates[i]
        return candidates

    def _waiting_on(self, ask: _Ask) -> bool:
        """Whether a request of kind ``ask`` is outstanding. A loop, not ``any()`` over a
        generator: this runs after most answers while a round is open."""
        for pend in self._pending.values():  # noqa: SIM110 - see the docstring
            if pend.ask is ask:
                return True
        return False

    def _end_round(self) -> None:
        self._repairing = False
        if self._round_deadline is not None:
            self._round_deadline = None
            self._retime()

    def _round_answered(self, now: float) -> None:
        """A request of the round was answered (accepted, or overtaken by the peer's own
        request): with nothing left outstanding, the round is over. Before this, a round whose
        last answer was an acceptance that left the view short stayed open for good, and a
        node sat at one link with live passive ids (issue 9, finding 5)."""
        if self._repairing and not self._waiting_on(_Ask.NEIGHBOR):
            self._end_round()
            self._schedule_rejoin(now)

    def _recall(self) -> list[Peer]:
        """DEPARTURE: a node cut off with nothing left to try moves its reserve (ids evicted
        from the passive view, newest first) back into the passive view.

        After a crash of 95% of the nodes, a survivor's 30 passive ids are all dead with
        probability 0.95**30 = 21%; with 30 more ids recalled, 0.95**60 = 4.6%. The reserve
        costs no messages and is never shuffled, so a healthy overlay behaves exactly as the
        paper's; only a node that would otherwise wait for a stranger to find it looks further.
        """
        recalled: list[Peer] = []
        room = self.config.passive_view_size - len(self._passive)
        while self._reserve and room > 0:
            pid, peer = self._reserve.popitem()
            if pid in self._active or pid in self._passive or pid in self._lost:
                continue
            self._passive[pid] = peer
            recalled.append(peer)
            room -= 1
        self._events["reserve.recalled"] += len(recalled)
        return [p for p in recalled if p.id not in self._tried and p.id not in self._pending]

    def _pending_failed(self, out: list[Action], pend: _Pending, now: float) -> None:
        """A request was refused by the network (dial failed, timeout, disconnect)."""
        match pend.ask:
            case _Ask.NEIGHBOR:
                self._passive.pop(pend.peer.id, None)
                self._events["repair.failed"] += 1
                if self._repairing or not self._active:
                    self._repair(out, now)
            case _Ask.JOIN:
                self._events["join.failed"] += 1
                self._schedule_rejoin(now)
            case _Ask.PROBE:
                self._events["probe.failed"] += 1
            case _Ask.MERGE_PROBE:
                self._events["merge.probe_failed"] += 1
                if pend.priority is Priority.HIGH:
                    self._escalate_high(out, pend.peer, now)
            case _Ask.MERGE:
                self._events["merge.link_failed"] += 1

    def _probe_succeeded(self) -> None:
        # A lost peer answered: the partition (if that is what it was) has healed and we now
        # bridge it. The other lost peers are likely alive too: keep them as repair candidates.
        self._events["probe.succeeded"] += 1
        revived = tuple(
            lost.peer for lost in self._lost.values() if lost.reason is DownReason.FAILED
        )
        for peer in revived:
            del self._lost[peer.id]
        self._merge_passive(revived, ())
        self._probe_delay = self.config.probe_interval_min

    # ---------------------------------------------------------------- helpers

    def _drop(self, cause: str) -> list[Action]:
        self._events["dropped." + cause] += 1
        return []

    def _disconnect(self) -> Disconnect:
        return build_disconnect(sender=self.myself, incarnation=self.incarnation)

    def _send(self, out: list[Action], to: Peer, message: Message, now: float) -> None:
        self._sent[_KIND[type(message)]] += 1
        if self._keepalives and to.id in self._last_sent:
            self._last_sent[to.id] = now
        out.append(Send(to, message))

    def _reply(self, out: list[Action], to: Peer, accepted: bool, now: float) -> None:
        reply = build_neighbor_reply(
            sender=self.myself, incarnation=self.incarnation, accepted=accepted
        )
        self._send(out, to, reply, now)

    def _ask(
        self,
        out: list[Action],
        peer: Peer,
        ask: _Ask,
        priority: Priority,
        now: float,
        *,
        marker: Marker | None = None,
    ) -> None:
        deadline = now + self.config.neighbor_timeout
        self._pending[peer.id] = _Pending(peer, ask, priority, deadline, marker)
        message: Message
        if ask is _Ask.NEIGHBOR or ask is _Ask.MERGE:
            message = build_neighbor(
                sender=self.myself, incarnation=self.incarnation, priority=priority
            )
        elif ask is _Ask.MERGE_PROBE:
            message = self._probe_message(now, reply=False)
        else:
            message = build_join(sender=self.myself, incarnation=self.incarnation)
        self._send(out, peer, message, now)

    def _one_sided(self, out: list[Action], sender: Peer, now: float) -> bool:
        """Symmetry repair: a message meant for an active link, from a non-neighbour."""
        if sender.id in self._active:
            return False
        self._events["dropped.not_active"] += 1
        if sender.id not in self._pending:
            self._send(out, sender, self._disconnect(), now)
        return True

    def _pick_contact(self) -> Peer | None:
        """The next contact, round-robin, skipping ones we are linked to or waiting on."""
        for _ in range(len(self._contacts)):
            contact = self._contacts[self._next_contact % len(self._contacts)]
            self._next_contact += 1
            if contact.id not in self._active and contact.id not in self._pending:
                return contact
        return None

    def _add_active(self, out: list[Action], peer: Peer, incarnation: int, now: float) -> None:
        if peer.id in self._active:
            return
        self._passive.pop(peer.id, None)
        self._lost.pop(peer.id, None)
        if len(self._active) >= self.config.active_view_size:
            victim = _pick(self._rand, self._active_tuple())
            self._send(out, victim, self._disconnect(), now)
            self._remove_active(out, victim.id, DownReason.EVICTED)
            self._merge_passive((victim,), ())
        self._active[peer.id] = peer
        self._active_cache = None
        self._active_incarnation[peer.id] = incarnation
        self._last_heard[peer.id] = now
        self._last_sent[peer.id] = now
        self._events["peer_up"] += 1
        out.append(PeerUp(peer))
        if len(self._active) >= self.config.min_active_size:
            self._rejoin_attempts = 0
            if self._next_rejoin is not None:
                self._next_rejoin = None
                self._retime()
        if len(self._active) >= self.config.active_view_size:
            self._end_round()
            self._starved = 0
            self._starve_limit = _STARVE_MIN

    def _remove_active(self, out: list[Action], peer_id: NodeId, reason: DownReason) -> Peer:
        peer = self._active.pop(peer_id)
        self._active_cache = None
        del self._active_incarnation[peer_id]
        del self._last_heard[peer_id]
        del self._last_sent[peer_id]
        self._events["peer_down." + reason.value] += 1
        out.append(PeerDown(peer, reason))
        return peer

    def _fail_active(self, out: list[Action], peer_id: NodeId, now: float) -> None:
        incarnation = self._active_incarnation[peer_id]
        peer = self._remove_active(out, peer_id, DownReason.FAILED)
        self._remember_lost(peer, incarnation, DownReason.FAILED, now)
        self._start_repair(out, now)

    def _remember_lost(self, peer: Peer, incarnation: int, reason: DownReason, now: float) -> None:
        self._lost.pop(peer.id, None)
        self._lost[peer.id] = _Lost(peer, incarnation, reason, now + self.config.lost_retention)
        while len(self._lost) > self.config.passive_view_size:
            del self._lost[next(iter(self._lost))]
        if reason is DownReason.FAILED:
            # A link failed: probe soon, in case it was a partition that will heal.
            cfg = self.config
            self._probe_delay = cfg.probe_interval_min
            soon = now + cfg.probe_interval_min * self._rng.uniform(0.5, 1.0)
            if self._next_probe is None or soon < self._next_probe:
                self._next_probe = soon
                self._retime()
        elif self._next_probe is None:
            # Every entry expires, a departed peer's too (the timer runs the expiry).
            self._next_probe = now + self.config.lost_retention
            self._retime()

    def _merge_passive(self, peers: tuple[Peer, ...], evict_first: tuple[Peer, ...]) -> None:
        """Paper 4.4: add new ids, skipping self and known ones; when full, evict first the
        ids we just sent away, then random ones (never one of the ids being added). Evicted
        ids go to the reserve. Called for every shuffle answer: kept tight."""
        passive, active, lost = self._passive, self._active, self._lost
        me = self.myself.id
        # A loop, not a comprehension: one attribute read per id, and no function call.
        fresh: dict[NodeId, Peer] = {}
        for p in peers:
            pid = p.id
            if pid != me and pid not in active and pid not in passive and pid not in lost:
                fresh[pid] = p
        if not fresh:
            return
        size = self.config.passive_view_size
        if len(fresh) > size:
            fresh = dict(list(fresh.items())[:size])
        excess = len(passive) + len(fresh) - size
        if excess > 0:
            victims: list[NodeId] = []
            for sent in reversed(evict_first):
                sid = sent.id
                if sid in passive and sid not in victims:
                    victims.append(sid)
                    if len(victims) == excess:
                        break
            need = excess - len(victims)
            if need > 0:
                keys = list(passive)
                for pid in victims:  # each is in the passive view; C scans beat a comprehension
                    keys.remove(pid)
                if need == 1:
                    victims.append(_pick(self._rand, keys))
                else:
                    victims += _sample_in_place(self._rand, keys, need)
            reserve_size = self.config.reserve_size
            if reserve_size:
                reserve = self._reserve
                for pid in victims:
                    reserve[pid] = passive[pid]
                    del passive[pid]
                while len(reserve) > reserve_size:
                    del reserve[next(iter(reserve))]
            else:
                for pid in victims:
                    del passive[pid]
        if self._reserve:
            reserve = self._reserve
            for pid in fresh:
                if pid in reserve:
                    del reserve[pid]
        passive.update(fresh)


def _quiet_until(table: dict[NodeId, float], sender: NodeId, until: float) -> None:
    """Note in a per-sender rate limit that ``sender`` is not answered again before ``until``;
    the table keeps the ``_QUIET_MAX`` senders noted last."""
    table.pop(sender, None)
    table[sender] = until
    while len(table) > _QUIET_MAX:
        del table[next(iter(table))]


def _pick(rand: Callable[[], float], items: Sequence[_T]) -> _T:
    """A uniform pick from a non-empty sequence. ``random.choice`` draws through a Python-level
    rejection loop; one C call to ``random()`` is several times cheaper, and the bias of
    ``int(random() * n)`` for a view of a few dozen entries is below 2**-47."""
    return items[int(rand() * len(items))]


def _sample(rand: Callable[[], float], items: Iterable[_T], k: int) -> list[_T]:
    """``k`` distinct picks from ``items`` (``k <= len(items)``), uniformly: a partial
    Fisher-Yates shuffle of a copy, cheaper than ``random.sample`` for the small ``k`` here."""
    return _sample_in_place(rand, list(items), k)


def _sample_in_place(rand: Callable[[], float], pool: list[_T], k: int) -> list[_T]:
    """:func:`_sample` on a list the caller built for it and gives up (its order is lost): the
    passive view's eviction already holds a fresh copy, so it skips a second one."""
    n = len(pool)
    for i in range(k):
        j = i + int(rand() * (n - i))
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]
