"""Network dissection (Bau et al. 2017) on a concept whose every pixel is known: a Clever Hans marker.

For each unit ``k`` of a layer: its threshold ``T_k`` is the top quantile (0.995 in the paper) of its
activations over every position of every image; its maps, upsampled bilinearly to the input, are
thresholded at ``T_k``; and its IoU with the concept is ``sum |M_k & L| / sum |M_k | L|`` over all the
images at once. A unit "detects" the concept when the IoU passes 0.04, the paper's threshold.

Broden's segmentations are not available here; the marker region is, exactly, on every marked image.
Images without the concept (an empty label) can be mixed in: they count in the quantile and in the
union, as Broden's images without a concept do.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XaiError
from ..layers import layout_of, to_spatial
from .taps import layer_activations

QUANTILE = 0.995
IOU_THRESHOLD = 0.04


@dataclass
class Dissection:
    layer: str
    iou: torch.Tensor  # [C]
    thresholds: torch.Tensor  # [C]
    quantile: float
    iou_threshold: float

    @property
    def detectors(self) -> list[int]:
        """Units whose IoU passes the threshold, best first."""
        order = torch.argsort(self.iou, descending=True).tolist()
        return [c for c in order if float(self.iou[c]) > self.iou_threshold]

    def top(self, n: int = 5) -> list[tuple[int, float]]:
        order = torch.argsort(self.iou, descending=True)[:n].tolist()
        return [(c, float(self.iou[c])) for c in order]

    def to_json(self, top: int = 5) -> dict:
        return {"layer": self.layer, "units": int(self.iou.numel()), "quantile": self.quantile,
                "iou_threshold": self.iou_threshold, "detectors": self.detectors,
                "top": [{"unit": c, "iou": round(v, 6)} for c, v in self.top(top)],
                "iou": [round(float(v), 6) for v in self.iou]}


def top_quantile(acts: torch.Tensor, q: float) -> torch.Tensor:
    """``[C]``: per channel of ``[N, C, h, w]``, the ``ceil(q n)``-th smallest of its ``n = N h w`` values,
    so at most ``(1 - q) n`` values lie above it."""
    flat = acts.transpose(0, 1).reshape(acts.shape[1], -1)
    k = min(flat.shape[1], max(1, math.ceil(q * flat.shape[1])))
    return flat.kthvalue(k, dim=1).values


def iou(acts: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor, *, batch: int = 64) -> torch.Tensor:
    """``[C]``: the IoU of each channel's upsampled, thresholded maps (``acts`` ``[N, C, h, w]``) with
    ``labels`` (``[N, H, W]`` or one ``[H, W]`` mask for every image), summed over the images."""
    n, c = acts.shape[:2]
    if labels.dim() == 2:
        labels = labels.expand(n, -1, -1)
    if labels.shape[0] != n:
        raise XaiError(f"{labels.shape[0]} label masks for {n} images")
    size = tuple(labels.shape[1:])
    inter = torch.zeros(c, dtype=torch.float64)
    union = torch.zeros(c, dtype=torch.float64)
    for s in range(0, n, batch):
        a = acts[s:s + batch].float()
        up = a if tuple(a.shape[2:]) == size else F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        m = up > thresholds.view(1, -1, 1, 1)
        lab = labels[s:s + batch, None].bool()
        inter += (m & lab).sum((0, 2, 3)).double()
        union += (m | lab).sum((0, 2, 3)).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union)).float()


def dissect(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layers: Sequence[str], *,
            quantile: float = QUANTILE, iou_threshold: float = IOU_THRESHOLD, batch: int = 64) -> dict[str, Dissection]:
    """Dissect every unit of each of ``layers`` against the concept masks ``labels`` (``[H, W]`` for
    every image, or ``[N, H, W]``), over ``images``."""
    if not 0 < quantile < 1:
        raise XaiError(f"the quantile must lie in (0, 1), got {quantile}")
    if labels.shape[-2:] != images.shape[-2:]:
        raise XaiError(f"label masks of {tuple(labels.shape[-2:])} for images of {tuple(images.shape[-2:])}")
    out = {}
    for layer in layers:
        acts = layer_activations(model, images, layer, batch=batch)
        if acts.dim() == 2:
            raise XaiError(f"layer {layer} has no spatial map to dissect")
        acts = to_spatial(acts, layout_of(model, layer, images.shape[1:]), layer)
        t = top_quantile(acts, quantile)
        out[layer] = Dissection(layer, iou(acts, labels, t, batch=batch), t, quantile, iou_threshold)
    return out
