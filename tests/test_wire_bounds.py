"""Whatever the decoder accepts, the layers above can carry again (issue 9, "one frame stops a
node's agent").

Two levels. The codec: every message type of the table round-trips, and frames with extreme
field values (0, max, max + 1, negative, huge lengths) are either refused with a counted
:class:`DecodeError` or decode to a value that encodes again. The cores: what a core derives
from an accepted frame (a seqno + 1, a round + 1) must encode too, or one remote frame turns
into an ``EncodeError`` inside the agent.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_hyparview.protocol import limits
from ray_hyparview.protocol import messages as hv
from ray_hyparview.protocol import plumtree as pt
from ray_hyparview.protocol import routing as rt
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.wire.codec import (
    DECODE_CAUSES,
    HEADER,
    BoolField,
    BytesField,
    DecodeError,
    EncodeError,
    EnumField,
    FloatField,
    IntField,
    NodeIdField,
    OptionalField,
    PeerField,
    SeqField,
    StrField,
)
from ray_hyparview.wire.table import TupleField, wire_codec
from tests.test_routing import FAST, Net, check_routes

CODEC = wire_codec()
TOP = limits.MAX_SEQNO  # 2**64 - 1


def encodes(actions: Iterable[object]) -> list[object]:
    """Every message the actions send, encoded and decoded again (raises ``EncodeError``)."""
    out: list[object] = []
    for action in actions:
        if isinstance(action, rt.SendTo):
            frame = CODEC.encode(action.message)
            back = CODEC.decode(frame)
            assert back == action.message
            out.append(back)
    return out


def router(name: str = "a", *links: str) -> rt.Router:
    r = rt.Router(name, FAST, rng=random.Random(name))
    for peer in links:
        encodes(r.link_up(peer, now=0.0))
    return r


def drive(r: rt.Router, until: float, *, start: float = 0.0) -> None:
    """Fire the router's timers up to ``until``, encoding everything it sends."""
    now = start
    while (due := r.next_deadline()) is not None and due <= until:
        now = max(now, due)
        encodes(r.on_timer(now=now))


# --- the routing core: values derived from received ones stay on the wire ----------------------


def test_route_update_with_top_seqno_for_ourselves_encodes() -> None:
    # routing.py:570 at dfab434: our seqno became 2**64, which the u64 field cannot carry.
    r = router("a", "b")
    for seqno in (2**63 - 1, TOP - 2, TOP):
        update = rt.RouteUpdate(entries=(("a", seqno, 0),))
        assert CODEC.decode(CODEC.encode(update)) == update  # the decoder accepts it
        encodes(r.receive("b", update, now=1.0))
    assert r.seqno == 0  # moved past 2**64 - 1: wrapped
    drive(r, 10.0, start=1.0)
    encodes(r.link_down("b", now=11.0))
    assert 0 <= r.seqno <= TOP


def test_relayed_seqno_request_with_top_seqno_encodes() -> None:
    # routing.py:661 at dfab434: the request raises our seqno to 2**64 - 1, the next link
    # change to 2**64.
    r = router("a", "b", "c")
    # Modulo 2**64 a jump of 2**63 or more is not "newer": climb to the top in three requests.
    for seqno in (2**63 - 1, TOP - 1, TOP):
        request = rt.SeqnoRequest(destination="a", seqno=seqno, origin="z", hop_limit=5)
        encodes(r.receive("b", request, now=1.0))
    assert r.seqno == TOP
    drive(r, 3.0, start=1.0)
    encodes(r.link_down("b", now=3.0))
    assert r.seqno == 0  # wrapped: modulo 2**64, 0 is newer than 2**64 - 1
    drive(r, 6.0, start=3.0)


def test_starved_route_with_top_seqno_asks_for_a_wrapped_seqno() -> None:
    # A route learnt at seqno 2**64 - 1, then starved: the SEQNO_REQUEST asks for seqno + 1.
    r = router("a", "b", "c")
    encodes(r.receive("b", rt.RouteUpdate(entries=(("x", TOP, 0),)), now=1.0))
    encodes(r.receive("c", rt.RouteUpdate(entries=(("x", TOP, 3),)), now=1.0))
    drive(r, 1.5, start=1.0)
    assert r.next_hop("x") == "b"
    sent = encodes(r.link_down("b", now=2.0))
    sent += encodes(r.on_timer(now=2.0))
    requests = [m for m in sent if isinstance(m, rt.SeqnoRequest)]
    assert requests
    assert all(m.seqno == 0 for m in requests)
    # The answer (a wrapped seqno) is newer than the feasibility distance: c's route is taken.
    encodes(r.receive("c", rt.RouteUpdate(entries=(("x", 0, 3),)), now=2.1))
    assert r.next_hop("x") == "c"


