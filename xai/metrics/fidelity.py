"""Fidelity of attribution sums: does the attribution of a set of pixels predict what removing them does?

A map is read as a linear model of the score: removing a set ``S`` of pixels should change the score
by the map's sum over ``S``. Three tests of that reading, all per image, all on random perturbations
drawn from the metric's ``seed`` (on the CPU, per image in batch order, so the scores depend neither on
the device nor on ``internal_batch_size``, the images per model pass):

* **Faithfulness correlation** (Bhatt et al. 2020): Pearson's correlation, over ``samples`` random
  subsets of a fixed size (``subset_fraction`` of the pixels), between the map's sum over the subset
  and the score drop when the subset is replaced by the substrate. Higher is better.
* **Sensitivity-n** (Ancona et al. 2018): the same correlation at several subset sizes ``n``
  (``fractions`` of the pixels); :meth:`SensitivityN.curve` gives one value per size, the score is
  their mean. Ancona et al. show that no method reaches 1 at every ``n`` on a non-linear model; a
  linear model's exact attributions (gradient x input) reach 1 at all ``n``.
* **Infidelity** (Yeh et al. 2019): ``E_I[(I . a - (f(x) - f(x - I)))^2]`` over Gaussian perturbations
  ``I`` of every element (standard deviation ``noise``), after scaling the attributions by the factor
  that minimises it (``normalize``, as Yeh et al. report it; captum's ``infidelity(normalize=True)``).
  Lower is better; 0 for gradient x input on a linear model.

Pixels are all channels at one position, as in deletion; a subset's attribution is the sum of the map
(:func:`._base.pixel_maps`) over it. Scores are the target's logit by default (``output``), the scale
on which a sum of attributions can be linear. Undefined (NaN) correlations: a constant map, or a
model whose score never moves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attribution._common import OUTPUTS, select
from ..errors import XaiError
from ..layers import fast_model
from ._base import (Batch, Metric, flag, fraction, fraction_tuple, full_attributions, generator, non_negative_int,
                    one_of, param, pearson, pixel_maps, positive, positive_int)
from .faithfulness import SUBSTRATES, substrate


def random_subsets(b: int, pixels: int, size: int, samples: int, gen: torch.Generator) -> torch.Tensor:
    """``[B, samples, pixels]`` boolean masks, each a uniformly random subset of ``size`` pixels."""
    if not 0 < size < pixels:
        raise XaiError(f"a subset of {size} pixels does not fit an image of {pixels} (0 < size < pixels)")
    masks = torch.zeros(b, samples, pixels, dtype=torch.bool)
    for i in range(b):
        keys = torch.rand(samples, pixels, generator=gen)
        masks[i].scatter_(1, keys.topk(size, dim=1).indices, True)
    return masks


@torch.no_grad()
def subset_drops(batch: Batch, masks: torch.Tensor, substrate_kind: str, output: str,
                 internal_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For masks ``[B, S, H*W]``: the map's sum over each subset and the score drop when the subset is
    replaced by the substrate, both ``[B, S]`` float64."""
    x, t = batch.x, batch.t
    b, c, h, w = x.shape
    s = masks.shape[1]
    maps = pixel_maps(batch.attributions).double().flatten(1).cpu()
    sums = (maps[:, None, :] * masks).sum(-1)
    sub = substrate(x, substrate_kind)
    drops = torch.empty(b * s, dtype=torch.float64)
    flat = masks.view(b * s, 1, h, w)
    with fast_model(batch.module, x) as fast:
        full = select(fast(x), t, output).double().cpu()
        for j in range(0, b * s, internal_batch_size):
            idx = torch.arange(j, min(j + internal_batch_size, b * s))
            img = idx // s
            m = flat[idx].to(x.device)
            dev = img.to(x.device)
            perturbed = torch.where(m, sub[dev], x[dev])
            drops[idx] = full[img] - select(fast(perturbed), t[dev], output).double().cpu()
    return sums, drops.view(b, s)


class _SubsetCorrelation(Metric):
    family = "faithfulness"
    higher_is_better = True
    stochastic = True

    def correlations(self, batch: Batch, sizes: list[int]) -> torch.Tensor:
        """``[B, len(sizes)]``: the correlation at each subset size."""
        p = self.params
        b, _, h, w = batch.x.shape
        gen = generator(p.seed)
        out = []
        for size in sizes:
            masks = random_subsets(b, h * w, size, p.samples, gen)
            sums, drops = subset_drops(batch, masks, p.substrate, p.output, p.internal_batch_size)
            out.append(pearson(sums, drops))
        return torch.stack(out, 1)


