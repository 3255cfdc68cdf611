"""The component marker (protocol/merge.py): election, beats, and the same/other test."""

from __future__ import annotations

import random

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.merge import ROOT_TIMEOUT, STALE_AFTER, ComponentMarker, Marker
from ray_hyparview.protocol.messages import Action, ComponentMark, Join, MergeProbe, Send
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


def test_same_root_one_beat_behind_is_the_same_component_until_it_is_stale() -> None:
    a, b, c = marker("a"), marker("b"), marker("c")
    assert a.tick(INTERVAL)
    for m in (b, c):
        assert m.offer(a.current(INTERVAL), INTERVAL)
    now = 2 * INTERVAL
    assert a.tick(now)
    assert b.offer(a.current(now), now)  # b heard the beat, c (cut off) did not
    assert not b.elsewhere(c.current(now), now)
    assert not b.elsewhere(c.current(now + 0.4 * INTERVAL), now + 0.4 * INTERVAL)
    late = now + 0.6 * INTERVAL  # c is 1.6 intervals past its last beat: it missed one
    assert b.elsewhere(c.current(late), late)
    assert c.elsewhere(b.current(late), late)


def test_a_marker_older_than_the_root_timeout_is_not_adopted() -> None:
    b = marker("b")
    old = Marker(peer("a"), 1, 5, 3.5 * INTERVAL, True)
    assert not b.offer(old, 0.0)
    assert b.root.id == "b"


def test_a_node_that_adopts_a_beat_wakes_only_when_its_root_could_be_given_up() -> None:
    a, b = marker("a"), marker("b")
    assert b.next_beat == INTERVAL  # its own first beat, were it still the root
    assert b.offer(a.current(0.5 * INTERVAL), 0.5 * INTERVAL)  # a beat that left a at 0
    assert b.next_beat == ROOT_TIMEOUT * INTERVAL


def _probes(actions: list[Action]) -> int:
    return sum(1 for a in actions if isinstance(a, Send) and isinstance(a.message, MergeProbe))


def test_no_probe_while_the_own_marker_is_unsettled() -> None:
    """A probe tells another component only when both markers are settled, so a node whose
    marker is not settled yet does not probe at all (there is nothing lost to probe here).
    Before: the first probe went out 0.5-1 merge_interval after the start."""
    config = HyParViewConfig(keepalive_interval=None, merge_interval=INTERVAL)
    x = HyParView(peer("x"), config, rng=random.Random(7), incarnation=1)
    x.join([peer("c1"), peer("c2"), peer("c3")], now=0.0)
    settles = STALE_AFTER * INTERVAL
    early = late = 0
    now = 0.0
    while now < settles + 2 * INTERVAL:
        deadline = x.next_deadline()
        assert deadline is not None
        now = max(now, deadline)
        actions = x.on_timer(now=now)
        if now < settles:
            early += _probes(actions)
        else:
            late += _probes(actions)
    assert early == 0
    assert late > 0


def _marks_to(actions: list[Action], name: str) -> int:
    return sum(
        1
        for a in actions
        if isinstance(a, Send) and isinstance(a.message, ComponentMark) and a.to.id == name
    )


def test_a_worse_marker_is_answered_only_by_a_settled_node() -> None:
    """A neighbour with a worse root is told ours only once our marker is settled: before
    that an election or a merge is still flooding, and its wave reaches the neighbour anyway
    (telling back as well made the start-up election of a 2,000-node overlay cost 16% more
    marks). Before: told back at once."""
    config = HyParViewConfig(keepalive_interval=None, merge_interval=INTERVAL)
    a, b = peer("a"), peer("b")
    x = HyParView(a, config, rng=random.Random(7), incarnation=1)
    x.join([], now=0.0)
    x.receive(b.id, Join(sender=b, incarnation=1), now=0.0)
    assert b.id in x.active_ids

    def worse(now: float) -> ComponentMark:
        return ComponentMark(
            sender=b, incarnation=1, root=b, root_incarnation=1, seq=1, age=0.0, settled=False
        )

    assert _marks_to(x.receive(b.id, worse(1.0), now=1.0), "b") == 0
    x.on_timer(now=INTERVAL)  # x, its own root, beats (and floods to b)
    later = STALE_AFTER * INTERVAL + 1.0
    assert _marks_to(x.receive(b.id, worse(later), now=later), "b") == 1
