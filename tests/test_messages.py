"""The membership messages and actions: frozen values whose constructors behave exactly like the
ones ``dataclass`` writes. Each class spells its ``__init__`` out (mypyc compiles only written
methods); ``_direct_init`` checks it against the fields and, interpreted, replaces it with a faster
one. Both must build the same value, and so must the ``build_*`` functions the core's hot paths
call instead of the classes (written, and as :func:`_direct_builder` replaces them)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import typing
from typing import Any

import pytest

from ray_hyparview.protocol import messages
from ray_hyparview.protocol.messages import Disconnect, PeerDown, Send, Shuffle
from ray_hyparview.protocol.peer import Peer

A = Peer("a", "tcp://127.0.0.1:1")
B = Peer("b", "tcp://127.0.0.1:2")

CLASSES: list[type[Any]] = [
    *typing.get_args(messages.Message),
    *typing.get_args(messages.Action),
]


def test_every_message_and_action_class_is_covered() -> None:
    assert len(CLASSES) == 13
    assert all(dataclasses.is_dataclass(cls) for cls in CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_constructor_signature_is_the_dataclass_one(cls: type[Any]) -> None:
    expected = []
    for f in dataclasses.fields(cls):
        kind = (
            inspect.Parameter.KEYWORD_ONLY if f.kw_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        expected.append(inspect.Parameter(f.name, kind, default=default))
    params = list(inspect.signature(cls).parameters.values())
    assert [(p.name, p.kind, p.default) for p in params] == [
        (p.name, p.kind, p.default) for p in expected
    ]


def test_values_are_frozen_equal_hashable_and_picklable() -> None:
    walk = Shuffle(sender=A, incarnation=2, origin=B, peers=(A, B), ttl=5)
    same = Shuffle(sender=A, incarnation=2, origin=B, peers=(A, B), ttl=5)
    assert walk == same
    assert hash(walk) == hash(same)
    assert walk != Shuffle(sender=A, incarnation=2, origin=B, peers=(A, B), ttl=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        walk.ttl = 1  # type: ignore[misc]
    send = Send(B, walk)
    with pytest.raises(dataclasses.FrozenInstanceError):
        send.to = A  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(send)) == send
    assert repr(send).startswith("Send(to=Peer(id='b'")
    assert dataclasses.replace(walk, ttl=1).ttl == 1


def test_defaults_and_bad_arguments_behave_as_before() -> None:
    assert Disconnect(sender=A, incarnation=0).leaving is False
    assert Disconnect(sender=A, incarnation=0, leaving=True).leaving is True
    with pytest.raises(TypeError, match="incarnation"):
        Disconnect(sender=A)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Disconnect(A, 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        Disconnect(sender=A, incarnation=0, colour="red")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="reason"):
        PeerDown(A)  # type: ignore[call-arg]


def _sample_value(annotation: str, name: str) -> Any:
    """A distinct value per field, of the field's type, so a swapped store shows."""
    if "Peer, ..." in annotation:
        return (A, B)
    if "Peer" in annotation:
        return Peer(name, f"tcp://127.0.0.1:{len(name)}")
    if annotation == "int":
        return len(name) * 7
    if annotation == "bool":
        return True
    if annotation == "float":
        return len(name) * 0.5
    if annotation == "Message":
        return messages.KeepAlive(sender=A, incarnation=3)
    if annotation == "Priority":
        return messages.Priority.HIGH
    if annotation == "DownReason":
        return messages.DownReason.LEFT
    raise AssertionError(f"no sample for {annotation}")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_written_and_fast_constructors_build_the_same_value(cls: type[Any]) -> None:
    written = messages._WRITTEN_INITS[cls]
    kwargs = {f.name: _sample_value(str(f.type), f.name) for f in dataclasses.fields(cls)}
    by_written = object.__new__(cls)
    written(by_written, **kwargs)
    fast = cls(**kwargs)
    assert fast == by_written
    for name, value in kwargs.items():
        assert getattr(by_written, name) is value
        assert getattr(fast, name) is value


def test_an_init_that_drifted_from_its_fields_fails_at_import() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Drifted:
        sender: Peer
        ttl: int = 3

        def __init__(self, *, sender: Peer, ttl: int = 4) -> None:
            object.__setattr__(self, "sender", sender)
            object.__setattr__(self, "ttl", ttl)

    with pytest.raises(TypeError, match=r"Drifted\.__init__ takes"):
        messages._direct_init(Drifted)


@pytest.mark.parametrize("cls", list(messages.BUILDERS), ids=lambda c: c.__name__)
def test_builders_build_the_value_the_class_builds(cls: type[Any]) -> None:
    kwargs = {f.name: _sample_value(str(f.type), f.name) for f in dataclasses.fields(cls)}
    name = messages.BUILDERS[cls]
    for build in (getattr(messages, name), messages._WRITTEN_BUILDERS[cls]):
        value = build(**kwargs)
        assert type(value) is cls
        assert value == cls(**kwargs)
        for field, given in kwargs.items():
            assert getattr(value, field) is given
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.sender = A
    assert getattr(messages, name).__name__ == name


def test_builder_defaults_are_the_fields_defaults() -> None:
    assert messages.build_disconnect(sender=A, incarnation=0) == Disconnect(sender=A, incarnation=0)
    walk = messages.build_shuffle(sender=A, incarnation=1, origin=B, peers=(A,), ttl=2)
    assert walk.nonce == 0
    with pytest.raises(TypeError):
        messages.build_shuffle(A, 1, B, (A,), 2)  # type: ignore[call-arg]


def test_a_builder_that_drifted_from_its_fields_fails_at_import() -> None:
    def build_shuffle(
        *, sender: Peer, incarnation: int, origin: Peer, peers: tuple[Peer, ...], ttl: int
    ) -> Shuffle:
        return Shuffle(sender=sender, incarnation=incarnation, origin=origin, peers=peers, ttl=ttl)

    with pytest.raises(TypeError, match=r"build_shuffle takes"):
        messages._direct_builder(Shuffle, build_shuffle)