class FaithfulnessCorrelation(_SubsetCorrelation):
    name = "faithfulness_correlation"
    label = "Faithfulness correlation"
    cite = "bhatt2020evaluating"

    @dataclass(frozen=True)
    class Params:
        subset_fraction: float = param(0.1, fraction)
        samples: int = param(64, positive_int)
        substrate: str = param("zero", one_of(*SUBSTRATES))
        output: str = param("logit", one_of(*OUTPUTS))
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        h, w = batch.x.shape[-2:]
        return self.correlations(batch, [max(1, round(self.params.subset_fraction * h * w))])[:, 0]


class SensitivityN(_SubsetCorrelation):
    name = "sensitivity_n"
    label = "Sensitivity-n"
    cite = "ancona2018towards"

    @dataclass(frozen=True)
    class Params:
        fractions: tuple[float, ...] = param((0.01, 0.05, 0.1, 0.25, 0.5, 0.8), fraction_tuple)
        samples: int = param(32, positive_int)
        substrate: str = param("zero", one_of(*SUBSTRATES))
        output: str = param("logit", one_of(*OUTPUTS))
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)

    def sizes(self, pixels: int) -> list[int]:
        return [max(1, round(f * pixels)) for f in self.params.fractions]

    def evaluate_curve(self, batch: Batch) -> torch.Tensor:
        """``[B, len(fractions)]``: the correlation at each subset size."""
        h, w = batch.x.shape[-2:]
        return self.correlations(batch, self.sizes(h * w))

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return self.evaluate_curve(batch).mean(1)


def gaussian_perturbations(shape: tuple[int, ...], samples: int, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """``[B, samples, C, H, W]`` Gaussian perturbations, drawn per image in batch order."""
    b, rest = shape[0], tuple(shape[1:])
    return torch.stack([torch.randn((samples, *rest), generator=gen) * sigma for _ in range(b)])


class Infidelity(Metric):
    name = "infidelity"
    label = "Infidelity"
    family = "faithfulness"
    cite = "yeh2019fidelity"
    higher_is_better = False
    stochastic = True

    @dataclass(frozen=True)
    class Params:
        samples: int = param(32, positive_int)
        noise: float = param(0.1, positive)  # standard deviation of I, in [0, 1] image units
        normalize: bool = param(True, flag)
        output: str = param("logit", one_of(*OUTPUTS))
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)

    @torch.no_grad()
    def terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(I . a, f(x) - f(x - I))``, both ``[B, samples]`` float64."""
        p = self.params
        x, t = batch.x, batch.t
        b, s = x.shape[0], p.samples
        noise = gaussian_perturbations(tuple(x.shape), s, p.noise, generator(p.seed))
        a = full_attributions(batch.attributions, x).double().cpu()
        dots = (noise.double() * a[:, None]).flatten(2).sum(-1)
        drops = torch.empty(b * s, dtype=torch.float64)
        flat = noise.view(b * s, *x.shape[1:])
        with fast_model(batch.module, x) as fast:
            full = select(fast(x), t, p.output).double().cpu()
            for j in range(0, b * s, p.internal_batch_size):
                idx = torch.arange(j, min(j + p.internal_batch_size, b * s))
                img = idx // s
                dev = img.to(x.device)
                perturbed = x[dev] - flat[idx].to(x.device, x.dtype)
                drops[idx] = full[img] - select(fast(perturbed), t[dev], p.output).double().cpu()
        return dots, drops.view(b, s)

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        dots, drops = self.terms(batch)
        if self.params.normalize:
            # The scale minimising the squared error; an all-zero map has none to choose (its dots are 0).
            den = dots.square().mean(1, keepdim=True)
            beta = torch.where(den > 0, (dots * drops).mean(1, keepdim=True) / den.clamp_min(1e-300),
                               torch.zeros_like(den))
            dots = beta * dots
        return (dots - drops).square().mean(1)


METRICS = (FaithfulnessCorrelation, SensitivityN, Infidelity)
