"""The one overlay check (:mod:`ray_hyparview.protocol.overlay`) that the simulator, the fuzzer,
the demo, the plugin, the harnesses and the benchmarks share."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ray_hyparview.protocol.overlay import components, overlay_problems, problems


def is_healthy(views: Mapping[str, Collection[str]], **options: Any) -> bool:
    return not problems(views, **options)


def test_a_connected_symmetric_overlay_has_no_problem() -> None:
    views = {"a": ["b", "c"], "b": ["a"], "c": ["a"]}
    assert overlay_problems(views) == []
    assert is_healthy(views)
    assert is_healthy({})
    assert is_healthy({"a": []})  # one node is an overlay of one


def test_each_problem_is_named() -> None:
    assert overlay_problems({"a": ["b"], "b": []}) == ["a -> b is one-sided"]
    assert overlay_problems({"a": ["x"]}) == ["a holds unknown or dead peer x"]
    split = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}
    assert [p.check for p in problems(split)] == ["connected"]
    assert "2 of 4 reachable from a" in overlay_problems(split)[0]
    # A one-sided link is one-sided, not a split as well.
    assert [p.check for p in problems({"a": ["b"], "b": []})] == ["symmetric"]


def test_alive_restricts_the_overlay_and_requires_every_view() -> None:
    views = {"a": ["b"], "b": ["a"], "gone": ["a"]}
    assert is_healthy(views, alive={"a", "b"})  # the dead node's view is left out
    assert [p.check for p in problems(views, alive={"a", "b", "c"})] == ["missing"]


def test_dead_peers_may_be_allowed_and_min_active_asked() -> None:
    views = {"a": ["b", "dead"], "b": ["a"]}
    assert not is_healthy(views)
    assert is_healthy(views, dead_peers=False)
    lonely = {"a": ["b"], "b": ["a"], "c": []}
    assert [p.check for p in problems(lonely, min_active=1)] == ["isolated", "connected"]


def test_components_count_either_direction() -> None:
    label = components({"a": ["b"], "b": [], "c": ["c"], "d": ["zz"]})
    assert label == {"a": 0, "b": 0, "c": 2, "d": 3}


@given(st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_the_order_of_the_views_does_not_change_the_answer(n: int, seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(n)]
    views = {i: rng.sample(ids, rng.randint(0, n - 1)) for i in ids}
    shuffled = dict(rng.sample(sorted(views.items()), n))
    assert problems(views) == problems(shuffled)
    # Healthy iff symmetric and one component, judged independently here.
    symmetric = all(a in views[b] for a, peers in views.items() for b in peers if b != a)
    one = len(set(components(views).values())) == 1
    selfless = all(a not in peers for a, peers in views.items())
    if selfless:
        assert is_healthy(views) == (symmetric and one)
