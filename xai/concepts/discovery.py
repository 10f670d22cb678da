"""Concept discovery by non-negative factorization of a layer's activations (DFF, CRAFT).

Every spatial position of every image gives one activation vector; the matrix of them, ``[N h w, C]``,
is factorized as ``W H`` with ``k`` components (:func:`xai.concepts.nmf.nmf`). A row of ``H`` is a
concept, a direction in the layer's channel space (feature-visualized with a ``direction`` objective);
a column of ``W`` laid back on the images is where that concept is present (its heatmap). This is
Collins et al.'s (2018) Deep Feature Factorization, as pytorch-grad-cam ships it, and CRAFT's (Fel et
al. 2023) concept bank without its Sobol importance, which :func:`factor_relevance` replaces by an exact
split of gradient x activation.

**Relevance of a concept.** Gradient x activation at the layer, ``r = a * grad``, is shared among the
concepts in proportion to their part of the reconstruction of that activation entry,
``W[p, g] H[g, c] / sum_g' W[p, g'] H[g', c]``. The shares of an entry sum to one, so the concepts'
relevances add up to the layer's total gradient x activation (only rounding apart), wherever the
factorization is good or poor; a poor one only spreads an entry over concepts less cleanly.

Signed activations (a linear bottleneck's output) are factorized as ``[relu(a), relu(-a)]``, and an
entry's share is taken from the half its sign falls in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XaiError
from ..featvis import objectives as O
from ..layers import layout_of, to_spatial
from .nmf import merge_signs, nmf, nmf_transform, split_signs
from .taps import as_targets, layer_activations, layer_gradients


def activation_matrix(acts: torch.Tensor) -> torch.Tensor:
    """``[N, C, h, w]`` -> ``[N h w, C]``: one row per position, images in order, row-major within each."""
    return acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])


def factor_relevance(acts: torch.Tensor, grads: torch.Tensor, w: torch.Tensor, h: torch.Tensor,
                     signed: bool) -> torch.Tensor:
    """``[N, k, h, w]``: each factor's share of gradient x activation at each position (see the module
    docstring), computed in float64. ``w`` is ``[N h w, k]``, ``h`` is ``[k, C]`` (``[k, 2C]`` when signed)."""
    n, c, hh, ww = acts.shape
    a = activation_matrix(acts.double())
    r = a * activation_matrix(grads.double())  # [P, C]
    w64, h64 = w.double(), h.double()
    if signed:
        pos, neg = h64[:, :c], h64[:, c:]
        # part[p, g, c]: factor g's reconstruction of the entry's own sign half
        part = w64[:, :, None] * torch.where(a[:, None, :] >= 0, pos[None], neg[None])
    else:
        part = w64[:, :, None] * h64[None]
    total = part.sum(1, keepdim=True)
    share = torch.where(total > 0, part / total.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.full_like(part, 1.0 / part.shape[1]))
    per = (share * r[:, None, :]).sum(2)  # [P, k]
    return per.reshape(n, hh, ww, -1).permute(0, 3, 1, 2).contiguous()


@dataclass
class Concepts:
    """Concepts found at ``layer`` on a set of images, with where they are and what they contribute."""

    layer: str  # the tensor factorized (a layer, or a module's input ``<module>:in``)
    target: torch.Tensor  # [N] the class each image's relevance is taken for
    directions: torch.Tensor  # [k, C] each concept in the layer's channel space (unit norm)
    factors: torch.Tensor  # [k, C] or [k, 2C] (signed) non-negative, as factorized
    signed: bool
    maps: torch.Tensor  # [N, k, h, w] presence of each concept (W), >= 0
    relevance: torch.Tensor  # [N, k, h, w] each concept's share of gradient x activation
    total_relevance: torch.Tensor  # [N] gradient x activation summed over the layer
    error: float  # relative Frobenius error of the factorization

    @property
    def k(self) -> int:
        return self.directions.shape[0]

    def importance(self) -> torch.Tensor:
        """``[k]``: each concept's relevance summed over images and positions, over the total's magnitude."""
        return self.relevance.sum((0, 2, 3)) / self.total_relevance.sum().abs().clamp_min(1e-30)

    def heatmaps(self, size: tuple[int, int], relevance: bool = False) -> torch.Tensor:
        """``[N, k, H, W]``: the presence maps (or relevance maps) upsampled bilinearly to ``size``."""
        m = self.relevance if relevance else self.maps
        return F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)

    def objective(self, concepts: list[int] | None = None) -> O.Objective:
        """A ``direction`` objective: image ``i`` of a rendering batch maximises concept ``concepts[i]``."""
        idx = list(range(self.k)) if concepts is None else list(concepts)
        return O.direction(self.layer, self.directions[idx])


def _spatial(model: nn.Module, t: torch.Tensor, layer: str, images: torch.Tensor) -> torch.Tensor:
    if t.dim() == 2:
        raise XaiError(f"a layer output of shape {tuple(t.shape)} has no positions to factorize")
    return to_spatial(t, layout_of(model, layer, images.shape[1:]), layer)


def discover(model: nn.Module, images: torch.Tensor, layer: str, target, *, k: int = 6, seed: int = 0,
             iters: int = 200, batch: int = 32) -> Concepts:
    """Factorize ``layer``'s activations over ``images`` into ``k`` concepts, each with its presence map
    on every image and its relevance for ``target`` (one class, or one per image)."""
    acts, grads, _ = layer_gradients(model, images, layer, target, batch=batch)
    acts, grads = _spatial(model, acts, layer, images), _spatial(model, grads, layer, images)
    v, signed = split_signs(activation_matrix(acts))
    fac = nmf(v, k, iters=iters, seed=seed)
    n, _, hh, ww = acts.shape
    t = as_targets(target, n)
    relevance = factor_relevance(acts, grads, fac.W, fac.H, signed)
    directions = merge_signs(fac.H, signed)
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Concepts(layer=layer, target=t, directions=directions.float(), factors=fac.H.float(), signed=signed,
                    maps=fac.W.reshape(n, hh, ww, k).permute(0, 3, 1, 2).float().contiguous(),
                    relevance=relevance.float(),
                    total_relevance=(acts.double() * grads.double()).sum((1, 2, 3)).float(),
                    error=fac.error)


def locate(concepts: Concepts, model: nn.Module, images: torch.Tensor, *, batch: int = 32) -> torch.Tensor:
    """``[N, k, h, w]``: where each already found concept is present on new images (``W`` fitted with
    the concepts' factors held fixed)."""
    acts = _spatial(model, layer_activations(model, images, concepts.layer, batch=batch), concepts.layer, images)
    a = activation_matrix(acts)
    v = torch.cat([a.clamp_min(0), (-a).clamp_min(0)], 1) if concepts.signed else a
    if not concepts.signed and bool((v < 0).any()):
        raise XaiError(f"the concepts were found on non-negative activations of {concepts.layer}; "
                       "these images give negative ones")
    w = nmf_transform(v, concepts.factors)
    n, _, hh, ww = acts.shape
    return w.reshape(n, hh, ww, -1).permute(0, 3, 1, 2).contiguous()


def localisation(concepts: Concepts, region: torch.Tensor) -> list[dict]:
    """Per concept: the mean share of its presence map, and of its |relevance| map, inside ``region``
    (an ``[H, W]`` boolean mask in input pixels; maps upsampled bilinearly), beside the region's area
    share (:mod:`xai.metrics.shortcut`)."""
    from ..metrics import shortcut as sm

    size = tuple(region.shape)
    presence, relevance = concepts.heatmaps(size), concepts.heatmaps(size, relevance=True)
    share = sm.area_share(region)
    out = []
    for g in range(concepts.k):
        p = sm.summarize(sm.region_mass(presence[:, g], region), region)
        r = sm.summarize(sm.region_mass(relevance[:, g], region), region)
        out.append({"concept": g, "presence_mass": p["mass"], "presence_concentration": p["concentration"],
                    "relevance_mass": r["mass"], "relevance_concentration": r["concentration"],
                    "area_share": share, "images": p["images"]})
    return out
