"""An agent's ``stats()`` as Prometheus metric families, for ``prometheus_client`` and for
``ray.util.metrics``.

The agent counts events under dotted names (``agent.received.Join``, ``transport.send.dropped.hwm``,
``core.peer_down.left``); Prometheus wants one metric per kind of event with labels that say
which one. :func:`families` turns one ``stats()`` mapping into families by these rules:

* every family carries ``node`` (the agent's id);
* a gauge ``size`` becomes ``ray_hyparview_size`` (no other label);
* a counter ``<layer>.<rest>`` gets the label ``layer`` (``agent``, ``core``, ``transport``,
  ``process``) and is named after ``<rest>`` with a ``_total`` suffix;
* ``received.<Type>`` and ``sent.<Type>`` (a message type, capitalised) become
  ``ray_hyparview_messages_received_total`` / ``..._sent_total`` with the label ``type``;
* the families in :data:`CAUSE_FAMILIES` (``dropped``, ``send.dropped``, ``peer_down``, ...)
  take what follows them as the label ``cause`` (empty for a bare count kept without one);
* anything else keeps its own name: ``core.repair.attempted`` is
  ``ray_hyparview_repair_attempted_total{layer="core"}``.

This module needs neither ``prometheus_client`` nor Ray at import: :func:`registry` imports
the former when an agent is asked to serve ``/metrics`` (``pip install
'ray-hyparview[metrics]'``), and :class:`RayMetricsExporter` (the agent actors of
:mod:`ray_hyparview.cluster`) feeds the same families to ``ray.util.metrics`` under names
without the ``ray_`` prefix, which Ray adds itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "CAUSE_FAMILIES",
    "PREFIX",
    "Family",
    "MetricsUnavailable",
    "RayMetricsExporter",
    "families",
    "registry",
]

PREFIX: Final = "ray_hyparview"
"""Every metric name starts with this (Ray mode drops the leading ``ray_``: Ray adds it)."""

CAUSE_FAMILIES: Final = (
    "send.dropped",
    "recv.dropped",
    "control.rejected",
    "zap.refused",
    "link.failed",
    "link_failed",
    "peer_down",
    "undeliverable",
    "dropped",
)
"""Counter names whose last part is a cause, longest first: ``dropped.bad_tag`` is
``ray_hyparview_dropped_total{cause="bad_tag"}``."""

_MESSAGE_FAMILIES: Final = {"received": "messages_received", "sent": "messages_sent"}

_HELP: Final = {
    "active_view_size": "Peers in the active view (open links the protocol maintains).",
    "passive_view_size": "Peers in the passive view (candidates for repairs).",
    "reserve_size": "Ids recently evicted from the passive view, kept for recall.",
    "links": "Links the transport holds open.",
    "messages_received": "Messages received, by layer and message type.",
    "messages_sent": "Messages sent, by layer and message type.",
    "dropped": "Inputs dropped (remote garbage, stale or unwanted messages), by cause.",
    "send_dropped": "Outgoing frames dropped before they reached the wire, by cause.",
    "recv_dropped": "Incoming frames dropped by the transport, by cause.",
    "peer_down": "Active peers lost, by reason.",
    "peer_up": "Active links established.",
    "link_failed": "Links reported failed by the transport, by cause.",
    "control_rejected": "Control endpoint requests refused, by cause.",
    "received_bytes": "Bytes received.",
    "sent_bytes": "Bytes sent.",
}


class MetricsUnavailable(RuntimeError):
    """Serving ``/metrics`` was asked for but ``prometheus_client`` is not installed."""


@dataclass
class Family:
    """One metric: its full name (``_total`` not included), kind, help, label names and
    samples (label values in the order of ``labels``, value)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


def _sanitize(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text).strip("_") or "unnamed"


def _counter_family(key: str) -> tuple[str, dict[str, str]]:
    """``agent.received.Join`` -> ("messages_received", {"layer": "agent", "type": "Join"})."""
    layer, _, rest = key.partition(".")
    if not rest:
        return _sanitize(layer), {"layer": ""}
    head, _, last = rest.rpartition(".")
    if head in _MESSAGE_FAMILIES and last[:1].isupper():
        return _MESSAGE_FAMILIES[head], {"layer": layer, "type": last}
    for family in CAUSE_FAMILIES:
        if rest == family or rest.startswith(family + "."):
            cause = rest[len(family) + 1 :]
            return _sanitize(family), {"layer": layer, "cause": cause}
    return _sanitize(rest), {"layer": layer}


