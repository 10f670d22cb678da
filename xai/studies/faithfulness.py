"""Chapter 4, are the maps faithful? Deletion / insertion AUC per method and model, the IG completeness gap,
and cascading-randomization sanity checks.

The maps are the saliency study's (same options, same cache), so this study mostly pays for the
perturbation forwards. Deletion and insertion score the target's softmax probability; AUCs are
averaged over images with a 95 % Student-t confidence interval (``ci95`` is the half-width). Two
image-blind baselines sit in the table as methods: ``random`` (uniform noise) and ``centre`` (a centred
Gaussian, sigma = a quarter of the side).

Artifacts (under ``faithfulness/``):

``results.json``
    ``metrics``: ``["deletion_zero", "deletion_blur", "insertion_zero", "insertion_blur"]`` (lower is
    better for deletion, higher for insertion); ``computed.<model>``: those computed for a model (the
    ``photo_metrics`` / ``fmnist_metrics`` options); ``steps``; ``rows`` (methods, then ``random``,
    ``centre``).
    ``images.<model>``: photo ids or Fashion-MNIST test indices (strings).
    ``table.<model>.<row>.<metric>``: ``mean``, ``ci95``, ``n``; a method that does not apply to a
    model has ``table.<model>.<method>.not_applicable`` (reason) instead.
    ``curves.<model>.<row>.<metric>``: the mean curve (``steps + 1`` values).
    ``best.<model>.<metric>``: the best method (baselines excluded).
    ``beats_random.<model>.<metric>``: ``count`` of methods whose mean beats the random map's, ``of``.
    ``completeness.models.<model>``: ``steps``, ``baseline``, ``gap_mean``, ``gap_median``, ``gap_max``,
    ``within_5pct`` (share of images), ``n``: the relative gap ``|sum(a) - (f(x) - f(x'))| / |f(x) - f(x')|``
    of the gallery's Integrated Gradients (logit). The mean is fragile: an image whose score barely
    differs from the baseline's has a tiny denominator; read the median. ``completeness.sweep``: ``model``, ``steps``,
    ``gap_mean``, ``gap_max`` (same images, more and more steps); ``completeness.sweep_imagenet`` likewise on
    one photo of the first photo model. ``completeness.auto``: IG with ``steps="auto"`` on the first
    photo model's first ``completeness_auto_photos`` photos: ``model``, ``images``, ``baseline``,
    ``target`` (relative gap), ``start_steps``, ``max_steps``, per photo ``steps``, ``gap`` and
    ``reached``; ``seconds`` (the refinement, all photos), ``fixed_steps`` (the most any photo needed)
    and ``fixed_seconds`` (one fixed-step run at that count), ``figure``.
    ``sanity.<model>``: ``units`` (randomized top to bottom, cumulatively), ``images``, ``layer`` (CAM),
    ``figure``, ``not_applicable.<method>``, ``seconds``, ``methods.<method>``: ``spearman_abs``,
    ``spearman_signed``, ``ssim`` (mean over images per depth; None where undefined), ``errors``
    (``<depth>: reason``). ``sanity_maps``: ``figure`` (first image, methods x depths), ``model``, ``image``.
    ``timings.<model>``: ``maps_seconds_per_image.<method>``, ``perturbation_seconds`` (all curves),
    ``sanity_seconds``.
``labels.<method>``: display names of the rows that are methods (the book's table is built from this JSON).
``curves.webp``, ``completeness_auto.webp``, ``sanity/<model>.webp``, ``sanity_maps.webp``, ``parts/*.json`` (cached pieces).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import attribution, models
from ..errors import NotApplicableError, XaiError
from ..metrics import auc, centre_map, completeness_gap, perturbation_curves, random_map, sanity_curves
from ..profiles import Profile
from ..render import faithfulness as RF
from ..render import maps as R
from ..render.store import Store, cache_key
from . import saliency
from . import _frame as frame
from ._frame import Batch, fmnist_batch, fmnist_indices, model_id, photo_batch
from .saliency import all_maps

STUDY = "faithfulness"
CODE_VERSION = 3
METRICS = ("deletion_zero", "deletion_blur", "insertion_zero", "insertion_blur")
BASELINE_ROWS = ("random", "centre")

DEFAULTS = {
    "photos": 8,  # photos per photo model (the first N of its label space)
    "photo_models": None,  # None: the profile's first (one keeps the full build in budget); else these
    "fmnist_images": 50,
    "steps": 10,
    # Petsiuk et al.'s pairing (delete to black, insert from blur) on the 224+ px models, all four on 28 px:
    "photo_metrics": ["deletion_zero", "insertion_blur"],
    "fmnist_metrics": list(METRICS),
    # perturbed images per forward pass (ImageNet models). 8, not 32: at 224 px this CPU runs a
    # forward + input-gradient pass of lite0 at 14.9 ms per image with 8 per pass and 23.6 ms with 32
    "internal_batch_size": 8,
    "fmnist_internal_batch_size": 256,
    "completeness_steps": [8, 16, 32, 64, 128, 256],
    "completeness_photo_steps": [16, 32, 64, 128],
    # steps="auto" on the first photo model's photos: the gap each must reach, and the step budget
    "completeness_target": 0.01,
    "completeness_max_steps": 512,
    "completeness_auto_photos": 8,
    "sanity_models": None,  # None: the first photo model and every Fashion-MNIST model
    "sanity_photos": 2,
    "sanity_fmnist_images": 8,
    "sanity_methods": ["gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop",
                       "grad_cam", "guided_grad_cam"],
    "sanity_smoothgrad_samples": 4,
    "sanity_ig_steps": 8,
}


option = frame.options(STUDY, DEFAULTS)


def ci95(values: np.ndarray) -> dict:
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    n = len(v)
    half = float(t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"mean": round(float(v.mean()), 4), "ci95": None if half is None else round(half, 4), "n": n}


def _metrics(profile: Profile, entry: models.ModelEntry) -> list[str]:
    chosen = option(profile, "fmnist_metrics" if entry.label_space == models.FASHION_MNIST else "photo_metrics")
    for m in chosen:
        if m not in METRICS:
            raise XaiError(f"unknown faithfulness metric {m!r}; choose from {', '.join(METRICS)}")
    return list(chosen)


def _ibs(profile: Profile, entry: models.ModelEntry) -> int:
    return option(profile, "fmnist_internal_batch_size" if frame.small_inputs(entry) else "internal_batch_size")


def _photo_models(profile: Profile) -> list[str]:
    chosen = option(profile, "photo_models")
    if chosen is None:
        return list(profile.photo_models[:1])
    return [m for m in chosen if m in profile.photo_models]


def _batch(entry: models.ModelEntry, profile: Profile, n_photos: int, n_fmnist: int) -> Batch:
    return frame.batch_for(entry, profile, n_photos, n_fmnist)


# -- deletion / insertion -------------------------------------------------------------------------------------------

def _faithfulness_of(entry: models.ModelEntry, b: Batch, names: list[str], profile: Profile) -> dict:
    maps, _layer = all_maps(entry, b, profile, names)
    shape = tuple(b.x.shape[:1]) + tuple(b.x.shape[-2:])
    rows = {n: m.maps for n, m in maps.items() if m.maps is not None}
    rows["random"] = random_map(shape, seed=profile.seed)
    rows["centre"] = centre_map(shape)
    steps, ibs = option(profile, "steps"), _ibs(profile, entry)
    metrics = _metrics(profile, entry)
    names = list(rows)
    stack = torch.stack([rows[n] for n in names])
    table: dict = {n: {} for n in names}
    curves: dict = {n: {} for n in names}
    start = time.perf_counter()
    for metric in metrics:
        mode, sub = metric.split("_")
        c = perturbation_curves(entry, b.x, b.targets, stack, mode=mode, substrate_kind=sub, steps=steps,
                                internal_batch_size=ibs, seed=profile.seed)
        for n, cn in zip(names, c):
            table[n][metric] = ci95(auc(cn).numpy())
            curves[n][metric] = [round(float(v), 4) for v in cn.mean(0)]
    for n, m in maps.items():
        if m.maps is None:
            table[n] = {"not_applicable": m.error}
    seconds = time.perf_counter() - start
    return {"images": b.ids, "table": table, "curves": curves,
            "timings": {"maps_seconds_per_image": {n: round(m.seconds_per_image, 4) for n, m in maps.items()},
                        "perturbation_seconds": round(seconds, 2)},
            "completeness": _completeness_of(entry, b, maps.get("integrated_gradients"), profile)}


def _completeness_of(entry: models.ModelEntry, b: Batch, ig, profile: Profile) -> dict | None:
    """The relative completeness gap of the gallery's IG maps (their sum is the attributions' total)."""
    if ig is None or ig.maps is None:
        return None
    opts = saliency.method_options(profile, "integrated_gradients", entry)
    ref = attribution.baseline(b.x, opts["baseline_kind"], seed=opts["seed"])
    gap = completeness_gap(entry, b.x, b.targets, ig.maps, ref).numpy()
    gap = gap[np.isfinite(gap)]
    return {"steps": opts["steps"], "baseline": opts["baseline_kind"], "n": int(len(gap)),
            "gap_mean": round(float(gap.mean()), 5), "gap_median": round(float(np.median(gap)), 5),
            "gap_max": round(float(gap.max()), 5), "within_5pct": round(float((gap <= 0.05).mean()), 4)}


def completeness_sweep(entry: models.ModelEntry, b: Batch, steps: list[int], profile: Profile) -> dict:
    opts = saliency.method_options(profile, "integrated_gradients", entry)
    ref = attribution.baseline(b.x, opts["baseline_kind"], seed=opts["seed"])
    means, maxes = [], []
    for s in steps:
        attr = attribution.integrated_gradients(entry, b.x, b.targets, **{**opts, "steps": s})
        gap = completeness_gap(entry, b.x, b.targets, attr, ref).numpy()
        means.append(round(float(np.nanmean(gap)), 5))
        maxes.append(round(float(np.nanmax(gap)), 5))
    return {"model": entry.name, "images": b.ids, "baseline": opts["baseline_kind"], "steps": list(steps),
            "gap_mean": means, "gap_max": maxes}


def completeness_auto(entry: models.ModelEntry, b: Batch, profile: Profile) -> dict:
    """IG with ``steps="auto"``: the steps each photo needed to reach the target gap (or the budget), and
    the cost against one fixed step count that would give every photo as many steps as the worst one."""
    opts = saliency.method_options(profile, "integrated_gradients", entry)
    gallery_steps = opts.pop("steps")
    target, budget = option(profile, "completeness_target"), option(profile, "completeness_max_steps")
    start = min(gallery_steps, budget)  # from the gallery's count: what refining it would cost
    t0 = time.perf_counter()
    r = attribution.integrated_gradients_refined(entry, b.x, b.targets, completeness=target, start_steps=start,
                                                 max_steps=budget, **opts)
    auto_seconds = time.perf_counter() - t0
    worst = max(r.steps)
    t0 = time.perf_counter()
    attribution.integrated_gradients(entry, b.x, b.targets, steps=worst, **opts)
    fixed_seconds = time.perf_counter() - t0
    return {"model": entry.name, "images": b.ids, "baseline": opts["baseline_kind"], "target": target,
            "start_steps": start, "max_steps": budget, "steps": list(r.steps),
            "gap": [None if math.isnan(g) else round(float(g), 5) for g in r.gap], "reached": list(r.reached),
            "seconds": round(auto_seconds, 3), "fixed_steps": worst, "fixed_seconds": round(fixed_seconds, 3)}


# -- sanity checks --------------------------------------------------------------------------------------------

def _sanity_options(profile: Profile, name: str, entry: models.ModelEntry) -> dict:
    opts = saliency.method_options(profile, name, entry)
    if name in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        opts["samples"] = option(profile, "sanity_smoothgrad_samples")
    if name == "integrated_gradients":
        opts["steps"] = option(profile, "sanity_ig_steps")
    return opts


def _sanity_of(entry: models.ModelEntry, b: Batch, names: list[str], profile: Profile, store: Store,
               with_maps: bool) -> dict:
    layer = saliency.cam_layer(entry, b.x)
    explain, not_applicable = {}, {}
    for name in names:
        m = attribution.get(name)
        opts = {**_sanity_options(profile, name, entry), **({"layer": layer} if m.needs_layer else {})}
        try:  # a method that never applies to this model is left out, with its reason
            m(entry, b.x[:1], b.targets[:1], **opts)
        except NotApplicableError as e:
            not_applicable[name] = str(e)
            continue
        explain[name] = (lambda net, m=m, opts=opts: m(net, b.x, b.targets, **opts))
    start = time.perf_counter()
    result = sanity_curves(entry.model, explain, {n: attribution.get(n).kind for n in explain}, seed=profile.seed)
    methods = {}
    for name, rows in result.curves.items():
        methods[name] = {k: [None if "error" in r or all(v is None for v in r[k]) else
                             round(float(np.nanmean([v for v in r[k] if v is not None])), 4) for r in rows]
                         for k in ("spearman_abs", "spearman_signed", "ssim")}
        methods[name]["errors"] = {str(r["depth"]): r["error"] for r in rows if "error" in r}
    out = {"units": result.units, "images": b.ids, "layer": layer, "methods": methods,
           "not_applicable": not_applicable, "seconds": round(time.perf_counter() - start, 2)}
    out["figure"] = _sanity_figure(entry.name, out, store)
    if with_maps:
        out["maps_figure"] = _sanity_maps_figure(out, result.first_maps, store)
    return out


def _sanity_figure(name: str, res: dict, store: Store) -> str:
    import matplotlib.pyplot as plt

    x = ["trained"] + res["units"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for method, curves in res["methods"].items():
        label = attribution.get(method).label
        for ax, key in zip(axes, ("spearman_abs", "ssim")):
            ax.plot(range(len(x)), [1.0] + [np.nan if v is None else v for v in curves[key]], marker="o", ms=3,
                    label=label)
    for ax, ylabel in zip(axes, ("Spearman rank correlation (|map|)", "SSIM")):
        ax.set_xticks(range(len(x)))
        ax.set_xticklabels(x, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_ylim(-0.2 if ylabel.startswith("Spearman") else 0, 1.05)
        ax.grid(alpha=0.3)
        ax.set_xlabel("randomized down to (cumulative, from the output)", fontsize=7)
    axes[1].legend(fontsize=6, loc="upper right")
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    rel = f"{STUDY}/sanity/{name}.webp"
    store.write_figure(rel, fig, dpi=100)
    return rel


def _sanity_maps_figure(res: dict, first: dict, store: Store) -> str:
    import matplotlib.pyplot as plt

    methods = [m for m in res["methods"]]
    cols = ["trained"] + res["units"]
    fig, axes = plt.subplots(len(methods), len(cols), figsize=(1.15 * len(cols), 1.2 * len(methods)), squeeze=False)
    for r, method in enumerate(methods):
        kind = attribution.get(method).kind
        for c, col in enumerate(cols):
            ax = axes[r, c]
            m = first[method][c]
            if m is None:
                R.blank(ax, "error")
            else:
                R.draw(ax, m, signed=R.is_signed(kind),
                       title=col if r == 0 else "", fontsize=6)
            if c == 0:
                ax.set_ylabel(attribution.get(method).label, fontsize=7)
    fig.subplots_adjust(wspace=0.03, hspace=0.08)
    rel = f"{STUDY}/sanity_maps.webp"
    store.write_figure(rel, fig, dpi=100)
    return rel


# -- figures --------------------------------------------------------------------------------------------------

def curves_figure(results: dict, model: str, store: Store) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = results["steps"]
    x = np.linspace(0, 1, steps + 1)
    colours = plt.get_cmap("tab20")
    for i, (row, curves) in enumerate(results["curves"][model].items()):
        style = {"ls": "--", "color": "0.4"} if row in BASELINE_ROWS else {"color": colours(i % 20)}
        label = attribution.get(row).label if row in attribution.METHODS else f"{row} (baseline)"
        if "deletion_zero" in curves:
            axes[0].plot(x, curves["deletion_zero"], label=label, lw=1, **style)
        if "insertion_blur" in curves:
            axes[1].plot(x, curves["insertion_blur"], label=label, lw=1, **style)
    axes[0].set(xlabel="fraction of pixels replaced by black", ylabel="p(target)", title="deletion")
    axes[1].set(xlabel="fraction of pixels restored from blur", ylabel="p(target)", title="insertion")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=5.5, ncol=2)
    fig.suptitle(model, fontsize=9)
    fig.tight_layout()
    rel = f"{STUDY}/curves.webp"
    store.write_figure(rel, fig, dpi=100)
    return rel


def run(profile: Profile, store: Store) -> dict:
    names = saliency.method_names(profile)
    n_photos, n_fmnist = option(profile, "photos"), option(profile, "fmnist_images")
    entries = {n: frame.load(n, profile) for n in [*_photo_models(profile), *profile.fmnist_models]}
    results: dict = {"metrics": list(METRICS), "steps": option(profile, "steps"), "rows": names + list(BASELINE_ROWS),
                     "computed": {}, "images": {}, "table": {}, "curves": {}, "best": {}, "beats_random": {},
                     "completeness": {"models": {}}, "sanity": {}, "timings": {}}
    for name, entry in entries.items():
        b = _batch(entry, profile, n_photos, n_fmnist)
        key = cache_key(STUDY, CODE_VERSION, "faithfulness", model_id(entry), b.keys, names, results["steps"],
                        _metrics(profile, entry),
                        _ibs(profile, entry), {n: saliency.method_options(profile, n, entry) for n in names},
                        profile.seed)
        part = store.cached_json(f"{STUDY}/parts/faithfulness_{name}.json", key,
                                 lambda e=entry, b=b: _faithfulness_of(e, b, names, profile))
        results["images"][name] = part["images"]
        results["computed"][name] = _metrics(profile, entry)
        results["table"][name] = part["table"]
        results["curves"][name] = part["curves"]
        results["timings"][name] = part["timings"]
        if part["completeness"]:
            results["completeness"]["models"][name] = part["completeness"]
        computed = [k for k in METRICS if k in part["table"]["random"]]
        applicable = [n for n in names if "not_applicable" not in part["table"][n]]
        results["best"][name] = {
            k: (min if k.startswith("deletion") else max)(applicable, key=lambda n: part["table"][n][k]["mean"])
            for k in computed} if applicable else {}
        rnd = part["table"]["random"]
        results["beats_random"][name] = {
            k: {"count": sum((part["table"][n][k]["mean"] < rnd[k]["mean"]) if k.startswith("deletion")
                             else (part["table"][n][k]["mean"] > rnd[k]["mean"]) for n in applicable),
                "of": len(applicable)} for k in computed}

    fm = [n for n in entries if entries[n].label_space == models.FASHION_MNIST]
    if fm:
        e = entries[fm[0]]
        b = fmnist_batch(e, fmnist_indices(min(10, n_fmnist)))
        steps = option(profile, "completeness_steps")
        key = cache_key(STUDY, CODE_VERSION, "sweep", model_id(e), b.keys, steps,
                        saliency.method_options(profile, "integrated_gradients", e))
        results["completeness"]["sweep"] = store.cached_json(f"{STUDY}/parts/sweep.json", key,
                                                             lambda: completeness_sweep(e, b, steps, profile))
    else:
        results["completeness"]["sweep"] = frame.skipped(frame.NO_FMNIST)
    im = [n for n in entries if entries[n].label_space in profile.photo_spaces]
    if im:
        e = entries[im[0]]
        b = photo_batch(e, frame.photos_of(profile, e, 1))
        steps = option(profile, "completeness_photo_steps")
        key = cache_key(STUDY, CODE_VERSION, "sweep", model_id(e), b.keys, steps,
                        saliency.method_options(profile, "integrated_gradients", e))
        results["completeness"]["sweep_imagenet"] = store.cached_json(
            f"{STUDY}/parts/sweep_imagenet.json", key, lambda: completeness_sweep(e, b, steps, profile))
        b = photo_batch(e, frame.photos_of(profile, e, option(profile, "completeness_auto_photos")))
        key = cache_key(STUDY, CODE_VERSION, "auto", model_id(e), b.keys, option(profile, "completeness_target"),
                        option(profile, "completeness_max_steps"),
                        saliency.method_options(profile, "integrated_gradients", e))

        def auto():
            res = completeness_auto(e, b, profile)
            res["figure"] = f"{STUDY}/completeness_auto.webp"
            store.write_figure(res["figure"], RF.auto_steps_figure(res))
            return res
        results["completeness"]["auto"] = store.cached_json(f"{STUDY}/parts/auto.json", key, auto)
    else:
        results["completeness"]["sweep_imagenet"] = frame.skipped(frame.NO_PHOTOS)
        results["completeness"]["auto"] = frame.skipped(frame.NO_PHOTOS)

    sanity_models = option(profile, "sanity_models")
    if sanity_models is None:
        sanity_models = list(profile.photo_models[:1]) + list(profile.fmnist_models)
    sanity_methods = [n for n in option(profile, "sanity_methods") if n in names]
    for i, name in enumerate(m for m in sanity_models if m in entries or m in profile.photo_models):
        entry = entries.get(name) or frame.load(name, profile)
        b = _batch(entry, profile, option(profile, "sanity_photos"), option(profile, "sanity_fmnist_images"))
        key = cache_key(STUDY, CODE_VERSION, "sanity", model_id(entry), b.keys, sanity_methods,
                        {n: _sanity_options(profile, n, entry) for n in sanity_methods}, profile.seed, i == 0)
        res = store.cached_json(f"{STUDY}/parts/sanity_{name}.json", key,
                                lambda e=entry, b=b, maps=(i == 0): _sanity_of(e, b, sanity_methods, profile, store,
                                                                                maps))
        results["sanity"][name] = res
        results["timings"].setdefault(name, {})["sanity_seconds"] = res["seconds"]
        if "maps_figure" in res:
            results["sanity_maps"] = {"figure": res["maps_figure"], "model": name, "image": res["images"][0]}

    # Display names for the book's table (the baseline rows are not methods and have none).
    results["labels"] = {row: attribution.get(row).label for row in results["rows"] if row in attribution.METHODS}
    if results["table"]:
        results["curves_figure"] = curves_figure(results, next(iter(results["table"])), store)
    store.write_json(f"{STUDY}/results.json", results)
    return {"models": list(results["table"]), "rows": len(results["rows"]),
            "best_deletion": {m: b.get("deletion_zero") for m, b in results["best"].items()},
            "sanity_models": list(results["sanity"])}
