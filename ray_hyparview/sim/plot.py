"""Pictures of simulator results (needs the ``plot`` extra: ``pip install 'ray-hyparview[plot]'``).

matplotlib is imported only when a picture is drawn, with the Agg backend (no display needed),
and through :class:`matplotlib.figure.Figure` rather than ``pyplot`` so that no global figure
state is left behind in the caller's process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PlotUnavailable", "plot_run", "plot_sweep"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _figure(width: float, height: float) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(
            "drawing plots needs matplotlib: pip install 'ray-hyparview[plot]'"
        ) from exc
    return Figure(figsize=(width, height), layout="constrained")


def _curve(result: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    """Cycle 0 is the first broadcast right after the crash, then one point per cycle."""
    values = [float(result["first_reliability"]), *map(float, result["reliability_by_cycle"])]
    return list(range(len(values))), [100.0 * v for v in values]


def plot_run(result: Mapping[str, Any], path: str | Path) -> Path:
    """Two panels: reliability by cycle after the crash, and active in-degree before/after."""
    fig = _figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    xs, ys = _curve(result)
    nodes = result["nodes"]
    fail = result["failed_fraction"]
    left.plot(xs, ys, marker="o", label="HyParView")
    baseline = result.get("baseline", {}).get("reliability_after_crash", {}).get(f"{fail:g}")
    if baseline is not None:
        left.axhline(
            100.0 * baseline, linestyle="--", color="grey", label="random 5-regular, no repair"
        )
    left.set_xlabel("membership cycles after the crash")
    left.set_ylabel("broadcast reliability (% of live nodes)")
    left.set_title(f"{nodes:,} nodes, {100 * fail:g}% crashed at once")
    left.set_xticks(xs)
    left.set_ylim(min(50.0, *ys) - 2, 101)
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    _histogram(right, result["before_crash"]["in_degree"], "before the crash", -0.2)
    _histogram(right, result["in_degree"], "after healing", 0.2)
    degrees = {int(k) for k in result["before_crash"]["in_degree"]} | {
        int(k) for k in result["in_degree"]
    }
    right.set_xticks(sorted(degrees))
    right.set_xlabel("active in-degree")
    right.set_ylabel("nodes")
    right.set_title("active view in-degree")
    right.legend()
    return _save(fig, path)


def _histogram(ax: Any, histogram: Mapping[str, int], label: str, shift: float) -> None:
    degrees = sorted(int(k) for k in histogram)
    ax.bar([d + shift for d in degrees], [histogram[str(d)] for d in degrees], 0.4, label=label)


def plot_sweep(result: Mapping[str, Any], path: str | Path) -> Path:
    """Reliability by cycle after the crash, one curve per failure level."""
    fig = _figure(8.0, 5.0)
    ax = fig.subplots()
    levels: Sequence[Mapping[str, Any]] = result["levels"]
    cmap = _colormap(len(levels))
    top = 0
    for index, level in enumerate(levels):
        xs, ys = _curve(level)
        top = max(top, xs[-1])
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=3,
            color=cmap[index],
            label=f"{100 * level['failed_fraction']:g}% crashed",
        )
    ax.set_xlabel("membership cycles after the crash (0 = first broadcast, before any repair)")
    ax.set_ylabel("broadcast reliability (% of live nodes)")
    ax.set_title(f"HyParView healing after a simultaneous crash, {result['nodes']:,} nodes")
    ax.set_xticks(range(top + 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", ncols=2)
    return _save(fig, path)


def _colormap(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def _save(fig: Any, path: str | Path) -> Path:
    target = Path(path)
    fig.savefig(target, dpi=120)
    return target
