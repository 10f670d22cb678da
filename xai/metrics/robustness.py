"""Robustness: how much an explanation changes when the input barely does.

Each metric explains ``samples`` perturbed copies of every image with the explanation function
``explain(model, inputs, targets)`` (:func:`xai.metrics.explainer`) and compares each explanation with
the one of the image itself (given as ``attributions``, or computed with ``explain``). The perturbed
copies of all images go through ``explain`` together, ``internal_batch_size`` per call. Perturbations
are drawn on the CPU from ``seed``, per sample and then per image, and are not clipped to [0, 1]
(clipping would make them depend on the pixel values and break the closed forms below).

* **Max-sensitivity** (Yeh et al. 2019): ``max_k ||a(x + d_k) - a(x)|| / ||a(x)||`` over uniform
  perturbations ``d_k`` in the L-infinity ball of radius ``radius``; Frobenius norms over all
  elements, relative to the explanation's own norm as Quantus and captum's ``sensitivity_max`` do.
  **Average sensitivity** is the mean instead of the maximum. For a linear model ``f = w . x`` the
  gradient is ``w`` everywhere (sensitivity 0), and gradient x input changes by ``w * d``, so its
  sensitivity is ``||w * d|| / ||w * x||``, at most ``radius ||w|| / ||w * x||``.
* **Local Lipschitz estimate** (Alvarez-Melis & Jaakkola 2018): ``max_k ||a(x + d_k) - a(x)|| / ||d_k||``
  over Gaussian perturbations of standard deviation ``noise`` (Quantus's sampling; the paper also
  optimises over the ball). For gradient x input on a linear model it is ``max_k ||w * d_k|| / ||d_k||``,
  at most ``max |w|``.

All are lower-is-better. The sensitivities are NaN where the image's own explanation is all zero (no
relative change is defined).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import XaiError
from ._base import Batch, Metric, explain_in_chunks, generator, non_negative_int, param, positive, positive_int


def uniform_ball(shape: tuple[int, ...], samples: int, radius: float, gen: torch.Generator) -> torch.Tensor:
    """``[samples, B, C, H, W]`` perturbations uniform in ``[-radius, radius]`` per element."""
    return (torch.rand((samples, *shape), generator=gen) * 2 - 1) * radius


def gaussian(shape: tuple[int, ...], samples: int, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """``[samples, B, C, H, W]`` Gaussian perturbations of standard deviation ``sigma``."""
    return torch.randn((samples, *shape), generator=gen) * sigma


class _Robustness(Metric):
    family = "robustness"
    higher_is_better = False
    stochastic = True
    requires = ("explain",)
    computes_attributions = True

    def perturbations(self, shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def changes(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||a(x + d_k) - a(x)||, ||d_k||)``, both ``[samples, B]`` float64."""
        x, t = batch.x, batch.t
        s, b = self.params.samples, x.shape[0]
        d = self.perturbations(tuple(x.shape))
        moved = (x[None] + d.to(x.device, x.dtype)).flatten(0, 1)
        explained = explain_in_chunks(batch.explain, batch.module, moved, t.repeat(s), self.params.internal_batch_size)
        a = batch.attributions
        if explained.shape[1:] != a.shape[1:]:
            raise XaiError(f"{self.name}: explain returned attributions of shape {tuple(explained.shape[1:])} "
                           f"per image, but the image's own are {tuple(a.shape[1:])}")
        diff = (explained.view(s, b, -1).double() - a.reshape(1, b, -1).double()).norm(dim=-1)
        return diff.cpu(), d.flatten(2).double().norm(dim=-1)

    def own_norm(self, batch: Batch) -> torch.Tensor:
        return batch.attributions.flatten(1).double().norm(dim=1).cpu()


def _relative(diff: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return torch.where(norm > 0, diff / norm.clamp_min(1e-300), torch.full_like(diff, math.nan))


class _Sensitivity(_Robustness):
    cite = "yeh2019fidelity"

    @dataclass(frozen=True)
    class Params:
        radius: float = param(0.02, positive)  # L-infinity radius, in [0, 1] image units (captum's default)
        samples: int = param(16, positive_int)
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)

    def perturbations(self, shape: tuple[int, ...]) -> torch.Tensor:
        return uniform_ball(shape, self.params.samples, self.params.radius, generator(self.params.seed))

    def sensitivities(self, batch: Batch) -> torch.Tensor:
        """``[samples, B]``: the relative change of each perturbed explanation."""
        diff, _ = self.changes(batch)
        return _relative(diff, self.own_norm(batch)[None])


class MaxSensitivity(_Sensitivity):
    name = "max_sensitivity"
    label = "Max-sensitivity"

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return self.sensitivities(batch).amax(0)


class AvgSensitivity(_Sensitivity):
    name = "avg_sensitivity"
    label = "Average sensitivity"

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return self.sensitivities(batch).mean(0)


class LocalLipschitz(_Robustness):
    name = "local_lipschitz"
    label = "Local Lipschitz estimate"
    cite = "alvarezmelis2018robustness"

    @dataclass(frozen=True)
    class Params:
        noise: float = param(0.1, positive)  # standard deviation, in [0, 1] image units (Quantus's default)
        samples: int = param(16, positive_int)
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)

    def perturbations(self, shape: tuple[int, ...]) -> torch.Tensor:
        return gaussian(shape, self.params.samples, self.params.noise, generator(self.params.seed))

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        diff, step = self.changes(batch)
        return (diff / step).amax(0)


METRICS = (MaxSensitivity, AvgSensitivity, LocalLipschitz)