def test_relay_forwards_a_top_seqno_request_unchanged() -> None:
    r = router("a", "b", "c")
    encodes(r.receive("c", rt.RouteUpdate(entries=(("x", TOP - 5, 0),)), now=1.0))
    request = rt.SeqnoRequest(destination="x", seqno=TOP, origin="b", hop_limit=2)
    sent = encodes(r.receive("b", request, now=1.1))
    assert [m for m in sent if isinstance(m, rt.SeqnoRequest)] == [
        rt.SeqnoRequest(destination="x", seqno=TOP, origin="b", hop_limit=1)
    ]
    drive(r, 4.0, start=1.1)


@pytest.mark.parametrize("seqno", [0, 1, 2**63 - 1, 2**63, 2**63 + 1, TOP - 1, TOP])
def test_any_wire_seqno_keeps_the_network_routing(seqno: int) -> None:
    """A line a-b-c-d; c's seqno is pushed to an extreme by a request, then links flap: every
    message still encodes, and routes come back loop free and shortest."""
    config = replace(FAST, source_retention=10.0)
    net = Net([("a", "b"), ("b", "c"), ("c", "d")], seed=seqno % 1000, config=config)
    net.run(3.0)
    request = rt.SeqnoRequest(destination="c", seqno=seqno, origin="a", hop_limit=5)
    net.apply("c", net.nodes["c"].receive("b", request, now=net.now))
    net.run(0.5)
    net.link_down("b", "c")
    net.run(2.0)
    net.link_up("a", "d")
    net.run(2.0)
    net.link_up("b", "c")
    net.run(2.0)
    net.link_down("a", "d")
    # A seqno pushed 2**63 or more ahead of a feasibility distance reads as older there: that
    # route starves until the distance is forgotten (source_retention), as in RFC 8966.
    net.run(config.source_retention + 2 * config.route_expiry)
    check_routes(net)
    for node in net.nodes.values():
        encodes(node.on_timer(now=net.now))


def test_extreme_fields_from_a_neighbour_are_dropped_not_raised() -> None:
    r = router("a", "b")
    garbage: list[object] = [
        rt.RouteUpdate(entries=(("x", TOP + 1, 0),)),
        rt.RouteUpdate(entries=(("x", -1, 0),)),
        rt.RouteUpdate(entries=(("x", 1, limits.METRIC_INFINITY + 1),)),
        rt.RouteUpdate(entries=(("x" * 241, 1, 1),)),
        rt.SeqnoRequest(destination="a", seqno=TOP + 1, origin="b", hop_limit=1),
        rt.SeqnoRequest(destination="x", seqno=1, origin="b", hop_limit=256),
        rt.DataFrame(
            source="b", destination="x", frame_id=TOP + 1, hops=1, hop_limit=5, payload=b""
        ),
        rt.RouteError(
            source="b",
            destination="a",
            frame_id=1,
            frame_destination="x",
            reason="made_up",
            hops=1,
            hop_limit=5,
        ),
    ]
    for message in garbage:
        before = r.counters["dropped.malformed"]
        encodes(r.receive("b", message, now=1.0))
        assert r.counters["dropped.malformed"] == before + 1, message
    assert r.seqno < 2**64


def test_a_table_of_long_ids_is_split_to_fit_the_frame() -> None:
    # 512 entries of 240-byte ids are about 130 KB: over the 64 KiB frame.
    r = router("a", "b", "c")
    names = [f"{i:04d}".ljust(limits.MAX_PEER_ID_BYTES, "x") for i in range(600)]
    for start in range(0, len(names), 200):
        chunk = tuple((n, 1, 1) for n in names[start : start + 200])
        encodes(r.receive("b", rt.RouteUpdate(entries=chunk), now=1.0))
    sent = encodes(r.link_up("d", now=2.0))
    announced = {e[0] for m in sent if isinstance(m, rt.RouteUpdate) for e in m.entries}
    assert announced >= set(names)
    assert len(sent) >= 3


def test_config_cannot_ask_for_more_entries_than_the_wire_carries() -> None:
    from ray_hyparview.protocol.errors import ConfigError

    with pytest.raises(ConfigError):
        rt.RoutingConfig(max_entries_per_update=limits.MAX_ROUTE_ENTRIES + 1)


def test_frame_ids_wrap_within_the_wire_field() -> None:
    r = router("a", "b")
    r._frame_seq = limits.MAX_FRAME_ID - 1
    ids = [r.route("b", b"x", now=1.0)[0] for _ in range(3)]
    assert ids == [limits.MAX_FRAME_ID, 1, 2]


