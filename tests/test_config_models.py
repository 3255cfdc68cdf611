"""The strategy file's models are the one declaration of every key: the environment
variables, the key reference, ``to_mapping`` and the bounds of ``Strategy(...)`` follow them."""

from __future__ import annotations

import pickle
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from ray_hyparview.config.describe import reference, reference_lines
from ray_hyparview.config.env import ENV_PREFIX, ENV_VARS
from ray_hyparview.config.models import (
    SECTIONS,
    Env,
    HyParViewSection,
    StrategyFile,
    TransportLimits,
    TransportSection,
)
from ray_hyparview.config.strategy import Strategy, StrategyError
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError
from ray_hyparview.protocol.peer import Peer


def _section_keys() -> set[str]:
    keys = set()
    for section in SECTIONS:
        annotation = StrategyFile.model_fields[section].annotation
        candidates = [] if get_origin(annotation) is dict else [annotation, *get_args(annotation)]
        model = next(
            (m for m in candidates if isinstance(m, type) and issubclass(m, BaseModel)), None
        )
        if model is None:
            keys.add(section)
        else:
            keys |= {f"{section}.{name}" for name in model.model_fields}
    return keys


def test_every_key_is_documented_once_with_its_variable() -> None:
    docs = reference()
    assert {doc.key for doc in docs} == _section_keys()
    assert len(docs) == len(_section_keys())
    for doc in docs:
        assert doc.doc.strip(), f"{doc.key} has no documentation"
    by_key = {doc.key: doc.env for doc in docs}
    for suffix, (key, _) in ENV_VARS.items():
        assert by_key[key] == ENV_PREFIX + suffix
    assert {doc.env for doc in docs if doc.env} == {ENV_PREFIX + s for s in ENV_VARS}
    text = "\n".join(reference_lines())
    assert "hyparview.arwl (integer; default 6; $RAY_HYPARVIEW_ARWL)" in text
    assert "transport.recv_hwm (integer; default 16; 1 to 1048576; $RAY_HYPARVIEW_RECV_HWM)" in text


def test_hyparview_section_follows_the_protocol_dataclass() -> None:
    """A new HyParViewConfig field is a [hyparview] key and a variable without further ado."""
    fields = HyParViewConfig.__dataclass_fields__
    assert list(HyParViewSection.model_fields) == list(fields)
    for name, info in HyParViewSection.model_fields.items():
        assert info.default == fields[name].default
        assert any(isinstance(m, Env) for m in info.metadata)


def test_python_constructor_meets_the_file_bounds() -> None:
    local = Peer("a", "tcp://127.0.0.1:0")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"heartbeat_interval": 1e-9}, "transport.heartbeat_interval", "at least 0.01"),
        ({"heartbeat_interval": 0}, "transport.heartbeat_interval", "greater than 0"),
        ({"metrics_port": True}, "agent.metrics_port", "a port 0-65535"),
        ({"log_level": "LOUD"}, "agent.log_level", "'DEBUG'"),
        ({"transport": "udp"}, "transport.kind", "'zmq', 'memory'"),
        (
            {"limits": TransportLimits.model_construct(recv_hwm=0)},
            "transport.recv_hwm",
            "an integer from 1 to 1048576",
        ),
        (
            {"hyparview_config": HyParViewConfig(shuffle_interval=1e-3)},
            "hyparview.shuffle_interval",
            "at least 0.01 seconds",
        ),
    ]
    for changes, key, expected in cases:
        with pytest.raises(StrategyError) as info:
            Strategy(local_peer=local, **changes)
        assert info.value.key == key, changes
        assert expected in str(info.value), str(info.value)
    s = Strategy(local_peer=local, log_level="debug", heartbeat_interval=1)
    assert s.log_level == "DEBUG"
    assert isinstance(s.heartbeat_interval, float)


def test_limits_constructor_names_the_key() -> None:
    with pytest.raises(StrategyError, match=r"^transport\.max_msg_size: expected an integer"):
        TransportLimits(max_msg_size=10)
    assert TransportSection(kind="memory").options() == TransportLimits().options()


def test_protocol_errors_name_the_field_and_expectation() -> None:
    with pytest.raises(ConfigError) as info:
        HyParViewConfig(arwl=2, prwl=3)
    assert (info.value.field, info.value.expected) == ("prwl", "at most arwl (2)")
    assert str(info.value) == "prwl must be at most arwl (2), got 3"
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.field, again.expected) == ("prwl", "at most arwl (2)")
    with pytest.raises(StrategyError) as strategy_error:
        Strategy.from_mapping({"node": {"id": "a"}, "hyparview": {"arwl": 2, "prwl": 3}})
    assert strategy_error.value.key == "hyparview.prwl"
    assert str(strategy_error.value) == "hyparview.prwl: expected at most arwl (2), got 3"


def test_an_unknown_key_is_reported_before_what_it_caused() -> None:
    """A misspelt key leaves the right one unset; the typo is the error worth reporting."""
    with pytest.raises(StrategyError) as info:
        Strategy.from_mapping({"node": {"idd": "a"}})
    assert info.value.key == "node.idd"
    assert "did you mean 'id'?" in str(info.value)


def test_to_mapping_writes_what_differs_from_the_model_defaults() -> None:
    s = Strategy(
        local_peer=Peer("a", "tcp://127.0.0.1:1"),
        hyparview_config=HyParViewConfig(keepalive_interval=None, arwl=5),
        limits=TransportLimits(log_lines=3),
        metrics_port=0,
    )
    data = s.to_mapping()
    assert data["hyparview"] == {"arwl": 5, "keepalive_interval": False}
    assert data["transport"] == {"log_lines": 3}
    assert data["agent"] == {"metrics_port": 0}
    assert Strategy.from_mapping(data) == s
