"""HyParView messages and the actions the core asks its driver to perform.

Every message names its sender and the sender's *incarnation*: a number that a node
picks anew each time it starts (the agent uses its start time in microseconds), so that
a message from an earlier life of a node is told apart from one from the current life.

Messages are plain frozen values; :mod:`ray_hyparview.wire.codec` turns them into bytes.
"""

from __future__ import annotations

import enum
import inspect
import types
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, Final, get_args

from ray_hyparview.protocol.peer import Peer

__all__ = [
    "BUILDERS",
    "MESSAGE_TYPES",
    "Action",
    "ComponentMark",
    "Disconnect",
    "DownReason",
    "ForwardJoin",
    "Join",
    "KeepAlive",
    "MergeProbe",
    "Message",
    "Neighbor",
    "NeighborReply",
    "PeerDown",
    "PeerUp",
    "Priority",
    "Send",
    "Shuffle",
    "ShuffleReply",
    "build_component_mark",
    "build_disconnect",
    "build_forward_join",
    "build_join",
    "build_merge_probe",
    "build_neighbor",
    "build_neighbor_reply",
    "build_shuffle",
    "build_shuffle_reply",
]


class Priority(enum.IntEnum):
    """Urgency of a NEIGHBOR request (paper, section 4.3)."""

    LOW = 0
    """Accepted only into a free slot of the receiver's active view."""

    HIGH = 1
    """Always accepted, evicting a random active peer if needed: the sender has no link."""

    MERGE = 2
    """Links two components of the overlay (see :mod:`ray_hyparview.protocol.merge`): accepted
    into a free slot, or by evicting a random active peer at most once per
    ``2 * merge_interval``; refused otherwise."""


class DownReason(enum.Enum):
    """Why an active link went away; carried by :class:`PeerDown`."""

    EVICTED = "evicted"
    """We dropped a live peer to make room for another; it stays in our passive view."""

    DISCONNECTED = "disconnected"
    """The peer, still alive, dropped the link (it evicted us)."""

    LEFT = "left"
    """The peer left the overlay gracefully, or we did."""

    FAILED = "failed"
    """The link failed: crash, hang or partition. The peer does not go to the passive view."""


_WRITTEN_INITS: dict[type, Callable[..., None]] = {}
"""The ``__init__`` each class's source spells out, kept when :func:`_direct_init` replaces it
(the tests construct values through both)."""


def _direct_init(cls: type) -> None:
    """Give a frozen, slotted dataclass an ``__init__`` that fills each slot through its own
    member descriptor, once its written ``__init__`` has been checked against its fields.

    Why each class writes its ``__init__`` out: mypyc (``python -m ray_hyparview.sim
    --compiled``) compiles the methods a class's source spells out, but leaves the ones that
    ``dataclass`` generates at import interpreted. A message built through the generated
    ``__init__`` cost 0.7 us compiled; through the written one, which mypyc turns into stores
    into the object's struct, 0.035 us. ``dataclass`` keeps a written ``__init__`` and still
    adds the rest (``__eq__``, ``__hash__``, ``__repr__``, the frozen ``__setattr__``).

    Why it is replaced when interpreted: ``object.__setattr__`` per field costs a global
    look-up, an attribute look-up and a wrapper call, and the core builds a message and a
    ``Send`` per hop. Calling each slot's descriptor directly halves the constructor's time; on a
    600-node simulated build (cachegrind) it saved 6.7% of all instructions. The object that
    comes out is the same and stays frozen. The written and the generated constructors must
    take the same parameters with the same defaults; a class whose ``__init__`` drifted from its
    fields fails here, at import.
    """
    init = _generated(cls, cls.__dict__["__init__"], builder=False)
    if init is None:
        return
    _WRITTEN_INITS[cls] = cls.__dict__["__init__"]
    cls.__init__ = init  # type: ignore[misc]


def _direct_builder(cls: type, written: Callable[..., Any]) -> Callable[..., Any]:
    """The interpreted stand-in for one of the ``build_*`` functions below: it makes the object
    with ``object.__new__`` and fills its slots as the generated ``__init__`` does, skipping
    the call of the class. Compiled, ``written`` itself (a native call of the class)."""
    fast = _generated(cls, written, builder=True)
    return written if fast is None else fast


def _generated(cls: type, written: Callable[..., Any], *, builder: bool) -> Any:
    """Write, check and compile the slot-filling ``__init__`` of ``cls`` (``builder=False``) or
    a function that returns a new ``cls`` filled the same way (``builder=True``). ``None`` when
    ``cls`` is compiled with mypyc: its attributes are native and the written code is fast."""
    if not all(
        isinstance(cls.__dict__.get(f.name), types.MemberDescriptorType) for f in fields(cls)
    ):
        return None
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    params: list[inspect.Parameter] = []
    body: list[str] = []
    for f in fields(cls):
        kind = (
            inspect.Parameter.KEYWORD_ONLY if f.kw_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        namespace[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        default = inspect.Parameter.empty
        if f.default is not MISSING:
            default = f.default
            namespace[f"_default_{f.name}"] = f.default
        params.append(inspect.Parameter(f.name, kind, default=default))
        body.append(f"    _set_{f.name}(self, {f.name})")
    expected = [(p.name, p.kind, p.default) for p in params]
    got = [
        (p.name, p.kind, p.default)
        for p in list(inspect.signature(written).parameters.values())[0 if builder else 1 :]
    ]
    if got != expected:
        what = written.__name__ if builder else f"{cls.__name__}.__init__"
        raise TypeError(f"{what} takes {got}, but the fields of {cls.__name__} ask for {expected}")
    star = "*, " if any(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params) else ""
    spelled = [
        p.name if p.default is inspect.Parameter.empty else f"{p.name}=_default_{p.name}"
        for p in params
    ]
    if builder:
        head = f"def {written.__name__}({star}{', '.join(spelled)}):\n    self = _new(_cls)\n"
        body.append("    return self")
    else:
        head = f"def __init__(self, {star}{', '.join(spelled)}):\n"
    # The source is built from the class's own field names only.
    exec(head + "\n".join(body) + "\n", namespace)
    made = namespace[written.__name__ if builder else "__init__"]
    made.__qualname__ = written.__qualname__ if builder else f"{cls.__qualname__}.__init__"
    made.__module__ = cls.__module__
    made.__doc__ = written.__doc__
    return made


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """A newcomer asks a contact to take it into its active view (paper, section 4.2)."""

    sender: Peer
    """The newcomer."""

    incarnation: int
    """The newcomer's incarnation."""

    def __init__(self, *, sender: Peer, incarnation: int) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardJoin:
    """A random walk that spreads a newcomer through the overlay (paper, section 4.2)."""

    sender: Peer
    """The node that forwards the walk (one hop back)."""

    incarnation: int
    """The forwarding node's incarnation."""

    new_peer: Peer
    """The newcomer the walk advertises."""

    ttl: int
    """Hops left; starts at ``arwl``."""

    def __init__(self, *, sender: Peer, incarnation: int, new_peer: Peer, ttl: int) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)
        object.__setattr__(self, "new_peer", new_peer)
        object.__setattr__(self, "ttl", ttl)


@dataclass(frozen=True, slots=True, kw_only=True)
class Neighbor:
    """A request to open an active link with the receiver (paper, section 4.3)."""

    sender: Peer
    """The node that wants the link."""

    incarnation: int
    """The requester's incarnation."""

    priority: Priority
    """HIGH when the sender has no active peer at all, LOW otherwise."""

    def __init__(self, *, sender: Peer, incarnation: int, priority: Priority) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)
        object.__setattr__(self, "priority", priority)


@dataclass(frozen=True, slots=True, kw_only=True)
class NeighborReply:
    """The answer to NEIGHBOR, and also a contact's acceptance of a JOIN.

    A link counts as up on either side only once this reply says ``accepted``.
    """

    sender: Peer
    """The node that answers."""

    incarnation: int
    """The answering node's incarnation."""

    accepted: bool
    """True when the sender has put the receiver into its active view."""

    def __init__(self, *, sender: Peer, incarnation: int, accepted: bool) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)
        object.__setattr__(self, "accepted", accepted)


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """The sender has dropped the receiver from its active view (paper, section 4.3)."""

    sender: Peer
    """The node that dropped the link."""

    incarnation: int
    """Its incarnation; a DISCONNECT from an older incarnation is ignored."""

    leaving: bool = False
    """True when the sender is leaving the overlay: do not keep it in the passive view."""

    def __init__(self, *, sender: Peer, incarnation: int, leaving: bool = False) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)
        object.__setattr__(self, "leaving", leaving)