def families(stats: Mapping[str, Any], *, prefix: str = PREFIX) -> list[Family]:
    """The metric families of one agent's ``stats()``, sorted by name."""
    node = str(stats.get("id", ""))
    out: dict[str, Family] = {}
    for key, value in sorted(stats.get("gauges", {}).items()):
        base = _sanitize(key)
        name = f"{prefix}_{base}"
        help_text = _HELP.get(base, f"The agent's gauge {key!r}.")
        out[name] = Family(name, "gauge", help_text, ("node",), [((node,), float(value))])
    for key, value in sorted(stats.get("counters", {}).items()):
        base, labels = _counter_family(key)
        name = f"{prefix}_{base}"
        found = out.get(name)
        if found is None:
            help_text = _HELP.get(base, f"Events counted as {key!r} in the agent's stats().")
            found = out[name] = Family(name, "counter", help_text, ("node", *labels))
        if found.kind != "counter" or found.labels[1:] != tuple(labels):
            # Two shapes under one name (a gauge and a counter, or different labels): keep the
            # count under its own full name rather than emit an inconsistent family.
            name = f"{prefix}_{_sanitize(key)}"
            found = out.setdefault(
                name,
                Family(name, "counter", f"Events counted as {key!r}.", ("node", "layer")),
            )
            labels = {"layer": key.partition(".")[0]}
        found.samples.append(((node, *labels.values()), float(value)))
    return [out[name] for name in sorted(out)]


def registry(stats: Callable[[], Mapping[str, Any]]) -> Any:
    """A ``prometheus_client`` registry with one collector over ``stats()``, read at each
    scrape. Raises :class:`MetricsUnavailable` without ``prometheus_client``."""
    try:
        from prometheus_client.core import (
            CollectorRegistry,
            CounterMetricFamily,
            GaugeMetricFamily,
        )
    except ImportError:
        raise MetricsUnavailable(
            "serving metrics needs prometheus_client: pip install 'ray-hyparview[metrics]'"
        ) from None

    class StatsCollector:
        """The agent's counters and gauges, read from ``stats()`` at each scrape."""

        def collect(self) -> Iterator[Any]:
            for family in families(stats()):
                metric: Any
                if family.kind == "gauge":
                    metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
                else:
                    metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
                for values, value in family.samples:
                    metric.add_metric(list(values), value)
                yield metric

    result = CollectorRegistry(auto_describe=False)
    result.register(StatsCollector())
    return result


class RayMetricsExporter:
    """An agent's metric families (:func:`ray_hyparview.agent.metrics.families`) pushed through
    ``ray.util.metrics``, with the same names and labels as the standalone ``/metrics`` page.

    Ray prefixes every application metric with ``ray_``, so the names given to Ray start at
    ``hyparview_``: Ray's endpoint shows ``ray_hyparview_messages_received{node, layer, type}``
    (Ray's exporter adds ``_total`` to counters or not, depending on its version), not
    ``ray_ray_hyparview_...``. Counters are pushed as the increase since the last export."""

    def __init__(self, metrics_module: Any = None) -> None:
        """``metrics_module`` stands in for ``ray.util.metrics`` (tests)."""
        if metrics_module is None:
            from ray.util import metrics as metrics_module
        self._metrics = metrics_module
        self._made: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}

    @staticmethod
    def ray_name(name: str) -> str:
        """The name to give Ray so that its ``ray_`` prefix is not doubled."""
        return name.removeprefix("ray_")

    def export(self, stats: Mapping[str, Any]) -> None:
        """Push one ``stats()``: gauges set, counters increased by what they grew since."""
        for family in families(stats):
            name = self.ray_name(family.name)
            metric = self._made.get(name)
            if metric is None:
                kind = self._metrics.Gauge if family.kind == "gauge" else self._metrics.Counter
                metric = self._made[name] = kind(name, family.help, tag_keys=family.labels)
            for values, value in family.samples:
                tags = dict(zip(family.labels, values, strict=True))
                if family.kind == "gauge":
                    metric.set(value, tags=tags)
                    continue
                delta = value - self._last.get((name, values), 0.0)
                if delta > 0:
                    metric.inc(delta, tags=tags)
                self._last[(name, values)] = value
