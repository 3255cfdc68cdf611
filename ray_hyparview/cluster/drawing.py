"""A picture of an overlay: nodes on a circle, active links as lines, dead nodes crossed out.

Needs matplotlib (the ``plot`` extra); imported lazily so that the agent never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

__all__ = ["draw_overlay"]


def draw_overlay(
    path: str,
    nodes: Sequence[str],
    edges: Sequence[tuple[str, str]],
    *,
    dead: Collection[str] = (),
    title: str = "overlay",
) -> str:
    """Write a PNG to ``path`` and return the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("drawing needs matplotlib: pip install 'ray-hyparview[plot]'") from exc
    count = max(1, len(nodes))
    where = {
        node: (math.cos(2 * math.pi * i / count), math.sin(2 * math.pi * i / count))
        for i, node in enumerate(nodes)
    }
    fig, ax = plt.subplots(figsize=(7, 7))
    for a, b in edges:
        if a in where and b in where:
            (x1, y1), (x2, y2) = where[a], where[b]
            ax.plot([x1, x2], [y1, y2], color="#4477aa", linewidth=1.5, zorder=1)
    for node, (x, y) in where.items():
        is_dead = node in dead
        ax.scatter(
            [x],
            [y],
            s=380,
            zorder=2,
            color="#dddddd" if is_dead else "#66ccee",
            edgecolors="#cc3311" if is_dead else "#222222",
            marker="X" if is_dead else "o",
        )
        label = node[:8] + (" (dead)" if is_dead else "")
        ax.annotate(
            label, (x, y), xytext=(0, 14), textcoords="offset points", ha="center", fontsize=8
        )
    live = len(nodes) - len([n for n in nodes if n in dead])
    ax.set_title(f"{title}: {live} live nodes, {len(edges)} active links")
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
