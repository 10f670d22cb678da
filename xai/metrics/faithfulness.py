"""Faithfulness: deletion and insertion curves (Petsiuk et al. 2018), their baselines, and the IG completeness gap.

ROAD is in :mod:`.road`; the fidelity of attribution sums (faithfulness correlation, sensitivity-n,
infidelity) in :mod:`.fidelity`.

Deletion replaces pixels by a substrate in order of decreasing importance and records the target's
softmax probability: a faithful map makes it fall fast (low area under the curve). Insertion starts
from the substrate and puts pixels back in the same order: a faithful map makes it rise fast (high
area). A pixel is all channels at one position. Ties in a map (a CAM's flat zero region) are broken
in a seeded random order, never in raster order, which would favour the top rows.

The two substrates: ``zero`` (black) and ``blur`` (the image blurred with sigma = a tenth of its
shorter side). Petsiuk et al. delete to black and insert from blur; all four pairings are available.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attribution._common import OUTPUTS, Target, check_positive, prepare, select
from ..attribution.gradient import baseline as reference
from ..errors import XaiError
from ..layers import fast_model
from ._base import Batch, Metric, non_negative_int, one_of, param, pixel_maps, positive_int

SUBSTRATES = ("zero", "blur")
MODES = ("deletion", "insertion")


def substrate(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "zero":
        return reference(x, "black")
    if kind == "blur":
        return reference(x, "blur")
    raise XaiError(f"unknown substrate {kind!r}; choose from {', '.join(SUBSTRATES)}")


def pixel_order(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Pixel indices ``[B, H*W]`` from most to least important, ties in seeded random order."""
    if maps.dim() != 3:
        raise XaiError(f"expected 2-D maps [B, H, W], got {tuple(maps.shape)}")
    flat = maps.detach().flatten(1).float().cpu()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(flat.shape[1], generator=gen) for _ in range(flat.shape[0])])
    idx = torch.argsort(flat.gather(1, perm), dim=1, descending=True, stable=True)
    return perm.gather(1, idx)


@torch.no_grad()
def perturbation_curves(model, inputs: torch.Tensor, target: Target, maps: torch.Tensor, *,
                        mode: str = "deletion", substrate_kind: str = "zero", steps: int = 16,
                        output: str = "softmax", internal_batch_size: int = 32, seed: int = 0) -> torch.Tensor:
    """Score of the target after removing (deletion) or restoring (insertion) the top ``k/steps`` of the
    pixels, ``k = 0..steps``.

    ``maps`` is ``[B, H, W]`` (one map per image; result ``[B, steps + 1]``) or ``[R, B, H, W]`` (R maps
    per image, e.g. one per method; result ``[R, B, steps + 1]``). The two ends of every curve (the
    image and the substrate) do not depend on the map and are evaluated once; all other (map, image,
    step) triples are batched together, ``internal_batch_size`` per forward pass.
    """
    check_positive("steps", steps)
    check_positive("internal_batch_size", internal_batch_size)
    if mode not in MODES:
        raise XaiError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    module, x, t = prepare(model, inputs, target)
    b, c, h, w = x.shape
    single = maps.dim() == 3
    stack = maps[None] if single else maps
    if stack.dim() != 4 or tuple(stack.shape[1:]) != (b, h, w):
        raise XaiError(f"maps of shape {tuple(maps.shape)} do not match images of shape {tuple(x.shape)}")
    r = stack.shape[0]
    sub = substrate(x, substrate_kind)
    start, end = (x, sub) if mode == "deletion" else (sub, x)
    ranks = torch.empty(r, b, h * w, dtype=torch.long)
    for i in range(r):
        ranks[i].scatter_(1, pixel_order(stack[i], seed), torch.arange(h * w).expand(b, -1).contiguous())
    ranks = ranks.view(r, b, 1, h, w).to(x.device)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    scores = torch.empty(r, b, steps + 1)
    with fast_model(module, x) as fast:  # every pass below is forward-only
        ends = torch.cat([_scores(fast, start, t, output, internal_batch_size),
                          _scores(fast, end, t, output, internal_batch_size)]).view(2, b)
        scores[:, :, 0], scores[:, :, steps] = ends[0], ends[1]
        jobs = [(m, i, k) for m in range(r) for i in range(b) for k in range(1, steps)]
        for j in range(0, len(jobs), internal_batch_size):
            chunk = jobs[j:j + internal_batch_size]
            mm = torch.tensor([m for m, _, _ in chunk], device=x.device)
            ii = torch.tensor([i for _, i, _ in chunk], device=x.device)
            n = torch.tensor([counts[k] for _, _, k in chunk], device=x.device).view(-1, 1, 1, 1)
            top = ranks[mm, ii] < n  # the first n pixels of each map's order
            batch = torch.where(top, end[ii], start[ii])
            s = select(fast(batch), t[ii], output).float().cpu()
            for (m, i, k), v in zip(chunk, s):
                scores[m, i, k] = v
    return scores[0] if single else scores


def _scores(module, x: torch.Tensor, t: torch.Tensor, output: str, batch_size: int) -> torch.Tensor:
    return torch.cat([select(module(x[i:i + batch_size]), t[i:i + batch_size], output).float().cpu()
                      for i in range(0, len(x), batch_size)])


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under curves sampled at evenly spaced fractions of [0, 1] (trapezoid rule): ``[B]``."""
    n = curves.shape[-1] - 1
    if n < 1:
        raise XaiError("a curve needs at least two points")
    return (curves[..., 1:] + curves[..., :-1]).sum(-1) / (2 * n)


def random_map(shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """A baseline map of i.i.d. uniform noise ``[B, H, W]``: what any method must beat."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen)


def centre_map(shape: tuple[int, int, int], sigma: float = 0.25) -> torch.Tensor:
    """A centred Gaussian ``[B, H, W]`` (sigma as a fraction of the side): photographers centre objects,
    so this image-blind map is a strong baseline on photos."""
    b, h, w = shape
    yy = (torch.arange(h) - (h - 1) / 2) / (sigma * h)
    xx = (torch.arange(w) - (w - 1) / 2) / (sigma * w)
    g = torch.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2))
    return g.expand(b, h, w).clone()


@torch.no_grad()
def completeness_gap(model, inputs: torch.Tensor, target: Target, attributions: torch.Tensor,
                     baselines: torch.Tensor, *, output: str = "logit") -> torch.Tensor:
    """``|sum(a) - (f(x) - f(x'))| / |f(x) - f(x')|`` per image: how far attributions are from adding
    up to the score difference they explain (zero for exact Integrated Gradients)."""
    module, x, t = prepare(model, inputs, target)
    fx = select(module(x), t, output)
    fb = select(module(baselines.to(x.device, x.dtype)), t, output)
    diff = (fx - fb).double().cpu()
    total = attributions.detach().flatten(1).sum(1).double().cpu()
    gap = (total - diff).abs() / diff.abs().clamp_min(1e-12)
    return torch.where(diff.abs() > 1e-12, gap, torch.full_like(gap, math.nan)).float()


class _Perturbation(Metric):
    """Deletion or insertion as a metric: the area under the curve of :func:`perturbation_curves`, with
    the map as given (multi-channel attributions summed over channels, see :func:`._base.pixel_maps`)."""

    family = "faithfulness"
    cite = "petsiuk2018rise"
    mode: str

    @dataclass(frozen=True)
    class Params:
        substrate: str = param("zero", one_of(*SUBSTRATES))
        steps: int = param(16, positive_int)
        output: str = param("softmax", one_of(*OUTPUTS))
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)  # the order of tied pixels

    def evaluate_curve(self, batch: Batch) -> torch.Tensor:
        p = self.params
        return perturbation_curves(batch.module, batch.x, batch.t, pixel_maps(batch.attributions), mode=self.mode,
                                   substrate_kind=p.substrate, steps=p.steps, output=p.output,
                                   internal_batch_size=p.internal_batch_size, seed=p.seed)

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return auc(self.evaluate_curve(batch))


class Deletion(_Perturbation):
    name = "deletion"
    label = "Deletion (AUC)"
    higher_is_better = False
    mode = "deletion"


class Insertion(_Perturbation):
    name = "insertion"
    label = "Insertion (AUC)"
    higher_is_better = True
    mode = "insertion"


METRICS = (Deletion, Insertion)