def test_codec_refuses_what_it_cannot_carry_as_a_value() -> None:
    for entry in (["x", -1, 0], ["x", 1, limits.METRIC_INFINITY + 1], ["", 1, 1]):
        frame = msgpack.packb([32, [entry]])
        result = CODEC.decode(b"\xc1\x68\x01" + frame)
        assert isinstance(result, DecodeError)
        assert result.cause in DECODE_CAUSES
    with pytest.raises(EncodeError):
        CODEC.encode(rt.RouteUpdate(entries=(("x", TOP + 1, 0),)))


# --- every message type of the codec table ----------------------------------------------------
#
# Raw field values are built from each registered field's own kind, so a message type added to
# the table is covered without touching this file.

PACKABLE = (-(2**63), limits.U64_MAX)  # what msgpack can carry as an integer at all
ENTRIES = {tag: CODEC.registry.entry_for_tag(tag) for tag in CODEC.registry.types}


def _ints(values: Iterable[int]) -> list[int]:
    return sorted({v for v in values if PACKABLE[0] <= v <= PACKABLE[1]})


def baseline(kind: Any) -> Any:
    """A raw value the field accepts."""
    match kind:
        case IntField():
            return kind.lo
        case FloatField():
            return 0.0
        case BoolField():
            return False
        case StrField():
            return "x" * max(kind.min_len, 1) if kind.max_len else ""
        case BytesField():
            return b""
        case EnumField():
            member = next(iter(kind.enum_cls))
            return int(member.value) if isinstance(member, enum.IntEnum) else member.value
        case PeerField():
            return ["nb", "mem://nb"]
        case NodeIdField():
            return "me"  # the receiving core: values about itself reach its own seqno
        case SeqField():
            return []
        case OptionalField():
            return None
        case TupleField():
            return [baseline(item) for item in kind.items]
    raise AssertionError(f"no baseline for {kind!r}")


def extremes(kind: Any, depth: int = 0) -> list[Any]:
    """Raw values at and just past the field's limits, and of the wrong kind."""
    match kind:
        case IntField():
            return _ints([kind.lo, kind.hi, kind.lo - 1, kind.hi + 1, -1, 0, *PACKABLE])
        case FloatField():
            return [0.0, -0.0, 1e308, float("inf"), float("nan"), 1]
        case BoolField():
            return [True, False, 0, 1]
        case StrField():
            n = kind.max_len
            return ["", "x" * n, "x" * (n + 1), "é" * n, "\x00", "\n" * max(kind.min_len, 1), 5]
        case BytesField():
            return [b"", b"\0" * kind.max_len, b"\0" * (kind.max_len + 1), "text"]
        case EnumField():
            return [baseline(kind), 999, -1, "zzz", None]
        case PeerField() | NodeIdField():
            ids = ["x" * 240, "x" * 241, "é" * 120, "é" * 121, "", "\x00", "a\nb", 7]
            if isinstance(kind, NodeIdField):
                return ids
            return [[i, "mem://x"] for i in ids] + [["nb", "e" * 256], ["nb"], "nb"]
        case SeqField():
            item = baseline(kind.item)
            out: list[Any] = [[], [item] * kind.max_len, [item] * (kind.max_len + 1), "no"]
            if depth == 0:
                out += [[x] for x in extremes(kind.item, depth + 1)]
            return out
        case OptionalField():
            return [None, *extremes(kind.inner, depth)]
        case TupleField():
            base = baseline(kind)
            out = [base[:-1], [*base, 0], "no"]
            for i, item in enumerate(kind.items):
                out += [[*base[:i], x, *base[i + 1 :]] for x in extremes(item, depth + 1)]
            return out
    raise AssertionError(f"no extremes for {kind!r}")


def raw_values(kind: Any) -> st.SearchStrategy[Any]:
    """Hypothesis: mostly valid raw values of the field, its extremes, and garbage."""
    edge = st.sampled_from(extremes(kind, depth=1))
    match kind:
        case IntField():
            valid: st.SearchStrategy[Any] = st.integers(kind.lo, kind.hi)
        case StrField():
            valid = st.text(min_size=kind.min_len, max_size=min(kind.max_len, 40))
        case BytesField():
            valid = st.binary(max_size=min(kind.max_len, 64))
        case NodeIdField():
            valid = st.text(min_size=1, max_size=30)
        case PeerField():
            valid = st.lists(st.text(min_size=0, max_size=20), min_size=2, max_size=2)
        case SeqField():
            valid = st.lists(raw_values(kind.item), max_size=4)
        case OptionalField():
            valid = st.none() | raw_values(kind.inner)
        case TupleField():
            valid = st.tuples(*(raw_values(i) for i in kind.items)).map(list)
        case _:
            valid = st.just(baseline(kind))
    return st.one_of(valid, edge)


def frame(tag: int, raws: Sequence[Any]) -> bytes:
    return HEADER + msgpack.packb([tag, *raws], use_bin_type=True)


