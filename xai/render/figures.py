"""Matplotlib figures and image encodings shared by the studies. Headless (Agg) always."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def to_hwc(img: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> ``[H, W, C]`` (or ``[H, W]`` for one channel) uint8-ready floats."""
    a = img.detach().float().cpu().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def thumbnail_webp(img: torch.Tensor, max_side: int = 320, quality: int = 85) -> bytes:
    from PIL import Image

    a = (to_hwc(img) * 255).round().astype(np.uint8)
    im = Image.fromarray(a)
    im.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="WEBP", quality=quality, method=6)
    return buf.getvalue()


def fmnist_samples(x: torch.Tensor, y: torch.Tensor, classes: list[str], per_class: int = 8):
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.8, len(classes) * 0.85))
    for c, name in enumerate(classes):
        idx = (y == c).nonzero().flatten()[:per_class]
        for j, i in enumerate(idx):
            ax = axes[c, j]
            ax.imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig
