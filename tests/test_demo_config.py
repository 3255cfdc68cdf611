"""The demo's membership settings (``ray_hyparview.cluster.local.demo_config``): the local
preset's fast timers by default, the production timers on request, the same views either way
(``benchmarks/ray_connections.py --timings`` compares the two)."""

from __future__ import annotations

from dataclasses import asdict

from ray_hyparview.cluster.local import demo_config
from ray_hyparview.protocol.config import LOCAL_TIMINGS, HyParViewConfig


def test_the_demo_runs_the_local_timers_and_can_run_the_production_ones() -> None:
    fast = demo_config(2)
    slow = demo_config(2, local_timings=False)
    defaults = HyParViewConfig()
    for config in (fast, slow):
        assert (config.active_view_size, config.passive_view_size) == (2, 8)
        assert config.min_active_size == 1
    assert fast.shuffle_interval == 2.0
    assert fast.merge_interval == LOCAL_TIMINGS["merge_interval"] < defaults.merge_interval
    # Every timer of the production run is the default one: only the views differ.
    views = {"active_view_size", "passive_view_size", "min_active_size"}
    differ = {k for k, v in asdict(slow).items() if v != asdict(defaults)[k]}
    assert differ <= views
