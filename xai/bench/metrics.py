"""Our metrics against Quantus's, on one model, batch and device, one row per metric.

The model is a Fashion-MNIST CNN on test images (one channel: Quantus's ROAD fails on three), each
explained for its top-1 class by our gradient, given to both sides as attributions and, for
robustness and randomisation, as the explanation function (Quantus calls it through its
``explain_func``), so the sides differ only in the metric. The gradient, because it has no tied values
on these images: gradient x input is 0 on the whole black background, and ties are ordered by a seeded
shuffle here and by ``np.argsort`` in Quantus, which would make ROAD differ for that reason alone
(the tie count is recorded). Localisation uses each image's bright pixels (the garment) as its region,
so that both hits and misses occur.

Agreement, per row (``agreement["kind"]``):

- ``same inputs``: both sides evaluate the same images, maps and perturbations (Quantus's
  ``perturb_func`` is handed ours) or none (deterministic metrics, ROAD without noise): the largest
  difference of the scores;
- ``own draws``: the same definition, each side drawing its own random subsets or classes: the mean
  score of each side and the standard error of their paired difference;
- ``definition differs``: Quantus computes another quantity under the same name (see the note); the
  time ratio is still reported, with both sides set to the same number of model passes per image.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import metrics as M
from ..attribution import gradient
from ..metrics import robustness
from ..metrics._base import generator
from .measure import time_sides

SAME, DIFFERENT, DEFINITION = "same inputs", "own draws", "definition differs"


@dataclass
class Row:
    metric: str
    options: dict
    call: str  # how Quantus was called, for the report
    quantus: Callable[[], object]
    kind: str  # SAME, DIFFERENT or DEFINITION
    compare: Callable[[torch.Tensor, object], tuple[np.ndarray, np.ndarray]] | None = None  # -> (ours, theirs)
    note: str = ""
    extra: dict = field(default_factory=dict)


def bench_inputs(entry, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch`` Fashion-MNIST test images and the model's top-1 classes."""
    from ..data import fashion_mnist

    x = fashion_mnist.load("test")[0][:batch].to(entry.device)
    with torch.no_grad():
        t = entry.model(x).argmax(1)
    return x, t


def _q_explain(model, inputs, targets, **kwargs):
    """Our gradient as Quantus calls explanation functions (numpy in, numpy out)."""
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(inputs), device=device)
    return gradient(model, x, torch.as_tensor(np.asarray(targets), device=device)).cpu().numpy()


def _feeder(draws: torch.Tensor):
    """A Quantus ``perturb_func`` handing out our draws ``[S, B, ...]``, one sample per call (refilled
    each time it runs out, so warm-up and timed calls all get the same draws)."""
    pool = list(draws.float().cpu().numpy())
    queue: list[np.ndarray] = []

    def perturb(arr, indices, **kwargs):
        if not queue:
            queue.extend(pool)
        d = queue.pop(0)
        return (arr.reshape(d.shape) + d).reshape(arr.shape)
    return perturb


