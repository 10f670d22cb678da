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


def optimizer_curves(rows: list[dict], model: str):
    """The objective over the steps, mean over the classes, one line per (optimizer, lr) and validity
    rule (solid: clipped, dashed: sigmoid), for the feature-visualization chapter's optimizer figure."""
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys((r["optimizer"], r["lr"]) for r in rows))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for r in rows:
        k = runs.index((r["optimizer"], r["lr"]))
        ax.plot(range(len(r["history_mean"])), r["history_mean"], color=colours(k % 10),
                ls="-" if r["valid"] == "clip" else "--", lw=1.2, label=f"{r['optimizer']} (lr {r['lr']:g}), {r['valid']}")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("class logit (mean over classes)", fontsize=8)
    ax.set_title(f"{model}: raw pixels, no transforms, constant learning rate", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def tcav_grid(result: dict):
    """TCAV scores of every concept (rows, grouped by kind) for every class (columns), one panel per
    layer: colour the mean score over runs, a dot where the test passed, a ring on circular concepts."""
    import matplotlib.pyplot as plt

    concepts = [c["name"] for c in result["concepts"]]
    classes = result["classes"]
    layers = result["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(1.2 + 0.55 * len(classes) * len(layers) + 0.6 * len(layers),
                                                      0.24 * len(concepts) + 1.6), squeeze=False)
    im = None
    for ax, layer in zip(axes[0], layers):
        grid = np.array([[result["tests"][c["photo"]][layer][k]["mean"] for c in classes] for k in concepts])
        im = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, aspect="auto")
        for i, k in enumerate(concepts):
            for j, c in enumerate(classes):
                t = result["tests"][c["photo"]][layer][k]
                if t["significant"]:
                    ax.plot(j, i, "o", ms=3.2, color="black")
                if k in c["circular"]:
                    ax.plot(j, i, "o", ms=7, mfc="none", mec="0.35", mew=0.8)
        ax.set_xticks(range(len(classes)), [c["name"] for c in classes], rotation=40, ha="right", fontsize=6.5)
        ax.set_yticks(range(len(concepts)), concepts if ax is axes[0][0] else [""] * len(concepts), fontsize=6.5)
        ax.set_title(layer, fontsize=8)
    cbar = fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, pad=0.02)
    cbar.set_label("TCAV score (mean over runs)", fontsize=7)
    cbar.ax.tick_params(labelsize=6)
    fig.suptitle(f"{result['model']}: dots pass the corrected test; rings mark concepts cut from the class's own photo",
                 fontsize=8)
    return fig


def concept_examples(sets: dict, kinds: dict):
    """Three images of every concept set, in rows of concepts grouped by kind."""
    import matplotlib.pyplot as plt

    names = list(sets)
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 0.85), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        strip = torch.cat([im for im in sets[name]], dim=-1)
        ax.imshow(to_hwc(strip))
        ax.set_title(f"{name} ({kinds[name]})", fontsize=6.5, pad=2)
    fig.subplots_adjust(wspace=0.05, hspace=0.35, left=0.01, right=0.99, top=0.95, bottom=0.01)
    return fig
