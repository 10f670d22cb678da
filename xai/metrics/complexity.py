"""Complexity: how concentrated an explanation is, whatever it explains.

A map that puts its mass on few pixels is easier to read; these two numbers say how few. Both use the
absolute attributions over every element (all channels, as Quantus does), so they are scale-free: a map
and any positive multiple of it score the same.

* **Sparseness** (Chalasani et al. 2020): the Gini index of ``|a|`` sorted ascending,
  ``sum_i (2i - n - 1) a_(i) / (n sum_i a_i)``. 0 for a constant map, ``(n - 1) / n`` (the most) for a
  map with one non-zero element. Higher is sparser.
* **Complexity** (Bhatt et al. 2020): the Shannon entropy of ``p = |a| / sum |a|`` in nats, ``0 log 0 = 0``.
  0 for one non-zero element, ``log n`` (the most) for a constant map. Lower is simpler.

An all-zero map has neither (no mass to distribute): its score is NaN. Quantus adds ``1e-7`` to every
element before the Gini index and ``1e-12`` inside the logarithm to avoid that case; we do not, so that
the closed forms above hold exactly (tests/test_metrics_quantus.py bounds the difference this makes).
"""
from __future__ import annotations

import math

import torch

from ._base import Batch, Metric


def _magnitudes(batch: Batch) -> torch.Tensor:
    return batch.attributions.flatten(1).abs().double()


def gini(a: torch.Tensor) -> torch.Tensor:
    """The Gini index of each row of non-negative ``a`` ``[B, n]``; NaN for an all-zero row."""
    n = a.shape[1]
    s, _ = a.sort(1)
    rank = torch.arange(1, n + 1, dtype=s.dtype, device=s.device)
    total = s.sum(1)
    g = ((2 * rank - n - 1) * s).sum(1) / (n * total.clamp_min(torch.finfo(s.dtype).tiny))
    return torch.where(total > 0, g, torch.full_like(g, math.nan))


def entropy(a: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of non-negative ``a`` ``[B, n]`` as a distribution; NaN for zeros."""
    total = a.sum(1, keepdim=True)
    p = a / total.clamp_min(torch.finfo(a.dtype).tiny)
    h = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, math.nan))


class Sparseness(Metric):
    name = "sparseness"
    label = "Sparseness (Gini)"
    family = "complexity"
    cite = "chalasani2020concise"
    higher_is_better = True
    needs_model = False

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return gini(_magnitudes(batch))


class Complexity(Metric):
    name = "complexity"
    label = "Complexity (entropy)"
    family = "complexity"
    cite = "bhatt2020evaluating"
    higher_is_better = False
    needs_model = False

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return entropy(_magnitudes(batch))


METRICS = (Sparseness, Complexity)