def rows(module, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, region: torch.Tensor, cfg) -> list[Row]:
    import quantus
    from quantus.functions.similarity_func import correlation_spearman

    b, _, h, w = x.shape
    s = cfg.metrics_samples
    device = str(x.device)
    xn, tn, an = x.cpu().numpy(), t.cpu().numpy(), a.cpu().numpy()
    sn = region[:, None].float().cpu().numpy()
    levels = (0.1, 0.3, 0.5, 0.7, 0.9)
    subset = 0.1
    quiet = {"disable_warnings": True, "display_progressbar": False}

    def q(metric, a_batch=an, **kw):
        return lambda: metric(model=module, x_batch=xn, y_batch=tn, a_batch=a_batch, device=device, **kw)

    def per_image(ours, theirs):
        return ours.double().numpy(), np.asarray(theirs, dtype=np.float64)

    def road_means(ours, theirs):
        return ours.double().numpy(), np.array([theirs[round(100 * p)] for p in levels])

    radius, sigma = 0.05, 0.1
    # Quantus's steps must divide the pixels; the one giving as many passes per image as ours (6 sizes x s)
    step = min((d for d in range(1, h * w + 1) if h * w % d == 0), key=lambda d: abs(h * w / d - 6 * s))
    patches = math.ceil(h / 4) * math.ceil(w / 4)  # Quantus's infidelity: one pass per 4x4 patch
    units = len(M.randomization_units(module))
    layers = sum(1 for _, mod in module.named_modules() if hasattr(mod, "reset_parameters"))
    layer_note = (f"Quantus re-initialises every module with reset_parameters ({layers} here, batch-norm statistics "
                  f"reset too); ours redraws {units} blocks from their own mean and spread, buffers kept: "
                  f"{layers} and {units} explanations per image")
    ball = robustness.uniform_ball(tuple(x.shape), s, radius, generator(cfg.seed))
    gauss = robustness.gaussian(tuple(x.shape), s, sigma, generator(cfg.seed))
    q_levels = [round(100 * p) for p in levels]
    out = [
        Row("road_morf", {"percentages": levels, "noise": 0.0, "output": "accuracy"},
            f"ROAD(percentages={q_levels}, noise=0)", q(quantus.ROAD(percentages=q_levels, noise=0.0, abs=False,
                                                                      normalise=False, **quiet)),
            SAME, road_means, "mean accuracy over images at each level; each side solves the same sparse systems"),
        Row("road_lerf", {"percentages": levels, "noise": 0.0, "output": "accuracy"},
            f"ROAD(percentages={q_levels}, noise=0) of the negated map",
            q(quantus.ROAD(percentages=q_levels, noise=0.0, abs=False, normalise=False, **quiet), a_batch=-an),
            SAME, road_means, "mean accuracy over images at each level; Quantus has MoRF only"),
        Row("faithfulness_correlation", {"subset_fraction": subset, "samples": s},
            f"FaithfulnessCorrelation(nr_runs={s}, subset_size={round(subset * h * w)}, perturb_baseline=0)",
            q(quantus.FaithfulnessCorrelation(nr_runs=s, subset_size=round(subset * h * w), perturb_baseline=0.0,
                                              abs=False, normalise=False, return_aggregate=False, **quiet)),
            DIFFERENT, per_image),
        Row("sensitivity_n", {"fractions": (0.01, 0.05, 0.1, 0.25, 0.5, 0.8), "samples": s},
            f"SensitivityN(features_in_step={step}, n_max_percentage=0.8, perturb_baseline=0)",
            q(quantus.SensitivityN(features_in_step=step, perturb_baseline=0.0,
                                   abs=False, normalise=False, return_aggregate=False, **quiet), softmax=False),
            DEFINITION, None, "Quantus removes pixels cumulatively in the map's order and correlates, per step, "
                              "across the images; ours (Ancona et al.) correlates per image over random subsets; "
                              f"{6 * s} and {h * w // step} passes per image"),
        Row("infidelity", {"samples": patches, "noise": sigma, "normalize": False},
            "Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, perturb_baseline=0)",
            q(quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, perturb_baseline=0.0, abs=False,
                                 normalise=False, **quiet)),
            DEFINITION, None, "Quantus replaces 4x4 patches cumulatively (no random draws); ours averages over "
                              "Gaussian perturbations (Yeh et al.; captum's infidelity, checked in the tests); "
                              f"{patches} passes per image on both sides"),
        Row("max_sensitivity", {"radius": radius, "samples": s, "internal_batch_size": b},
            f"MaxSensitivity(nr_samples={s}, perturb_func=our draws, lower_bound={radius})",
            q(quantus.MaxSensitivity(nr_samples=s, perturb_func=_feeder(ball), abs=False, normalise=False, **quiet),
              explain_func=_q_explain), SAME, per_image),
        Row("avg_sensitivity", {"radius": radius, "samples": s, "internal_batch_size": b},
            f"AvgSensitivity(nr_samples={s}, perturb_func=our draws)",
            q(quantus.AvgSensitivity(nr_samples=s, perturb_func=_feeder(ball), abs=False, normalise=False, **quiet),
              explain_func=_q_explain), SAME, per_image),
        Row("local_lipschitz", {"noise": sigma, "samples": s, "internal_batch_size": b},
            f"LocalLipschitzEstimate(nr_samples={s}, perturb_func=our draws)",
            q(quantus.LocalLipschitzEstimate(nr_samples=s, perturb_func=_feeder(gauss), abs=False, normalise=False,
                                             **quiet), explain_func=_q_explain), SAME, per_image),
        Row("random_logit", {"similarity": "spearman_signed"},
            "RandomLogit(num_classes=10, similarity_func=correlation_spearman)",
            q(quantus.RandomLogit(num_classes=10, similarity_func=correlation_spearman, abs=False, normalise=False,
                                  **quiet), explain_func=_q_explain), DIFFERENT, per_image,
            "each side draws its own other class"),
        Row("mprt_cascading", {}, 'MPRT(layer_order="top_down", return_average_correlation=True)',
            q(quantus.MPRT(layer_order="top_down", return_average_correlation=True, abs=True, normalise=False,
                           **quiet), explain_func=_q_explain), DEFINITION, None,
            layer_note),
        Row("mprt_independent", {}, 'MPRT(layer_order="independent", return_average_correlation=True)',
            q(quantus.MPRT(layer_order="independent", return_average_correlation=True, abs=True, normalise=False,
                           **quiet), explain_func=_q_explain), DEFINITION, None,
            layer_note),
        Row("sparseness", {}, "Sparseness(abs=True)", q(quantus.Sparseness(abs=True, normalise=False, **quiet)),
            SAME, per_image, "Quantus adds 1e-7 to every |a|"),
        Row("complexity", {}, "Complexity(abs=True)", q(quantus.Complexity(abs=True, normalise=False, **quiet)),
            SAME, per_image, "Quantus adds 1e-12 inside the logarithm"),
        Row("pointing_game", {}, "PointingGame(abs=True)",
            q(quantus.PointingGame(abs=True, normalise=False, **quiet), s_batch=sn), SAME, per_image),
        Row("relevance_mass", {}, "RelevanceMassAccuracy(abs=True)",
            q(quantus.RelevanceMassAccuracy(abs=True, normalise=False, **quiet), s_batch=sn), SAME, per_image),
    ]
    return out