def check_frame(data: bytes) -> object | None:
    """Decode: a counted refusal, or a value that encodes again to an equal value."""
    result = CODEC.decode(data)
    if isinstance(result, DecodeError):
        assert result.cause in DECODE_CAUSES
        return None
    again = CODEC.encode(result)
    assert CODEC.decode(again) == result
    return result


def derived(message: object) -> list[object]:
    """Feed an accepted message to the core that owns it; return every message the core sends
    in reaction (now and on its timers for a while, and around a link change)."""
    sent: list[object] = []
    rng = random.Random(0)
    if isinstance(message, rt.RouteUpdate | rt.SeqnoRequest | rt.DataFrame | rt.RouteError):
        r = rt.Router("me", FAST, rng=rng)
        actions = [*r.link_up("nb", now=0.0), *r.link_up("other", now=0.0)]
        actions += r.receive("nb", message, now=1.0)
        actions += r.link_down("other", now=1.5)
        now = 1.5
        while (due := r.next_deadline()) is not None and due <= 10.0:
            now = max(now, due)
            actions += r.on_timer(now=now)
        sent += [a.message for a in actions if isinstance(a, rt.SendTo)]
    elif isinstance(message, pt.Gossip | pt.IHave | pt.Graft | pt.Prune):
        p = pt.Plumtree("me", rng=rng)
        actions2 = [*p.neighbor_up("nb", now=0.0), *p.neighbor_up("other", now=0.0)]
        actions2 += p.receive("nb", message, now=1.0)
        now = 1.0
        while (due := p.next_deadline()) is not None and due <= 30.0:
            now = max(now, due)
            actions2 += p.on_timer(now=now)
        sent += [a.message for a in actions2 if isinstance(a, pt.SendTo)]
    elif isinstance(message, _MEMBERSHIP):
        sent += _membership(message, rng)
    return sent


_MEMBERSHIP = (
    hv.Join,
    hv.ForwardJoin,
    hv.Neighbor,
    hv.NeighborReply,
    hv.Disconnect,
    hv.Shuffle,
    hv.ShuffleReply,
    hv.KeepAlive,
)


def _membership(message: Any, rng: random.Random) -> list[object]:
    node = HyParView(Peer("me", "mem://me"), rng=rng)
    actions = node.join([Peer("other", "mem://other")], now=0.0)
    actions += node.receive(message.sender.id, message, now=1.0)
    actions += node.on_timer(now=30.0)
    return [a.message for a in actions if isinstance(a, hv.Send)]


def _xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, raises=EncodeError, reason=reason)


# Types whose core still derives an out-of-range value (strict xfail: a fix flips the mark).
PENDING: dict[str, pytest.MarkDecorator] = {}


def _types(pending: dict[str, pytest.MarkDecorator]) -> list[Any]:
    return [
        pytest.param(tag, id=entry.cls.__name__, marks=pending.get(entry.cls.__name__, ()))
        for tag, entry in sorted(ENTRIES.items())
        if entry is not None
    ]


def test_the_table_holds_every_layer() -> None:
    names = {e.cls.__name__ for e in ENTRIES.values() if e is not None}
    assert {"Join", "KeepAlive", "Gossip", "RouteUpdate", "MeshSend", "MeshPublish"} <= names


@pytest.mark.parametrize("tag", _types({}))
@settings(
    max_examples=60,
    deadline=None,
    # Frames drawn here are large by design (lengths up to the wire's limits).
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(data=st.data())
def test_property_whatever_decodes_encodes_again(tag: int, data: st.DataObject) -> None:
    entry = ENTRIES[tag]
    assert entry is not None
    pairs = zip(entry.names, entry.fields, strict=True)
    raws = [data.draw(raw_values(kind), label=name) for name, kind in pairs]
    check_frame(frame(tag, raws))


@pytest.mark.parametrize("tag", _types(PENDING))
def test_extreme_field_values_are_refused_or_carried_through_the_core(tag: int) -> None:
    """Each field at 0, its max, max + 1, negative, huge lengths, wrong kinds (the others at a
    valid baseline): decode refuses it with a counted error, or the value and everything its
    core sends in reaction encode again."""
    entry = ENTRIES[tag]
    assert entry is not None
    base = [baseline(kind) for kind in entry.fields]
    accepted = refused = 0
    if not entry.fields:
        message = check_frame(frame(tag, []))
        assert message is not None
        for reaction in derived(message):
            CODEC.encode(reaction)
        return
    for i, kind in enumerate(entry.fields):
        for value in extremes(kind):
            raws = [*base[:i], value, *base[i + 1 :]]
            message = check_frame(frame(tag, raws))
            if message is None:
                refused += 1
                continue
            accepted += 1
            for reaction in derived(message):
                CODEC.encode(reaction)
    assert accepted > 0
    assert refused > 0
