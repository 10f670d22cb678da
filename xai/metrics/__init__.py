"""Metrics on attributions, by family: faithfulness, robustness, randomisation, complexity, localisation.

Every metric is a :class:`Metric` with one life cycle (:mod:`._base`): parameters declared and checked
at construction, a batch scored per image, scores aggregated. ``METRICS`` maps names to the classes, so
that studies and benchmarks iterate by name::

    scores = evaluate("road_morf", model, x, t, attributions, noise=0.0)       # [B]
    scores = evaluate("max_sensitivity", model, x, t, explain=explainer("gradient"))
    METRICS["pointing_game"](tolerance=2)(None, None, None, maps, region=marker.region)

The functions of the first metrics (deletion and insertion curves, completeness, cascading sanity
curves, region mass) stay available under their names.
"""
from __future__ import annotations

import torch

from ..errors import UnknownNameError
from . import complexity, faithfulness, fidelity, localisation, randomisation, road, robustness
from ._base import (FAMILIES, Batch, Explainer, Metric, MetricParameterError, MissingInputError, explainer,
                    pixel_maps)
from .faithfulness import (MODES, SUBSTRATES, auc, centre_map, completeness_gap, perturbation_curves, pixel_order,
                           random_map, substrate)
from .sanity import (SanityResult, cascading_randomization, independent_randomization, randomization_units,
                     randomize_, sanity_curves, similarities, spearman, ssim)

METRICS: dict[str, type[Metric]] = {m.name: m for module in (faithfulness, road, fidelity, robustness, randomisation,
                                                             complexity, localisation) for m in module.METRICS}


def get(name: str) -> type[Metric]:
    if name not in METRICS:
        raise UnknownNameError("metric", name, METRICS)
    return METRICS[name]


def metric(name: str, **params) -> Metric:
    """The metric called ``name`` with ``params`` checked."""
    return get(name)(**params)


def evaluate(name: str, model, inputs: torch.Tensor | None, targets, attributions: torch.Tensor | None = None, *,
             explain=None, region: torch.Tensor | None = None, **params) -> torch.Tensor:
    """Per-image scores ``[B]`` of the metric called ``name``."""
    return metric(name, **params)(model, inputs, targets, attributions, explain=explain, region=region)


def by_family(family: str) -> list[str]:
    if family not in FAMILIES:
        raise UnknownNameError("metric family", family, FAMILIES)
    return [n for n, m in METRICS.items() if m.family == family]


__all__ = [
    "METRICS", "FAMILIES", "Metric", "Batch", "Explainer", "MetricParameterError", "MissingInputError", "by_family",
    "evaluate", "explainer", "get", "metric", "pixel_maps",
    "MODES", "SUBSTRATES", "auc", "centre_map", "completeness_gap", "perturbation_curves", "pixel_order",
    "random_map", "substrate", "SanityResult", "cascading_randomization", "independent_randomization",
    "randomization_units", "randomize_", "sanity_curves", "similarities", "spearman", "ssim",
]