@dataclass(frozen=True, slots=True, kw_only=True)
class Shuffle:
    """A sample of the origin's views, walking the overlay (paper, section 4.4)."""

    sender: Peer
    """The node that forwards the walk (one hop back)."""

    incarnation: int
    """The forwarding node's incarnation."""

    origin: Peer
    """The node that started the shuffle; the reply goes straight to it."""

    peers: tuple[Peer, ...]
    """The origin itself, ``shuffle_active`` active and ``shuffle_passive`` passive peers."""

    ttl: int
    """Hops left; starts at ``shuffle_ttl``."""

    nonce: int = 0
    """Drawn by the origin for this shuffle and echoed in the reply: the origin takes a
    SHUFFLE_REPLY only with the nonce of its own open shuffle, so a node it never asked cannot
    fill its passive view (DEPARTURE: the paper's reply carries no such proof)."""

    def __init__(
        self,
        *,
        sender: Peer,
        incarnation: int,
        origin: Peer,
        peers: tuple[Peer, ...],
        ttl: int,
        nonce: int = 0,
    ) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "peers", peers)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(self, "nonce", nonce)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShuffleReply:
    """The end of a shuffle walk answers the origin with as many of its passive peers."""

    sender: Peer
    """The node where the walk stopped."""

    incarnation: int
    """Its incarnation."""

    peers: tuple[Peer, ...]
    """A sample of the sender's passive view."""

    nonce: int = 0
    """The nonce of the shuffle this answers (see :attr:`Shuffle.nonce`)."""

    def __init__(
        self, *, sender: Peer, incarnation: int, peers: tuple[Peer, ...], nonce: int = 0
    ) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)
        object.__setattr__(self, "peers", peers)
        object.__setattr__(self, "nonce", nonce)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepAlive:
    """Sent on an active link that has been quiet for ``keepalive_interval``.

    Not in the paper, which relies on TCP: any message from a peer proves it alive, and a
    keepalive from a peer that is not in our active view tells us the link is one-sided.
    """

    sender: Peer
    """The node that sends it."""

    incarnation: int
    """Its incarnation."""

    def __init__(self, *, sender: Peer, incarnation: int) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentMark:
    """The sender's component marker (:mod:`ray_hyparview.protocol.merge`), flooded along
    active links when it changes or its root beats."""

    sender: Peer
    """The node that sends it (one hop back)."""

    incarnation: int
    """Its incarnation."""

    root: Peer
    """The least node id the sender knows in its component."""

    root_incarnation: int
    """The root's incarnation."""

    seq: int
    """The root's beat number."""

    age: float
    """Seconds since that beat left the root, as the sender reckons it."""

    settled: bool
    """True when the sender has held this root for at least 1.5 ``merge_interval``."""

    def __init__(
        self,
        *,
        sender: Peer,
        incarnation: int,
        root: Peer,
        root_incarnation: int,
        seq: int,
        age: float,
        settled: bool,
    ) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "root_incarnation", root_incarnation)
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "age", age)
        object.__setattr__(self, "settled", settled)


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeProbe:
    """ "Which component are you in?" sent to a known id that is not an active peer, and its
    answer (``reply``): both carry the sender's component marker."""

    sender: Peer
    """The node that asks, or answers."""

    incarnation: int
    """Its incarnation."""

    root: Peer
    """The sender's marker: root, as in :class:`ComponentMark`."""

    root_incarnation: int
    """The root's incarnation."""

    seq: int
    """The root's beat number."""

    age: float
    """Seconds since that beat left the root."""

    settled: bool
    """True when the sender has held this root for at least 1.5 ``merge_interval``."""

    reply: bool
    """False on the question, True on the answer."""

    def __init__(
        self,
        *,
        sender: Peer,
        incarnation: int,
        root: Peer,
        root_incarnation: int,
        seq: int,
        age: float,
        settled: bool,
        reply: bool,
    ) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "incarnation", incarnation)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "root_incarnation", root_incarnation)
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "age", age)
        object.__setattr__(self, "settled", settled)
        object.__setattr__(self, "reply", reply)


Message = (
    Join
    | ForwardJoin
    | Neighbor
    | NeighborReply
    | Disconnect
    | Shuffle
    | ShuffleReply
    | KeepAlive
    | ComponentMark
    | MergeProbe
)
"""Every message of the membership protocol."""

