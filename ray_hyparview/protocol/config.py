"""Protocol parameters.

Field names follow the Elixir ``hyparview`` package so that a config reads the same in both
worlds. Defaults are the paper's values for a 10,000-node overlay (Leitão, Pereira, Rodrigues,
"HyParView: a membership protocol for reliable gossip-based broadcast", DSN 2007, section 5.1):
active view 5, passive view 30, ARWL 6, PRWL 3, shuffle with ka = 3 active and kp = 4 passive
ids, shuffle walk TTL 6.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

from ray_hyparview.protocol import limits
from ray_hyparview.protocol.errors import ConfigError

__all__ = ["LOCAL_TIMINGS", "HyParViewConfig"]

LOCAL_TIMINGS: Final[Mapping[str, float]] = {
    "shuffle_interval": 0.5,
    "keepalive_interval": 0.25,
    "keepalive_timeout": 1.5,
    "neighbor_timeout": 1.0,
    # Split components (two full triangles at start-up, a healed partition) merge within
    # seconds: the component marker beats every 2 s and probes back off to 4 s at most.
    "merge_interval": 2.0,
    "probe_interval_min": 0.5,
    "probe_interval_max": 4.0,
}
"""The fields :meth:`HyParViewConfig.local` sets (everything else keeps its default)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HyParViewConfig:
    """Every knob of the protocol core, validated on construction."""

    active_view_size: int = 5
    """Most peers held in the active view (open, monitored links). About log10(N) + 1."""

    passive_view_size: int = 30
    """Most peers held in the passive view (known, not linked), the reserve for repair."""

    reserve_size: int = 30
    """Most ids kept in the *reserve*: ids recently evicted from the passive view, recalled
    into it only when the node is cut off (below ``min_active_size`` with no passive peer left
    to try). Never shuffled, never used while the node is healthy; 0 turns it off (the paper
    has no reserve)."""

    arwl: int = 6
    """Active random walk length: the TTL a FORWARD_JOIN starts with."""

    prwl: int = 3
    """Passive random walk length: the TTL at which a FORWARD_JOIN also lands in passive views."""

    shuffle_active: int = 3
    """ka: active-view ids put into each SHUFFLE."""

    shuffle_passive: int = 4
    """kp: passive-view ids put into each SHUFFLE."""

    shuffle_ttl: int = 6
    """Hops a SHUFFLE walks along active links before it is answered."""

    shuffle_interval: float = 10.0
    """Seconds between two shuffles started by this node (one simulator "cycle")."""

    min_active_size: int = 2
    """Below this many active peers (and with no passive peer left to try) the node re-joins
    through its contacts, round-robin, with capped exponential backoff."""

    neighbor_timeout: float = 2.0
    """Seconds to wait for an answer to JOIN or NEIGHBOR before trying elsewhere."""

    rejoin_backoff_initial: float = 0.5
    """First delay before re-joining through a contact, in seconds."""

    rejoin_backoff_max: float = 30.0
    """Cap of the re-join delay, in seconds; the delay doubles up to it, with jitter."""

    keepalive_interval: float | None = 0.5
    """Seconds between keepalives on a quiet active link; ``None`` turns keepalives and the
    silence check off (the simulator models failure detection itself)."""

    keepalive_timeout: float = 2.0
    """An active peer silent for this long is declared failed (several missed keepalives).
    Any frame of the peer ends a silence, and time this node itself did not run (a keepalive
    tick that came late) is not counted as the peer's (rule 7 of ``protocol/hyparview.py``)."""

    lost_retention: float = 600.0
    """Seconds a peer whose link failed is remembered: late messages of the same incarnation
    cannot resurrect it, and it is probed now and then so that healed partitions merge."""

    probe_interval_min: float = 2.0
    """First delay between two probes of lost peers, in seconds."""

    probe_interval_max: float = 60.0
    """Cap of the probe delay; it doubles after each probe that finds nobody, or finds the
    probed node in our own component."""

    merge_interval: float = 120.0
    """Seconds between two beats of the component marker's root (see
    :mod:`ray_hyparview.protocol.merge`). A split is told from a heal once the half that lost
    the root has missed its beats for 1.5 intervals; a root silent for 3 intervals is given up.
    Each beat costs about one message per active link. Splits shorter than
    ``lost_retention`` merge through the lost peers, sooner; keep ``3 * merge_interval`` below
    ``lost_retention`` so that no split length falls between the two."""

    @classmethod
    def local(cls, **changes: object) -> HyParViewConfig:
        """Timings for a few agents on one machine (loopback, the in-memory transport, an
        embedded Ray cluster), like memberlist's ``DefaultLocalConfig``: shuffles twice a second,
        keepalives every 0.25 s, a silent peer declared failed after 1.5 s, a NEIGHBOR request
        given up after 1 s, split components merged within seconds. The views keep the paper's
        sizes; ``changes`` override any field.

        For tests, examples and demos: over a real network the defaults' slower timings keep
        a loaded host from being declared failed."""
        values: dict[str, object] = {**LOCAL_TIMINGS, **changes}
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "keepalive_interval" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _invalid(f.name, "a number", value)
            if isinstance(value, float) and not math.isfinite(value):
                raise _invalid(f.name, "finite", value)
        ints = (
            "active_view_size",
            "passive_view_size",
            "reserve_size",
            "arwl",
            "prwl",
            "shuffle_active",
            "shuffle_passive",
            "shuffle_ttl",
            "min_active_size",
        )
        for name in ints:
            if not isinstance(getattr(self, name), int):
                raise _invalid(name, "an integer", getattr(self, name))
        for name in ("active_view_size", "passive_view_size", "arwl", "shuffle_ttl"):
            if getattr(self, name) < 1:
                raise _invalid(name, "at least 1", getattr(self, name))
        for name in (
            "prwl",
            "shuffle_active",
            "shuffle_passive",
            "min_active_size",
            "reserve_size",
        ):
            if getattr(self, name) < 0:
                raise _invalid(name, "at least 0", getattr(self, name))
        # What the wire carries (protocol/limits.py): a walk's TTL is one byte, a SHUFFLE holds
        # at most MAX_SHUFFLE_PEERS ids (ours included). A larger setting would make every
        # JOIN or SHUFFLE fail to encode.
        for name in ("arwl", "shuffle_ttl"):
            if getattr(self, name) > limits.MAX_TTL:
                raise _invalid(
                    name, f"at most {limits.MAX_TTL} (one byte on the wire)", getattr(self, name)
                )
        if self.shuffle_active + self.shuffle_passive + 1 > limits.MAX_SHUFFLE_PEERS:
            raise ConfigError(
                f"shuffle_active + shuffle_passive must be at most"
                f" {limits.MAX_SHUFFLE_PEERS - 1} (one SHUFFLE on the wire), got"
                f" {self.shuffle_active} + {self.shuffle_passive}",
                field="shuffle_passive",
                expected=f"at most {limits.MAX_SHUFFLE_PEERS - 1} - shuffle_active"
                f" ({self.shuffle_active}) (one SHUFFLE on the wire)",
            )
        if self.prwl > self.arwl:
            raise _invalid("prwl", f"at most arwl ({self.arwl})", self.prwl)
        if self.min_active_size > self.active_view_size:
            raise _invalid(
                "min_active_size",
                f"at most active_view_size ({self.active_view_size})",
                self.min_active_size,
            )
        positive = (
            "shuffle_interval",
            "neighbor_timeout",
            "rejoin_backoff_initial",
            "rejoin_backoff_max",
            "keepalive_timeout",
            "lost_retention",
            "probe_interval_min",
            "probe_interval_max",
            "merge_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise _invalid(name, "greater than 0", getattr(self, name))
        if self.keepalive_interval is not None:
            if self.keepalive_interval <= 0:
                raise _invalid(
                    "keepalive_interval", "greater than 0 or None", self.keepalive_interval
                )
            if self.keepalive_timeout <= self.keepalive_interval:
                raise _invalid(
                    "keepalive_timeout",
                    f"greater than keepalive_interval ({self.keepalive_interval})",
                    self.keepalive_timeout,
                )
        if self.rejoin_backoff_max < self.rejoin_backoff_initial:
            raise _invalid(
                "rejoin_backoff_max",
                f"at least rejoin_backoff_initial ({self.rejoin_backoff_initial})",
                self.rejoin_backoff_max,
            )
        if self.probe_interval_max < self.probe_interval_min:
            raise _invalid(
                "probe_interval_max",
                f"at least probe_interval_min ({self.probe_interval_min})",
                self.probe_interval_max,
            )


def _invalid(name: str, expected: str, value: object) -> ConfigError:
    """The error for one refused field: ``<name> must be <expected>, got <value>``, with the
    name and the expectation attached for callers that report it in their own terms."""
    return ConfigError(f"{name} must be {expected}, got {value!r}", field=name, expected=expected)
