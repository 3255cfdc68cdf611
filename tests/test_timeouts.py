"""The Ray-facing API takes ``timeout=`` like ``ray.get``; ``limit=``, the old name, still works
for one release and warns. No Ray cluster is started: the handle's Ray calls are stubbed."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import pytest

from ray_hyparview.cluster import plugin as cluster


@pytest.fixture
def handle(monkeypatch: pytest.MonkeyPatch) -> cluster.HyParViewCluster:
    """A handle over a converged one-node overlay, without Ray."""
    views = {"n1": {"endpoint": "tcp://127.0.0.1:1", "active": [], "passive": []}}
    monkeypatch.setattr(cluster, "_alive_nodes", lambda: {"n1": "127.0.0.1"})
    monkeypatch.setattr(cluster.HyParViewCluster, "reconcile", lambda self: {})
    monkeypatch.setattr(cluster.HyParViewCluster, "views", lambda self: views)
    monkeypatch.setattr(cluster.HyParViewCluster, "_routed", lambda self, alive: True)
    return cluster.HyParViewCluster(reconciler=None)


def test_timeout_is_the_name_everywhere_a_user_passes_a_time_limit() -> None:
    for function in (cluster.start, cluster.HyParViewCluster.wait_converged):
        assert "timeout" in inspect.signature(function).parameters, function


def test_wait_converged_takes_timeout_without_warning(handle: cluster.HyParViewCluster) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(handle.wait_converged(timeout=5)) == {"n1"}


def test_limit_still_works_and_warns(handle: cluster.HyParViewCluster) -> None:
    with pytest.deprecated_call(match=r"limit=.*deprecated, use timeout="):
        assert set(handle.wait_converged(limit=5)) == {"n1"}
    with pytest.raises(TypeError, match="timeout= only"):
        handle.wait_converged(timeout=5, limit=5)


def test_start_passes_timeout_on_and_warns_for_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[Any] = []
    monkeypatch.setattr("ray.is_initialized", lambda: True)
    monkeypatch.setattr(cluster, "_reconciler", lambda *args: None)
    monkeypatch.setattr(cluster.HyParViewCluster, "_call", lambda self, method, **kw: None)
    monkeypatch.setattr(
        cluster.HyParViewCluster,
        "wait_converged",
        lambda self, **kw: waited.append(kw),
    )
    cluster.start(timeout=7)
    with pytest.deprecated_call():
        cluster.start(limit=8)
    cluster.start()
    assert waited == [{"timeout": 7}, {"timeout": 8}, {"timeout": 60.0}]
