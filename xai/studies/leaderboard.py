"""The leaderboard: every attribution method ranked where the truth is known, and every metric checked against it.

On the poisoned models of the Clever Hans study the marker causes the prediction: for the images used
here, test images of other classes that the poisoned model assigns to the marked class only once the
marker is added. So a method that puts its attribution on the marker is right, and localisation
(relevance mass inside the marker region, pointing game) ranks the methods by a ground truth. Every
other metric of :data:`xai.metrics.METRICS` (faithfulness, robustness, randomisation, complexity)
ranks the same methods by its own score, and :func:`xai.metrics.groundtruth.agreement` says whether
it agrees with the ground truth: Kendall's τ with a bootstrap interval over the images.

The models are the Clever Hans study's checkpoints (same specs, budget and seed, read from its
options), so this study trains nothing when that study has run. Two controls: the clean model on
the same marked images (a method that finds the marker there reads the image, not the model: its
mass should be lower than on the poisoned model), and markers whose region covers more than
``max_area`` of the image (the lightness gradient), where localisation is not defined: those sets are
listed under ``skipped`` with the reason.

Artifacts (under ``leaderboard/``):

``results.json``
    ``settings``: ``budget``, ``images``, ``explain_images``, ``resamples``, ``level``, ``ground_truth``
    (the localisation metrics), ``metrics``, ``methods`` (name -> options), ``metric_options``.
    ``cases.<set>-<class>``: ``set``, ``class``, ``marker``, ``area_share``, ``flipped`` (images flipped by
    the marker of those tested), ``images``, ``methods`` (the ranked ones), ``labels.<method>``, ``not_applicable.<method>``
    (reason), ``seconds.<method>`` (attributions), ``ground_truth.<gt>.<method>``: ``mean``, ``rank``;
    ``metrics.<metric>``: ``label``, ``family``, ``higher_is_better``, ``images``, ``mean.<method>``,
    ``rank.<method>``, ``undefined.<method>`` (reason), ``seconds``;
    ``agreement.<gt>.<metric>``: ``tau``, ``low``, ``high``, ``level``, ``methods``, ``resamples``
    (:class:`~xai.metrics.groundtruth.Agreement`); ``truth_agreement``: τ of pointing game against
    relevance mass; ``control.clean_mass.<method>``: the clean model's mean relevance mass on the same
    images, ``control.higher_on_poisoned`` (count of methods whose poisoned mass exceeds it), ``of``.
    ``headline``: the first case. ``skipped.<set>``: reason. ``figure``.
    ``timings``: ``total`` seconds.
``agreement.webp`` (τ with intervals per metric), ``parts/<case>.json``. The book builds the table of
methods x ranks from this JSON.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import attribution, metrics
from ..data import fashion_mnist
from ..errors import NotApplicableError, XaiError
from ..metrics import groundtruth as G
from ..profiles import Profile
from ..render import leaderboard as RL
from ..render.store import Store, cache_key
from ..shortcuts import poisoned as P
from . import _frame as frame
from . import cleverhans as CH
from .misclassification import num

STUDY = "leaderboard"
CODE_VERSION = 1
GROUND_TRUTH = ("relevance_mass", "pointing_game")

# Every method at a size that keeps the leaderboard within minutes on two CPU cores (28 px images,
# a small CNN): the perturbation methods' budgets are what their cost scales with.
METHOD_OPTIONS = {
    "smoothgrad": {"samples": 8}, "smoothgrad_sq": {"samples": 8}, "vargrad": {"samples": 8},
    "integrated_gradients": {"steps": 16}, "gradient_shap": {"samples": 8},
    "occlusion": {"window": 4, "stride": 4}, "score_cam": {"max_channels": 16},
    "feature_ablation": {"segments": 25}, "kernel_shap": {"segments": 25, "samples": 64},
    "lime": {"segments": 25, "samples": 64}, "rise": {"masks": 128},
}

DEFAULTS = {
    # Of the Clever Hans study's sets (those it did not build are left out). "multi" adds three markers, and
    # its three leaderboards would about double the study's time (see the options' sizes below).
    "sets": ["square", "watermark", "gradient"],
    "images": 24,  # flipped images per marker
    "explain_images": 6,  # of those, for metrics that explain perturbed inputs or models (first N)
    "methods": None,  # name -> options; None: every method of xai.attribution.METHODS with METHOD_OPTIONS
    "metrics": None,  # None: every metric of xai.metrics.METRICS outside the localisation family
    "metric_options": {"deletion": {"steps": 8}, "insertion": {"steps": 8, "substrate": "blur"},
                       "road_morf": {"percentages": [0.2, 0.5, 0.8]},
                       "road_lerf": {"percentages": [0.2, 0.5, 0.8]},
                       "faithfulness_correlation": {"samples": 16}, "sensitivity_n": {"samples": 8, "fractions": [0.05, 0.25, 0.5]},
                       "infidelity": {"samples": 8},
                       "max_sensitivity": {"samples": 4}, "avg_sensitivity": {"samples": 4},
                       "local_lipschitz": {"samples": 4}},
    "resamples": 1000,
    "level": 0.95,
    "max_area": 0.25,  # a marker region above this share of the image is global: localisation undefined
}


option = frame.options(STUDY, DEFAULTS)


def method_options(profile: Profile) -> dict[str, dict]:
    chosen = option(profile, "methods")
    if chosen is None:
        return {n: dict(METHOD_OPTIONS.get(n, {})) for n in attribution.METHODS}
    for n in chosen:
        attribution.get(n)  # an unknown name is refused with close matches
    return {n: dict(o) for n, o in chosen.items()}


def metric_names(profile: Profile) -> list[str]:
    chosen = option(profile, "metrics")
    names = [n for n, m in metrics.METRICS.items() if m.family != "localisation"] if chosen is None else list(chosen)
    for n in names:
        metrics.get(n)
    return names


def _metric(profile: Profile, name: str) -> metrics.Metric:
    opts = {k: tuple(v) if isinstance(v, list) else v
            for k, v in (option(profile, "metric_options") or {}).get(name, {}).items()}
    return metrics.metric(name, **opts)


def _with_layer(name: str, opts: dict) -> dict:
    return {**opts, "layer": P.CAM_LAYER} if attribution.get(name).needs_layer and "layer" not in opts else opts




def flipped_images(entry, plant: P.Plant, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Marked test images of other classes that the model assigns to the plant's class only with the
    marker: there the marker is the cause of the prediction. Returns them and how many were tested."""
    c = plant.class_index
    other = x[y != c]
    marked = plant.marker.apply(other)
    before, after = frame.predicted(entry, other, 1000), frame.predicted(entry, marked, 1000)
    return marked[(before != c) & (after == c)], len(other)


