"""How often does the detector find a planted shortcut, and how often does it accuse a clean model?

:func:`calibrate` plants an opaque square on a fraction of one class's training images (5, 10, 25, 50
and 100 % by default) at two sizes, trains the small CNN of :mod:`.poisoned` on each set with several
seeds, and trains clean models with other seeds. Every model is then run through the detector's
decision (:func:`.detector.marker_tests` and :func:`.detector.decide`, exactly what
:func:`.detector.detect_shortcut` runs, on predictions computed once per model and input) against
each reference:

* ``clean``: the clean control trained with the *same* seed (initialisation, training slice and order)
  on the same data without the marker: the only difference is the marker. A clean model of another
  seed is tested against one of these controls for the false-positive rate.
* each placebo of :mod:`.placebo` (``moved``, ``mirrored``) on the model itself.

**Power** is the share of poisoned models of a cell (size x fraction) that the detector calls reliant;
the **false-positive rate** the share of clean models it calls reliant. Both come with Clopper-Pearson
intervals over models, which are independent draws (each model has its own seed and is tested once
per reference and marker; the two marker sizes are tested on the same clean models, so the rates of
the two sizes are not independent of each other). Beside the test, the retired fixed rule
(``max(flip rate among images not already called the class, removal drop) >= 0.2``) is scored on the
same models, so its misses can be counted.

Budgets (:data:`BUDGETS`): ``full`` is the build's: 24 models (five shares of the class, two marker
sizes, two poisoning seeds; two controls and two clean models for the false-positive rate) of 4,096
training images and 2 epochs each, sized so that a cold build stays within its hour on two cores (48
models of 8,192 images took over an hour there). Its power per cell rests on two models, so the chapter
reads it as a coarse curve with intervals; ``CalibrationConfig()`` is the larger design, for a machine
with the time. ``smoke`` is the
tests': four models at the chapter's smoke budget, three of them the chapter's and the detector tests'
own checkpoints. The models are a reduced budget of the Clever Hans study's
(:func:`.poisoned.train_config`): the calibration's power is that of this budget, not of the study's
models, which are trained longer on more images.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace

import torch

from ..data import fashion_mnist
from ..errors import UnknownNameError, XaiError
from ..models import fmnist as zoo
from . import poisoned as P
from .detector import decide, marker_tests, predict
from .markers import Marker
from .placebo import PLACEBOS, apply_placebo
from .stats import rate_interval

log = logging.getLogger(__name__)
OLD_THRESHOLD = 0.2  # the fixed rule the test replaced, scored beside it


@dataclass(frozen=True)
class CalibrationConfig:
    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
    marker_sizes: tuple[int, ...] = (4, 2)  # side of the opaque square in pixels
    corner: str = "top-left"
    marker_class: str = "Shirt"
    seeds: tuple[int, ...] = (0, 1, 2, 3)  # one poisoned model per cell and seed, each with its clean control
    clean_seeds: tuple[int, ...] = (4, 5, 6, 7)  # clean models for the false-positive rate
    train: zoo.TrainConfig = zoo.TrainConfig(epochs=2, train_size=8192, test_size=1000, lr=1e-2)
    test_images: int | None = 5000  # the first N test images the detector sees; None: all 10,000
    alpha: float = 0.05
    min_effect: float = 0.05
    placebos: tuple[str, ...] = PLACEBOS

    def __post_init__(self) -> None:
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise XaiError(f"fractions must lie in (0, 1], got {self.fractions}")
        if not self.seeds or not self.clean_seeds or set(self.seeds) & set(self.clean_seeds):
            raise XaiError("give poisoning seeds and clean seeds, with no seed in both (the clean models for the "
                           "false-positive rate must differ from the controls)")
        for p in self.placebos:
            if p not in PLACEBOS:
                raise UnknownNameError("placebo", p, PLACEBOS)


BUDGETS = {
    "full": CalibrationConfig(seeds=(0, 1), clean_seeds=(4, 5),
                              train=zoo.TrainConfig(epochs=2, train_size=4096, test_size=1000, lr=1e-2)),
    # The chapter's smoke models (its budget, seed 0): the tests share their checkpoints.
    "smoke": CalibrationConfig(fractions=(0.25, 1.0), marker_sizes=(4,), seeds=(0,), clean_seeds=(1,),
                               train=P.train_config("smoke"), test_images=2000),
}


def config(budget: str | CalibrationConfig) -> CalibrationConfig:
    if isinstance(budget, CalibrationConfig):
        return budget
    if budget not in BUDGETS:
        raise UnknownNameError("calibration budget", budget, BUDGETS)
    return BUDGETS[budget]


def _model(cfg: CalibrationConfig, c: int, size: int | None, fraction: float, seed: int):
    """The clean model (``size=None``) or the square of ``size`` on ``fraction`` of class ``c``, trained with
    ``seed``. The specs are the chapter's own, so at its budget and seed the checkpoints are shared."""
    spec = P.standard_specs(c)["clean"] if size is None else P.square_spec(c, fraction, size, cfg.corner)
    entry = P.trained(spec, replace(cfg.train, seed=seed), seed=seed, device="cpu")
    log.info("calibration model: %s, fraction %g, seed %d (%s s to train)", spec.plants[0].marker.name if size
             else "clean", fraction, seed, entry.info.get("train_seconds"))
    return entry


