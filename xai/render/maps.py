"""How attribution maps are drawn: one set of visual rules for every method and figure.

* **2-D map.** A method's ``[C, H, W]`` attributions become one ``[H, W]`` map by its kind
  (:data:`xai.attribution.KINDS`): signed methods are summed over channels, sensitivities (gradients)
  take ``max |.|`` over channels, non-negative methods are summed. :func:`aggregate` offers sum,
  ``max |.|`` and L2 to show the choice side by side.
* **Clipping rule (the only one).** A map is scaled by the 99th percentile of its absolute values,
  per image: signed maps span ``[-p99, +p99]``, non-negative maps ``[0, p99]``; the top 1 % saturate.
  A single hot pixel (common in gradients) would otherwise turn the rest of the map black.
* **Colours.** Signed maps use a diverging colormap centred at zero (``RdBu_r``: red for the target,
  blue against, white for zero); non-negative maps a sequential one (``inferno``).
* **Overlays** put the colours over a grey copy of the photo, opaque where the map is strong.
* **Smoothing** is optional and always labelled: :func:`draw` appends the smoothing to the title.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..errors import XaiError  # noqa: E402

CLIP_PERCENTILE = 99.0
DIVERGING = "RdBu_r"
SEQUENTIAL = "inferno"
AGGREGATIONS = ("sum", "max_abs", "l2")
_KIND_AGGREGATION = {"signed": "sum", "sensitivity": "max_abs", "positive": "sum"}


def aggregate(attr: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """Collapse the channel axis of ``[C, H, W]`` or ``[B, C, H, W]``: ``sum`` (signed), ``max_abs`` or ``l2``."""
    if attr.dim() not in (3, 4):
        raise XaiError(f"expected attributions [C, H, W] or [B, C, H, W], got {tuple(attr.shape)}")
    ch = attr.dim() - 3
    if how == "sum":
        return attr.sum(ch)
    if how == "max_abs":
        return attr.abs().amax(ch)
    if how == "l2":
        return attr.pow(2).sum(ch).sqrt()
    raise XaiError(f"unknown channel aggregation {how!r}; choose from {', '.join(AGGREGATIONS)}")


def saliency_map(attr: torch.Tensor, kind: str) -> torch.Tensor:
    """The 2-D map of a method of ``kind`` (see the module docstring); used by figures and metrics alike."""
    if kind not in _KIND_AGGREGATION:
        raise XaiError(f"unknown method kind {kind!r}; choose from {', '.join(_KIND_AGGREGATION)}")
    return aggregate(attr, _KIND_AGGREGATION[kind])


def is_signed(kind: str) -> bool:
    """Whether a method's 2-D map is drawn with the diverging colormap."""
    return kind == "signed"


def _np(m) -> np.ndarray:
    a = m.detach().float().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=np.float32)
    if a.ndim != 2:
        raise XaiError(f"expected a 2-D map [H, W], got shape {a.shape}")
    return a


def clip_limit(m, signed: bool) -> float:
    """The colour scale's end: the 99th percentile of |m| (signed) or of m (non-negative)."""
    a = _np(m)
    vals = np.abs(a) if signed else np.clip(a, 0, None)
    lim = float(np.percentile(vals, CLIP_PERCENTILE))
    if lim <= 0:  # a sparse map whose top 1 % holds everything: fall back to its maximum
        lim = float(vals.max())
    return lim if lim > 0 else 1.0


def normalise(m, signed: bool) -> np.ndarray:
    """``m`` scaled by :func:`clip_limit` and clipped: to [-1, 1] if signed, else to [0, 1]."""
    a = _np(m)
    lim = clip_limit(a, signed)
    return np.clip(a / lim, -1.0 if signed else 0.0, 1.0)


def colorize(m, signed: bool) -> np.ndarray:
    """RGB ``[H, W, 3]`` in [0, 1] by the clipping rule and the colormap for the sign."""
    import matplotlib.pyplot as plt

    n = normalise(m, signed)
    if signed:
        return plt.get_cmap(DIVERGING)((n + 1) / 2)[..., :3]
    return plt.get_cmap(SEQUENTIAL)(n)[..., :3]


def grey(image: torch.Tensor) -> np.ndarray:
    """A ``[C, H, W]`` image in [0, 1] as a grey ``[H, W]`` array."""
    a = image.detach().float().cpu().clamp(0, 1).numpy()
    if a.shape[0] == 3:
        return 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]
    return a[0]


def overlay(image: torch.Tensor, m, signed: bool, alpha: float = 0.8) -> np.ndarray:
    """The map's colours over a dimmed grey photo, with opacity growing with |normalised value|."""
    n = normalise(m, signed)
    colours = colorize(m, signed)
    base = (0.25 + 0.5 * grey(image))[..., None].repeat(3, -1)
    weight = (alpha * np.abs(n))[..., None]
    return np.clip(base * (1 - weight) + colours * weight, 0, 1)


def smooth(m, sigma: float) -> np.ndarray:
    """A 2-D map blurred with a Gaussian of ``sigma`` px: a display choice, so label it (see :func:`draw`)."""
    from ..attribution.gradient import gaussian_blur

    t = torch.as_tensor(_np(m))[None, None]
    return gaussian_blur(t, sigma)[0, 0].numpy()


def smoothing_label(sigma: float | None) -> str:
    return f"smoothed, σ = {sigma:g} px" if sigma else ""


def draw(ax, m, *, signed: bool, image: torch.Tensor | None = None, title: str = "",
         smooth_sigma: float | None = None, fontsize: float = 8) -> None:
    """One panel: the map (over ``image`` if given), titled; smoothing, if any, is named in the title."""
    a = smooth(m, smooth_sigma) if smooth_sigma else _np(m)
    ax.imshow(overlay(image, a, signed) if image is not None else colorize(a, signed), interpolation="nearest")
    label = smoothing_label(smooth_sigma)
    if title or label:
        ax.set_title("\n".join(s for s in (title, f"({label})" if label else "") if s), fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])


def show_image(ax, image: torch.Tensor, title: str = "", fontsize: float = 8) -> None:
    from .figures import to_hwc

    a = to_hwc(image)
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])


def blank(ax, text: str, fontsize: float = 7) -> None:
    """A panel for a method that is not applicable to a model, with the reason."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=fontsize, wrap=True, color="0.35",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_color("0.85")


def colour_legend(fig, signed: bool, label: str = "", rect=(0.92, 0.3, 0.012, 0.4)) -> None:
    """A colour bar that states the clipping rule rather than numbers (each map has its own scale)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    cax = fig.add_axes(list(rect))
    norm = Normalize(-1, 1) if signed else Normalize(0, 1)
    cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=DIVERGING if signed else SEQUENTIAL), cax=cax)
    ticks = [-1, 0, 1] if signed else [0, 1]
    cb.set_ticks(ticks)
    cb.set_ticklabels(["−p99", "0", "+p99"] if signed else ["0", "p99"])
    cb.ax.tick_params(labelsize=7)
    if label:
        cb.set_label(label, fontsize=7)
