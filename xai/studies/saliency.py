"""Chapter 2, saliency maps: every method on every model, the choices behind a map, side by side.

Each map explains the model's own top-1 class (what it answered, right or wrong). CAM methods use the
deepest of the entry's layers whose spatial positions move the prediction
(:func:`xai.attribution.default_layer`). Maps are drawn by :mod:`xai.render.maps` (its clipping rule,
colormaps and overlays); the 2-D map of each method follows its kind (:data:`xai.attribution.KINDS`).

Attribution maps are cached per (model weights, image, target, method, options, code version) under
``.cache/attributions``, with the seconds they took; :mod:`xai.studies.faithfulness` reuses them.

Artifacts (under ``saliency/``):

``results.json``
    ``methods.<method>``: ``label``, ``kind``, ``family``, ``cite``, ``options`` (as run, per family).
    ``imagenet``: the photos part, on every model with labelled photos (the ImageNet-1k models, and a
    model of a user's own classes on its folder sets; the key keeps its first name). ``imagenet.models``,
    ``imagenet.photos`` (of every label space), ``imagenet.model_photos.<model>`` (its space's photos).
    ``imagenet.cam_layer.<model>``: the CAM layer used.
    ``imagenet.targets.<model>.<photo>``: ``index``, ``name``, ``p`` (the explained top-1 class) and
    ``correct`` (null for a photo without a label).
    ``imagenet.gallery.<photo>``: figure path (rows: methods, columns: models);
    ``imagenet.gallery_models.<photo>``: its columns (the models of the photo's label space).
    ``imagenet.not_applicable.<model>.<method>``: the reason a method gave no map (absent if it did).
    ``imagenet.cam_agreement.<model>.<method>``: mean Spearman ρ of a CAM variant's maps with Grad-CAM's
    over the photos (same layer; not the counterfactual and guided maps), None where they are constant.
    ``fmnist.models``, ``fmnist.images`` (test-set indices), ``fmnist.labels``, ``fmnist.cam_layer.<model>``,
    ``fmnist.targets.<model>`` (list of ``index``, ``name``, ``p``, ``correct``), ``fmnist.gallery.<model>``,
    ``fmnist.not_applicable.<model>.<method>``, ``fmnist.non_rectifiers.<model>`` (its activation types
    that are not rectifiers, e.g. ``["GELU"]``).
    ``timings.<model>.<method>``: ``seconds_per_image`` (wall clock of the batched call / images),
    ``images``, ``device``; measured when the map was computed, so a cached rerun reports the original.
    ``logit_vs_softmax.<model>.<photo>``: ``p`` (top-1 probability), ``spearman_softmax`` (rank correlation
    of the max-|gradient| maps of the softmax probability and of the logit); figure path in
    ``logit_vs_softmax.figure``. The log-softmax gradient is the softmax's divided by p, the same map.
    ``choices``: ``figure``, ``model``, ``photo``: sign, channel aggregation and smoothing side by side.
    ``sensitivity``: one free parameter per method, varied on the first photo of the first photo
    model: ``figure``, ``model``, ``photos``, ``targets`` (class names), ``seconds``, ``parameters.<id>``
    (``ig_baseline``, ``smoothgrad_noise``, ``occlusion_window``): ``method``, ``parameter``, ``reference``
    (the value the others are compared with: the study's baseline, no noise, the study's window in px),
    ``variants`` (list of ``value``, ``label``, ``spearman``: per photo, rank correlation of the 2-D map
    with the reference's, null where a map is constant); IG variants also have ``score_difference``
    (f(x) - f(x'), the target's logit) and ``attribution_sum`` per photo, occlusion variants ``stride``
    (px); ``steps`` (IG), ``samples`` (SmoothGrad), ``side`` (occlusion, px).
    ``logit_vs_softmax``, ``choices``, ``sensitivity`` and ``lrp`` are computed on the models of the first
    model's label space.
    ``lrp``: where LRP's relevance goes, on the first two photos: ``photos``, ``models.<model>.<composite>``
    (``epsilon_plus_flat``, ``epsilon_gamma_box``) ``.canonized`` (the gallery's pass) and ``.plain`` (no
    canonizer, unchecked): ``logit``, and ``input``, ``biases``, ``unaccounted`` as shares of the logit,
    lists over the photos (they add up to 1); ``not_applicable`` (reason) where the package refuses.
``gallery/<photo>.webp``, ``fmnist/<model>.webp``, ``logit_vs_softmax.webp``, ``choices.webp``, ``sensitivity.webp``,
``parts/*.json`` (cached pieces).
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import attribution, models
from ..data import fashion_mnist, images
from ..errors import NotApplicableError, XaiError
from ..io import atomic_write
from ..paths import cache_dir
from ..profiles import GALLERY_METHODS, Profile
from ..render import maps as R
from ..render.gallery import gallery_figure
from ..render.store import Store, cache_key
from . import _frame as frame
from ._frame import (Batch, fmnist_batch, fmnist_indices, load, model_id, photo_batch, require_label_space,
                     small_inputs)

STUDY = "saliency"
NOISE_METHODS = ("smoothgrad", "smoothgrad_sq", "vargrad")
CODE_VERSION = 5  # bump when what the study draws or records changes meaning
MAPS_VERSION = 1  # bump when how maps are computed or cached changes meaning (invalidates .cache/attributions)

# Per-study knobs; the defaults are the full profile's, sized so that the attribution studies fit the
# build's time budget on two CPU cores. Profiles override them in ``options``.
DEFAULTS = {
    "photos": 8,  # ImageNet photos in the gallery (first N of the profile's); None: all
    "methods": list(GALLERY_METHODS),  # the gallery's methods (see xai.profiles.GALLERY_METHODS for why)
    "smoothgrad_samples": 8,
    "noise": 0.15,
    "ig_steps": 32,  # the completeness gap this leaves is measured in the faithfulness study
    "ig_baseline": "black",
    "occlusion_window": 1 / 7,  # fraction of the side (or px); None: the method's default (a seventh)
    "occlusion_stride": 1 / 7,  # fraction of the side (or px); None: half the window (4x the cost)
    "score_cam_channels": 32,  # the most varying channels; None: every channel (1280 at EfficientNet's head)
    "gradient_shap_samples": 16,  # GradientSHAP's (reference, noise, point) draws per image
    "superpixels": 50,  # SLIC segments of superpixel ablation, KernelSHAP and LIME
    # KernelSHAP's and LIME's coalitions per image: 128 of the 2^50 keep lite0 near a second per photo
    # and leave the maps visibly noisy (the gallery shows what a budget buys; the defaults are 512)
    "shap_samples": 128,
    "rise_masks": 256,  # the paper uses 4000-8000; 256 cost lite0 1.9 s per photo here, lite2 3.7 s
    "ablation_cam_batch": 256,  # ablated copies of the CAM layer per pass (lite0's head has 1280 channels)
    "sensitivity_noise": [0.05, 0.15, 0.3],  # SmoothGrad noise levels of the sensitivity figure
    # images per forward pass inside a method (ImageNet models). 8, not 32: at 224 px this CPU runs a
    # forward + input-gradient pass of lite0 at 14.9 ms per image with 8 per pass and 23.6 ms with 32
    "internal_batch_size": 8,
    "fmnist_internal_batch_size": 256,  # the same for the 28 px models, which need bigger batches to be efficient
}


option = frame.options(STUDY, DEFAULTS)


def method_names(profile: Profile) -> list[str]:
    names = option(profile, "methods") or list(GALLERY_METHODS)
    for n in names:
        attribution.get(n)
    return list(names)


def method_options(profile: Profile, name: str, entry: models.ModelEntry | None = None) -> dict:
    """The options a study passes to a method (the CAM layer is added per model). ``entry`` picks the
    internal batch size for its input size."""
    small = small_inputs(entry)
    ibs = option(profile, "fmnist_internal_batch_size" if small else "internal_batch_size")
    if name in NOISE_METHODS:
        return {"samples": option(profile, "smoothgrad_samples"), "noise": option(profile, "noise"),
                "internal_batch_size": ibs, "seed": profile.seed}
    if name == "integrated_gradients":
        return {"steps": option(profile, "ig_steps"), "baseline_kind": option(profile, "ig_baseline"),
                "internal_batch_size": ibs, "seed": profile.seed}
    if name == "occlusion":
        return {"window": option(profile, "occlusion_window"), "stride": option(profile, "occlusion_stride"),
                "internal_batch_size": ibs}
    if name == "score_cam":
        return {"max_channels": option(profile, "score_cam_channels"), "internal_batch_size": ibs}
    if name == "gradient_shap":
        return {"samples": option(profile, "gradient_shap_samples"), "internal_batch_size": ibs, "seed": profile.seed}
    if name == "feature_ablation":
        return {"segments": option(profile, "superpixels"), "internal_batch_size": ibs}
    if name in ("kernel_shap", "lime"):
        return {"segments": option(profile, "superpixels"), "samples": option(profile, "shap_samples"),
                "internal_batch_size": ibs, "seed": profile.seed}
    if name == "rise":
        return {"masks": option(profile, "rise_masks"), "internal_batch_size": ibs, "seed": profile.seed}
    if name == "ablation_cam":
        return {"internal_batch_size": option(profile, "ablation_cam_batch")}
    if name == "deeplift_shap":
        return {"seed": profile.seed}
    return {}


# -- maps, computed once and cached -------------------------------------------------------------------------

@dataclass
class Maps:
    """One method on one batch: 2-D maps ``[N, H, W]`` (None if not applicable) and timing."""

    maps: torch.Tensor | None
    error: str | None
    seconds_per_image: float
    refusal: dict | None = None  # NotApplicableError.fields() when the method refused


def _cache_path(key: str):
    return cache_dir() / "attributions" / key[:2] / f"{key}.pt"


def compute_maps(entry: models.ModelEntry, batch: Batch, method: str, options: dict, compute=None) -> Maps:
    """The method's 2-D maps for every image of ``batch``, from the cache where possible; missing images
    are computed in one batched call (``compute(indices) -> (attributions, seconds)`` if given, else the
    method itself). A method that is not applicable gives ``maps=None`` and the reason."""
    m = attribution.get(method)
    keys = [cache_key("map", MAPS_VERSION, model_id(entry), k, int(t), method, m.version, options)
            for k, t in zip(batch.keys, batch.targets)]
    cached = {}
    for i, key in enumerate(keys):
        path = _cache_path(key)
        if path.exists():
            try:
                record = torch.load(path, weights_only=True)
            except (OSError, RuntimeError, EOFError):
                path.unlink(missing_ok=True)  # a damaged cache file is recomputed, never trusted
                continue
            if record.get("error") is None or record.get("refusal") is not None:
                cached[i] = record  # a refusal cached before refusals had fields is recomputed (it is quick)
    todo = [i for i in range(len(keys)) if i not in cached]
    if todo:
        _warm_up(entry, batch.x[:1])
        start = time.perf_counter()
        try:
            if compute is None:
                attr = m(entry, batch.x[todo], batch.targets[todo], **options)
                seconds = time.perf_counter() - start
            else:
                attr, seconds = compute(tuple(todo))
            flat, error, refusal = R.saliency_map(attr, m.kind).float().cpu(), None, None
        except NotApplicableError as e:
            flat, error, refusal, seconds = None, str(e), e.fields(), time.perf_counter() - start
        except XaiError as e:
            flat, error, refusal, seconds = None, str(e), None, time.perf_counter() - start
        per_image = seconds / len(todo)
        for j, i in enumerate(todo):
            record = {"map": None if flat is None else flat[j].clone(), "error": error, "refusal": refusal,
                      "seconds": per_image}
            if error is None or refusal is not None:  # maps and refusals are kept; other failures retried
                atomic_write(_cache_path(keys[i]), lambda p, r=record: torch.save(r, p))
            cached[i] = record
    records = [cached[i] for i in range(len(keys))]
    failed = [r for r in records if r["error"]]
    if failed:
        return Maps(None, failed[0]["error"], float(np.mean([r["seconds"] for r in records])),
                    failed[0].get("refusal"))
    return Maps(torch.stack([r["map"] for r in records]), None, float(np.mean([r["seconds"] for r in records])))


def cam_layer(entry: models.ModelEntry, x: torch.Tensor) -> str:
    return attribution.default_layer(entry, x[:1].to(entry.device))


_WARMED: weakref.WeakSet = weakref.WeakSet()


def _warm_up(entry: models.ModelEntry, x: torch.Tensor) -> None:
    """One untimed gradient map before a model's first timed method: the first call in a process pays
    for captum's import and oneDNN's kernel set-up (on lite0: 0.084 s per image, then 0.028)."""
    if entry.model in _WARMED:
        return
    target = frame.predicted(entry, x).to(entry.device)
    x = x.to(entry.device)
    attribution.gradient(entry, x, target)
    _WARMED.add(entry.model)


def non_rectifiers(entry: models.ModelEntry) -> list[str]:
    """The activation types of a model for which the guided methods are undefined."""
    from ..attribution.guided import UNDEFINED_ACTIVATIONS

    return sorted({type(m).__name__ for m in entry.model.modules() if type(m).__name__ in UNDEFINED_ACTIVATIONS})


def all_maps(entry: models.ModelEntry, batch: Batch, profile: Profile, names: Sequence[str]) -> tuple[dict, str]:
    """``({method: Maps}, cam layer)`` for one model and batch. SmoothGrad, SmoothGrad² and VarGrad are
    three statistics of the same noisy gradients: they are drawn once, and each reports that time."""
    layer = cam_layer(entry, batch.x)
    moments: dict = {}

    def noise_stat(name: str, opts: dict):
        def compute(todo: tuple[int, ...]):
            if todo not in moments:
                start = time.perf_counter()
                idx = list(todo)
                mean, sq = attribution.noise_gradient_moments(entry, batch.x[idx], batch.targets[idx], **opts)
                moments[todo] = (mean, sq, time.perf_counter() - start)
            mean, sq, seconds = moments[todo]
            stat = {"smoothgrad": mean, "smoothgrad_sq": sq, "vargrad": (sq - mean * mean).clamp_min(0)}[name]
            return stat, seconds
        return compute

    out = {}
    for name in names:
        opts = method_options(profile, name, entry)
        compute = noise_stat(name, opts) if name in NOISE_METHODS else None
        if attribution.get(name).needs_layer:
            opts["layer"] = layer
        out[name] = compute_maps(entry, batch, name, opts, compute)
    return out, layer


def cam_agreement(maps: dict) -> dict:
    """``{model: {method: mean Spearman ρ with Grad-CAM's map}}`` for every other CAM-family method with
    maps (None where every map was constant), over the photos: how much the variants differ on a layer."""
    from ..metrics import spearman

    out = {}
    for model, by_method in maps.items():
        ref = by_method.get("grad_cam")
        if ref is None or ref.maps is None:
            continue
        row = {}
        for name, mp in by_method.items():
            # Variants of the same map only: Counterfactual Grad-CAM explains the other classes, and
            # Guided Grad-CAM is a pixel map (Grad-CAM times Guided Backprop).
            if (name in ("grad_cam", "counterfactual_grad_cam", "guided_grad_cam")
                    or attribution.get(name).family != "cam" or mp.maps is None):
                continue
            rho = spearman(ref.maps, mp.maps)
            row[name] = None if np.isnan(rho).all() else round(float(np.nanmean(rho)), 4)
        out[model] = row
    return out


def timing_row(entry: models.ModelEntry, maps: Maps, n: int) -> dict:
    return {"seconds_per_image": round(maps.seconds_per_image, 4), "images": n, "device": str(entry.device)}


# -- figures ---------------------------------------------------------------------------------------------------

def imagenet_part(profile: Profile, store: Store, names: list[str], timings: dict) -> dict:
    n = option(profile, "photos")
    entries = {name: load(name, profile) for name in profile.photo_models}
    own, photos = frame.photos_by_model(profile, entries, n)  # each model's label space's photos
    batches = {name: photo_batch(e, own[name]) for name, e in entries.items()}
    results = {"models": list(entries), "photos": photos, "model_photos": own, "cam_layer": {}, "targets": {},
               "gallery": {}, "gallery_models": {}, "not_applicable": {}}
    maps = {}
    for name, entry in entries.items():
        b = batches[name]
        maps[name], results["cam_layer"][name] = all_maps(entry, b, profile, names)
        results["targets"][name] = {
            pid: {"index": int(t), "name": entry.class_names[int(t)], "p": round(float(p), 4),
                  "correct": None if images.photo(pid).label is None else int(t) == images.photo(pid).label}
            for pid, t, p in zip(b.ids, b.targets, b.probs)}
        timings[name] = {m: timing_row(entry, mp, len(own[name])) for m, mp in maps[name].items()}
        results["not_applicable"][name] = {m: mp.error for m, mp in maps[name].items() if mp.error}
    results["cam_agreement"] = cam_agreement(maps)
    for pid in photos:
        here = {m: own[m].index(pid) for m in entries if pid in own[m]}  # the models of the photo's space
        rel = f"{STUDY}/gallery/{pid}.webp"
        key = cache_key(STUDY, CODE_VERSION, "gallery", pid, names,
                        {m: [model_id(entries[m]), results["cam_layer"][m]] for m in here},
                        {n_: method_options(profile, n_) for n_ in names})
        if not store.fresh(rel, key):
            columns = [(m, batches[m].x[i], f"{results['targets'][m][pid]['name']} "
                        f"({results['targets'][m][pid]['p']:.2f})") for m, i in here.items()]
            cells = {(r, c): ((None, maps[m][meth].refusal) if maps[m][meth].maps is None
                              else (maps[m][meth].maps[i].numpy(), None))
                     for r, meth in enumerate(names) for c, (m, i) in enumerate(here.items())}
            store.write_figure(rel, gallery_figure(columns, names, cells), key, dpi=110)
        results["gallery"][pid] = rel
        results["gallery_models"][pid] = list(here)
    # The figures about the choices behind a map: saliency_choices, on the models of the first model's
    # label space (they share its photos) and on those photos.
    from .saliency_choices import choices, logit_vs_softmax, lrp_accounts, sensitivity

    first = next(iter(entries))
    photos = own[first]
    entries = {m: e for m, e in entries.items() if e.label_space == entries[first].label_space}
    batches = {m: batches[m] for m in entries}

    key = cache_key(STUDY, CODE_VERSION, "logit_vs_softmax", [model_id(e) for e in entries.values()], photos[:2])
    results["logit_vs_softmax"] = store.cached_json(f"{STUDY}/parts/logit_vs_softmax.json", key,
                                                    lambda: logit_vs_softmax(entries, batches, store, photos[:2]))
    key = cache_key(STUDY, CODE_VERSION, "lrp_accounts", [model_id(e) for e in entries.values()], photos[:2],
                    attribution.get("lrp_epsilon_plus_flat").version)
    results["lrp"] = store.cached_json(f"{STUDY}/parts/lrp.json", key,
                                       lambda: lrp_accounts(entries, batches, photos[:2]))
    key = cache_key(STUDY, CODE_VERSION, "choices", model_id(entries[first]), photos[0],
                    method_options(profile, "integrated_gradients"), method_options(profile, "smoothgrad"))
    results["choices"] = store.cached_json(f"{STUDY}/parts/choices.json", key,
                                           lambda: choices(entries[first], batches[first], store, profile))
    key = cache_key(STUDY, CODE_VERSION, "sensitivity", model_id(entries[first]), photos[:1],
                    {n_: method_options(profile, n_) for n_ in ("integrated_gradients", "smoothgrad", "occlusion")},
                    option(profile, "sensitivity_noise"))
    results["sensitivity"] = store.cached_json(
        f"{STUDY}/parts/sensitivity.json", key,
        lambda: sensitivity(entries[first], batches[first].subset(1), store, profile))
    return results


def fmnist_part(profile: Profile, store: Store, names: list[str], timings: dict) -> dict:
    indices = fmnist_indices(profile.fmnist_images)
    _, y = fashion_mnist.load("test")
    results = {"models": list(profile.fmnist_models), "images": indices,
               "labels": [fashion_mnist.CLASSES[int(y[i])] for i in indices], "cam_layer": {}, "targets": {},
               "gallery": {}, "not_applicable": {}, "non_rectifiers": {}}
    for name in profile.fmnist_models:
        entry = require_label_space(load(name, profile), models.FASHION_MNIST)
        b = fmnist_batch(entry, indices)
        mp, results["cam_layer"][name] = all_maps(entry, b, profile, names)
        results["targets"][name] = [
            {"index": int(t), "name": entry.class_names[int(t)], "p": round(float(p), 4),
             "correct": int(t) == int(y[i])} for i, t, p in zip(indices, b.targets, b.probs)]
        timings[name] = {m: timing_row(entry, v, len(indices)) for m, v in mp.items()}
        results["not_applicable"][name] = {m: v.error for m, v in mp.items() if v.error}
        results["non_rectifiers"][name] = non_rectifiers(entry)
        rel = f"{STUDY}/fmnist/{name}.webp"
        key = cache_key(STUDY, CODE_VERSION, "fmnist", model_id(entry), indices, names,
                        results["cam_layer"][name], {n_: method_options(profile, n_, entry) for n_ in names})
        if not store.fresh(rel, key):
            columns = [(f"{results['labels'][j]}", b.x[j],
                        f"→ {results['targets'][name][j]['name']}\n{results['targets'][name][j]['p']:.2f}")
                       for j in range(len(indices))]
            cells = {(r, c): ((None, mp[meth].refusal) if mp[meth].maps is None
                              else (mp[meth].maps[c].numpy(), None))
                     for r, meth in enumerate(names) for c in range(len(indices))}
            store.write_figure(rel, gallery_figure(columns, names, cells, panel=1.2, fontsize=6), key, dpi=110)
        results["gallery"][name] = rel
    return results


def run(profile: Profile, store: Store) -> dict:
    names = method_names(profile)
    timings: dict = {}
    results: dict = {"methods": {n: {"label": attribution.get(n).label, "kind": attribution.get(n).kind,
                                     "family": attribution.get(n).family, "cite": attribution.get(n).cite,
                                     "options": method_options(profile, n)} for n in names}}
    results["imagenet"] = (imagenet_part(profile, store, names, timings) if profile.photo_models
                           else frame.skipped(frame.NO_PHOTOS))
    if profile.photo_models:
        results["logit_vs_softmax"] = results["imagenet"].pop("logit_vs_softmax")
        results["choices"] = results["imagenet"].pop("choices")
        results["sensitivity"] = results["imagenet"].pop("sensitivity")
        results["lrp"] = results["imagenet"].pop("lrp")
    results["fmnist"] = (fmnist_part(profile, store, names, timings) if profile.fmnist_models
                         else frame.skipped(frame.NO_FMNIST))
    results["timings"] = timings
    store.write_json(f"{STUDY}/results.json", results)
    return {"methods": len(names), "imagenet_photos": len(results["imagenet"].get("photos", [])),
            "fmnist_images": len(results["fmnist"].get("images", [])),
            "seconds_per_image": {m: {k: v["seconds_per_image"] for k, v in t.items()} for m, t in timings.items()}}
