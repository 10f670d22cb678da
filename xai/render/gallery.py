"""Attribution galleries laid out for the page's width: pictures down, methods across.

One row per picture (a photo, or a model's view of it), its image first, then one panel per method,
wrapped after ``per_row`` methods so that a 16-method gallery is two lines of readable maps, not one
tall column of thumbnails. Each map is titled by its method and the display range it was scaled to
(:func:`xai.render.maps.clip_limit`: ``±v`` for a signed map, ``0..v`` for a non-negative one), so two
maps that look alike but differ by orders of magnitude say so.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import torch

from .. import attribution
from . import maps as R


def short_reason(refusal: dict | None) -> str:
    """A panel-sized version of why a method gave no map, from its refusal's fields (the full text is
    in the JSON)."""
    if refusal is None:
        return "failed"
    if refusal.get("activation"):
        return f"not applicable:\n{refusal['activation']} activations"
    if refusal.get("layer"):
        return f"not applicable\nat {refusal['layer']}"
    return "not applicable"


def display_range(data: np.ndarray, signed: bool) -> str:
    v = R.clip_limit(data, signed)
    return f"±{v:.2g}" if signed else f"0..{v:.2g}"


def gallery_figure(columns: list[tuple[str, torch.Tensor, str]], rows: list[str],
                   cells: dict[tuple[int, int], tuple[np.ndarray | None, dict | None]], panel: float = 1.45,
                   fontsize: float = 7, per_row: int = 8):
    """``rows``: method names; ``columns``: pictures as (title, image, subtitle); ``cells[(method index,
    picture index)] = (2-D map or None, refusal)``. Drawn with the pictures down and the methods across."""
    import matplotlib.pyplot as plt

    per_row = max(1, min(per_row, len(rows)))
    lines = math.ceil(len(rows) / per_row)  # lines of methods per picture
    n_rows, n_cols = len(columns) * lines, per_row + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, panel * 1.18 * n_rows), squeeze=False)
    for p, (title, img, sub) in enumerate(columns):
        for line in range(lines):
            r = p * lines + line
            if line == 0:
                R.show_image(axes[r, 0], img, "\n".join(s for s in (title, sub) if s), fontsize=fontsize)
            else:
                axes[r, 0].axis("off")
            for k in range(per_row):
                ax, i = axes[r, k + 1], line * per_row + k
                if i >= len(rows):
                    ax.axis("off")
                    continue
                m = attribution.get(rows[i])
                label = "\n".join(textwrap.wrap(m.label, 18)[:2])
                data, reason = cells[(i, p)]
                if data is None:
                    R.blank(ax, short_reason(reason), fontsize=fontsize - 1)
                    ax.set_title(label, fontsize=fontsize)
                else:
                    signed = R.is_signed(m.kind)
                    R.draw(ax, data, signed=signed, image=img, fontsize=fontsize,
                           title=f"{label}\n{display_range(data, signed)}")
    fig.subplots_adjust(wspace=0.05, hspace=0.42, left=0.01, right=0.99, top=0.97, bottom=0.01)
    return fig
