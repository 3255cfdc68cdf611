"""The membership messages and actions: frozen values whose constructors behave exactly like the
ones ``dataclass`` writes (``_direct_init`` replaces them for speed)."""

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
    assert len(CLASSES) == 11
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