def _predictions(entry, x: torch.Tensor, markers: dict[int, Marker], placebos: tuple[str, ...]) -> dict:
    """Predicted classes once per input: clean, and per marker size marked and each placebo."""
    out = {"clean": predict(entry.model, x)}
    for size, m in markers.items():
        out[size, "marked"] = predict(entry.model, m.apply(x))
        for kind in placebos:
            out[size, kind] = predict(entry.model, apply_placebo(m, x, kind))
    return out


def _judge(y: torch.Tensor, c: int, pred: dict, ref: dict, size: int, reference: str, cfg: CalibrationConfig) -> dict:
    if reference == "clean":
        ref_clean, ref_marked = ref["clean"], ref[size, "marked"]
    else:
        ref_clean, ref_marked = pred["clean"], pred[size, reference]
    tests = marker_tests(y, c, pred["clean"], pred[size, "marked"], ref_clean, ref_marked, 1 - cfg.alpha,
                         cfg.min_effect)
    d = decide(tests, cfg.alpha)
    head = tests[d.headline]
    return {"verdict": d.verdict, "relies": d.verdict == "relies", "headline": d.headline,
            "effect": head.effect, "effect_interval": list(head.effect_interval), "p_value": head.p_holm,
            **{k: {"effect": t.effect, "interval": list(t.effect_interval), "rate": t.rate,
                   "reference_rate": t.reference_rate, "p_exact": t.p_exact, "p_holm": t.p_holm}
               for k, t in tests.items()}}


def _behaviour(y: torch.Tensor, c: int, pred: dict, size: int) -> dict:
    """Flip rate and removal drop as the retired rule measured them, and its verdict."""
    clean, marked = pred["clean"], pred[size, "marked"]
    own, eligible = y == c, (y != c) & (clean != c)
    flip_old = float((marked[eligible] == c).float().mean()) if eligible.any() else 0.0
    drop = float((marked[own] == c).float().mean() - (clean[own] == c).float().mean())
    return {"flip_rate": float(((marked == c) & (clean != c))[y != c].float().mean()), "removal_drop": drop,
            "threshold_rule": max(flip_old, drop) >= OLD_THRESHOLD}


def _rate(rows: list[dict], key: str, confidence: float) -> dict:
    k, n = sum(r[key] for r in rows), len(rows)
    lo, hi = rate_interval(k, n, confidence)
    return {"relies": k, "models": n, "rate": k / n if n else float("nan"), "interval": [lo, hi]}


