"""Which connected component of the overlay am I in? A small marker that answers it.

Why
===

HyParView (Leitão et al., DSN 2007) has no rule that links two components again: once every
active view is full, two halves of a healed partition can each be stable for ever, and the
paper's lost-peer probes only help while the ids of the other half are still remembered. The
core needs a way to tell, from one message exchanged with a live id that is not an active
peer, "that node is in my component" from "that node is in another one", with no routing.

The marker
==========

Each node holds a *marker*: the least node id it has heard of in its component (the *root*),
the root's incarnation, a sequence number the root raises every ``merge_interval`` seconds,
and the (local) time that beat left the root. It is the classic min-id flooding election
(Lynch, "Distributed Algorithms", 1996, section 4.1, FloodMax with the order reversed), kept
alive the way a Babel or DSDV destination keeps its routes alive: by a sequence number only the
origin raises (RFC 8966, section 2.5), plus an age so that a beat that stopped arriving can be
told apart from a beat not yet due.

* The root floods a new sequence number along active links every ``merge_interval``; a node
  that adopts a better marker (smaller root; same root and newer incarnation; same root and
  incarnation and higher sequence number) floods it on along its active links, once.
* A marker whose root has not been heard from for ``3 * merge_interval`` is dropped: the node
  makes itself the root of what it can reach, and min-id flooding settles the new root.
* Age is time the node listened: a pause of the node itself (the core sees it as a late timer)
  is credited to its marker (:meth:`ComponentMarker.credit`), as to its neighbours' silence.
* Two markers say *another component* when their roots differ, or when they name the same root
  and the one behind by a sequence number is older than ``1.5 * merge_interval`` (it missed a
  beat its root has sent). Both sides must be *settled* (root unchanged for an interval), so
  that an election in progress never looks like a split.

This module holds the marker and the comparisons, and nothing else; the HyParView core floods
it, probes with it and decides when to link. Pure: no clock, no randomness, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ray_hyparview.protocol.peer import Peer

__all__ = ["Marker", "MarkerFields", "ComponentMarker"]

STALE_AFTER = 1.5
"""A marker older than this many ``merge_interval`` has missed a beat of its root."""

ROOT_TIMEOUT = 3.0
"""A root not heard from for this many ``merge_interval`` is given up."""


@dataclass(frozen=True, slots=True)
class Marker:
    """A marker as it travels: root, its incarnation, sequence number, age in seconds, and
    whether the sender has held this root for at least an interval (``settled``)."""

    root: Peer
    root_incarnation: int
    seq: int
    age: float
    settled: bool

    def __init__(
        self, root: Peer, root_incarnation: int, seq: int, age: float, settled: bool
    ) -> None:
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "root_incarnation", root_incarnation)
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "age", age)
        object.__setattr__(self, "settled", settled)


class MarkerFields(Protocol):
    """Anything that carries a marker's fields: a :class:`Marker`, or the ComponentMark and
    MergeProbe messages themselves, read as they arrive without a copy per message."""

    @property
    def root(self) -> Peer: ...

    @property
    def root_incarnation(self) -> int: ...

    @property
    def seq(self) -> int: ...

    @property
    def age(self) -> float: ...

    @property
    def settled(self) -> bool: ...


class ComponentMarker:
    """One node's marker. Every method takes ``now``; nothing here sends anything."""

    __slots__ = (
        "incarnation",
        "interval",
        "me",
        "next_beat",
        "origin",
        "own_seq",
        "root",
        "root_incarnation",
        "seq",
        "since",
    )

    def __init__(self, me: Peer, incarnation: int, interval: float) -> None:
        self.me = me
        self.incarnation = incarnation
        self.interval = interval
        self.root = me
        self.root_incarnation = incarnation
        self.own_seq = 0
        self.seq = 0
        self.origin: float | None = None  # local time the current beat left the root
        self.since: float | None = None  # local time the current root was adopted
        self.next_beat: float | None = None

    def start(self, now: float) -> None:
        if self.origin is None:
            self.origin = now
            self.since = now
            self.next_beat = now + self.interval

    def age(self, now: float) -> float:
        return 0.0 if self.origin is None else max(0.0, now - self.origin)

    def credit(self, paused: float, now: float) -> None:
        """This node did not run for ``paused`` seconds (its own timer came that late): the
        beats that reached it meanwhile wait unread in its socket, so the time is not counted
        against its root. Without this a starved node's marker looked stale with the next beat
        waiting unread, and the merge rule evicted a live link for a split that was not there
        (5 to 15 evictions an all-to-all run with the cores taken by busy loops; 0, 0 and 3 in
        three runs with this, benchmarks/README.md)."""
        if self.origin is not None and paused > 0.0:
            self.origin = min(now, self.origin + paused)

    def settled(self, now: float) -> bool:
        return self.since is not None and now - self.since >= STALE_AFTER * self.interval

    def fresh(self, now: float) -> bool:
        return self.age(now) <= STALE_AFTER * self.interval

    def current(self, now: float) -> Marker:
        return Marker(self.root, self.root_incarnation, self.seq, self.age(now), self.settled(now))

    def is_root(self) -> bool:
        return self.root.id == self.me.id

    def tick(self, now: float) -> bool:
        """Run the beat: the root raises its sequence number every interval; a node whose root
        fell silent becomes a root itself. True when the marker must be flooded."""
        if self.next_beat is None or now < self.next_beat:
            return False
        if self.is_root():
            self.next_beat = now + self.interval
            self._become_root(now, changed=False)
            return True
        # Not the root: wake only when the root could have been silent for too long.
        given_up = (self.origin if self.origin is not None else now) + ROOT_TIMEOUT * self.interval
        if now >= given_up:
            self.next_beat = now + self.interval
            self._become_root(now, changed=True)
            return True
        self.next_beat = given_up
        return False

    def _become_root(self, now: float, *, changed: bool) -> None:
        self.own_seq += 1
        self.root = self.me
        self.root_incarnation = self.incarnation
        self.seq = self.own_seq
        self.origin = now
        if changed:
            self.since = now

    def better(self, marker: MarkerFields) -> bool:
        """Is ``marker`` better than ours (smaller root, newer root life, newer beat)?"""
        if marker.root.id != self.root.id:
            return marker.root.id < self.root.id
        if marker.root_incarnation != self.root_incarnation:
            return marker.root_incarnation > self.root_incarnation
        return marker.seq > self.seq

    def offer(self, marker: MarkerFields, now: float) -> bool:
        """Adopt ``marker`` if it is better and its root not given up; True when adopted (then
        flood it on)."""
        if marker.age > ROOT_TIMEOUT * self.interval or not self.better(marker):
            return False
        if marker.root.id == self.me.id and marker.root_incarnation <= self.incarnation:
            return False  # our own beats coming back, or an earlier life's
        if marker.root.id != self.root.id or marker.root_incarnation != self.root_incarnation:
            self.since = now
        self.root = marker.root
        self.root_incarnation = marker.root_incarnation
        self.seq = marker.seq
        self.origin = now - marker.age
        return True

    def elsewhere(self, theirs: MarkerFields, now: float) -> bool:
        """Does ``theirs`` (from a node we just heard from) say that node is in another
        component than ours? False whenever either side is unsure."""
        return theirs.settled and self.settled(now) and self._apart(theirs, now)

    def together(self, theirs: MarkerFields, now: float) -> bool:
        """Does ``theirs`` say that node is in our component? False whenever either side is
        unsure: the opposite of :meth:`elsewhere` only when both markers are settled."""
        return theirs.settled and self.settled(now) and not self._apart(theirs, now)

    def _apart(self, theirs: MarkerFields, now: float) -> bool:
        if theirs.root.id != self.root.id or theirs.root_incarnation != self.root_incarnation:
            return True
        if theirs.seq == self.seq:
            return False
        behind_age = theirs.age if theirs.seq < self.seq else self.age(now)
        return behind_age > STALE_AFTER * self.interval
