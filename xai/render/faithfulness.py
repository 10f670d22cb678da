"""The faithfulness chapter's figures that are not maps: how many Integrated Gradients steps each photo
needed to reach a completeness target."""
from __future__ import annotations

import numpy as np


def auto_steps_figure(auto: dict):
    """One bar per photo: the steps ``steps="auto"`` used (log scale), the gap reached written on it,
    hatched where the step budget ran out first."""
    import matplotlib.pyplot as plt

    ids, steps, gaps, reached = auto["images"], auto["steps"], auto["gap"], auto["reached"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(ids) + 1.6), 3.0))
    xs = np.arange(len(ids))
    bars = ax.bar(xs, steps, color=["#4c72b0" if r else "#dd8452" for r in reached], edgecolor="white")
    for bar, g, r in zip(bars, gaps, reached):
        if not r:
            bar.set_hatch("//")
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() * 1.08, "–" if g is None else f"{g:.1%}",
                ha="center", va="bottom", fontsize=7)
    ax.axhline(auto["max_steps"], color="0.4", lw=0.8, ls="--")
    ax.text(len(ids) - 0.5, auto["max_steps"] * 1.05, f"budget {auto['max_steps']}", ha="right", va="bottom",
            fontsize=7, color="0.3")
    ax.set_yscale("log", base=2)
    ax.set_ylim(max(1, auto["start_steps"] / 2), auto["max_steps"] * 2.5)
    ax.set_xticks(xs, ids, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("Gauss-Legendre steps used", fontsize=8)
    ax.set_title(f"{auto['model']}: steps to a completeness gap ≤ {auto['target']:.0%} ({auto['baseline']} baseline); "
                 "gap reached above each bar", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig
