"""The Prometheus surface: stats() as labelled families, the /metrics page scraped and parsed
with ``prometheus_client.parser``, its bind address, and the Ray-mode names."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ray_hyparview.agent.control import metrics_server, prometheus_text
from ray_hyparview.agent.metrics import MetricsUnavailable, RayMetricsExporter, families

STATS: dict[str, Any] = {
    "id": "n1",
    "gauges": {"active_view_size": 3, "links": 4},
    "counters": {
        "agent.received.Join": 2,
        "agent.received.Shuffle": 5,
        "agent.received.bytes": 900,
        "agent.sent.Join": 1,
        "agent.send.dropped": 1,
        "agent.dropped.bad_tag": 7,
        "core.received.Join": 2,
        "core.peer_up": 3,
        "core.peer_down.left": 1,
        "core.repair.attempted": 4,
        "transport.send.dropped.hwm": 6,
        "transport.link.failed.heartbeat": 2,
        "process.control.rejected.too_long": 1,
    },
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape as {(name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(port: int, host: str = "127.0.0.1", path: str = "/metrics") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return head, body


def test_one_family_per_kind_of_event_with_labels() -> None:
    by_name = {f.name: f for f in families(STATS)}
    received = by_name["ray_hyparview_messages_received"]
    assert received.kind == "counter"
    assert received.labels == ("node", "layer", "type")
    assert sorted(received.samples) == [
        (("n1", "agent", "Join"), 2.0),
        (("n1", "agent", "Shuffle"), 5.0),
        (("n1", "core", "Join"), 2.0),
    ]
    dropped = by_name["ray_hyparview_send_dropped"]
    assert dropped.labels == ("node", "layer", "cause")
    assert sorted(dropped.samples) == [
        (("n1", "agent", ""), 1.0),
        (("n1", "transport", "hwm"), 6.0),
    ]
    assert by_name["ray_hyparview_peer_down"].samples == [(("n1", "core", "left"), 1.0)]
    assert by_name["ray_hyparview_link_failed"].samples == [(("n1", "transport", "heartbeat"), 2.0)]
    assert by_name["ray_hyparview_repair_attempted"].samples == [(("n1", "core"), 4.0)]
    assert by_name["ray_hyparview_received_bytes"].samples == [(("n1", "agent"), 900.0)]
    assert by_name["ray_hyparview_active_view_size"].kind == "gauge"
    assert all(f.help for f in by_name.values())
    # No metric name per message type any more.
    assert not [name for name in by_name if "Join" in name or "Shuffle" in name]


def test_a_name_with_two_shapes_keeps_each_count_under_its_own_name() -> None:
    """A gauge and a counter that would share a name, or a count whose labels differ from
    its family's, must not make an inconsistent family: the scrape would be rejected."""
    stats = {
        "id": "n1",
        "gauges": {"peer_up": 1},
        "counters": {"core.peer_up": 3, "agent.messages_received": 4, "agent.received.Join": 2},
    }
    shapes = {f.name: (f.kind, f.labels) for f in families(stats)}
    assert shapes["ray_hyparview_peer_up"] == ("gauge", ("node",))
    assert shapes["ray_hyparview_core_peer_up"] == ("counter", ("node", "layer"))
    assert shapes["ray_hyparview_messages_received"] == ("counter", ("node", "layer"))
    assert shapes["ray_hyparview_agent_received_Join"] == ("counter", ("node", "layer"))
    parsed = {f.name for f in text_string_to_metric_families(prometheus_text(stats))}
    assert "ray_hyparview_core_peer_up" in parsed


@pytest.mark.asyncio
async def test_the_page_parses_with_prometheus_client_and_has_help_and_labels() -> None:
    async with metrics_server(0, lambda: STATS) as port:
        assert port is not None
        head, body = await scrape(port)
    assert head.startswith("HTTP/1.0 200 OK")
    assert "Content-Type: text/plain; version=" in head  # the text format, not OpenMetrics
    got = samples(body)
    assert got[("ray_hyparview_active_view_size", (("node", "n1"),))] == 3
    key = (
        "ray_hyparview_messages_received_total",
        (("layer", "agent"), ("node", "n1"), ("type", "Join")),
    )
    assert got[key] == 2
    assert got[("ray_hyparview_peer_up_total", (("layer", "core"), ("node", "n1")))] == 3
    cause = (("cause", "too_long"), ("layer", "process"), ("node", "n1"))
    assert got[("ray_hyparview_control_rejected_total", cause)] == 1
    assert "# HELP ray_hyparview_messages_received_total Messages received" in body
    assert "# TYPE ray_hyparview_messages_received_total counter" in body