def calibrate(budget: str | CalibrationConfig = "full") -> dict:
    """Train the planted and clean models (or load them from the checkpoint cache) and score the detector.

    Returns JSON-able results: ``settings``; ``models`` (one row per model and marker: ``kind``, ``size``,
    ``area_share``, ``fraction``, ``seed``, ``accuracy``, ``train_seconds``, ``flip_rate``,
    ``removal_drop``, ``threshold_rule``, and per reference ``tests.<reference>`` with ``verdict``,
    ``effect``, ``effect_interval``, ``p_value``...); ``power`` and ``false_positive`` (rows per reference,
    marker size and fraction: ``relies``, ``models``, ``rate``, ``interval``, ``mean_effect``), the
    same for the fixed rule under ``threshold_rule``; ``timings`` (seconds: ``train`` summed from the
    checkpoints' records; ``predictions``, the models' passes over the test images with markers and
    placebos; ``wall`` of this call, which includes training only on a cold cache).
    """
    cfg = config(budget)
    start = time.perf_counter()
    c = P.class_index(cfg.marker_class)
    markers = {s: P.square_spec(c, 1.0, s, cfg.corner).plants[0].marker for s in cfg.marker_sizes}
    x, y = fashion_mnist.load("test")
    if cfg.test_images:
        x, y = x[:cfg.test_images], y[:cfg.test_images]
    refs_all = ("clean", *cfg.placebos)
    rows: list[dict] = []
    train_seconds: list[float] = []

    detector_seconds = 0.0

    def predictions(entry, markers_: dict) -> dict:
        nonlocal detector_seconds
        t = time.perf_counter()
        out = _predictions(entry, x, markers_, cfg.placebos)
        detector_seconds += time.perf_counter() - t
        return out

    def row(kind: str, entry, size: int, fraction: float, seed: int, pred: dict, ref: dict | None) -> dict:
        tests = {r: _judge(y, c, pred, ref, size, r, cfg) for r in refs_all if r != "clean" or ref is not None}
        return {"kind": kind, "size": size, "area_share": markers[size].area_share, "fraction": fraction,
                "seed": seed, "accuracy": float((pred["clean"] == y).float().mean()),
                "train_seconds": entry.info.get("train_seconds"), "checkpoint": entry.info["key"],
                **_behaviour(y, c, pred, size), "tests": tests}

    controls = {}
    for s in cfg.seeds:
        entry = _model(cfg, c, None, 1.0, s)
        train_seconds.append(entry.info.get("train_seconds") or 0.0)
        controls[s] = predictions(entry, markers)
        rows += [row("control", entry, size, 0.0, s, controls[s], None) for size in markers]
    for k, s in enumerate(cfg.clean_seeds):
        entry = _model(cfg, c, None, 1.0, s)
        train_seconds.append(entry.info.get("train_seconds") or 0.0)
        pred = predictions(entry, markers)
        ref = controls[cfg.seeds[k % len(cfg.seeds)]]  # one control per clean model: independent rows
        rows += [row("clean", entry, size, 0.0, s, pred, ref) for size in markers]
    for size, m in markers.items():
        for fraction in cfg.fractions:
            for s in cfg.seeds:
                entry = _model(cfg, c, size, fraction, s)
                train_seconds.append(entry.info.get("train_seconds") or 0.0)
                pred = predictions(entry, {size: m})
                rows.append(row("poisoned", entry, size, fraction, s, pred, controls[s]))

    confidence = 1 - cfg.alpha
    power, false_positive = [], []
    for size in markers:
        for r in refs_all:
            for fraction in cfg.fractions:
                cell = [q for q in rows if q["kind"] == "poisoned" and q["size"] == size and q["fraction"] == fraction]
                tests = [q["tests"][r] for q in cell]
                power.append({"reference": r, "size": size, "area_share": markers[size].area_share,
                              "fraction": fraction, **_rate(tests, "relies", confidence),
                              "mean_effect": sum(t["effect"] for t in tests) / len(tests)})
            # Placebos are tested on every clean model, controls included; the clean reference only on the others.
            kinds = ("clean",) if r == "clean" else ("clean", "control")
            tests = [q["tests"][r] for q in rows if q["kind"] in kinds and q["size"] == size]
            false_positive.append({"reference": r, "size": size, "area_share": markers[size].area_share,
                                   **_rate(tests, "relies", confidence)})
    rule = {"power": [{"size": size, "fraction": f, **_rate(
                [q for q in rows if q["kind"] == "poisoned" and q["size"] == size and q["fraction"] == f],
                "threshold_rule", confidence)} for size in markers for f in cfg.fractions],
            "false_positive": [{"size": size, **_rate(
                [q for q in rows if q["kind"] != "poisoned" and q["size"] == size], "threshold_rule", confidence)}
                for size in markers]}
    n_models = len(cfg.seeds) + len(cfg.clean_seeds) + len(markers) * len(cfg.fractions) * len(cfg.seeds)
    return {
        "settings": {"marker_class": fashion_mnist.CLASSES[c], "marker": "opaque white square", "corner": cfg.corner,
                     "marker_sizes": list(cfg.marker_sizes), "fractions": list(cfg.fractions),
                     "area_shares": {str(s): m.area_share for s, m in markers.items()},
                     "seeds": list(cfg.seeds), "clean_seeds": list(cfg.clean_seeds),
                     "train": {k: v for k, v in asdict(cfg.train).items() if k != "seed"},
                     "test_images": len(y), "alpha": cfg.alpha, "min_effect": cfg.min_effect,
                     "references": list(refs_all), "threshold": OLD_THRESHOLD, "models": n_models},
        "models": rows, "power": power, "false_positive": false_positive, "threshold_rule": rule,
        "timings": {"train": round(sum(train_seconds), 1), "train_per_model": round(sum(train_seconds) / n_models, 2),
                    "predictions": round(detector_seconds, 1), "wall": round(time.perf_counter() - start, 1)},
    }