def _per_image(scores: dict[str, torch.Tensor], names: list[str], n: int) -> np.ndarray:
    return np.stack([scores[m].double().numpy() if m in scores else np.full(n, np.nan) for m in names])


def _ranked(per_image: np.ndarray, names: list[str], higher: bool) -> tuple[dict, dict]:
    means = G.method_means(per_image)
    rank = G.ranks(means, higher)
    return {m: num(v) for m, v in zip(names, means)}, {m: num(r, 1) for m, r in zip(names, rank)}


def case(profile: Profile, poisoned, clean, plant: P.Plant, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The leaderboard of one planted marker (see the module docstring for the fields)."""
    xs, tested = flipped_images(poisoned, plant, x, y)
    n_flipped = len(xs)
    xs = xs[:option(profile, "images")].to(poisoned.device)
    c = plant.class_index
    region = plant.marker.region
    out = {"class": plant.class_name, "marker": plant.marker.name, "area_share": num(plant.marker.area_share),
           "flipped": {"count": n_flipped, "of": tested}, "images": len(xs)}
    if len(xs) < 2:
        return {**out, "too_few": True}
    methods = method_options(profile)
    attrs, seconds, not_applicable = {}, {}, {}
    for name, opts in methods.items():
        start = time.perf_counter()
        try:
            attrs[name] = attribution.attribute(name, poisoned, xs, c, **_with_layer(name, opts)).detach()
        except NotApplicableError as e:
            not_applicable[name] = e.reason
            continue
        seconds[name] = round((time.perf_counter() - start) / len(xs), 5)
    names = list(attrs)
    n, k = len(xs), min(option(profile, "explain_images"), len(xs))

    truth = {}
    for gt in GROUND_TRUTH:
        m = metrics.metric(gt)
        truth[gt] = _per_image({nm: m(None, None, None, a.cpu(), region=region) for nm, a in attrs.items()},
                               names, n)
    out["ground_truth"] = {}
    for gt in GROUND_TRUTH:
        mean, rank = _ranked(truth[gt], names, True)
        out["ground_truth"][gt] = {nm: {"mean": mean[nm], "rank": rank[nm]} for nm in names}

    resamples, level = option(profile, "resamples"), option(profile, "level")
    out["metrics"], out["agreement"] = {}, {gt: {} for gt in GROUND_TRUTH}
    for mname in metric_names(profile):
        metric = _metric(profile, mname)
        explains = "explain" in metric.requires or metric.computes_attributions
        cols = k if explains else n
        start = time.perf_counter()
        scores, undefined = {}, {}
        for nm in names:
            kw = {"explain": metrics.explainer(nm, **_with_layer(nm, methods[nm]))} if explains else {}
            try:
                scores[nm] = metric(poisoned, xs[:cols], c, attrs[nm][:cols], **kw)
            except NotApplicableError as e:
                undefined[nm] = e.reason
        per = _per_image(scores, names, cols)
        mean, rank = _ranked(per, names, metric.higher_is_better)
        out["metrics"][mname] = {"label": metric.label, "family": metric.family,
                                 "higher_is_better": metric.higher_is_better, "images": cols,
                                 "mean": mean, "rank": rank, "undefined": undefined,
                                 "seconds": round(time.perf_counter() - start, 2)}
        for gt in GROUND_TRUTH:
            out["agreement"][gt][mname] = G.agreement(
                truth[gt][:, :cols], per, metric_higher_is_better=metric.higher_is_better, resamples=resamples,
                level=level, seed=profile.seed).to_json()
    out["truth_agreement"] = G.agreement(truth["relevance_mass"], truth["pointing_game"], resamples=resamples,
                                         level=level, seed=profile.seed).to_json()

    clean_mass = {}
    for nm in names:
        try:
            a = attribution.attribute(nm, clean, xs.to(clean.device), c, **_with_layer(nm, methods[nm]))
        except NotApplicableError:
            continue
        clean_mass[nm] = num(float(metrics.metric("relevance_mass")(None, None, None, a.cpu(), region=region)
                                   .nanmean()))
    poisoned_mass = {nm: out["ground_truth"]["relevance_mass"][nm]["mean"] for nm in clean_mass}
    higher = [nm for nm in clean_mass if None not in (clean_mass[nm], poisoned_mass[nm])
              and poisoned_mass[nm] > clean_mass[nm]]
    out.update(methods=names, labels={nm: attribution.get(nm).label for nm in methods},
               not_applicable=not_applicable, seconds=seconds,
               control={"clean_mass": clean_mass, "higher_on_poisoned": len(higher), "of": len(clean_mass)})
    return out


def run(profile: Profile, store: Store) -> dict:
    start = time.perf_counter()
    budget = CH.option(profile, "budget")
    specs = P.standard_specs(CH.option(profile, "marker_class"), CH.option(profile, "fraction"),
                             CH.option(profile, "multi_classes"))
    built = set(CH.option(profile, "sets"))
    chosen = [s for s in option(profile, "sets") if s in built and s in specs]
    x, y = fashion_mnist.load("test")
    n = CH.option(profile, "test_images")
    x, y = (x[:n], y[:n]) if n else (x, y)
    clean = P.trained(specs["clean"], budget, seed=profile.seed)
    settings = {"budget": budget, "sets": chosen, "images": option(profile, "images"),
                "explain_images": option(profile, "explain_images"), "resamples": option(profile, "resamples"),
                "level": option(profile, "level"), "max_area": option(profile, "max_area"),
                "ground_truth": list(GROUND_TRUTH), "metrics": metric_names(profile),
                "methods": method_options(profile), "metric_options": option(profile, "metric_options"),
                "test_images": len(y)}
    cases, skipped = {}, {}
    for s in chosen:
        poisoned = P.trained(specs[s], budget, seed=profile.seed)
        for plant in specs[s].plants:
            cid = f"{s}-{plant.class_name}"
            if plant.marker.area_share > option(profile, "max_area"):
                skipped[cid] = (f"the marker covers {plant.marker.area_share:.0%} of the image (more than "
                                f"{option(profile, 'max_area'):.0%}): a global marker, where localisation is not "
                                "defined")
                continue
            key = cache_key(STUDY, CODE_VERSION, cid, poisoned.info["key"], clean.info["key"], settings,
                            profile.seed, {m: attribution.get(m).version for m in settings["methods"]})
            res = store.cached_json(f"{STUDY}/parts/{cid}.json", key,
                                    lambda p=poisoned, pl=plant: case(profile, p, clean, pl, x, y))
            if res.get("too_few"):
                skipped[cid] = f"only {res['flipped']['count']} test image(s) flipped by the marker"
                continue
            cases[cid] = {"set": s, **res}
    if not cases:
        raise XaiError(f"leaderboard: no marker with a local region and flipped images among the sets {chosen}")
    key = cache_key(STUDY, CODE_VERSION, "figure", cases, skipped)
    drawn = store.job(f"{STUDY}/figures.json", key, lambda out: _draw(out, cases))
    results = {"settings": settings, "cases": cases, "headline": next(iter(cases)), "skipped": skipped, **drawn,
               "timings": {"total": round(time.perf_counter() - start, 1)}}
    store.write_json(f"{STUDY}/results.json", results)
    head = cases[results["headline"]]
    return {"cases": list(cases), "skipped": list(skipped),
            "tau": {m: a["tau"] for m, a in head["agreement"]["relevance_mass"].items()}}


def _draw(out, cases: dict) -> dict:
    figure = f"{STUDY}/agreement.webp"
    out.write_figure(figure, RL.agreement_figure(cases), dpi=100)
    return {"figure": figure}