MESSAGE_TYPES: Final = (
    Join,
    ForwardJoin,
    Neighbor,
    NeighborReply,
    Disconnect,
    Shuffle,
    ShuffleReply,
    KeepAlive,
    ComponentMark,
    MergeProbe,
)
"""The classes of :data:`Message`: what a driver hands to :meth:`HyParView.receive`. Drivers
dispatch on this one tuple, so a new message type reaches the core everywhere at once (the
fuzzer once kept a copy without the merge messages, and never saw a partition merge)."""
if set(MESSAGE_TYPES) != set(get_args(Message)):
    raise TypeError("MESSAGE_TYPES and Message name different classes")


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``message`` to ``to`` (dialling its endpoint if there is no open link)."""

    to: Peer
    message: Message

    def __init__(self, to: Peer, message: Message) -> None:
        object.__setattr__(self, "to", to)
        object.__setattr__(self, "message", message)


@dataclass(frozen=True, slots=True)
class PeerUp:
    """``peer`` entered the active view: both sides agreed on the link."""

    peer: Peer

    def __init__(self, peer: Peer) -> None:
        object.__setattr__(self, "peer", peer)


@dataclass(frozen=True, slots=True)
class PeerDown:
    """``peer`` left the active view, for ``reason``."""

    peer: Peer
    reason: DownReason

    def __init__(self, peer: Peer, reason: DownReason) -> None:
        object.__setattr__(self, "peer", peer)
        object.__setattr__(self, "reason", reason)


Action = Send | PeerUp | PeerDown
"""What the core asks of its driver."""


# Builders: ``build_shuffle(...)`` returns the same value as ``Shuffle(...)``, for the core's hot
# paths. Interpreted, calling a class with keyword arguments is dear: CPython packs the keywords
# into a dict for ``type.__call__`` and unpacks them again for ``__init__``, about 4,400 of the
# 8,600 instructions that ``Shuffle(...)`` costs (cachegrind), and a 10,000-node simulation
# builds 1.6 million messages. A builder is a plain function, so its keywords reach it without
# the dict; interpreted, :func:`_direct_builder` replaces each with one that makes the object
# and fills its slots directly. Compiled, each is a native call of the class.


def build_join(*, sender: Peer, incarnation: int) -> Join:
    """``Join(...)``, for hot paths."""
    return Join(sender=sender, incarnation=incarnation)


def build_forward_join(*, sender: Peer, incarnation: int, new_peer: Peer, ttl: int) -> ForwardJoin:
    """``ForwardJoin(...)``, for hot paths."""
    return ForwardJoin(sender=sender, incarnation=incarnation, new_peer=new_peer, ttl=ttl)


def build_neighbor(*, sender: Peer, incarnation: int, priority: Priority) -> Neighbor:
    """``Neighbor(...)``, for hot paths."""
    return Neighbor(sender=sender, incarnation=incarnation, priority=priority)


def build_neighbor_reply(*, sender: Peer, incarnation: int, accepted: bool) -> NeighborReply:
    """``NeighborReply(...)``, for hot paths."""
    return NeighborReply(sender=sender, incarnation=incarnation, accepted=accepted)


def build_disconnect(*, sender: Peer, incarnation: int, leaving: bool = False) -> Disconnect:
    """``Disconnect(...)``, for hot paths."""
    return Disconnect(sender=sender, incarnation=incarnation, leaving=leaving)


def build_shuffle(
    *,
    sender: Peer,
    incarnation: int,
    origin: Peer,
    peers: tuple[Peer, ...],
    ttl: int,
    nonce: int = 0,
) -> Shuffle:
    """``Shuffle(...)``, for hot paths."""
    return Shuffle(
        sender=sender, incarnation=incarnation, origin=origin, peers=peers, ttl=ttl, nonce=nonce
    )


def build_shuffle_reply(
    *, sender: Peer, incarnation: int, peers: tuple[Peer, ...], nonce: int = 0
) -> ShuffleReply:
    """``ShuffleReply(...)``, for hot paths."""
    return ShuffleReply(sender=sender, incarnation=incarnation, peers=peers, nonce=nonce)


def build_component_mark(
    *,
    sender: Peer,
    incarnation: int,
    root: Peer,
    root_incarnation: int,
    seq: int,
    age: float,
    settled: bool,
) -> ComponentMark:
    """``ComponentMark(...)``, for hot paths."""
    return ComponentMark(
        sender=sender,
        incarnation=incarnation,
        root=root,
        root_incarnation=root_incarnation,
        seq=seq,
        age=age,
        settled=settled,
    )


def build_merge_probe(
    *,
    sender: Peer,
    incarnation: int,
    root: Peer,
    root_incarnation: int,
    seq: int,
    age: float,
    settled: bool,
    reply: bool,
) -> MergeProbe:
    """``MergeProbe(...)``, for hot paths."""
    return MergeProbe(
        sender=sender,
        incarnation=incarnation,
        root=root,
        root_incarnation=root_incarnation,
        seq=seq,
        age=age,
        settled=settled,
        reply=reply,
    )


BUILDERS: Final = {
    Join: "build_join",
    ForwardJoin: "build_forward_join",
    Neighbor: "build_neighbor",
    NeighborReply: "build_neighbor_reply",
    Disconnect: "build_disconnect",
    Shuffle: "build_shuffle",
    ShuffleReply: "build_shuffle_reply",
    ComponentMark: "build_component_mark",
    MergeProbe: "build_merge_probe",
}
"""The builder of each message class the core builds on a hot path (its KEEPALIVE is not)."""

_WRITTEN_BUILDERS: dict[type, Callable[..., Any]] = {}
"""The builders as written, kept when :func:`_direct_builder` replaces them (for the tests)."""

for _cls in (*get_args(Message), *get_args(Action)):
    _direct_init(_cls)
for _cls, _name in BUILDERS.items():
    _WRITTEN_BUILDERS[_cls] = globals()[_name]
    globals()[_name] = _direct_builder(_cls, globals()[_name])
del _cls, _name
