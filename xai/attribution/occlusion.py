"""Occlusion (Zeiler & Fergus 2014), computed by captum's ``Occlusion`` with windows batched."""
from __future__ import annotations

import torch

from ..errors import XaiError
from ..layers import fast_model
from ._common import Target, check_positive, finish, prepare, scorer
from .gradient import baseline as make_baseline


def occlusion(model, inputs: torch.Tensor, target: Target, *, window: int | float | None = None,
              stride: int | float | None = None, fill: str = "black", output: str = "logit",
              internal_batch_size: int = 32) -> torch.Tensor:
    """Score drop when a square window is replaced by ``fill`` (black or blur), averaged over the windows
    that cover each pixel: positive where hiding the region lowers the target's score.

    ``window`` and ``stride`` are pixels (int) or fractions of the shorter side (float), so one setting
    fits every resolution. ``window`` defaults to a seventh of the shorter side and ``stride`` to half
    the window: 13 x 13 windows, each pixel covered by up to four. ``internal_batch_size`` bounds the occluded images per
    forward pass.
    """
    from captum.attr import Occlusion

    check_positive("internal_batch_size", internal_batch_size)
    module, x, t = prepare(model, inputs, target)
    c, h, w = x.shape[1:]
    window = _pixels(window, min(h, w)) or max(1, min(h, w) // 7)
    stride = _pixels(stride, min(h, w)) or max(1, window // 2)
    check_positive("window", window)
    check_positive("stride", stride)
    if window > min(h, w):
        raise XaiError(f"occlusion window {window} px is larger than the image ({h}x{w})")
    if fill not in ("black", "blur"):
        raise XaiError(f"unknown occlusion fill {fill!r}; choose black or blur")
    ref = make_baseline(x, fill)
    per_eval = max(1, internal_batch_size // x.shape[0])
    with fast_model(module, x) as fast:
        attr = Occlusion(scorer(fast, output)).attribute(
            x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride), baselines=ref,
            target=t, perturbations_per_eval=per_eval)
    return finish(attr, inputs)


def _pixels(size: int | float | None, side: int) -> int | None:
    if size is None or isinstance(size, int):
        return size
    if not 0 < size <= 1:
        raise XaiError(f"a fractional window or stride must be in (0, 1], got {size}")
    return max(1, round(size * side))
