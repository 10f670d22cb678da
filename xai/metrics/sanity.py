"""Model-parameter randomization tests (Adebayo et al. 2018): cascading from the top block down, and
independent (one unit at a time).

An explanation that still looks the same after the weights it explains were replaced by noise is not
explaining the model. The network is cut into *units* (its top-level blocks, with a container such as
``blocks`` or ``layer1`` opened one level, and a normalisation layer kept with the block before it);
units are randomized cumulatively from the output side (cascading), or each on its own with the others
trained (independent), and after each step every method's map is compared with the map of the trained
model. Both orders draw from one generator, unit after unit from the output side, so a unit gets the
same weights in both: the independent step of a unit differs from the trained model in that unit only.

Randomization rule: every parameter tensor of a unit is redrawn, seeded, from a Gaussian with that
tensor's own mean and standard deviation: scale kept, learnt structure gone. Buffers (batch-norm
running statistics) are kept, so activations stay in range.

Similarities per image (:func:`similarities`):
* Spearman rank correlation of the absolute 2-D maps as drawn (:func:`xai.render.maps.saliency_map`),
  and of the signed sums over channels;
* SSIM of the absolute 2-D maps, each scaled to [0, 1] by the renderer's clipping rule.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import NotApplicableError, XaiError

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def randomization_units(model: nn.Module) -> list[tuple[str, list[str]]]:
    """``[(unit name, [parameter names])]`` from the output side to the input side."""
    units: list[tuple[str, list[str]]] = []

    def add(name: str, module: nn.Module, merge: bool) -> None:
        params = [f"{name}.{p}" for p, _ in module.named_parameters()]
        if merge and units:
            units[-1][1].extend(params)
        else:
            units.append((name, params))

    for name, child in model.named_children():
        if not _has_params(child):
            continue
        kids = [(n, k) for n, k in child.named_children() if _has_params(k)]
        if isinstance(child, _CONTAINERS) and len(kids) >= 2:
            for n, k in kids:
                add(f"{name}.{n}", k, isinstance(k, _NORMS))
        else:
            add(name, child, isinstance(child, _NORMS))
    direct = [n for n, _ in model.named_parameters(recurse=False)]
    if direct:  # e.g. a ViT's class token and position embedding: part of the input-side unit
        if not units:
            units.append(("parameters", []))
        units[0][1].extend(direct)
    if not units:
        raise XaiError("the model has no parameters to randomize")
    return units[::-1]


@torch.no_grad()
def randomize_(model: nn.Module, names: list[str], generator: torch.Generator) -> None:
    params = dict(model.named_parameters())
    for n in names:
        p = params[n]
        if p.numel() < 2:
            continue
        mean, std = p.float().mean(), p.float().std()
        noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        p.copy_(noise * std + mean)


def cascading_randomization(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(unit, model)`` with every unit down to ``unit`` randomized: one copy, randomized in place
    step by step, so hold on to nothing between steps. The caller's model is never touched."""
    net = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for name, params in randomization_units(model):
        randomize_(net, params, gen)
        yield name, net


def independent_randomization(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(unit, model)`` with only ``unit`` randomized, the other units trained: one copy, each unit
    restored before the next is randomized, so hold on to nothing between steps. The caller's model is
    never touched."""
    net = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    params = dict(net.named_parameters())
    for name, names in randomization_units(model):
        saved = {n: params[n].detach().clone() for n in names}
        randomize_(net, names, gen)
        yield name, net
        with torch.no_grad():
            for n, v in saved.items():
                params[n].copy_(v)


def spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation per image of two ``[B, H, W]`` maps (NaN where a map is constant)."""
    from scipy.stats import spearmanr

    out = []
    for x, y in zip(a.flatten(1).cpu().double().numpy(), b.flatten(1).cpu().double().numpy()):
        out.append(np.nan if x.std() == 0 or y.std() == 0 else float(spearmanr(x, y).statistic))
    return np.array(out)


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """SSIM per image of two ``[B, H, W]`` maps, each scaled to [0, 1] by the display clipping rule."""
    from skimage.metrics import structural_similarity

    from ..render.maps import normalise

    out = []
    for x, y in zip(a.cpu().float(), b.cpu().float()):
        xs, ys = normalise(x.abs(), signed=False), normalise(y.abs(), signed=False)
        out.append(float(structural_similarity(xs, ys, data_range=1.0)))
    return np.array(out)


SIMILARITIES = ("spearman_abs", "spearman_signed", "ssim")


def similarity(original: torch.Tensor, randomized: torch.Tensor, kind: str, which: str) -> np.ndarray:
    """One of :data:`SIMILARITIES` per image (see :func:`similarities`)."""
    from ..render.maps import aggregate, saliency_map

    if which == "spearman_signed":
        return spearman(aggregate(original, "sum"), aggregate(randomized, "sum"))
    a, b = saliency_map(original, kind), saliency_map(randomized, kind)
    if which == "spearman_abs":
        return spearman(a.abs(), b.abs())
    if which == "ssim":
        return ssim(a, b)
    raise XaiError(f"unknown similarity {which!r}; choose from {', '.join(SIMILARITIES)}")


def similarities(original: torch.Tensor, randomized: torch.Tensor, kind: str = "signed") -> dict[str, np.ndarray]:
    """The similarities of Adebayo et al. between the attributions ``[B, C, H, W]`` of a method of ``kind``:
    ``spearman_abs`` and ``ssim`` on the method's 2-D map as drawn (absolute values), ``spearman_signed``
    on the signed sum over channels (for a non-negative method the two Spearman values coincide)."""
    return {which: similarity(original, randomized, kind, which) for which in SIMILARITIES}


@dataclass
class SanityResult:
    """``curves[method]``: one row per depth, ``{"unit", "depth", "spearman_abs": [...], ...}`` with one
    value per image (or ``"error"``); ``units``: the randomized units in order; ``first_maps[method]``:
    the first image's 2-D map for the trained model and after each depth (for figures)."""

    curves: dict[str, list[dict]]
    units: list[str]
    first_maps: dict[str, list[torch.Tensor | None]]


def sanity_curves(model: nn.Module, explain: dict[str, Callable[[nn.Module], torch.Tensor]],
                  kinds: dict[str, str] | None = None, seed: int = 0) -> SanityResult:
    """Similarity to the trained model's attributions at each randomization depth, per method.

    ``explain`` maps a method name to ``f(model) -> [B, C, H, W]`` attributions (the images and targets
    are the caller's); ``kinds`` gives each method's kind (:data:`xai.attribution.KINDS`, default
    "signed"). A method that fails on a randomized model records the error for that depth rather than
    stopping the test.
    """
    from ..render.maps import saliency_map

    kinds = {name: (kinds or {}).get(name, "signed") for name in explain}
    originals = {name: f(model) for name, f in explain.items()}
    result = SanityResult({name: [] for name in explain}, [],
                          {name: [saliency_map(a[:1], kinds[name])[0]] for name, a in originals.items()})
    for depth, (unit, net) in enumerate(cascading_randomization(model, seed), start=1):
        result.units.append(unit)
        for name, f in explain.items():
            row: dict = {"unit": unit, "depth": depth}
            try:
                attr = f(net)
                sims = similarities(originals[name], attr, kinds[name])
                row.update({k: [None if np.isnan(v) else round(float(v), 5) for v in vals]
                            for k, vals in sims.items()})
                result.first_maps[name].append(saliency_map(attr[:1], kinds[name])[0])
            except NotApplicableError as e:
                row["error"] = str(e)
                result.first_maps[name].append(None)
            result.curves[name].append(row)
    return result
