"""A relay passes a data frame on as its field values (:meth:`Router.pass_on`, rule 8 of
:mod:`ray_hyparview.protocol.routing`), and the codec reads and writes those values without
building the message. Both must do exactly what the full path does: ``Codec.decode``, then
``Router.receive``, then ``Codec.encode`` of the onward frame. Checked here side by side on
twin routers, over random tables, links and frames, honest and not."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import astuple, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_hyparview.protocol.limits import MAX_ENVELOPE, MAX_FRAME_ID
from ray_hyparview.protocol.routing import (
    DATA_FIELDS,
    INFINITY,
    DataFrame,
    Router,
    RouteUpdate,
    RoutingConfig,
    SendTo,
    data_frame,
)
from ray_hyparview.wire.codec import DecodeError, EncodeError
from ray_hyparview.wire.table import wire_codec

CONFIG = RoutingConfig(update_interval=1.0, route_expiry=3.5, hop_limit=16)
CODEC = wire_codec()
IDS = ("a", "b", "c", "d", "e", "x")  # the router is "c"; "x" is never a neighbour
NEIGHBOURS = ("a", "b", "d", "e")


@st.composite
def routers(draw: st.DrawFn) -> Router:
    """``c`` after a random history: links up and down, tables from its neighbours (routes,
    retractions, poisoned entries), and time passing (some of it expires)."""
    r = Router("c", CONFIG, rng=random.Random(draw(st.integers(0, 9))))
    now = 0.0
    for peer in draw(st.lists(st.sampled_from(NEIGHBOURS), min_size=1, max_size=3, unique=True)):
        r.link_up(peer, now=now)
    for _ in range(draw(st.integers(0, 8))):
        peer = draw(st.sampled_from(NEIGHBOURS))
        now += draw(st.sampled_from((0.0, 0.3, 1.0, 4.0)))
        match draw(st.sampled_from(("up", "table", "table", "table", "down"))):
            case "up":
                r.link_up(peer, now=now)
            case "down":
                r.link_down(peer, now=now)
            case _:
                entries = draw(
                    st.lists(
                        st.tuples(
                            st.sampled_from(IDS),
                            st.integers(0, 3),
                            st.sampled_from((0, 1, 2, 3, INFINITY)),
                        ),
                        max_size=5,
                    )
                )
                r.receive(peer, RouteUpdate(entries=((peer, 1, 0), *entries)), now=now)
    if draw(st.booleans()):
        r.on_timer(now=now + 0.5)  # flush what the history left to announce
    return r


honest_frames = st.builds(
    DataFrame,
    source=st.sampled_from(IDS),
    destination=st.sampled_from(IDS),
    frame_id=st.integers(0, 3),
    hops=st.integers(1, 3),
    hop_limit=st.just(16),
    payload=st.binary(max_size=8),
)
any_frames = st.builds(
    DataFrame,
    source=st.sampled_from(IDS),
    destination=st.sampled_from(IDS),
    frame_id=st.integers(0, 3) | st.just(MAX_FRAME_ID),
    hops=st.integers(0, 17),
    hop_limit=st.integers(0, 17),
    payload=st.binary(max_size=8),
)
frames = honest_frames | any_frames


def observed(r: Router) -> tuple[object, ...]:
    """What the router shows of its state: counters, routes, timers, its clock."""
    return (dict(r.counters), r.routes(), r.next_deadline(), r.seqno, sorted(r.links))


@settings(max_examples=600, deadline=None)
@given(router=routers(), frame=frames, data=st.data())
def test_pass_on_does_what_receive_does_or_leaves_the_frame_to_it(
    router: Router, frame: DataFrame, data: st.DataObject
) -> None:
    links, routes = sorted(router.links), sorted(router.routes())
    honest: bool = data.draw(st.booleans())
    if links and routes and honest:
        # Honest traffic: a neighbour's own frame for another node this router routes to.
        sender = data.draw(st.sampled_from(links))
        dest = data.draw(st.sampled_from([d for d in (*routes, "x") if d != sender]))
        frame = replace(frame, source=sender, destination=dest, hops=1, hop_limit=16)
    else:
        sender = data.draw(st.sampled_from((frame.source, *links, "x")))
    twin = copy.deepcopy(router)
    # Any time before the router's next timer: vouches and routes may have lapsed meanwhile.
    due = router.next_deadline()
    now = router._now + data.draw(st.sampled_from((0.0, 0.5, 2.0, 3.6, 8.0)))
    if due is not None:
        now = min(now, due - 0.001)
    before = observed(router)
    values: list[object] = list(astuple(frame))
    hop = router.pass_on(sender, values, now=now)
    full = twin.receive(sender, frame, now=now)
    if hop is None:
        assert observed(router) == before, "a declined frame changes and counts nothing"
        assert values == list(astuple(frame))
        return
    onward = replace(frame, hops=frame.hops + 1)
    assert full == [SendTo(hop, onward)]
    assert data_frame(values) == onward
    assert observed(router) == observed(twin)


def test_pass_on_takes_the_common_case_and_declines_the_rest() -> None:
    """The common case passes (a frame of a neighbour for another, on a quiet router); a frame
    for this node, at its hop limit, of a forged source or while updates wait does not."""
    r = Router("c", CONFIG, rng=random.Random(1))
    r.link_up("b", now=0.0)
    r.link_up("d", now=0.0)
    r.receive("d", RouteUpdate(entries=(("d", 1, 0), ("e", 1, 1))), now=0.0)
    assert r.pass_on("b", ["b", "e", 1, 1, 16, b"x"], now=0.1) is None, "updates still wait"
    r.on_timer(now=1.0)

    def passed(*values: object) -> str | None:
        return r.pass_on("b", list(values), now=1.1)

    assert passed("b", "e", 1, 1, 16, b"x") == "d"
    assert r.counters["forward.routed"] == 1
    assert passed("b", "c", 1, 1, 16, b"x") is None  # for this node: it arrives here
    assert passed("b", "e", 1, 16, 16, b"x") is None  # at its hop limit: a ROUTE_ERROR
    assert passed("a", "e", 1, 1, 16, b"x") is None  # b announces no route to a
    assert passed("b", "e", 1, 1, 16, "x") is None  # a str payload: malformed
    assert passed("b", "e", 1, 1, 16, b"x" * (MAX_ENVELOPE + 1)) is None
    assert passed("b", "e", 1, 1, 16) is None  # a field short
    assert r.counters["dropped.malformed"] == 0, "declined, not dropped: receive() decides"


@settings(max_examples=200, deadline=None)
@given(
    frame=frames.filter(lambda f: 1 <= f.hops < f.hop_limit),
    size=st.sampled_from((None, 255, 256, MAX_ENVELOPE)),  # msgpack's bin8 and bin16 headers
)
def test_the_codec_reads_and_writes_the_fields_as_decode_and_encode_do(
    frame: DataFrame, size: int | None
) -> None:
    if size is not None:
        frame = replace(frame, payload=bytes(size))
    data = CODEC.encode(frame)
    assert data.startswith(CODEC.prefix(DataFrame))
    values = CODEC.fields(data, DataFrame)
    assert values == list(astuple(frame))
    assert CODEC.decode_fields(DataFrame, values) == CODEC.decode(data) == frame
    assert CODEC.field_names(DataFrame) == DATA_FIELDS
    values[DATA_FIELDS.index("hops")] += 1
    assert CODEC.encode_fields(DataFrame, values) == CODEC.encode(
        replace(frame, hops=frame.hops + 1)
    )


_FRAME = CODEC.encode(
    DataFrame(source="a", destination="b", frame_id=1, hops=1, hop_limit=2, payload=b"")
)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1\x68\x01",
        b"\xc1\x68\x02" + _FRAME[3:],  # another version
        CODEC.encode(RouteUpdate(entries=())),  # another type
        _FRAME[:-1],  # truncated
        b"\xc1\x68\x01\x97\x22" + b"\xc0" * 5,  # the prefix, then a field short
        b"\xc1\x68\x01\x97\x22\x81\xa1k\x01" + b"\xc0" * 5,  # a map: never built
        _FRAME + bytes(CODEC.max_size),  # too large
    ],
)
def test_the_codec_reads_no_fields_from_what_is_not_a_data_frame(data: bytes) -> None:
    assert CODEC.fields(data, DataFrame) is None


def test_encode_fields_refuses_a_wrong_count_and_an_oversized_frame() -> None:
    with pytest.raises(EncodeError):
        CODEC.encode_fields(DataFrame, ["a", "b", 1, 1, 2])
    with pytest.raises(EncodeError):
        CODEC.encode_fields(DataFrame, ["a", "b", 1, 1, 2, bytes(CODEC.max_size)])
    with pytest.raises(KeyError):
        CODEC.prefix(int)


def test_field_order_is_the_dataclass_order() -> None:
    values: Sequence[object] = ("a", "b", 1, 2, 3, b"")
    assert data_frame(values) == DataFrame(
        source="a", destination="b", frame_id=1, hops=2, hop_limit=3, payload=b""
    )


def test_a_vouch_that_lapsed_since_the_last_input_is_lapsed_for_pass_on_too() -> None:
    """receive() moves the router's clock to ``now`` before its source check: a source that
    b stopped naming more than ``route_expiry`` ago is no longer vouched for. pass_on must
    check at the same ``now``, not at the router's last input or timer."""
    r = Router("c", CONFIG, rng=random.Random(3))
    r.link_up("b", now=0.0)
    r.link_up("d", now=0.0)
    r.receive("b", RouteUpdate(entries=(("b", 1, 0), ("x", 1, 1))), now=0.0)
    r.receive("d", RouteUpdate(entries=(("d", 1, 0),)), now=0.0)
    r.receive("b", RouteUpdate(entries=(("b", 1, 0), ("x", 1, INFINITY))), now=1.0)  # vouched
    last = 1.0
    while (due := r.next_deadline()) is not None and due < 4.4:
        r.on_timer(now=due)
        last = due
    assert last < 4.5 < (r.next_deadline() or 10.0)
    values: list[object] = ["x", "d", 1, 1, 16, b""]
    now = 4.5 + 0.01  # past the vouch (1.0 + route_expiry), before the router's next timer
    twin = copy.deepcopy(r)
    assert twin.receive("b", data_frame(values), now=now) == []
    assert twin.counters["dropped.source_route"] == 1
    assert r.pass_on("b", values, now=now) is None


def test_decoding_the_fields_checks_the_schema_as_decode_does() -> None:
    """Values a pass-through declined are decoded from the fields already read: a frame the
    schema refuses (an id with a control character, a hop count over its range) is refused
    the same way, with the same cause."""
    for bad in (["a\n", "b", 1, 1, 2, b""], ["a", "b", 1, 256, 2, b""]):
        data = CODEC.encode_fields(DataFrame, bad)
        values = CODEC.fields(data, DataFrame)
        assert values == bad
        assert CODEC.decode_fields(DataFrame, values) == CODEC.decode(data)
        assert isinstance(CODEC.decode(data), DecodeError)
