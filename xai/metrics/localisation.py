"""Localisation: does the explanation fall where the evidence is known to be?

Only meaningful where a region is known to cause the prediction: here, the Clever Hans markers
(:attr:`xai.shortcuts.markers.Marker.region`), whose causal effect the shortcut detector measures.
Regions are boolean ``[H, W]`` (the same for every image) or ``[B, H, W]``.

* **Pointing game** (Zhang et al. 2018): 1 if the map's maximum lies in the region, else 0. Ties for
  the maximum count by the share of tied pixels inside the region (the expected hit of a random pick
  among them), so a constant map scores the region's area share rather than a certain hit. Zhang et
  al. forgive a miss within ``tolerance`` pixels of the region (15 px on their 224 px images); the
  default here is 0, the Quantus definition.
* **Relevance mass** (Arras et al. 2022): the share of the map's mass inside the region
  (:func:`xai.metrics.shortcut.region_mass`). 1 is a map entirely on the evidence.

Both use absolute values by default, as :mod:`.shortcut` explains: evidence against a class is reliance
on it too. ``absolute=False`` scores the signed sum over channels (pointing game only: a mass share of
signed values is not a share). An all-zero map points nowhere: NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._base import Batch, Metric, flag, non_negative_int, param
from .shortcut import region_mass


def _maps(batch: Batch, absolute: bool) -> torch.Tensor:
    a = batch.attributions
    a = a.abs() if absolute else a
    return (a if a.dim() == 3 else a.sum(1)).double()


def dilate(region: torch.Tensor, pixels: int) -> torch.Tensor:
    """``region`` ``[B, H, W]`` grown by ``pixels`` in every direction (a square neighbourhood)."""
    if pixels == 0:
        return region
    grown = F.max_pool2d(region[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)
    return grown[:, 0] > 0


class PointingGame(Metric):
    name = "pointing_game"
    label = "Pointing game"
    family = "localisation"
    cite = "zhang2018topdown"
    higher_is_better = True
    requires = ("attributions", "region")
    needs_model = False

    @dataclass(frozen=True)
    class Params:
        tolerance: int = param(0, non_negative_int)  # pixels a miss is forgiven by
        absolute: bool = param(True, flag)

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        maps = _maps(batch, self.params.absolute).flatten(1)
        region = dilate(batch.region, self.params.tolerance).flatten(1)
        top = maps == maps.amax(1, keepdim=True)
        hit = (top & region).sum(1).double() / top.sum(1)
        empty = maps.abs().amax(1) == 0
        return torch.where(empty, torch.full_like(hit, math.nan), hit)


class RelevanceMass(Metric):
    name = "relevance_mass"
    label = "Relevance mass"
    family = "localisation"
    cite = "arras2022clevr"
    higher_is_better = True
    requires = ("attributions", "region")
    needs_model = False

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return region_mass(batch.attributions, batch.region)


METRICS = (PointingGame, RelevanceMass)
