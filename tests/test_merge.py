"""The component marker (protocol/merge.py): election, beats, and the same/other test."""

from __future__ import annotations

from ray_hyparview.protocol.merge import ComponentMarker, Marker
from ray_hyparview.testing.wiring import peer

INTERVAL = 10.0


def marker(name: str, *, start: float = 0.0) -> ComponentMarker:
    m = ComponentMarker(peer(name), 1, INTERVAL)
    m.start(start)
    return m


def test_the_least_root_wins_and_an_earlier_one_is_not_taken_back() -> None:
    b = marker("b")
    assert b.offer(marker("a").current(0.0), 1.0)
    assert b.root.id == "a"
    assert not b.offer(marker("c").current(0.0), 2.0)
    assert b.root.id == "a"


def test_the_root_beats_every_interval_and_a_silent_root_is_given_up() -> None:
    a, b = marker("a"), marker("b")
    assert b.offer(a.current(0.0), 0.0)
    assert a.tick(INTERVAL)  # the root beats
    assert b.offer(a.current(INTERVAL), INTERVAL)
    assert b.seq == a.seq
    # a falls silent: b keeps a while it may be late, then becomes a root itself.
    assert not b.tick(2 * INTERVAL)
    assert not b.tick(3 * INTERVAL)
    assert b.tick(4.5 * INTERVAL)
    assert b.root.id == "b"


def test_markers_tell_another_component_only_once_both_are_settled() -> None:
    a, c = marker("a"), marker("c")
    assert not a.elsewhere(c.current(0.0), 0.0)  # nobody is settled yet
    later = 2 * INTERVAL
    assert a.elsewhere(c.current(later), later)


def one_beat_apart() -> tuple[ComponentMarker, ComponentMarker, float]:
    """b and c under root a; at the time returned, a beats again and only b hears it."""
    a, b, c = marker("a"), marker("b"), marker("c")
    assert a.tick(INTERVAL)
    for m in (b, c):
        assert m.offer(a.current(INTERVAL), INTERVAL)
    now = 2 * INTERVAL
    assert a.tick(now)
    assert b.offer(a.current(now), now)
    return b, c, now


def test_same_root_one_beat_behind_is_the_same_component_until_it_is_stale() -> None:
    b, c, now = one_beat_apart()  # b heard the beat, c (cut off) did not
    assert not b.elsewhere(c.current(now), now)
    assert not b.elsewhere(c.current(now + 0.4 * INTERVAL), now + 0.4 * INTERVAL)
    late = now + 0.6 * INTERVAL  # c is 1.6 intervals past its last beat: it missed one
    assert b.elsewhere(c.current(late), late)
    assert c.elsewhere(b.current(late), late)


def test_a_pause_of_the_node_itself_does_not_age_its_marker() -> None:
    """c did not run for 0.5 intervals (its timer came that late): the beat it misses may be
    waiting unread in its socket, so it is not stale yet; a silence it listened through is."""
    b, c, now = one_beat_apart()
    late = now + 0.6 * INTERVAL
    c.credit(0.5 * INTERVAL, late)
    assert not b.elsewhere(c.current(late), late)
    assert not c.elsewhere(b.current(late), late)
    later = now + 1.1 * INTERVAL
    assert b.elsewhere(c.current(later), later)
    c.credit(10 * INTERVAL, later)
    assert c.age(later) == 0.0, "never younger than a beat received now"


def test_a_marker_older_than_the_root_timeout_is_not_adopted() -> None:
    b = marker("b")
    old = Marker(peer("a"), 1, 5, 3.5 * INTERVAL, True)
    assert not b.offer(old, 0.0)
    assert b.root.id == "b"
