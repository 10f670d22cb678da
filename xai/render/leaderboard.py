"""The leaderboard's figure: each metric's agreement with the ground truth. (Its table of methods x ranks
is the book's, built from the study's JSON.)"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


GT_LABELS = {"relevance_mass": "relevance mass", "pointing_game": "pointing game"}


def agreement_figure(cases: Mapping[str, dict], truth: str = "relevance_mass"):
    """Kendall's τ of every metric's method ranking against the ground truth ``truth``, with its bootstrap
    interval, one row per metric (grouped by family) and one marker per case (set and class)."""
    import matplotlib.pyplot as plt

    first = next(iter(cases.values()))
    names = sorted(first["metrics"], key=lambda m: (first["metrics"][m]["family"], m))
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(names) + 1.4))
    ys = np.arange(len(names))
    width = 0.7 / max(len(cases), 1)
    colours = plt.get_cmap("tab10")
    for k, (cid, c) in enumerate(cases.items()):
        off = (k - (len(cases) - 1) / 2) * width
        for i, m in enumerate(names):
            a = c["agreement"][truth].get(m)
            if a is None or a["tau"] is None:
                continue
            lo = a["low"] if a["low"] is not None else a["tau"]
            hi = a["high"] if a["high"] is not None else a["tau"]
            ax.errorbar(a["tau"], i + off, xerr=[[a["tau"] - lo], [hi - a["tau"]]], fmt="o", ms=3.5, capsize=2,
                        lw=0.9, color=colours(k % 10), label=cid if i == 0 else None)
    ax.axvline(0, color="0.5", lw=0.8, ls="--")
    ax.set_yticks(ys, [f"{first['metrics'][m]['label']} ({first['metrics'][m]['family']})" for m in names],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(-1.05, 1.05)
    level = next(iter(first["agreement"][truth].values()))["level"]
    ax.set_xlabel(f"Kendall τ with the ranking by {GT_LABELS.get(truth, truth)} "
                  f"({level:.0%} bootstrap interval over images)", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=6, loc="lower right", title="marker", title_fontsize=6)
    fig.tight_layout()
    return fig
