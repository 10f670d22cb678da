"""Score-CAM's passes: how many are skipped exactly, and what its named approximations trade.

Score-CAM makes one masked forward pass per channel and image. Exact skips (:class:`ScoreCAM`): a
channel whose upsampled map is constant gets weight 0 without a pass, and channels whose masks agree
to float rounding share one pass. This section counts both on the bench's images and layer, checks the
shared map against the map of every pass (rule 3 of tests/tolerance.py), and times each approximation
(fewer channels, smaller masks) once, with its agreement with the exact map (Spearman rank correlation
per image, the measure the anchors get).
"""
from __future__ import annotations

import time

import torch

from ..attribution import attribute
from ..attribution.cam import ScoreCAM, layer_activations
from .measure import agreement, sync


def _timed(fn) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def approximations(module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, options: dict, exact: torch.Tensor,
                   exact_seconds: float) -> dict:
    """Pass counts and approximations for ``score_cam(module, x, t, **options)``, whose map (``exact``) and
    median time (``exact_seconds``) the timed comparison already has."""
    layer = options["layer"]
    acts, _ = layer_activations(module, x, t, layer, gradients=False, method="score_cam")
    c = acts.shape[1]
    size = tuple(x.shape[-2:])
    constant = shared = 0
    for a in acts:
        keep, _, masks = ScoreCAM.plan(a, size)
        constant += c - len(keep)
        shared += len(keep) - len(masks)
    passes = c * len(x)

    def run(**extra) -> tuple[torch.Tensor, float]:
        def call():
            out = attribute("score_cam", module, x, t, **{**options, **extra})
            sync(x.device)
            return out
        return _timed(call)

    every, every_s = run(share_masks=False)
    rows = []
    for extra in ({"max_channels": max(1, c // 2)}, {"max_channels": max(1, c // 4)},
                  {"mask_size": max(1, size[0] // 2)}, {"mask_size": max(1, size[0] // 4)}):
        out, seconds = run(**extra)
        ag = agreement(out, exact)
        rows.append({"options": extra, "seconds": seconds, "speedup": exact_seconds / seconds,
                     "spearman_mean": ag["spearman_mean"], "spearman_min": ag["spearman_min"],
                     "rel_max_abs_diff": ag["rel_max_abs_diff"]})
    return {
        "channels": c, "images": len(x), "passes": passes,
        "same_mask": ScoreCAM.SAME_MASK, "constant": constant, "shared": shared, "made": passes - constant - shared,
        "skipped_fraction": (constant + shared) / passes,
        "every_pass": {"seconds": every_s, "agreement": agreement(exact, every)},
        "approximations": rows,
    }
