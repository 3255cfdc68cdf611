"""Unicast routing over the overlay's active links, as a pure state machine.

Theory of operation
===================

Actors may only talk across active-view links, so a message for a node outside the active view
travels hop by hop. Each node therefore needs a next hop for every destination, kept current as
HyParView adds and drops links. The method here is a *distance vector with sequence numbers and a
feasibility condition*, a reduced Babel (Chroboczek and Schinazi, RFC 8966, sections 2.4-2.6 and
3.5-3.8), itself a descendant of DSDV (Perkins and Bhagwat, SIGCOMM 1994):

* Every node announces a route to itself with metric 0 and its own *sequence number*; every other
  node announces its selected routes with metric = hops. A route learnt from neighbour ``p`` costs
  ``p``'s metric + 1 (every active link costs one hop).
* Loops are prevented, not counted away. Each node keeps, per destination, a *feasibility
  distance* ``(seqno, metric)``: the best it ever announced for that sequence number. An
  announcement ``(s, m)`` from a neighbour may be selected only if ``s`` is newer, or ``s`` is the
  same and ``m`` is strictly smaller than ours (RFC 8966, 2.4). A node never picks a neighbour that
  could be routing through it, so no routing loop forms, even while routes change, and there is
  no counting to infinity (the failure mode of plain RIP-style vectors).
* When a link fails the routes through it are dropped at once and the best feasible alternative
  is selected; if none is feasible the node is *starved*: it retracts the route (metric infinity)
  and sends a SEQNO_REQUEST towards the destination along the neighbour that claims to be
  closest. The first node with a new enough seqno (at worst the destination, which raises its
  own) announces it, and the nodes the request passed through relay that announcement back
  (RFC 8966, 3.8.1). A node that hears a shorter route it may not take yet (older seqno) asks the
  same way (3.8.2.1). Requests are retried every ``request_interval`` while the need lasts.
* Announcements go out when a route's next hop or metric changes (triggered, batched for
  ``triggered_delay``) and in full every ``update_interval`` (jittered); a seqno change alone is
  relayed only along request paths, so a new seqno costs a path, not a flood. A learnt route
  expires after ``route_expiry`` without refresh. A route is never announced back to its own next
  hop with a finite metric (split horizon with poisoned reverse).
* Data frames carry source, destination, a per-source frame id, the hop count and a hop limit.
  The next hop is the destination itself when it is a neighbour, else the selected route's next
  hop. When that hop is the neighbour the frame came from, or a send fails (the shell hands the
  frame back with ``forward_failed``), another neighbour that announces the destination is tried.
  A frame that cannot go on is dropped at that node and a ROUTE_ERROR travels back to its source,
  which reports ``Undeliverable(reason)``: ``"no_route"`` or ``"hop_limit"``. End-to-end
  acknowledgement and retry belong to the layer above (the mesh).

Why not the alternatives. Partisan relays along the Plumtree broadcast tree with a TTL of 5 and no
acknowledgement or error report (off by default): tree paths are long (the tree ignores the
shortcut links), a broken tree link loses messages silently until the tree is repaired, and 5
hops do not span a 10,000-node overlay. Reverse paths learnt from broadcasts only know the nodes
that broadcast lately. A distance vector costs state linear in the cluster size (about 20 bytes
per destination per neighbour), which is fine for the hundreds to low thousands of nodes of a Ray
cluster; ``max_routes`` caps it.

Rules this file keeps, beyond RFC 8966 (each departure is marked ``DEPARTURE`` below):

1. Sequence numbers are 64-bit and compared modulo 2**64, as RFC 8966 (3.2.1) does with 16
   bits: a seqno raised past 2**64 - 1 wraps to 0, which is newer. Every value derived from a
   received one stays within what the wire carries (:mod:`~ray_hyparview.protocol.limits`), so
   no frame, however extreme its fields, makes the router produce a message the codec refuses.
2. A restarted node learns, from announcements or requests about itself, the highest sequence
   number its earlier life used, and moves above it.
3. A node that loses a link raises its own seqno at once (as DSDV does for broken links): the
   nodes that reached it over that link need a newer one, and its neighbours can then answer
   their requests without a round trip to it.
4. The two ends of a new HyParView link learn of it one message apart, so a table can arrive
   before our ``link_up``: such updates are held (bounded) and replayed when the link comes up,
   each expiring ``route_expiry`` after it came, not after the replay. A replay used to renew
   them: an announcement held from an earlier life of the peer then outlived that life's
   hold-down, and the fuzzer found a loop through it (seed 4189, ``n02 -> n03 -> n07 -> n02``,
   once one-sided links were told at once).
5. Remote garbage never raises: it is dropped and counted under ``dropped.<cause>``.
6. A router that restarts under the same id should hold down: for ``start_holddown``
   (``None`` means ``route_expiry + update_interval``) it selects no route through a
   neighbour. The new life has lost its feasibility distances, while neighbours that have not
   yet noticed the restart keep routes through its earlier life: taking one of their
   announcements at once can close a loop through them (the fuzzer found ``r0 -> r3 -> r4 ->
   r0``). After one ``route_expiry`` every announcement of the earlier life has expired
   everywhere, and within one more ``update_interval`` it is purged (expiry runs with the
   periodic update); then the feasibility condition holds again from a clean state. Frames
   still flow meanwhile (``forward.alternate``). DEPARTURE: off by default, because a holding
   router announces no route either: a cluster whose nodes all start at once would have no
   route longer than one hop for the whole hold-down. The shell that knows it restarts a node
   under its old id (a supervisor) turns it on.

7. The source named in a routed frame (a DATA frame or a ROUTE_ERROR) is checked against the
   link it came by, as a reverse-path check (unicast RPF, RFC 3704, in its "feasible path"
   form): a frame whose source is ``s`` is taken from neighbour ``n`` only if ``n`` is ``s`` or
   ``n`` announces a route to ``s`` here (any entry held for it, selected or not, so that
   equal-cost and alternative paths pass). Anything else is dropped as
   ``dropped.source_route``: a relay cannot forge the source of frames for a node it does not
   announce. A drop is a lost frame, which the layer above retries. What still holds against a
   neighbour that lies in its announcements is stated in the README (it can forge the sources
   it announces; the hop limit bounds the loops its lies make).
8. A relay may pass a DATA frame on as its field values, its hop count raised, instead of
   building it (:meth:`Router.pass_on`): the same header checks (rule 5), source check (rule
   7, at the same clock) and choice of hop as :meth:`Router.receive`, taken from the same
   helpers, and ``None`` for everything else, which then goes through ``receive``. Each relay
   pass skips the typed decode and the encode of the frame: 30 to 80 us less per three-hop
   send on the benchmark machine (``benchmarks/README.md``).

Counters (``counters``): ``sent.<Type>`` / ``received.<Type>``, ``route.changed``,
``route.starved``, ``route.improvable``, ``seqno.raised``, ``early.held``, ``early.expired``,
``forward.direct``, ``forward.routed``, ``forward.alternate``, ``forward.failed``, ``arrived``,
``undeliverable.<reason>``, ``dropped.<cause>``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import KeysView, Sequence
from dataclasses import dataclass, fields, replace
from typing import Final, cast

from ray_hyparview.protocol.errors import ConfigError, HyParViewError
from ray_hyparview.protocol.limits import (
    MAX_ENVELOPE,
    MAX_FRAME_ID,
    MAX_FRAME_SIZE,
    MAX_HOPS,
    MAX_ROUTE_ENTRIES,
    MAX_SEQNO,
    METRIC_INFINITY,
    is_node_id,
    seqno_add,
    seqno_newer,
    seqno_not_older,
)
from ray_hyparview.protocol.peer import NodeId

__all__ = [
    "INFINITY",
    "Action",
    "Arrived",
    "DATA_FIELDS",
    "DataFrame",
    "RouteError",
    "RouteUpdate",
    "Router",
    "RoutingConfig",
    "RoutingError",
    "RoutingMessage",
    "SendTo",
    "SeqnoRequest",
    "Undeliverable",
    "data_frame",
]

INFINITY = METRIC_INFINITY
"""The metric of a retraction: the destination is unreachable through the sender."""

_MAX_ENTRIES = MAX_ROUTE_ENTRIES
"""At most this many entries are read from one ROUTE_UPDATE (what the wire carries)."""

_MAX_HOPS = MAX_HOPS
"""Hop counts and limits above this are garbage."""

_UPDATE_BUDGET = MAX_FRAME_SIZE - 64
"""Bytes the entries of one ROUTE_UPDATE may take on the wire (frame header and array heads
fit in the rest)."""

_ENTRY_OVERHEAD = 16
"""Upper bound of an entry's encoded size beyond its id's UTF-8 bytes: array head (1), string
head (at most 3), a u64 seqno (at most 9), a metric (at most 3)."""

_REASONS = ("no_route", "hop_limit")
"""Why a frame stopped; a ROUTE_ERROR with another reason is garbage (counter names stay
bounded)."""

_EARLY_PEERS = 32
"""Peers whose updates are held while their link is not up here yet (see ``link_up``)."""

_EARLY_UPDATES = 16
"""Updates held per such peer (a full table may take several)."""

_VOUCH_PEERS = 8
"""Former announcers remembered per destination for the source check (rule 7)."""


class RoutingError(HyParViewError, ValueError):
    """The local caller passed a bad argument (e.g. a payload that is not bytes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    """Timers and bounds of the routing layer, validated on construction."""

    update_interval: float = 5.0
    """Seconds between two full announcements of the routing table (jittered by up to 25%)."""

    route_expiry: float = 17.5
    """Seconds a learnt route lives without refresh (RFC 8966 uses 3.5 update intervals)."""

    hop_limit: int = 16
    """Hops a data frame may take; routes longer than this are treated as unreachable."""

    request_interval: float = 1.0
    """Seconds between two SEQNO_REQUESTs for a destination that stays starved."""

    triggered_delay: float = 0.02
    """Seconds changes are collected before a triggered update goes out: one message per
    neighbour for a burst of changes instead of one per change; 0 sends at the end of each
    input. Route selection itself is never delayed."""

    source_retention: float = 180.0
    """Seconds a feasibility distance is kept after its destination was last heard of (RFC 8966
    keeps source entries about three minutes); forgetting it earlier could let a loop form."""

    max_routes: int = 65_536
    """Most destinations tracked; announcements of further ones are dropped."""

    max_entries_per_update: int = 512
    """Most entries in one ROUTE_UPDATE; a full table goes out in several."""

    start_holddown: float | None = 0.0
    """Seconds after its first input during which a router selects no route through a
    neighbour (neighbours themselves are reached directly; frames take any neighbour that
    announces the destination). ``None`` means ``route_expiry + update_interval``, the value
    that keeps a restart under the same id loop free; 0 (the default) turns it off. Set it when
    a node restarts under an id it had before (see rule 6)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "start_holddown" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be finite, got {value!r}")
            if value < 0 or (value == 0 and f.name not in ("triggered_delay", "start_holddown")):
                raise ConfigError(f"{f.name} must be greater than 0, got {value!r}")
        for name in ("hop_limit", "max_routes", "max_entries_per_update"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.max_entries_per_update > MAX_ROUTE_ENTRIES:
            raise ConfigError(
                f"max_entries_per_update must be at most {MAX_ROUTE_ENTRIES} (the wire's bound), "
                f"got {self.max_entries_per_update}"
            )
        if self.hop_limit > _MAX_HOPS:
            raise ConfigError(f"hop_limit must be at most {_MAX_HOPS}, got {self.hop_limit}")
        if self.route_expiry <= self.update_interval:
            raise ConfigError(
                f"route_expiry must exceed update_interval ({self.update_interval}), "
                f"got {self.route_expiry!r}"
            )


# --- messages ------------------------------------------------------------------------------------
# Fields are str / int / bytes / tuples of those, so that any msgpack codec can carry them.


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteUpdate:
    """Announcements of the sender's selected routes (RFC 8966, 4.6.9)."""

    entries: tuple[tuple[str, int, int], ...]
    """``(destination, seqno, metric)``; metric ``INFINITY`` retracts the destination."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SeqnoRequest:
    """Ask ``destination`` for a sequence number of at least ``seqno`` (RFC 8966, 3.8.1.2)."""

    destination: str
    """The destination whose routes are starved."""

    seqno: int
    """The smallest sequence number that would make a route feasible again."""

    origin: str
    """The starved node that asked first."""

    hop_limit: int
    """Hops the request may still travel."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataFrame:
    """An application payload routed hop by hop from ``source`` to ``destination``."""

    source: str
    """The node that sent the frame; errors go back to it."""

    destination: str
    """The node the frame is for."""

    frame_id: int
    """Per-source number of the frame; ``(source, frame_id)`` names it for end-to-end acks."""

    hops: int
    """Links crossed so far."""

    hop_limit: int
    """Links the frame may cross; at ``hops == hop_limit`` it is dropped unless it arrived."""

    payload: bytes
    """Application bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteError:
    """A frame of ``destination`` (its source) could not be forwarded: routed back to it."""

    source: str
    """The node where the frame stopped."""

    destination: str
    """The source of the failed frame."""

    frame_id: int
    """The failed frame's id."""

    frame_destination: str
    """Where the failed frame was going."""

    reason: str
    """``"no_route"`` or ``"hop_limit"``."""

    hops: int
    """Links this report crossed so far."""

    hop_limit: int
    """Links this report may cross."""


RoutingMessage = RouteUpdate | SeqnoRequest | DataFrame | RouteError
"""Every message of the routing layer."""

_Routed = DataFrame | RouteError


@dataclass(frozen=True, slots=True)
class SendTo:
    """Send ``message`` to neighbour ``peer_id`` over its active link. If the send fails with a
    routed frame in it, hand the frame back with :meth:`Router.forward_failed`."""

    peer_id: NodeId
    message: RoutingMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrived:
    """A data frame reached this node, its destination."""

    source: NodeId
    frame_id: int
    payload: bytes
    hops: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Undeliverable:
    """A frame this node sent will not arrive (the shell raises ``DeliveryError(reason)``)."""

    frame_id: int
    destination: NodeId
    reason: str
    """``"no_route"`` or ``"hop_limit"``."""
    reported_by: NodeId
    """The node where the frame stopped (this node when it never left)."""


Action = SendTo | Arrived | Undeliverable
"""What the routing core asks of its driver."""


@dataclass(slots=True)
class _Adv:
    """What one neighbour announced for one destination."""

    seqno: int
    metric: int
    expires: float


@dataclass(frozen=True, slots=True)
class _Route:
    """The selected route to one destination."""

    next_hop: NodeId
    seqno: int
    metric: int


def _is_int(value: object, low: int, high: int | None = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def _routed_ok(
    source: object, destination: object, frame_id: object, hops: object, hop_limit: object
) -> bool:
    """The header of a routed frame holds values this router takes: the values a peer sends
    are checked here too, not only by the codec (rule 5)."""
    return (
        is_node_id(source)
        and is_node_id(destination)
        and _is_int(frame_id, 0, MAX_FRAME_ID)
        and _is_int(hop_limit, 0, _MAX_HOPS)
        and _is_int(hops, 1, hop_limit)  # type: ignore[arg-type]
    )


DATA_FIELDS: Final = tuple(f.name for f in fields(DataFrame))
"""A :class:`DataFrame`'s field names in order, the order :meth:`Router.pass_on` takes."""
_HOPS_AT: Final = DATA_FIELDS.index("hops")
_DEST_AT: Final = DATA_FIELDS.index("destination")


def data_frame(values: Sequence[object]) -> DataFrame:
    """The :class:`DataFrame` of ``values`` given in :data:`DATA_FIELDS` order."""
    return DataFrame(**dict(zip(DATA_FIELDS, values, strict=True)))  # type: ignore[arg-type]


def _envelope_ok(payload: object) -> bool:
    return isinstance(payload, bytes) and len(payload) <= MAX_ENVELOPE


class Router:
    """One node's routing state; see the module comment for the rules."""

    def __init__(
        self,
        myself: NodeId,
        config: RoutingConfig | None = None,
        *,
        rng: random.Random,
        incarnation: int = 0,
    ) -> None:
        if not isinstance(myself, str) or not myself:
            raise RoutingError(f"myself must be a non-empty node id, got {myself!r}")
        self.myself = myself
        self.config = config if config is not None else RoutingConfig()
        self.incarnation = incarnation
        self.counters: Counter[str] = Counter()
        self._rng = rng
        self._now = -math.inf
        self._seqno = 0
        self._frame_seq = 0
        self._links: dict[NodeId, None] = {}
        self._rib: dict[NodeId, dict[NodeId, _Adv]] = {}  # destination -> neighbour -> adv
        self._selected: dict[NodeId, _Route] = {}
        self._fd: dict[NodeId, tuple[int, int]] = {}  # feasibility distance (seqno, metric)
        self._fd_heard: dict[NodeId, float] = {}  # when we last announced a route to it
        self._advertised: dict[NodeId, int] = {}  # destination -> seqno last announced finite
        self._pending: dict[NodeId, None] = {}  # destinations to announce at the end of input
        self._requesting: dict[NodeId, float] = {}  # destination -> next SEQNO_REQUEST due
        self._requests_seen: dict[tuple[NodeId, int], float] = {}  # (dest, seqno) -> expiry
        self._asked: dict[NodeId, tuple[int, float]] = {}  # forwarded requests: seqno, expiry
        self._next_update: float | None = None
        # peer -> [(when it came, update)], oldest first
        self._early: dict[NodeId, list[tuple[float, RouteUpdate]]] = {}
        # Rule 7: neighbours that named a destination here lately without a route entry for it
        # now (their link went down, or they retracted or poisoned it): destination -> peer ->
        # until when a frame of that source is still taken from it.
        self._vouched: dict[NodeId, dict[NodeId, float]] = {}
        self._flush_at: float | None = None  # when the pending triggered update goes out
        self._holddown_until: float | None = None  # set at the first input; None once over
        self._holding = True

    # --- queries ---------------------------------------------------------------------------------

    @property
    def links(self) -> KeysView[NodeId]:
        """Neighbours over which frames may go (the active view)."""
        return self._links.keys()

    @property
    def seqno(self) -> int:
        """This node's own sequence number."""
        return self._seqno

    def next_hop(self, dest_id: NodeId) -> NodeId | None:
        """The neighbour a frame for ``dest_id`` goes to next over the selected route, or
        ``None`` when there is none (unreachable, or not selected yet: rule 6)."""
        if dest_id in self._links:
            return dest_id
        route = self._selected.get(dest_id)
        return route.next_hop if route is not None else None

    def routes(self) -> dict[NodeId, tuple[NodeId, int]]:
        """A snapshot: destination -> (next hop, metric in hops), neighbours included. During
        the start hold-down (rule 6) nothing is selected yet; a destination then shows the
        neighbour its frames take (the closest that announces it), so that "reachable" means
        the same before and after the hold-down."""
        table = {dest: (route.next_hop, route.metric) for dest, route in self._selected.items()}
        if self._holding:
            limit = self.config.hop_limit
            for dest, advs in self._rib.items():
                choices = [
                    (adv.metric + 1, peer)
                    for peer, adv in advs.items()
                    if peer in self._links and adv.metric + 1 <= limit
                ]
                if choices and dest not in table:
                    metric, peer = min(choices)
                    table[dest] = (peer, metric)
        for peer in self._links:
            table[peer] = (peer, 1)
        return table

    # --- inputs ----------------------------------------------------------------------------------

    def link_up(self, peer_id: NodeId, *, now: float) -> list[Action]:
        """A HyParView PeerUp: the new neighbour gets our whole table at once."""
        now = self._tick(now)
        actions: list[Action] = []
        if peer_id == self.myself or peer_id in self._links:
            return actions
        self._links[peer_id] = None
        if self._next_update is None:
            self._next_update = now + self._jitter()
        early = self._early.pop(peer_id, None)
        if early is not None:
            # The peer saw the link up first and sent its table before our PeerUp: the two
            # ends learn of a new HyParView link one message apart. Replay what it sent, each
            # announcement good for route_expiry after it came, not after the replay: one
            # held from an earlier link (even the peer's earlier life) must not outlive it.
            for received, update in early:
                if received + self.config.route_expiry <= now:
                    self.counters["early.expired"] += 1
                    continue
                self.counters["early.replayed"] += 1
                self._on_update(peer_id, update, now, received=received)
        self._send_table(peer_id, self._all_destinations(), actions)
        return self._finish(now, actions)

    def link_down(self, peer_id: NodeId, *, now: float) -> list[Action]:
        """A HyParView PeerDown: routes through the peer go now; alternatives are picked."""
        now = self._tick(now)
        if peer_id not in self._links:
            return []
        del self._links[peer_id]
        # DEPARTURE: announce a new seqno for ourselves at once. Nodes that reached us over the
        # lost link now have only longer, unfeasible routes to us and would each ask for it
        # (RFC 8966 waits for that request); DSDV-like, we skip the round trip.
        self._seqno = seqno_add(self._seqno)
        self._pending[self.myself] = None
        for dest, advs in list(self._rib.items()):
            adv = advs.pop(peer_id, None)
            if adv is not None:
                self._vouch(dest, peer_id, adv.expires)
            if adv is not None or dest == peer_id:
                self._reselect(dest, now)
        self._reselect(peer_id, now)
        return self._finish(now, [])

    def route(self, dest_id: NodeId, payload: bytes, *, now: float) -> tuple[int, list[Action]]:
        """Send ``payload`` to ``dest_id``; returns the frame id and what to do.

        An unreachable destination yields ``Undeliverable(reason="no_route")`` at once.
        """
        if not isinstance(payload, bytes):
            raise RoutingError(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) > MAX_ENVELOPE:
            raise RoutingError(f"payload of {len(payload)} bytes, limit {MAX_ENVELOPE}")
        if not isinstance(dest_id, str) or not dest_id:
            raise RoutingError(f"destination must be a non-empty node id, got {dest_id!r}")
        now = self._tick(now)
        self._frame_seq = self._frame_seq % MAX_FRAME_ID + 1  # 1..MAX_FRAME_ID, then 1 again
        frame = DataFrame(
            source=self.myself,
            destination=dest_id,
            frame_id=self._frame_seq,
            hops=0,
            hop_limit=self.config.hop_limit,
            payload=payload,
        )
        actions: list[Action] = []
        self._forward(frame, None, actions)
        return frame.frame_id, self._finish(now, actions)

    def forward_failed(
        self, message: RoutingMessage, peer_id: NodeId, *, now: float
    ) -> list[Action]:
        """The shell could not hand ``message`` (from one of our ``SendTo``) to ``peer_id``.

        A routed frame takes another next hop or is reported; anything else is dropped (the
        link's own failure arrives separately as ``link_down``). The failed attempt keeps the
        hop it was charged, so a shell whose sends keep failing (its link state lagging ours)
        sees the frame reported after at most ``hop_limit`` attempts instead of looping.
        """
        now = self._tick(now)
        actions: list[Action] = []
        match message:
            case DataFrame() | RouteError():
                self.counters["forward.failed"] += 1
                self._forward(message, peer_id, actions)
        return self._finish(now, actions)

    def receive(self, sender_id: NodeId, message: object, *, now: float) -> list[Action]:
        """Handle one message from ``sender_id`` (as authenticated by the transport)."""
        now = self._tick(now)
        actions: list[Action] = []
        match message:
            case RouteUpdate():
                self.counters["received.RouteUpdate"] += 1
                self._on_update(sender_id, message, now)
            case SeqnoRequest():
                self.counters["received.SeqnoRequest"] += 1
                self._on_request(sender_id, message, now, actions)
            case DataFrame() | RouteError():
                self.counters["received." + type(message).__name__] += 1
                self._on_routed(sender_id, message, actions)
            case _:
                self._drop("unknown_message")
        return self._finish(now, actions)

    def on_timer(self, *, now: float) -> list[Action]:
        """Periodic announcements, expiry and request retries (call at ``next_deadline``)."""
        now = self._tick(now)
        actions: list[Action] = []
        if self._next_update is not None and now >= self._next_update:
            self._next_update = now + self._jitter() if self._links else None
            self._expire(now)
            everything = self._all_destinations()
            for peer in self._links:
                self._send_table(peer, everything, actions)
        return self._finish(now, actions)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called, or ``None`` if nothing is pending."""
        candidates = [t for t in (self._next_update, self._flush_at) if t is not None]
        if self._holding and self._holddown_until is not None:
            candidates.append(self._holddown_until)
        if self._requesting:
            candidates.append(min(self._requesting.values()))
        return min(candidates) if candidates else None

    # --- route selection (RFC 8966, 3.5-3.6) -----------------------------------------------------

    def _feasible(self, dest: NodeId, seqno: int, metric: int) -> bool:
        fd = self._fd.get(dest)
        if fd is None:
            return True
        return metric < fd[1] if seqno == fd[0] else seqno_newer(seqno, fd[0])

    def _reselect(self, dest: NodeId, now: float) -> None:
        """Pick the best feasible route to ``dest``; schedule announcements and requests."""
        if dest == self.myself:
            return
        old = self._selected.get(dest)
        advs = self._rib.get(dest, {})
        best: _Route | None = None
        # Rule 6: nothing selected (nor asked for, see _request_target) until the hold-down ends.
        candidates = {} if self._holding else advs
        for peer, adv in candidates.items():
            metric = adv.metric + 1
            if peer not in self._links or metric > self.config.hop_limit:
                continue
            if not self._feasible(dest, adv.seqno, adv.metric):
                continue
            candidate = _Route(peer, adv.seqno, metric)
            if (
                best is None
                or metric < best.metric
                or (metric == best.metric and old is not None and peer == old.next_hop)
            ):
                best = candidate
        if best is not None:
            self._selected[dest] = best
        else:
            self._selected.pop(dest, None)
        if best != old:
            self.counters["route.changed"] += 1
            if (
                best is None
                or old is None
                or best.next_hop != old.next_hop
                or best.metric != old.metric
            ):
                self._pending[dest] = None
            else:
                # Only the seqno moved. Announce it only where it was asked for: on the path a
                # SEQNO_REQUEST took (RFC 8966, 3.8.1.2); periodic updates carry it elsewhere.
                # Flooding every new seqno would cost one message per link each time.
                asked = self._asked.get(dest)
                if asked is not None and seqno_not_older(best.seqno, asked[0]):
                    del self._asked[dest]
                    self._pending[dest] = None
        if self._request_target(dest) is None:
            self._requesting.pop(dest, None)
        elif dest not in self._requesting or (old is None and best is not None):
            # New reason to ask (starved, or a route came back but a shorter one is waiting
            # for a seqno): ask now rather than at the next retry of an older request.
            self.counters["route.starved" if best is None else "route.improvable"] += 1
            self._requesting[dest] = now
        if not advs and best is None:
            self._rib.pop(dest, None)

    def _on_update(
        self, sender: NodeId, update: RouteUpdate, now: float, *, received: float | None = None
    ) -> None:
        """``received``: when a held update came (rule 4); its entries expire from then."""
        if sender not in self._links:
            self._hold_early(sender, update, now)
            return
        entries: object = update.entries  # decoded remote data: check, not trust
        if not isinstance(entries, tuple | list):
            self._drop("malformed")
            return
        if len(entries) > _MAX_ENTRIES:
            self._drop("update_too_long")
        expires = (now if received is None else received) + self.config.route_expiry
        touched: dict[NodeId, None] = {}
        for item in entries[:_MAX_ENTRIES]:
            match item:
                case (str() as dest, seqno, metric) if (
                    is_node_id(dest)
                    and _is_int(seqno, 0, MAX_SEQNO)
                    and _is_int(metric, 0, INFINITY)
                ):
                    pass
                case _:
                    self._drop("malformed")
                    continue
            if dest == self.myself:
                if seqno_newer(seqno, self._seqno):
                    # DEPARTURE: a seqno of ours from an earlier life; move past it.
                    self._seqno = seqno_add(seqno)
                    self._pending[self.myself] = None
                continue
            advs = self._rib.get(dest)
            if metric >= INFINITY:
                if advs is not None:
                    # Retracted, or poisoned because its route runs through us: its frames of
                    # that source may still come (an asymmetric path), so it stays vouched.
                    self._vouch(dest, sender, expires)
                    if advs.pop(sender, None) is not None:
                        touched[dest] = None
                continue
            if advs is None:
                if len(self._rib) >= self.config.max_routes:
                    self._drop("table_full")
                    continue
                advs = self._rib[dest] = {}
            adv = advs.get(sender)
            if adv is not None and adv.seqno == seqno and adv.metric == metric:
                adv.expires = expires  # a refresh: nothing to reselect
                continue
            advs[sender] = _Adv(seqno, metric, expires)
            touched[dest] = None
        for dest in touched:
            self._reselect(dest, now)

    def _vouch(self, dest: NodeId, peer: NodeId, until: float) -> None:
        """Remember that ``peer`` named ``dest`` here until ``until`` (rule 7), in bounded
        space: only destinations in the table, at most ``_VOUCH_PEERS`` peers each."""
        vouched = self._vouched.get(dest)
        if vouched is None:
            if len(self._vouched) >= self.config.max_routes:
                return
            vouched = self._vouched[dest] = {}
        vouched.pop(peer, None)  # re-inserted last: the oldest goes first
        vouched[peer] = until
        if len(vouched) > _VOUCH_PEERS:
            del vouched[next(iter(vouched))]

    def _hold_early(self, sender: NodeId, update: RouteUpdate, now: float) -> None:
        """Keep an update from a node that is not (yet) a neighbour, in bounded space."""
        self.counters["early.held"] += 1
        updates = self._early.pop(sender, [])  # re-inserted last: the oldest peer goes first
        updates.append((now, update))
        del updates[:-_EARLY_UPDATES]
        self._early[sender] = updates
        while len(self._early) > _EARLY_PEERS:
            del self._early[next(iter(self._early))]

    # --- sequence number requests (RFC 8966, 3.8.1) ----------------------------------------------

    def _request_target(self, dest: NodeId) -> NodeId | None:
        """The neighbour to send a SEQNO_REQUEST for ``dest`` to, if one is needed.

        One is needed when a neighbour announces a route shorter than ours (or any usable route
        when we have none) that is not feasible: its seqno is not newer than ours. The request
        goes to that neighbour, which forwards it towards the destination (RFC 8966, 3.8.1.1 and
        3.8.2.1). New seqnos travel only back along request paths (see ``_reselect``), so
        without this a node could keep a long route until the next periodic update.
        """
        advs = self._rib.get(dest)
        if not advs or dest not in self._fd or self._holding:
            return None
        route = self._selected.get(dest)
        limit = route.metric if route is not None else self.config.hop_limit + 1
        better = [(adv.metric, peer) for peer, adv in advs.items() if adv.metric + 1 < limit]
        better = [(m, p) for m, p in better if p in self._links]
        return min(better)[1] if better else None

    def _send_requests(self, now: float, actions: list[Action]) -> None:
        """Send the SEQNO_REQUESTs that are due; repeat every ``request_interval`` while the
        condition lasts (a request can be lost on the way, or the answer can)."""
        for dest, due in list(self._requesting.items()):
            if due > now:
                continue
            target = self._request_target(dest)
            if target is None:
                del self._requesting[dest]
                continue
            self._requesting[dest] = now + self.config.request_interval
            # A shorter announcement than our feasibility distance needs only our seqno to
            # become feasible; otherwise the destination must issue a newer one.
            fd_seqno, fd_metric = self._fd[dest]
            adv = self._rib[dest][target]
            seqno = fd_seqno if adv.metric < fd_metric else seqno_add(fd_seqno)
            self._requests_seen[(dest, seqno)] = now + self.config.request_interval / 2
            request = SeqnoRequest(
                destination=dest, seqno=seqno, origin=self.myself, hop_limit=self.config.hop_limit
            )
            self._send(target, request, actions)

    def _on_request(
        self, sender: NodeId, request: SeqnoRequest, now: float, actions: list[Action]
    ) -> None:
        dest, seqno, hop_limit = request.destination, request.seqno, request.hop_limit
        if not (
            is_node_id(dest)
            and _is_int(seqno, 0, MAX_SEQNO)
            and _is_int(hop_limit, 0, _MAX_HOPS)
            and is_node_id(request.origin)
        ):
            self._drop("malformed")
            return
        if dest == self.myself:
            if seqno_newer(seqno, self._seqno):
                self._seqno = seqno
                self.counters["seqno.raised"] += 1
                self._pending[self.myself] = None
            return
        route = self._selected.get(dest)
        if route is not None and seqno_not_older(route.seqno, seqno):
            self._pending[dest] = None  # we can answer ourselves with a fresh announcement
            return
        key = (dest, seqno)
        if len(self._requests_seen) >= self.config.max_routes:
            self._requests_seen = {k: t for k, t in self._requests_seen.items() if t > now}
        if self._requests_seen.get(key, -math.inf) > now:
            self._drop("request_duplicate")
            return
        self._requests_seen[key] = now + self.config.request_interval / 2
        if hop_limit <= 1:
            self._drop("request_hop_limit")
            return
        forwarded = replace(request, hop_limit=hop_limit - 1)
        asked = self._asked.get(dest)
        if asked is not None and seqno_newer(asked[0], seqno):
            seqno = asked[0]  # keep the newest seqno asked for
        self._asked[dest] = (seqno, now + self.config.route_expiry)
        if route is not None and route.next_hop != sender:
            self._send(route.next_hop, forwarded, actions)
            return
        advs = self._rib.get(dest, {})
        choices = [p for p in advs if p in self._links and p != sender]
        if choices:
            self._send(min(choices, key=lambda p: (advs[p].metric, p)), forwarded, actions)

    # --- forwarding ------------------------------------------------------------------------------

    def _on_routed(self, sender: NodeId, frame: _Routed, actions: list[Action]) -> None:
        valid = _routed_ok(
            frame.source, frame.destination, frame.frame_id, frame.hops, frame.hop_limit
        )
        if valid and isinstance(frame, RouteError):
            valid = is_node_id(frame.frame_destination) and frame.reason in _REASONS
        payload: object = frame.payload if isinstance(frame, DataFrame) else b""
        if not (valid and _envelope_ok(payload)):
            self._drop("malformed")
            return
        if sender not in self._links:
            self.counters["received.from_not_neighbor"] += 1
        if not self._source_matches(sender, frame.source):
            self._drop("source_route")
            return
        self._forward(frame, sender, actions)

    def pass_on(self, sender_id: NodeId, values: list[object], *, now: float) -> NodeId | None:
        """The next hop of a :class:`DataFrame` from ``sender_id`` that only passes through
        here, for a relay that forwards its field values instead of building it. ``values``
        are the frame's, in :data:`DATA_FIELDS` order, as the agent reads them with
        :meth:`~ray_hyparview.wire.codec.Codec.fields`, unchecked; when a hop is returned,
        they are the onward frame's (its hop count raised).

        The checks and the choice of hop are :meth:`receive`'s, and so are the counters when a
        hop is returned. ``None`` when :meth:`receive` would do anything else with the frame
        (it is for this node, malformed, from a source the sender may not relay, at its hop
        limit, or without a route) or when this input would have work of the router's own to
        finish (a hold-down, triggered updates, seqno requests): then nothing was changed or
        counted (but the router's clock, as :meth:`receive` would move it), and the caller
        hands the decoded frame to :meth:`receive`."""
        if len(values) != len(DATA_FIELDS) or values[_DEST_AT] == self.myself:
            return None  # the common refusal first: a frame that arrives here
        if self._holding or self._pending or self._requesting or self._now == -math.inf:
            return None
        # What _tick does outside a hold-down, before the checks: a vouch (rule 7) that lapsed
        # since the last input is lapsed here too.
        self._now = max(now, self._now)
        source, destination, frame_id, hops, hop_limit, payload = values
        if not (
            _routed_ok(source, destination, frame_id, hops, hop_limit) and _envelope_ok(payload)
        ):
            return None
        dest = cast(str, destination)
        if cast(int, hops) >= cast(int, hop_limit):
            return None
        if sender_id not in self._links or not self._source_matches(sender_id, cast(str, source)):
            return None
        choice = self._next_hop(dest, sender_id)
        if choice is None:
            return None
        values[_HOPS_AT] = cast(int, hops) + 1
        counters = self.counters
        counters["received.DataFrame"] += 1
        counters[choice[1]] += 1
        counters["sent.DataFrame"] += 1
        return choice[0]

    def _source_matches(self, sender: NodeId, source: str) -> bool:
        """Rule 7: may ``sender`` relay a frame that names ``source`` as its origin?

        Yes when the sender is the source, or announces a route to it here: every entry held
        for it (selected, an equal-cost tie or an unfeasible alternative alike), so a frame on
        any path a neighbour may take is not mistaken for a forgery. A neighbour also stays
        vouched for a source for ``route_expiry`` after it last named it without an entry
        here: its link went down (a frame still in flight, or the link back before its next
        full table) or it announced the source at metric infinity (a retraction, or a poisoned
        reverse: its route runs through us, and frames of that source reach us from it on an
        asymmetric path).
        A frame that names us as its source is never taken from a neighbour: passed on, it
        would reach the next hop from us, under our name (one of ours that loops back is lost,
        and retried)."""
        if source == sender:
            return True
        if source == self.myself:
            return False
        advs = self._rib.get(source)
        if advs is not None and sender in advs:
            return True
        vouched = self._vouched.get(source)
        if vouched is not None and vouched.get(sender, -math.inf) > self._now:
            return True
        if sender in self._links:
            return False
        # Not a neighbour here yet (the shell's own gate let it through): its table may be
        # among the updates held until its link comes up (rule 4).
        held = self._early.get(sender)
        if held is None:
            return False
        for _received, update in held:
            entries: object = update.entries
            if not isinstance(entries, tuple | list):
                continue
            for item in entries[:_MAX_ENTRIES]:
                match item:
                    case (str() as dest, _seqno, int() as metric) if (
                        dest == source and 0 <= metric < INFINITY
                    ):
                        return True
        return False

    def _forward(self, frame: _Routed, avoid: NodeId | None, actions: list[Action]) -> None:
        """Deliver ``frame`` here, send it one hop on, or report why it cannot go on."""
        dest = frame.destination
        if dest == self.myself:
            self._arrive(frame, actions)
            return
        if frame.hops >= frame.hop_limit:
            self._fail(frame, "hop_limit", actions)
            return
        choice = self._next_hop(dest, avoid)
        if choice is None:
            self._fail(frame, "no_route", actions)
            return
        hop, counter = choice
        self.counters[counter] += 1
        if type(frame) is DataFrame:  # the hot path: built directly, not by replace()
            onward: _Routed = DataFrame(
                source=frame.source,
                destination=dest,
                frame_id=frame.frame_id,
                hops=frame.hops + 1,
                hop_limit=frame.hop_limit,
                payload=frame.payload,
            )
        else:
            onward = replace(frame, hops=frame.hops + 1)
        self._send(hop, onward, actions)

    def _next_hop(self, dest: NodeId, avoid: NodeId | None) -> tuple[NodeId, str] | None:
        """The neighbour a frame for ``dest`` goes to next (never ``avoid``, the one it came
        from), and the counter that names how it was chosen; ``None`` without a route."""
        if dest in self._links and dest != avoid:
            return dest, "forward.direct"
        route = self._selected.get(dest)
        if route is not None and route.next_hop != avoid and route.next_hop in self._links:
            return route.next_hop, "forward.routed"
        # Another neighbour that announces the destination, feasible or not: a frame may loop
        # for a moment, but its hop limit bounds that, and it beats a drop.
        advs = self._rib.get(dest, {})
        choices = [p for p in advs if p in self._links and p != avoid]
        if choices:
            return min(choices, key=lambda p: (advs[p].metric, p)), "forward.alternate"
        return None

    def _arrive(self, frame: _Routed, actions: list[Action]) -> None:
        match frame:
            case DataFrame():
                self.counters["arrived"] += 1
                actions.append(
                    Arrived(
                        source=frame.source,
                        frame_id=frame.frame_id,
                        payload=frame.payload,
                        hops=frame.hops,
                    )
                )
            case RouteError():
                self.counters["undeliverable." + frame.reason] += 1
                actions.append(
                    Undeliverable(
                        frame_id=frame.frame_id,
                        destination=frame.frame_destination,
                        reason=frame.reason,
                        reported_by=frame.source,
                    )
                )

    def _fail(self, frame: _Routed, reason: str, actions: list[Action]) -> None:
        match frame:
            case RouteError():
                self._drop("route_error_" + reason)  # never an error about an error
            case DataFrame() if frame.source == self.myself:
                self.counters["undeliverable." + reason] += 1
                actions.append(
                    Undeliverable(
                        frame_id=frame.frame_id,
                        destination=frame.destination,
                        reason=reason,
                        reported_by=self.myself,
                    )
                )
            case DataFrame():
                self._drop("frame_" + reason)
                report = RouteError(
                    source=self.myself,
                    destination=frame.source,
                    frame_id=frame.frame_id,
                    frame_destination=frame.destination,
                    reason=reason,
                    hops=0,
                    hop_limit=self.config.hop_limit,
                )
                self._forward(report, None, actions)

    # --- announcements ---------------------------------------------------------------------------

    def _all_destinations(self) -> list[NodeId]:
        return [
            self.myself,
            *self._selected,
            *(d for d in self._advertised if d not in self._selected),
        ]

    def _entry_for(self, dest: NodeId, peer: NodeId) -> tuple[str, int, int] | None:
        """What to tell ``peer`` about ``dest`` now (and update the feasibility distance)."""
        if dest == self.myself:
            return (dest, self._seqno, 0)
        route = self._selected.get(dest)
        if route is None:
            seqno = self._advertised.get(dest)
            return None if seqno is None else (dest, seqno, INFINITY)
        self._advertised[dest] = route.seqno
        fd = self._fd.get(dest)
        if fd is None or (
            route.metric < fd[1] if route.seqno == fd[0] else seqno_newer(route.seqno, fd[0])
        ):
            self._fd[dest] = (route.seqno, route.metric)
        self._fd_heard[dest] = self._now
        if route.next_hop == peer:
            return (dest, route.seqno, INFINITY)  # poisoned reverse
        return (dest, route.seqno, route.metric)

    def _send_table(self, peer: NodeId, dests: list[NodeId], actions: list[Action]) -> None:
        """Announce ``dests`` to ``peer`` in as few ROUTE_UPDATEs as fit: at most
        ``max_entries_per_update`` entries, and at most a frame's worth of bytes (ids of up to
        240 bytes would otherwise push 512 entries past the 64 KiB frame)."""
        entries = [e for d in dests if (e := self._entry_for(d, peer)) is not None]
        size = self.config.max_entries_per_update
        for start in range(0, len(entries), size):
            chunk = entries[start : start + size]
            # Fast path: even at 4 UTF-8 bytes per character the chunk fits one frame.
            if _ENTRY_OVERHEAD * len(chunk) + 4 * sum([len(e[0]) for e in chunk]) <= _UPDATE_BUDGET:
                self._send(peer, RouteUpdate(entries=tuple(chunk)), actions)
            else:
                self._send_by_bytes(peer, chunk, actions)

    def _send_by_bytes(
        self, peer: NodeId, entries: list[tuple[str, int, int]], actions: list[Action]
    ) -> None:
        part: list[tuple[str, int, int]] = []
        used = 0
        for entry in entries:
            dest = entry[0]
            cost = _ENTRY_OVERHEAD + (len(dest) if dest.isascii() else len(dest.encode()))
            if part and used + cost > _UPDATE_BUDGET:
                self._send(peer, RouteUpdate(entries=tuple(part)), actions)
                part, used = [], 0
            part.append(entry)
            used += cost
        if part:
            self._send(peer, RouteUpdate(entries=tuple(part)), actions)

    def _finish(self, now: float, actions: list[Action]) -> list[Action]:
        """End of every input: ask for better routes, announce what changed (triggered)."""
        if self._requesting:
            self._send_requests(now, actions)
        if not self._pending:
            return actions
        if self._flush_at is None:
            self._flush_at = now + self.config.triggered_delay
        if self._flush_at <= now:
            self._flush_at = None
            dests = list(self._pending)
            self._pending.clear()
            for peer in self._links:
                self._send_table(peer, dests, actions)
            for dest in dests:
                if dest not in self._selected and dest != self.myself:
                    self._advertised.pop(dest, None)  # the retraction is out
        return actions

    def _expire(self, now: float) -> None:
        """Drop routes not refreshed in time, and old feasibility distances and requests."""
        for dest, advs in list(self._rib.items()):
            stale = [peer for peer, adv in advs.items() if adv.expires <= now]
            for peer in stale:
                del advs[peer]
            if stale:
                self.counters["route.expired"] += len(stale)
                self._reselect(dest, now)
        for dest, heard in list(self._fd_heard.items()):
            # RFC 8966, 3.2.5: a source entry lives SOURCE_GC_TIME after we last announced a
            # route through it, not after we last heard of it. Forgetting it then is safe (every
            # announcement of ours has expired long since) and ends a starvation no request can
            # end: a seqno 2**63 or more ahead of ours reads as older (modular comparison).
            if heard + self.config.source_retention <= now and dest not in self._selected:
                del self._fd_heard[dest]
                self._fd.pop(dest, None)
                self.counters["source.expired"] += 1
                if dest in self._rib:
                    self._reselect(dest, now)
        self._requests_seen = {k: t for k, t in self._requests_seen.items() if t > now}
        self._asked = {d: a for d, a in self._asked.items() if a[1] > now}
        horizon = now - self.config.route_expiry
        self._early = {p: held for p, held in self._early.items() if held[-1][0] > horizon}
        for dest, vouched in list(self._vouched.items()):
            kept = {p: until for p, until in vouched.items() if until > now}
            if kept:
                self._vouched[dest] = kept
            else:
                del self._vouched[dest]

    # --- helpers ---------------------------------------------------------------------------------

    def _tick(self, now: float) -> float:
        if self._now == -math.inf:
            holddown = self.config.start_holddown
            if holddown is None:
                holddown = self.config.route_expiry + self.config.update_interval
            self._holddown_until = now + holddown
            self._holding = holddown > 0
        self._now = max(now, self._now)
        if self._holding:
            self._end_holddown(self._now)
        return self._now

    def _end_holddown(self, now: float) -> None:
        """Rule 6: the hold-down is over; select among what was heard meanwhile."""
        if self._holding and self._holddown_until is not None and now >= self._holddown_until:
            self._holding = False
            self._holddown_until = None
            for dest in list(self._rib):
                self._reselect(dest, now)

    def _jitter(self) -> float:
        return self.config.update_interval * (0.75 + 0.25 * self._rng.random())

    def _send(self, peer: NodeId, message: RoutingMessage, actions: list[Action]) -> None:
        self.counters["sent." + type(message).__name__] += 1
        actions.append(SendTo(peer, message))

    def _drop(self, cause: str) -> None:
        self.counters["dropped." + cause] += 1
