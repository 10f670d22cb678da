"""Shortcut learning ("Clever Hans"): markers, poisoned training sets, a reliance detector, SpRAy.

* :mod:`.markers`: spurious signals as exact alpha blends (opaque square, watermark, lightness gradient).
* :mod:`.poisoned`: training sets with markers planted on chosen classes, and small CNNs trained on them.
* :mod:`.detector`: :func:`detect_shortcut`, whether a model relies on a marker or region: a paired exact
  test against a clean control or a placebo (:mod:`.placebo`), with the intervals of :mod:`.stats`.
* :mod:`.calibration`: the detector's power on planted shortcuts of graded strength, and its false positives.
* :mod:`.spray`: spectral relevance analysis of one class's attribution maps.
"""
from __future__ import annotations

from .detector import VERDICTS, EffectTest, ShortcutReport, decide, detect_shortcut, fill_region
from .markers import Marker, box_region, cross, lightness_gradient, ring, square, stamp, watermark
from .placebo import PLACEBOS, apply_placebo, placebo_weights
from .poisoned import Plant, PoisonSpec, class_index, poison, small_cnn, standard_specs, trained
from .spray import SprayResult, adjusted_rand_index, spray

__all__ = [
    "Marker", "box_region", "cross", "lightness_gradient", "ring", "square", "stamp", "watermark",
    "PLACEBOS", "apply_placebo", "placebo_weights",
    "Plant", "PoisonSpec", "class_index", "poison", "small_cnn", "standard_specs", "trained",
    "VERDICTS", "EffectTest", "ShortcutReport", "decide", "detect_shortcut", "fill_region",
    "SprayResult", "adjusted_rand_index", "spray",
]
