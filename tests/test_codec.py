"""The wire codec: round trips, strict schema, and garbage that must never raise."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_hyparview.protocol.messages import (
    Disconnect,
    ForwardJoin,
    Join,
    KeepAlive,
    Message,
    Neighbor,
    NeighborReply,
    Priority,
    Shuffle,
    ShuffleReply,
)
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.wire import codec, table
from ray_hyparview.wire.codec import (
    DECODE_CAUSES,
    HEADER,
    INCARNATION,
    PEER,
    TTL,
    BytesField,
    Codec,
    DecodeError,
    EncodeError,
    Field,
    OptionalField,
    Registry,
    RegistryError,
    SeqField,
    StrField,
)
from ray_hyparview.wire.table import hyparview_registry

# -- strategies ---------------------------------------------------------------------------------

node_ids = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "),
    min_size=1,
    max_size=60,
)
endpoints = st.one_of(
    st.just(""),
    st.builds(lambda port: f"tcp://127.0.0.1:{port}", st.integers(1, 65535)),
    st.text(
        alphabet=st.characters(codec="ascii", min_codepoint=32, max_codepoint=126), max_size=80
    ),
)
peers = st.builds(Peer, node_ids, endpoints)
incarnations = st.integers(0, 2**63 - 1)
ttls = st.integers(0, 255)
peer_tuples = st.lists(peers, max_size=codec.MAX_SHUFFLE_PEERS).map(tuple)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Join, sender=peers, incarnation=incarnations),
    st.builds(ForwardJoin, sender=peers, incarnation=incarnations, new_peer=peers, ttl=ttls),
    st.builds(Neighbor, sender=peers, incarnation=incarnations, priority=st.sampled_from(Priority)),
    st.builds(NeighborReply, sender=peers, incarnation=incarnations, accepted=st.booleans()),
    st.builds(Disconnect, sender=peers, incarnation=incarnations, leaving=st.booleans()),
    st.builds(
        Shuffle,
        sender=peers,
        incarnation=incarnations,
        origin=peers,
        peers=peer_tuples,
        ttl=ttls,
    ),
    st.builds(ShuffleReply, sender=peers, incarnation=incarnations, peers=peer_tuples),
    st.builds(KeepAlive, sender=peers, incarnation=incarnations),
)

ME = Peer("node-a", "tcp://127.0.0.1:7000")


def frame(obj: Any) -> bytes:
    """A well-headed frame around an arbitrary msgpack value."""
    return HEADER + msgpack.packb(obj, use_bin_type=True)


def assert_equal_messages(a: object, b: object) -> None:
    """Peers compare by id only; the wire must also keep endpoints, so compare those too."""
    assert a == b
    assert type(a) is type(b)
    for f in dataclasses.fields(a):  # type: ignore[arg-type]
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, Peer):
            assert va.endpoint == vb.endpoint
        if isinstance(va, tuple):
            assert [p.endpoint for p in va] == [p.endpoint for p in vb]


# -- round trips --------------------------------------------------------------------------------


@given(messages)
@settings(max_examples=400)
def test_every_message_round_trips(message: Message) -> None:
    data = table.encode(message)
    assert data[:3] == HEADER
    assert_equal_messages(table.decode(data), message)


@given(messages)
@settings(max_examples=100)
def test_decode_accepts_bytearray_and_memoryview(message: Message) -> None:
    data = table.encode(message)
    assert table.decode(bytearray(data)) == message
    assert table.decode(memoryview(data)) == message


def test_all_eight_hyparview_messages_are_registered() -> None:
    registered = set(table.REGISTRY.types.values())
    expected = {Join, ForwardJoin, Neighbor, NeighborReply, Disconnect, Shuffle, ShuffleReply}
    assert expected | {KeepAlive} <= registered
    assert [table.REGISTRY.tag_of(t) for t in (Join, KeepAlive)] == [1, 8]


def test_keepalive_frame_is_small() -> None:
    data = table.encode(KeepAlive(sender=ME, incarnation=1_700_000_000_000_000))
    assert len(data) < 48


# -- local misuse raises EncodeError ------------------------------------------------------------


def test_encode_rejects_unregistered_type() -> None:
    with pytest.raises(EncodeError, match="unregistered"):
        table.encode(ME)


@pytest.mark.parametrize(
    "message",
    [
        ForwardJoin(sender=ME, incarnation=1, new_peer=ME, ttl=256),
        ForwardJoin(sender=ME, incarnation=1, new_peer=ME, ttl=-1),
        Join(sender=ME, incarnation=-1),
        Join(sender=ME, incarnation=2**63),
        Join(sender=Peer("x\n", ""), incarnation=1),
        Join(sender=Peer("é" * 121, ""), incarnation=1),  # 242 UTF-8 bytes
        Join(sender=Peer("a", "tcp://" + "x" * 300), incarnation=1),
        ShuffleReply(sender=ME, incarnation=1, peers=(ME,) * (codec.MAX_SHUFFLE_PEERS + 1)),
        NeighborReply(sender=ME, incarnation=1, accepted=1),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_invalid_fields(message: object) -> None:
    with pytest.raises(EncodeError):
        table.encode(message)


def test_encode_rejects_oversized_frame() -> None:
    small = Codec(table.REGISTRY, max_size=100)
    msg = ShuffleReply(sender=ME, incarnation=1, peers=(ME,) * 10)
    with pytest.raises(EncodeError, match="limit 100"):
        small.encode(msg)
    assert isinstance(table.encode(msg), bytes)


# -- remote garbage returns DecodeError with a known cause -------------------------------------


def cause_of(result: object) -> str:
    assert isinstance(result, DecodeError), result
    return result.cause


def good() -> bytes:
    return table.encode(Neighbor(sender=ME, incarnation=7, priority=Priority.HIGH))


BAD_FRAMES: list[tuple[bytes, str]] = [
    (b"", "truncated"),
    (HEADER, "truncated"),
    (b"\x00\x00\x01\x90", "bad_magic"),
    (msgpack.packb([1, ["a", ""], 1]), "bad_magic"),
    (codec.MAGIC + b"\x02" + b"\x90", "bad_version"),
    (HEADER + b"\xc1", "malformed"),  # 0xc1 is never used by msgpack
    (HEADER + b"\x93\x01", "malformed"),  # truncated array
    (good() + b"\x00", "malformed"),  # trailing bytes: ExtraData
    (HEADER + b"\x91" * 5000, "malformed"),  # deep nesting: StackError
    (HEADER + b"\xdc\x00\x02\x80\x80", "malformed"),  # maps are rejected outright
    (HEADER + b"\x92\x01\xa2\xff\xfe", "malformed"),  # invalid UTF-8
    (HEADER + b"\xd4\x01\x00", "malformed"),  # ext type
    (frame({"a": 1}), "malformed"),
    (frame(list(range(1000))), "malformed"),  # longer than any schema array
    (frame([]), "bad_schema"),
    (frame(1), "bad_schema"),
    (frame(["1"]), "bad_schema"),
    (frame([True, ["a", ""], 1]), "bad_schema"),  # bool is not a tag
    (frame([99, ["a", ""], 1]), "unknown_type"),
    (frame([1, ["a", ""]]), "bad_schema"),  # missing field
    (frame([1, ["a", ""], 1, 2]), "bad_schema"),  # extra field
    (frame([1, ["", ""], 1]), "bad_schema"),  # empty id
    (frame([1, ["a"], 1]), "bad_schema"),
    (frame([1, ["a", "", "x"], 1]), "bad_schema"),
    (frame([1, [1, ""], 1]), "bad_schema"),
    (frame([1, ["a\x00", ""], 1]), "bad_schema"),
    (frame([1, ["a" * 241, ""], 1]), "bad_schema"),
    (frame([1, ["a", b"tcp://x"], 1]), "bad_schema"),  # bin is not str
    (frame([1, ["a", ""], -1]), "bad_schema"),
    (frame([1, ["a", ""], 1.0]), "bad_schema"),
    (frame([1, ["a", ""], True]), "bad_schema"),
    (frame([1, ["a", ""], 2**64 - 1]), "bad_schema"),
    (frame([2, ["a", ""], 1, ["b", ""], 256]), "bad_schema"),  # ttl out of range
    (frame([3, ["a", ""], 1, 3]), "bad_schema"),  # unknown priority
    (frame([3, ["a", ""], 1, "HIGH"]), "bad_schema"),
    (frame([4, ["a", ""], 1, 1]), "bad_schema"),  # int is not bool
    (frame([6, ["a", ""], 1, ["o", ""], [["p", ""]] * 65, 1]), "malformed"),  # > any array
    (frame([7, ["a", ""], 1, [["p", ""]] * 63 + [1]]), "bad_schema"),
    (frame([6, ["a", ""], 1, ["o", ""], [["p", ""], 3], 1]), "bad_schema"),
    (frame([7, ["a", ""], 1, None]), "bad_schema"),
]


@pytest.mark.parametrize(
    ("data", "cause"), BAD_FRAMES, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD_FRAMES)]
)
def test_bad_frames_give_the_right_cause(data: bytes, cause: str) -> None:
    # A private registry: other modules' messages in the default one raise the array limit.
    result = Codec(hyparview_registry()).decode(data)
    assert isinstance(result, DecodeError), result
    assert result.cause == cause
    assert result.cause in DECODE_CAUSES


def test_too_large_is_checked_before_parsing() -> None:
    small = Codec(table.REGISTRY, max_size=64)
    data = table.encode(ShuffleReply(sender=ME, incarnation=1, peers=(ME,) * 5))
    assert len(data) > 64
    assert small.decode(data) == DecodeError("too_large", f"{len(data)} bytes")
    assert cause_of(table.decode(b"\x00" * (codec.DEFAULT_MAX_SIZE + 1))) == "too_large"


def test_non_buffer_input_is_an_error_value() -> None:
    assert cause_of(table.decode(None)) == "malformed"  # type: ignore[arg-type]
    assert cause_of(table.decode("text")) == "malformed"  # type: ignore[arg-type]


def _mean_decode_seconds(data: bytes) -> float:
    start = time.perf_counter()
    for _ in range(50):
        result = table.decode(data)
    assert isinstance(result, DecodeError)
    return (time.perf_counter() - start) / 50


def test_map_bombs_stop_at_the_first_map() -> None:
    """64 KiB of empty maps, flat or nested, must be rejected at once, not materialised."""
    flat = HEADER + b"\xdc\x00\x40" + b"\x80" * (codec.DEFAULT_MAX_SIZE - 10)
    nested = HEADER + b"\x81\xc0" * ((codec.DEFAULT_MAX_SIZE - 4) // 2)
    wide = HEADER + b"\xdc\xff\xf0" + b"\x80" * (codec.DEFAULT_MAX_SIZE - 10)
    for data in (flat, nested, wide):
        assert len(data) <= codec.DEFAULT_MAX_SIZE
        assert _mean_decode_seconds(data) < 0.001


def test_array_bomb_is_bounded() -> None:
    """Nested short arrays are legal msgpack up to the stack limit: the cost is bounded by the
    frame size (about 10 ms for 64 KiB here), which is why the size limit comes first."""
    arrays = HEADER + b"\x9f" + b"\x9f\x90\x90\x90\x90\x90\x90\x90" * 8000
    assert len(arrays) <= codec.DEFAULT_MAX_SIZE
    assert _mean_decode_seconds(arrays) < 0.1


# -- fuzzing: never raises, always an error value or a valid message ---------------------------


def _check_never_raises(data: bytes) -> None:
    result = table.decode(data)
    if isinstance(result, DecodeError):
        assert result.cause in DECODE_CAUSES
    else:
        # Anything that decodes must re-encode to an equal message: the schema held.
        assert table.decode(table.encode(result)) == result


@given(st.binary(max_size=512))
@settings(max_examples=1500)
def test_random_bytes_never_raise(data: bytes) -> None:
    _check_never_raises(data)


@given(st.binary(max_size=512))
@settings(max_examples=1500)
def test_random_bytes_behind_a_valid_header_never_raise(data: bytes) -> None:
    _check_never_raises(HEADER + data)


@given(messages, st.data())
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_truncations_and_bit_flips_never_raise(message: Message, data: st.DataObject) -> None:
    encoded = table.encode(message)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    truncated = table.decode(encoded[:cut])
    assert isinstance(truncated, DecodeError)
    flipped = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(flipped) - 1))
        flipped[i] ^= 1 << data.draw(st.integers(0, 7))
    _check_never_raises(bytes(flipped))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)


@given(st.integers(0, 12), st.lists(msgpack_values, max_size=7))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_wrong_shapes_under_real_tags_never_raise(tag: int, fields: list[Any]) -> None:
    _check_never_raises(frame([tag, *fields]))


@given(messages, st.data())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_one_field_replaced_by_junk_never_raises(message: Message, data: st.DataObject) -> None:
    raw = msgpack.unpackb(table.encode(message)[3:])
    i = data.draw(st.integers(1, len(raw) - 1))
    raw[i] = data.draw(msgpack_values)
    _check_never_raises(frame(raw))


# -- the registry is extensible -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Gossip:
    """Shaped like a future Plumtree message: payload bytes and an optional field."""

    sender: Peer
    incarnation: int
    msg_id: bytes
    round: int
    payload: bytes
    topic: str | None = None
    path: tuple[Peer, ...] = ()


GOSSIP_FIELDS: dict[str, Field] = {
    "sender": PEER,
    "incarnation": INCARNATION,
    "msg_id": BytesField(32),
    "round": TTL,
    "payload": BytesField(60_000),
    "topic": OptionalField(StrField(64, min_len=1)),
    "path": SeqField(PEER, 16),
}


@pytest.fixture
def gossip_codec() -> Codec:
    registry = Registry()
    registry.register(16, Gossip, GOSSIP_FIELDS)
    return Codec(registry)


gossips = st.builds(
    Gossip,
    sender=peers,
    incarnation=incarnations,
    msg_id=st.binary(max_size=32),
    round=ttls,
    payload=st.binary(max_size=2000),
    topic=st.none() | st.text(min_size=1, max_size=64).filter(str.isprintable),
    path=st.lists(peers, max_size=16).map(tuple),
)


@given(gossips)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_registered_extension_round_trips(gossip_codec: Codec, msg: Gossip) -> None:
    assert_equal_messages(gossip_codec.decode(gossip_codec.encode(msg)), msg)


def test_payload_bytes_travel_as_msgpack_bin(gossip_codec: Codec) -> None:
    msg = Gossip(sender=ME, incarnation=3, msg_id=b"\x01", round=0, payload=b"\xff" * 300)
    data = gossip_codec.encode(msg)
    assert b"\xc5\x01\x2c" + b"\xff" * 300 in data  # bin16, 300 bytes
    as_bytearray = dataclasses.replace(msg, payload=bytearray(b"ab"))  # type: ignore[arg-type]
    as_bytes = dataclasses.replace(msg, payload=b"ab")
    assert gossip_codec.encode(as_bytearray) == gossip_codec.encode(as_bytes)
    bad = frame([16, ["a", ""], 1, b"id", 0, "not bytes", None, []])
    assert gossip_codec.decode(bad) == DecodeError(
        "bad_schema", "Gossip.payload: expected bytes of at most 60000"
    )


def test_extension_unknown_to_a_codec_without_it(gossip_codec: Codec) -> None:
    msg = Gossip(sender=ME, incarnation=3, msg_id=b"", round=0, payload=b"")
    result = Codec(hyparview_registry()).decode(gossip_codec.encode(msg))
    assert isinstance(result, DecodeError)
    assert result.cause == "unknown_type"


def test_registry_refuses_bad_registrations() -> None:
    registry = Registry()
    registry.register(16, Gossip, GOSSIP_FIELDS)
    with pytest.raises(RegistryError, match="tag 16 already"):
        registry.register(16, Join, {"sender": PEER, "incarnation": INCARNATION})
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(17, Gossip, GOSSIP_FIELDS)
    with pytest.raises(RegistryError, match="fields of Join"):
        registry.register(18, Join, {"sender": PEER})
    with pytest.raises(RegistryError, match="not a dataclass"):
        registry.register(19, int, {})
    with pytest.raises(RegistryError, match="tag must be"):
        registry.register(-1, Join, {"sender": PEER, "incarnation": INCARNATION})
    with pytest.raises(RegistryError, match="frozen"):
        table.REGISTRY.register(64, Gossip, GOSSIP_FIELDS)  # the package's table is built once


def test_the_table_is_the_whole_wire_whatever_was_imported() -> None:
    # Every class of the table is registered under its row's tag, tags are unique and in their
    # ranges, and the codec the agent uses is the table's.
    tags = [tag for tag, _, _ in table.TABLE]
    assert len(tags) == len(set(tags))
    assert table.REGISTRY.types == {tag: cls for tag, cls, _ in table.TABLE}
    assert table.wire_codec().registry is table.REGISTRY
    assert all(1 <= tag <= 63 for tag in tags)
