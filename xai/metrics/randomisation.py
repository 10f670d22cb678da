"""Randomisation: an explanation must change when what it explains does.

* **Random-logit test** (Sixt et al. 2020): explain the same image for a random other class. A method
  that gives (nearly) the same map for any class does not explain the class: the similarity between
  the two maps is its score, lower is better. The other class is drawn uniformly from the classes
  that are not the target, seeded.
* **Model-parameter randomisation** (Adebayo et al. 2018), on the units and with the rule of
  :mod:`.sanity`: **cascading** (units randomized cumulatively from the output side) and
  **independent** (one unit at a time, the rest trained). :meth:`~._base.Metric.curve` gives the
  similarity after each unit ``[B, units]``; the score is its mean over units (Quantus's
  ``return_average_correlation``), lower is better.

Similarities (``similarity``, :func:`.sanity.similarity`): ``spearman_abs`` (rank correlation of the
absolute 2-D maps as drawn), ``spearman_signed`` (of the signed channel sums) or ``ssim`` (of the
absolute maps, scaled as drawn). The maps are drawn by the method's ``kind``
(:data:`xai.attribution.KINDS`), taken from an :class:`~._base.Explainer`, else the ``kind`` parameter.

Quantus randomizes every module that has ``reset_parameters`` by re-running its initializer (a batch
norm's running statistics reset with it); here a unit is a block, its parameters redrawn with their
own mean and spread and its buffers kept (see :mod:`.sanity` for why). The two tests therefore differ
by definition, not only by implementation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..attribution import KINDS
from ..errors import XaiError
from ._base import Batch, Metric, explain_in_chunks, generator, non_negative_int, one_of, param, positive_int
from .sanity import SIMILARITIES, cascading_randomization, independent_randomization, similarity


def _kind(batch: Batch, default: str) -> str:
    return getattr(batch.explain, "kind", default)


def _similarity(original: torch.Tensor, other: torch.Tensor, kind: str, which: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(similarity(original.cpu(), other.cpu(), kind, which), dtype=np.float64))


def other_classes(t: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """One class per image, uniform over the classes other than its target."""
    shift = torch.randint(1, num_classes, (t.shape[0],), generator=gen)
    return (t.cpu() + shift) % num_classes


class RandomLogit(Metric):
    name = "random_logit"
    label = "Random-logit similarity"
    family = "randomisation"
    cite = "sixt2020explanations"
    higher_is_better = False
    stochastic = True
    requires = ("explain",)
    computes_attributions = True

    @dataclass(frozen=True)
    class Params:
        similarity: str = param("ssim", one_of(*SIMILARITIES))
        kind: str = param("signed", one_of(*KINDS))  # when the explanation function does not say
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)

    @torch.no_grad()
    def _classes(self, batch: Batch) -> int:
        n = int(batch.module(batch.x[:1]).shape[1])
        if n < 2:
            raise XaiError(f"{self.name} needs a model with at least two classes, got {n}")
        return n

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        p = self.params
        off = other_classes(batch.t, self._classes(batch), generator(p.seed)).to(batch.t.device)
        other = explain_in_chunks(batch.explain, batch.module, batch.x, off, p.internal_batch_size)
        return _similarity(batch.attributions, other, _kind(batch, p.kind), p.similarity)


class ModelRandomisation(Metric):
    family = "randomisation"
    cite = "adebayo2018sanity"
    higher_is_better = False
    stochastic = True
    requires = ("explain",)
    computes_attributions = True
    order: str

    @dataclass(frozen=True)
    class Params:
        similarity: str = param("spearman_abs", one_of(*SIMILARITIES))
        kind: str = param("signed", one_of(*KINDS))
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)

    def steps(self, model):
        walk = cascading_randomization if self.order == "cascading" else independent_randomization
        return walk(model, self.params.seed)

    def evaluate_curve(self, batch: Batch) -> torch.Tensor:
        """The similarity ``[B, units]`` after each step, units in the order of
        :func:`.sanity.randomization_units` (output side first)."""
        p = self.params
        kind = _kind(batch, p.kind)
        sims = []
        for _, net in self.steps(batch.module):
            a = explain_in_chunks(batch.explain, net, batch.x, batch.t, p.internal_batch_size)
            sims.append(_similarity(batch.attributions, a, kind, p.similarity))
        return torch.stack(sims, 1)

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return self.evaluate_curve(batch).nanmean(1)


class CascadingRandomisation(ModelRandomisation):
    name = "mprt_cascading"
    label = "Cascading randomisation"
    order = "cascading"


class IndependentRandomisation(ModelRandomisation):
    name = "mprt_independent"
    label = "Independent randomisation"
    order = "independent"


METRICS = (RandomLogit, CascadingRandomisation, IndependentRandomisation)
