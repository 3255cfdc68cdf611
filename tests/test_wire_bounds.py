"""Whatever the decoder accepts, the layers above can carry again (issue 9, "one frame stops a
node's agent").

Two levels. The codec: every message type of the table round-trips, and frames with extreme
field values (0, max, max + 1, negative, huge lengths) are either refused with a counted
:class:`DecodeError` or decode to a value that encodes again. The cores: what a core derives
from an accepted frame (a seqno + 1, a round + 1) must encode too, or one remote frame turns
into an ``EncodeError`` inside the agent.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace

import msgpack
import pytest

from ray_hyparview.codec import DECODE_CAUSES, DecodeError, EncodeError
from ray_hyparview.protocol import limits
from ray_hyparview.protocol import routing as rt
from ray_hyparview.wire import wire_codec
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
