"""The reverse-path check of routed frames (rule 7 of :mod:`ray_hyparview.protocol.routing`).

A neighbour relays a routed frame under some source id; the router takes it only if the
neighbour is that source or names it in its announcements here. Before the check, a relay could
put any id in the source of a DATA frame or a ROUTE_ERROR and the router delivered it.
"""

from __future__ import annotations

import random
from dataclasses import replace

from ray_hyparview.protocol.routing import (
    INFINITY,
    Action,
    Arrived,
    DataFrame,
    RouteError,
    Router,
    RouteUpdate,
    RoutingConfig,
    SendTo,
    Undeliverable,
)

CONFIG = RoutingConfig(update_interval=1.0, route_expiry=3.5, hop_limit=16)


def router(name: str = "c") -> Router:
    return Router(name, CONFIG, rng=random.Random(name))


def frame(source: str, destination: str = "c", *, hops: int = 2) -> DataFrame:
    return DataFrame(
        source=source, destination=destination, frame_id=7, hops=hops, hop_limit=16, payload=b"x"
    )


def arrived(actions: list[Action]) -> list[Arrived]:
    return [a for a in actions if isinstance(a, Arrived)]


def relayed(actions: list[Action]) -> list[DataFrame]:
    sent = [a.message for a in actions if isinstance(a, SendTo)]
    return [m for m in sent if isinstance(m, DataFrame)]


def linked(*announced: tuple[str, int, int], peer: str = "b") -> Router:
    """``c`` with a link to ``peer``, which announced ``announced``."""
    r = router()
    r.link_up(peer, now=0.0)
    r.receive(peer, RouteUpdate(entries=(("b", 1, 0), *announced)), now=0.0)
    return r


def test_forged_source_without_a_route_is_dropped_and_counted() -> None:
    """b announces only itself and a; a frame it relays under the id x is a forgery."""
    r = linked(("a", 1, 1))
    actions = r.receive("b", frame("x"), now=0.1)
    assert arrived(actions) == []
    assert r.counters["dropped.source_route"] == 1
    assert r.counters["arrived"] == 0


def test_forged_source_is_not_relayed_either() -> None:
    """c relays for d; b's frame under a forged source goes nowhere."""
    r = linked(("a", 1, 1))
    r.link_up("d", now=0.0)
    assert relayed(r.receive("b", frame("x", "d"), now=0.1)) == []
    assert r.counters["dropped.source_route"] == 1


def test_sources_the_relay_announces_pass() -> None:
    r = linked(("a", 1, 1))
    assert [x.source for x in arrived(r.receive("b", frame("a"), now=0.1))] == ["a"]
    assert [x.source for x in arrived(r.receive("b", frame("b", hops=1), now=0.1))] == ["b"]
    assert r.counters["dropped.source_route"] == 0


def test_an_unselected_equal_cost_announcer_passes() -> None:
    """Two neighbours announce a at the same metric; frames of a from either are taken."""
    r = linked(("a", 1, 1))
    r.link_up("e", now=0.0)
    r.receive("e", RouteUpdate(entries=(("a", 1, 1),)), now=0.0)
    assert r.routes()["a"][0] == "b"
    assert len(arrived(r.receive("e", frame("a"), now=0.1))) == 1
    assert r.counters["dropped.source_route"] == 0


def test_a_frame_claiming_to_be_ours_is_dropped() -> None:
    r = linked(("a", 1, 1))
    r.link_up("d", now=0.0)
    assert arrived(r.receive("b", frame("c"), now=0.1)) == []
    assert relayed(r.receive("b", frame("c", "d"), now=0.1)) == []
    assert r.counters["dropped.source_route"] == 2


def test_forged_route_error_is_dropped() -> None:
    """A ROUTE_ERROR under a forged reporter would fail one of our frames for nothing."""
    r = linked(("a", 1, 1))
    error = RouteError(
        source="x",
        destination="c",
        frame_id=1,
        frame_destination="a",
        reason="no_route",
        hops=1,
        hop_limit=16,
    )
    actions = r.receive("b", error, now=0.1)
    assert [a for a in actions if isinstance(a, Undeliverable)] == []
    assert r.counters["dropped.source_route"] == 1
    honest = r.receive("b", replace(error, source="a"), now=0.1)
    assert [a.reported_by for a in honest if isinstance(a, Undeliverable)] == ["a"]


def test_retracted_or_poisoned_source_stays_vouched_until_route_expiry() -> None:
    """b's route to a now runs through us (poisoned reverse): a frame of a can still reach
    us from b on an asymmetric path. It is taken for ``route_expiry``, then no longer."""
    r = linked(("a", 1, 1))
    r.receive("b", RouteUpdate(entries=(("a", 2, INFINITY),)), now=0.5)
    assert len(arrived(r.receive("b", frame("a"), now=1.0))) == 1
    r.on_timer(now=10.0)  # past route_expiry: the periodic expiry forgets it
    assert arrived(r.receive("b", frame("a"), now=10.0)) == []
    assert r.counters["dropped.source_route"] == 1


def test_frames_in_flight_over_a_link_that_went_down_pass() -> None:
    r = linked(("a", 1, 1))
    r.link_down("b", now=0.5)
    assert len(arrived(r.receive("b", frame("a"), now=0.6))) == 1
    assert arrived(r.receive("b", frame("x"), now=0.6)) == []
    assert r.counters["dropped.source_route"] == 1


def test_a_table_held_before_the_link_is_up_counts() -> None:
    """Rule 4: b's table can overtake our link_up; its frames are checked against it."""
    r = router()
    r.link_up("d", now=0.0)
    r.receive("b", RouteUpdate(entries=(("b", 1, 0), ("a", 1, 1))), now=0.0)
    assert len(arrived(r.receive("b", frame("a"), now=0.1))) == 1
    assert arrived(r.receive("b", frame("x"), now=0.1)) == []
    assert r.counters["dropped.source_route"] == 1