def _agreement(row: Row, ours: torch.Tensor, theirs) -> dict:
    if row.kind == DEFINITION or row.compare is None:
        return {"kind": row.kind}
    a, b = row.compare(ours, theirs)
    ok = ~(np.isnan(a) | np.isnan(b))
    if row.kind == SAME:
        diff = float(np.abs(a[ok] - b[ok]).max()) if ok.any() else None
        return {"kind": row.kind, "max_abs_diff": diff, "values": int(ok.sum()),
                "scale": float(np.abs(b[ok]).max()) if ok.any() else None}
    d = a[ok] - b[ok]
    return {"kind": row.kind, "ours_mean": float(a[ok].mean()), "anchor_mean": float(b[ok].mean()),
            "mean_diff": float(d.mean()), "diff_sem": float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None,
            "values": int(ok.sum())}


def run(entry, cfg, log: Callable[[str], None] = print) -> dict:
    """Time every metric of the registry that Quantus has, ours against Quantus's, and compare them."""
    module = entry.model
    x, t = bench_inputs(entry, cfg.metrics_batch)
    a = gradient(module, x, t)
    ties = int(sum(row.numel() - row.unique().numel() for row in a.flatten(1)))
    region = x[:, 0] > 0.5
    explain = M.explainer("gradient")
    out = []
    for row in rows(module, x, t, a, region, cfg):
        metric = M.metric(row.metric, **row.options)
        curve = row.metric.startswith("road_")

        def ours(metric=metric, curve=curve):
            call = metric.curve if curve else metric
            kw = {"explain": explain} if "explain" in metric.requires else {}
            if "region" in metric.requires:
                kw["region"] = region
            res = call(module, x, t, a, **kw)
            return res.double().mean(0) if curve else res

        timings, outputs = time_sides({"ours": ours, "quantus": row.quantus}, cfg.repeats, x.device)
        b = x.shape[0]
        rec = {"metric": row.metric, "label": metric.label, "family": metric.family, "options": row.options,
               "ours": timings["ours"].summary(b, 0.0),
               "anchors": [{"library": "quantus", "call": row.call, "timing": timings["quantus"].summary(b, 0.0),
                            "speedup": timings["quantus"].median / timings["ours"].median,
                            "agreement": _agreement(row, outputs["ours"], outputs["quantus"]), "note": row.note}]}
        out.append(rec)
        log("bench: " + _line(rec))
    return {"model": entry.name, "image_size": int(x.shape[-1]), "batch": int(x.shape[0]),
            "attributions": "gradient", "tied_values": ties, "explain": "gradient", "repeats": cfg.repeats,
            "rows": out}


def _line(rec: dict) -> str:
    a = rec["anchors"][0]
    ag = a["agreement"]
    if ag["kind"] == SAME:
        detail = f"max|d| {ag['max_abs_diff']:.2g}" if ag["max_abs_diff"] is not None else "no values"
    elif ag["kind"] == DIFFERENT:
        detail = f"mean {ag['ours_mean']:.3g} vs {ag['anchor_mean']:.3g}"
    else:
        detail = "definition differs"
    return (f"{rec['metric']}: ours {rec['ours']['median_s']:.3g} s, quantus {a['timing']['median_s']:.3g} s "
            f"(x{a['speedup']:.2f}, {detail})")
