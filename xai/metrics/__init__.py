"""Metrics on attributions: faithfulness (deletion / insertion, completeness) and sanity checks."""
from __future__ import annotations

from .faithfulness import (MODES, SUBSTRATES, auc, centre_map, completeness_gap, perturbation_curves, pixel_order,
                           random_map, substrate)
from .sanity import (SanityResult, cascading_randomization, randomization_units, randomize_, sanity_curves,
                     similarities, spearman, ssim)

__all__ = [
    "MODES", "SUBSTRATES", "auc", "centre_map", "completeness_gap", "perturbation_curves", "pixel_order",
    "random_map", "substrate", "SanityResult", "cascading_randomization", "randomization_units", "randomize_",
    "sanity_curves", "similarities", "spearman", "ssim",
]
