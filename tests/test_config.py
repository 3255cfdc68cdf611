"""HyParViewConfig: paper defaults, and errors that name the field."""

from __future__ import annotations

import pytest

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError, HyParViewError
from ray_hyparview.protocol.peer import Peer


def test_defaults_are_the_papers() -> None:
    cfg = HyParViewConfig()
    paper = (5, 30, 6, 3, 3, 4, 6)
    assert (
        cfg.active_view_size,
        cfg.passive_view_size,
        cfg.arwl,
        cfg.prwl,
        cfg.shuffle_active,
        cfg.shuffle_passive,
        cfg.shuffle_ttl,
    ) == paper


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"active_view_size": 0}, "active_view_size"),
        ({"passive_view_size": -1}, "passive_view_size"),
        ({"reserve_size": -1}, "reserve_size"),
        ({"reserve_size": 1.5}, "reserve_size"),
        ({"arwl": 2, "prwl": 3}, "prwl"),
        ({"shuffle_ttl": 0}, "shuffle_ttl"),
        ({"shuffle_interval": 0.0}, "shuffle_interval"),
        ({"shuffle_interval": float("nan")}, "shuffle_interval"),
        ({"active_view_size": 2.5}, "active_view_size"),
        ({"active_view_size": True}, "active_view_size"),
        ({"arwl": "6"}, "arwl"),
        ({"min_active_size": 6}, "min_active_size"),
        ({"keepalive_interval": 1.0, "keepalive_timeout": 1.0}, "keepalive_timeout"),
        ({"keepalive_interval": -1.0}, "keepalive_interval"),
        ({"rejoin_backoff_initial": 5.0, "rejoin_backoff_max": 1.0}, "rejoin_backoff_max"),
        ({"probe_interval_min": 5.0, "probe_interval_max": 1.0}, "probe_interval_max"),
    ],
)
def test_invalid_values_raise_an_error_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        HyParViewConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, HyParViewError)


def test_peer_equality_is_by_id() -> None:
    assert Peer("a", "tcp://127.0.0.1:1") == Peer("a", "tcp://127.0.0.1:2")
    assert len({Peer("a", "x"), Peer("a", "y")}) == 1
    with pytest.raises(ValueError, match="non-empty"):
        Peer("")


@pytest.mark.parametrize(
    ("field", "value"),
    [("arwl", 256), ("shuffle_ttl", 256), ("shuffle_active", 60), ("shuffle_passive", 63)],
)
def test_settings_the_wire_cannot_carry_are_refused(field: str, value: int) -> None:
    """A walk TTL over one byte, or a SHUFFLE over the wire's id count, would make every JOIN
    or SHUFFLE of the agent fail to encode; the config refuses them, naming the field."""
    extra = {"passive_view_size": 100, "prwl": 3} if field.startswith("shuffle") else {}
    with pytest.raises(ConfigError, match=field):
        HyParViewConfig(**{field: value, **extra})


def test_the_largest_walk_and_shuffle_the_config_accepts_encode() -> None:
    from ray_hyparview.protocol.messages import ForwardJoin, Shuffle
    from ray_hyparview.wire.table import wire_codec

    config = HyParViewConfig(
        arwl=255, shuffle_ttl=255, shuffle_active=30, shuffle_passive=33, passive_view_size=100
    )
    codec = wire_codec()
    peers = tuple(Peer(f"n{i}", f"tcp://127.0.0.1:{7000 + i}") for i in range(64))
    walk = ForwardJoin(sender=peers[1], incarnation=1, new_peer=peers[0], ttl=config.arwl)
    shuffle = Shuffle(
        sender=peers[1],
        incarnation=1,
        origin=peers[0],
        peers=peers[: config.shuffle_active + config.shuffle_passive + 1],
        ttl=config.shuffle_ttl,
    )
    for message in (walk, shuffle):
        assert codec.decode(codec.encode(message)) == message