@pytest.mark.asyncio
async def test_the_page_reads_stats_at_each_scrape_and_answers_only_metrics() -> None:
    count = {"agent.received.Join": 1}
    stats = {"id": "n1", "gauges": {}, "counters": count}
    async with metrics_server(0, lambda: stats) as port:
        assert port is not None
        _, first = await scrape(port)
        count["agent.received.Join"] = 5
        _, second = await scrape(port)
        head, _ = await scrape(port, path="/other")
    key = (
        "ray_hyparview_messages_received_total",
        (("layer", "agent"), ("node", "n1"), ("type", "Join")),
    )
    assert samples(first)[key] == 1
    assert samples(second)[key] == 5
    assert head.startswith("HTTP/1.0 404")


@pytest.mark.asyncio
async def test_the_metrics_address_is_configurable() -> None:
    """It used to be 127.0.0.1 whatever the setting; another loopback address proves it is
    the one given that is bound."""
    async with metrics_server(0, lambda: STATS, host="127.0.0.2") as port:
        assert port is not None
        head, _ = await scrape(port, host="127.0.0.2")
        assert head.startswith("HTTP/1.0 200 OK")
        with pytest.raises(ConnectionRefusedError):
            await scrape(port, host="127.0.0.1")


@pytest.mark.asyncio
async def test_without_prometheus_client_the_page_fails_cleanly_before_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m.startswith("prometheus_client")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MetricsUnavailable, match=r"pip install 'ray-hyparview\[metrics\]'"):
        async with metrics_server(0, lambda: STATS):
            pass  # pragma: no cover - never reached
    async with metrics_server(None, lambda: STATS) as off:  # off needs nothing
        assert off is None


class _FakeMetric:
    def __init__(self, name: str, description: str, tag_keys: tuple[str, ...]) -> None:
        self.name, self.description, self.tag_keys = name, description, tag_keys
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values[tuple(sorted(tags.items()))] = value

    def inc(self, value: float, tags: dict[str, str]) -> None:
        key = tuple(sorted(tags.items()))
        self.values[key] = self.values.get(key, 0.0) + value


class _FakeRayMetrics:
    def __init__(self) -> None:
        self.made: dict[str, _FakeMetric] = {}

    def _make(self, name: str, description: str, tag_keys: tuple[str, ...]) -> _FakeMetric:
        assert name not in self.made
        self.made[name] = _FakeMetric(name, description, tag_keys)
        return self.made[name]

    Gauge = Counter = _make


def test_ray_mode_names_are_not_doubled_and_carry_labels() -> None:
    fake = _FakeRayMetrics()
    exporter = RayMetricsExporter(fake)
    exporter.export(STATS)
    later = {**STATS, "counters": {**STATS["counters"], "agent.received.Join": 10}}
    exporter.export(later)
    # Ray adds "ray_" itself: what it is given must not start with it.
    assert not [name for name in fake.made if name.startswith("ray_")]
    received = fake.made["hyparview_messages_received"]
    assert received.tag_keys == ("node", "layer", "type")
    join = (("layer", "agent"), ("node", "n1"), ("type", "Join"))
    assert received.values[join] == 10  # pushed as increases: 2, then 8 more
    assert fake.made["hyparview_active_view_size"].values[(("node", "n1"),)] == 3


def test_the_metrics_address_is_a_setting_with_a_loopback_default() -> None:
    from ray_hyparview.config.strategy import Strategy, StrategyError, apply_env

    base = {"node": {"id": "n1", "endpoint": "tcp://127.0.0.1:7101"}}
    assert Strategy.from_mapping(base).metrics_host == "127.0.0.1"
    anywhere = Strategy.from_mapping({**base, "agent": {"metrics_host": "0.0.0.0"}})
    assert anywhere.metrics_host == "0.0.0.0"
    assert anywhere.to_mapping()["agent"] == {"metrics_host": "0.0.0.0"}
    assert Strategy.from_mapping(anywhere.to_mapping()) == anywhere
    from_env = apply_env(base, {"RAY_HYPARVIEW_METRICS_HOST": "::"})
    assert Strategy.from_mapping(from_env).metrics_host == "::"
    assert Strategy.from_mapping({**base, "agent": {"metrics_host": "node-1.pod"}})
    for bad in ("a b", "", "host:9464", 9464):
        with pytest.raises(StrategyError, match=r"agent\.metrics_host"):
            Strategy.from_mapping({**base, "agent": {"metrics_host": bad}})
