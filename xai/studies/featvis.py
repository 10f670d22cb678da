"""Chapter: feature visualization. What do units and classes of our models respond to most?

Every image is rendered by :mod:`xai.featvis` (batched activation maximization, one image per unit).
Unless a section says otherwise the settings are the engine's defaults: a colour-decorrelated Fourier
parameterization (1/f scaling), Lucid's standard transforms (pad, jitter, scale, rotate) ending at the
render size, Adam at learning rate 0.05 with betas 0.5 and 0.99 (the ``fast`` schedule of
:data:`xai.featvis.schedule.SCHEDULES`: lucent's 256-step quality in fewer steps), no penalties; the
number of steps is a profile knob (``<section>_steps``) chosen to fit the time budget. Each rendering
job is cached under a key of everything that determines it (weights, units, seeds, settings, code
version), so a rerun only redoes what changed. Class visualizations are judged on the saved 8-bit PNG,
as the reader sees it, at the render size (``evaluation_size``: what was optimized), and again resized
to each model's input size.

Artifacts (under ``featvis/``; ``<m>`` a model, ``<layer>`` a dotted layer name, ``<c>`` a class index):

``results.json``
    ``settings``: ``size`` (ImageNet render px), ``fmnist_size``, ``lr``, ``schedule`` (the engine's
    default), ``param`` (text), ``transforms`` (text), ``<section>_steps``, ``seed``, ``channel_rule`` (text).
    ``grids.<m>``: ``family``, ``channel_rule``, ``layers`` (list, shallow to deep) of ``layer``,
    ``objective_layer`` (what is maximised: the layer, or its pre-activation ``<activation>:in`` when the
    layer ends with an activation function, as in Lucid), ``channels`` (rendered channel indices, in
    image order), ``activity`` (each channel's mean activation on the selection images, same tensor),
    ``values`` (each rendering's final objective: the channel's spatial mean, untransformed),
    ``start_values`` (the same at step 0), ``images`` (PNG paths, one per channel),
    ``montage`` (one PNG, channels row-major, 8 per row), ``wavelength_px`` (each image's characteristic
    wavelength, :func:`pattern_wavelength`) and ``median_wavelength_px``, for colour images ``colourfulness``
    (:func:`colourfulness`) and ``median_colourfulness``, ``seconds``, ``ms_per_image_step``; for
    Fashion-MNIST models also ``exemplars`` (per channel: PNG strip of the top-9 test images, 28 px each)
    and ``exemplar_indices`` / ``exemplar_activations`` (per channel, top first).
    ``classes``: ``render_models``, ``classes`` (list of ``index``, ``name``, ``photos``), ``samples``,
    ``diversity`` (``weight``, ``layer`` per model), ``images.<m>`` (list of ``class``, ``name``,
    ``sample``, ``path``, ``value``), ``montage.<m>`` (rows: classes; columns: samples), ``own_top1_rate.<m>``,
    ``unregularized.<m>`` (one unregularized rendering per class: raw sigmoid pixels, no transforms:
    ``images`` as above, ``own_top1_rate``, ``transfer_top1_rate.<eval model>``).
    ``transfer``: ``models`` (evaluating models), ``evaluation_size``, ``rows`` (one per class
    visualization: ``path``, ``render_model``, ``class``, ``name``, ``eval.<m>``: ``top1`` (index),
    ``top1_name``, ``top1_p``, ``target_rank`` (1 = top-1), ``top5`` (bool), ``target_p``,
    ``top1_at_input_size`` (bool)), ``summary.<render m>.<eval m>``: ``top1_rate``, ``top5_rate``,
    ``mean_target_p``, ``top1_rate_at_input_size``, ``n``.
    ``ladder``: ``render_model``, ``classes`` (list of ``index``, ``name``), ``steps``, ``seeds`` (one per
    class, shared by every rung), ``rungs`` (list, in this order: ``none``, ``l2``, ``tv_blur``,
    ``transforms``, ``fft``, ``all`` (the brief's ladder), then ``default`` (the settings of every other
    section) and ``maco``; each with ``id``, ``label``, ``param`` (pixel | fft | maco), ``transforms``
    (bool), ``penalties`` (weights), ``objective``, ``images`` (one per class), ``values``,
    ``own_top1_rate``, ``own_target_p`` (list), ``mean_logit``, ``transfer_top1_rate.<m>``).
    ``optimizers``: ``render_model``, ``classes``, ``steps``, ``size``, ``seeds`` (the ladder's), ``figure``
    (the objective over the steps), ``rows`` (list, per (optimizer, lr) of the ``optimizer_runs`` option
    and validity rule ``clip`` | ``sigmoid``: ``optimizer``, ``lr``, ``valid``, ``images``, ``values``,
    ``mean_value``, ``history_mean`` (the objective before each step, mean over classes),
    ``own_top1_rate``, ``own_target_p``).
    ``dream_depth``: DeepDream at every layer of interest of every ImageNet model, from the first
    labelled photo and from noise (:mod:`.featvis_dream`): ``photo``, ``class``, ``start`` (PNG),
    ``size``, ``steps``, ``start_wavelength``, ``start_colourfulness``, ``models.<m>``: ``layers``,
    ``name`` (the class), ``photo_p`` (its probability on the start image), and ``photo``, ``noise``
    (lists over the layers of ``layer``, ``path``, ``value``, ``wavelength``, ``colourfulness``,
    ``target_p`` (the photo's class), ``change`` (mean absolute difference from the photo)).
    ``progress``: ``render_model``, ``steps`` (snapshot steps), ``units`` (list of ``class``, ``name``,
    ``frames``: list of ``step``, ``path``, ``value`` (objective), ``target_p``).
    ``photo_start``: ``render_model``, ``steps``, ``snapshot_steps``, ``dream_layers``, ``photos`` (list of
    ``id``, ``class``, ``name``, ``photo`` (PNG of the start image), ``variants``: list of ``id``
    (``noise_class`` | ``photo_class`` | ``dream_<layer>``), ``label``, ``path``, ``value``, ``target_p``,
    ``snapshots`` (``{step: path}``)).
    ``objective``: logit vs softmax probability: ``render_model``, ``classes``, ``rows`` (list of ``id``
    (``logit`` | ``softmax``), ``images``, ``own_top1_rate``, ``own_target_p``, ``mean_logit`` (the
    target's logit on the final images), ``transfer_top1_rate.<m>``).
    ``fmnist.<m>``: ``test_accuracy``, ``classes`` (``images``: list of ``class``, ``name``, ``sample``,
    ``path``, ``value``; ``montage``; ``own_top1_rate``; ``diversity``: ``weight``, ``layer``).
    ``quality``: ``bar`` (0.9), ``render_models``, ``own_top1_rate.<m>`` (class visualizations with the
    default settings), ``passed`` (every rendering model at or above the bar), ``transfer_top1_rate.<render
    m>.<eval m>``, ``unregularized_own_top1_rate.<m>``, ``unregularized_transfer_top1_rate.<render
    m>.<eval m>``.
    ``timing``: ``seconds`` (this run, cached jobs cost ~0), ``render_seconds`` (sum of all jobs' own
    rendering times, cached or not), ``image_steps``, ``ms_per_image_step`` (``<m>``: for the jobs at the
    ImageNet render size through the whole model), ``jobs`` (list of ``name``, ``images``, ``steps``,
    ``seconds``, ``ms_per_image_step``, ``cached``).
PNG files: ``imagenet/<m>/grid/<layer>/c<ch>.png``, ``imagenet/<m>/grid/<layer>.png`` (montage),
``imagenet/<m>/classes/<c>_<s>.png``, ``imagenet/<m>/classes.png``, ``imagenet/<m>/unregularized/<c>.png``,
``ladder/<rung>/<c>.png`` (also the ``objective`` rows: ``ladder/default`` is the logit, ``ladder/softmax``),
``progress/<c>/step<k>.png`` (``final.png``: the last step again), ``photo/<photo>/start.png``,
``photo/<photo>/<variant>.png``, ``photo/<photo>/<variant>/step<k>.png``,
``fmnist/<m>/grid/<layer>/c<ch>.png``, ``fmnist/<m>/grid/<layer>.png``, ``fmnist/<m>/exemplars/<layer>/c<ch>.png``,
``fmnist/<m>/classes/<c>_<s>.png``, ``fmnist/<m>/classes.png``; ``jobs/*.json`` are the cache records.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import featvis, models
from ..data import fashion_mnist, images
from ..featvis import objectives as O
from ..featvis import param as P
from ..featvis.schedule import DEFAULT_SCHEDULE
from ..errors import XaiError
from ..profiles import Profile
from ..render.store import Store
from ._frame import book_group, labelled_photos, load, model_id, photos_of, require_label_space
# The study's settings and shared parts live in featvis_base (re-exported here: DEFAULTS is this study's).
from .featvis_base import (CODE_VERSION, DEFAULTS, LADDER_PENALTIES, MONTAGE_COLUMNS, QUALITY_BAR, ROOT, STUDY,  # noqa: F401
                           Jobs, _floats, _pngs, _rate, classify, colourfulness, default_transforms, montage,
                           option, pattern_wavelength, png, probabilities, read_png, square_crop)
from .featvis_dream import dream_depth
from .featvis_ladder import _top1_rate, ladder, optimizers, photo_start, progress

# -- the study ----------------------------------------------------------------------------------------
def run(profile: Profile, store: Store) -> dict:
    start = time.perf_counter()
    jobs = Jobs(store)
    size = option(profile, "size")
    results: dict = {"settings": _settings(profile)}
    with_photos = {name: load(name, profile) for name in profile.photo_models}
    render_models = option(profile, "class_models") or list(profile.photo_models[:1])
    for name in render_models:
        if name not in with_photos:
            raise XaiError(f"featvis class_models {name!r} is not among the profile's models with photos")
    primary = with_photos[render_models[0]]
    # Class visualizations are compared across models (transfer, ladder), so they stay in one label space:
    # the first render model's.
    imagenet = {n: e for n, e in with_photos.items() if e.label_space == primary.label_space}
    for name in render_models:
        if name not in imagenet:
            raise XaiError(f"featvis class_models {name!r} has the label space {with_photos[name].label_space}, "
                           f"not {primary.label_space} as {render_models[0]!r}: their classes cannot be compared")
    class_list = _class_list(profile, primary)

    results["grids"] = {}
    for name, entry in with_photos.items():
        results["grids"][name] = imagenet_grids(entry, photos_of(profile, entry), profile, jobs)
    results["classes"] = class_visualizations(imagenet, render_models, class_list, profile, jobs)
    results["transfer"] = transfer(imagenet, results["classes"], store)
    results["ladder"], results["objective"] = ladder(primary, imagenet, class_list, profile, jobs, store)
    results["optimizers"] = optimizers(primary, class_list, profile, jobs, store)
    results["progress"] = progress(primary, class_list, profile, jobs, store)
    results["photo_start"] = photo_start(primary, profile, jobs, store)
    results["dream_depth"] = dream_depth(imagenet, profile, jobs, store)

    results["fmnist"] = {}
    if profile.fmnist_models:
        x_test, y_test = fashion_mnist.load("test")
        limit = option(profile, "exemplar_images")
        x_scan = x_test if limit is None else x_test[:limit]
        for name in profile.fmnist_models:
            entry = require_label_space(load(name, profile), models.FASHION_MNIST)
            results["grids"][name] = fmnist_grids(entry, x_scan, profile, jobs, store)
            results["fmnist"][name] = fmnist_classes(entry, profile, jobs, store)

    results["quality"] = _quality(results)
    results["timing"] = _timing(jobs, time.perf_counter() - start, size, render_models, profile)
    store.write_json(f"{ROOT}/results.json", results)
    q = results["quality"]
    return {"own_top1_rate": q["own_top1_rate"], "passed": q["passed"],
            "transfer_top1_rate": q["transfer_top1_rate"],
            "unregularized_own_top1_rate": q["unregularized_own_top1_rate"],
            "render_seconds": results["timing"]["render_seconds"], "jobs": len(jobs.log),
            "cached_jobs": sum(j["cached"] for j in jobs.log)}


def _settings(profile: Profile) -> dict:
    s = {k: option(profile, k) for k in DEFAULTS}
    return {**s, "fmnist_size": 28, "lr": featvis.DEFAULT_LR, "schedule": DEFAULT_SCHEDULE, "seed": profile.seed,
            "param": "Fourier spectrum scaled by 1/f, ImageNet colour decorrelation, sigmoid (Olah et al. 2017)",
            "transforms": repr(default_transforms(s["size"])),
            "channel_rule": ("the channels with the highest mean activation (averaged over positions and over the "
                             "profile's photos, ImageNet; over the scanned test images, Fashion-MNIST)")}


def _class_list(profile: Profile, entry: models.ModelEntry) -> list[dict]:
    """The classes of the labelled photos of the entry's label space, in their order, each once."""
    seen: dict[int, dict] = {}
    for pid in labelled_photos(profile, entry):
        p = images.photo(pid)
        seen.setdefault(p.label, {"index": p.label, "name": p.label_name, "photos": []})["photos"].append(pid)
    classes = list(seen.values())
    limit = option(profile, "max_classes")
    return classes if limit is None else classes[:limit]


# -- (1) per-layer grids -------------------------------------------------------------------------------
@torch.no_grad()
def channel_activity(entry: models.ModelEntry, x: torch.Tensor, targets: list[str], batch: int = 64) -> dict:
    """Per objective layer, ``[N, C]``: each image's spatial-mean activation of each channel."""
    out: dict[str, list[torch.Tensor]] = {t: [] for t in targets}
    for chunk in torch.split(x, batch):
        a = featvis.activations(entry.model, chunk.to(entry.device), targets)
        for t in targets:
            out[t].append(a.layer(t).mean((2, 3)).float().cpu())
    return {t: torch.cat(v) for t, v in out.items()}


def _grid_layers(entry: models.ModelEntry, profile: Profile) -> list[str]:
    limit = option(profile, "grid_layers")
    layers = list(entry.layers)
    if limit is None or limit >= len(layers):
        return layers
    # Evenly spread over the entry's layers, always keeping the first and the last.
    picks = np.linspace(0, len(layers) - 1, limit).round().astype(int)
    return [layers[i] for i in dict.fromkeys(picks.tolist())]


def _grid(entry, layers, x_select, k, size, channels_in, steps, profile, jobs, prefix) -> tuple[list[dict], dict]:
    """Render the ``k`` most active channels of each layer; returns the rows and the activity per layer."""
    targets = {layer: O.pre_activation(entry.model, layer) for layer in layers}
    activity = channel_activity(entry, x_select, list(targets.values()))
    rows = []
    for li, layer in enumerate(layers):
        target = targets[layer]
        mean = activity[target].mean(0)
        order = torch.argsort(mean, descending=True)[:k].tolist()
        seeds = [profile.seed + 1000 * li + c for c in order]
        paths = [f"{prefix}/grid/{layer}/c{c}.png" for c in order]
        spec = {"model": model_id(entry), "layer": layer, "objective_layer": target, "channels": order,
                "size": size, "steps": steps, "seeds": seeds, "transforms": repr(default_transforms(size))}
        objective = O.channel(target, order)
        rec = jobs.run(f"{prefix}/grid/{layer}", spec, paths, lambda: featvis.render_chunked(
            entry.model, lambda idx: O.channel(target, [order[i] for i in idx]),
            lambda idx: P.FFTParam(len(idx), channels_in, size, seed=[seeds[i] for i in idx]),
            default_transforms(size), steps, seeds, option(profile, "batch"), snapshots=(0,)),
            model=entry.model, objective=objective)
        mont = f"{prefix}/grid/{layer}.png"
        tiles = _pngs(jobs.store, paths)
        jobs.store.write_bytes(mont, png(montage(tiles, MONTAGE_COLUMNS)))
        wavelengths = pattern_wavelength(tiles)
        colour = {}
        if tiles.shape[1] == 3:
            c = colourfulness(tiles)
            colour = {"colourfulness": c, "median_colourfulness": float(np.median(c))}
        rows.append({"layer": layer, "objective_layer": target, "channels": order, "activity": _floats(mean[order]),
                     "wavelength_px": wavelengths, "median_wavelength_px": float(np.median(wavelengths)), **colour,
                     "values": rec["values"], "start_values": rec["snapshot_values"].get("0", []),
                     "images": paths, "montage": mont, "seconds": rec["seconds"],
                     "ms_per_image_step": rec["ms_per_image_step"]})
    return rows, {layer: activity[targets[layer]] for layer in layers}


def imagenet_grids(entry: models.ModelEntry, photos: list[str], profile: Profile, jobs: Jobs) -> dict:
    layers = _grid_layers(entry, profile)
    x = torch.stack([entry.prepare(images.load(pid)) for pid in photos])
    size = option(profile, "size")
    rows, _ = _grid(entry, layers, x, option(profile, "grid_channels"), size, 3, option(profile, "grid_steps"),
                    profile, jobs, f"{ROOT}/imagenet/{entry.name}")
    return {"family": book_group(entry), "selection_images": photos,
            "channel_rule": "highest mean activation over the profile's photos", "layers": rows}


def fmnist_grids(entry: models.ModelEntry, x_scan: torch.Tensor, profile: Profile, jobs: Jobs,
                 store: Store) -> dict:
    layers = _grid_layers(entry, profile)
    prefix = f"{ROOT}/fmnist/{entry.name}"
    rows, activity = _grid(entry, layers, x_scan, option(profile, "fmnist_channels"), entry.input_size[1], 1,
                           option(profile, "fmnist_steps"), profile, jobs, prefix)
    n_ex = option(profile, "exemplars")
    for row in rows:
        strips, idxs, acts = [], [], []
        for c in row["channels"]:
            a = activity[row["layer"]][:, c]
            top = torch.argsort(a, descending=True)[:n_ex]
            rel = f"{prefix}/exemplars/{row['layer']}/c{c}.png"
            store.write_bytes(rel, png(montage(list(x_scan[top]), len(top), gap=1)))
            strips.append(rel)
            idxs.append(top.tolist())
            acts.append(_floats(a[top]))
        row.update({"exemplars": strips, "exemplar_indices": idxs, "exemplar_activations": acts})
    return {"family": book_group(entry), "selection_images": int(x_scan.shape[0]),
            "channel_rule": "highest mean activation over the scanned Fashion-MNIST test images",
            "exemplar_rule": "the test images with the highest spatial-mean activation of the channel",
            "layers": rows}


# -- (2) class visualizations --------------------------------------------------------------------------
def _diversity_layer(entry: models.ModelEntry) -> str:
    return entry.layers[len(entry.layers) // 2]


def render_classes(entry: models.ModelEntry, targets: list[int], samples: int, size: int, steps: int,
                   seed: int, diversity: float, profile: Profile, jobs: Jobs, prefix: str,
                   channels_in: int = 3) -> dict:
    """``samples`` images per class, kept apart by a diversity term within each class; one job."""
    n = len(targets) * samples
    cls = [t for t in targets for _ in range(samples)]
    group = [k for k in range(len(targets)) for _ in range(samples)]
    seeds = [seed + 10 * t + s for t in targets for s in range(samples)]
    weight = diversity if samples > 1 else 0.0
    layer = _diversity_layer(entry)
    paths = [f"{prefix}/classes/{t}_{s}.png" for t in targets for s in range(samples)]
    spec = {"model": model_id(entry), "classes": targets, "samples": samples, "size": size, "steps": steps,
            "seeds": seeds, "diversity": weight, "layer": layer, "transforms": repr(default_transforms(size))}
    # Diversity couples the samples of a class, so a chunk must hold whole classes.
    per_chunk = max(samples, option(profile, "batch") // samples * samples)

    def objective(idx: list[int]) -> O.Objective:
        obj = O.class_logit([cls[i] for i in idx])
        if weight:
            obj = obj + weight * O.diversity(layer, [group[i] for i in idx])
        return obj

    rec = jobs.run(f"{prefix}/classes", spec, paths, lambda: featvis.render_chunked(
        entry.model, objective, lambda idx: P.FFTParam(len(idx), channels_in, size, seed=[seeds[i] for i in idx]),
        default_transforms(size), steps, seeds, per_chunk))
    mont = f"{prefix}/classes.png"
    jobs.store.write_bytes(mont, png(montage([read_png(jobs.store, p) for p in paths], samples)))
    rows = [{"class": c, "name": entry.class_names[c], "sample": k % samples, "path": p, "value": v}
            for k, (c, p, v) in enumerate(zip(cls, paths, rec["values"]))]
    x = _pngs(jobs.store, paths)
    top1 = probabilities(entry, x).argmax(-1)
    return {"images": rows, "montage": mont, "layer": layer, "weight": weight,
            "own_top1_rate": _rate([int(t) == c for t, c in zip(top1, cls)]), "n": n}


def render_unregularized(entry: models.ModelEntry, targets: list[int], size: int, steps: int, seed: int,
                         profile: Profile, jobs: Jobs, prefix: str) -> dict:
    seeds = [seed + 10 * t for t in targets]
    paths = [f"{prefix}/unregularized/{t}.png" for t in targets]
    spec = {"model": model_id(entry), "classes": targets, "size": size, "steps": steps, "seeds": seeds}
    rec = jobs.run(f"{prefix}/unregularized", spec, paths, lambda: featvis.render_chunked(
        entry.model, lambda idx: O.class_logit([targets[i] for i in idx]),
        lambda idx: P.PixelParam(len(idx), 3, size, seed=[seeds[i] for i in idx]), (), steps, seeds,
        option(profile, "batch")))
    return {"images": [{"class": t, "name": entry.class_names[t], "sample": 0, "path": p, "value": v}
                       for t, p, v in zip(targets, paths, rec["values"])]}


def class_visualizations(imagenet: dict, render_models: list[str], class_list: list[dict], profile: Profile,
                         jobs: Jobs) -> dict:
    size, steps, samples = option(profile, "size"), option(profile, "class_steps"), option(profile, "class_samples")
    targets = [c["index"] for c in class_list]
    out: dict = {"render_models": render_models, "classes": class_list, "samples": samples, "steps": steps,
                 "diversity": {}, "images": {}, "montage": {}, "own_top1_rate": {}, "unregularized": {}}
    for name in render_models:
        entry = imagenet[name]
        prefix = f"{ROOT}/imagenet/{name}"
        res = render_classes(entry, targets, samples, size, steps, profile.seed, option(profile, "diversity"),
                             profile, jobs, prefix)
        out["diversity"][name] = {"weight": res["weight"], "layer": res["layer"]}
        out["images"][name], out["montage"][name] = res["images"], res["montage"]
        out["own_top1_rate"][name] = res["own_top1_rate"]
        if option(profile, "unregularized"):
            out["unregularized"][name] = render_unregularized(entry, targets, size, steps, profile.seed,
                                                              profile, jobs, prefix)
    return out


# -- (7) transfer ----------------------------------------------------------------------------------------
def transfer(imagenet: dict, classes: dict, store: Store) -> dict:
    rows = [{"path": r["path"], "render_model": m, "class": r["class"], "name": r["name"]}
            for m, rs in classes["images"].items() for r in rs]
    if rows:
        x = _pngs(store, [r["path"] for r in rows])
        targets = [r["class"] for r in rows]
        for name, entry in imagenet.items():
            for r, ev in zip(rows, classify(entry, x, targets)):
                r.setdefault("eval", {})[name] = ev
    summary: dict = {}
    for rm in classes["images"]:
        for em in imagenet:
            sel = [r["eval"][em] for r in rows if r["render_model"] == rm]
            summary.setdefault(rm, {})[em] = {
                "n": len(sel), "top1_rate": _rate([e["target_rank"] == 1 for e in sel]),
                "top5_rate": _rate([e["top5"] for e in sel]),
                "mean_target_p": round(float(np.mean([e["target_p"] for e in sel])), 4) if sel else None,
                "top1_rate_at_input_size": _rate([e["top1_at_input_size"] for e in sel])}
    for rm, unreg in classes["unregularized"].items():
        x = _pngs(store, [r["path"] for r in unreg["images"]])
        targets = [r["class"] for r in unreg["images"]]
        unreg["own_top1_rate"] = _top1_rate(imagenet[rm], x, targets)
        unreg["transfer_top1_rate"] = {em: _top1_rate(e, x, targets) for em, e in imagenet.items()}
    return {"models": list(imagenet), "evaluation_size": "render size (also reported: resized to each model's input size)",
            "rows": rows, "summary": summary}


def fmnist_classes(entry: models.ModelEntry, profile: Profile, jobs: Jobs, store: Store) -> dict:
    res = render_classes(entry, list(range(entry.num_classes)), option(profile, "fmnist_class_samples"),
                         entry.input_size[1], option(profile, "fmnist_steps"), profile.seed,
                         option(profile, "fmnist_diversity"), profile, jobs, f"{ROOT}/fmnist/{entry.name}",
                         channels_in=entry.input_size[0])
    return {"test_accuracy": entry.info.get("test_accuracy"), "classes": {
        "images": res["images"], "montage": res["montage"], "own_top1_rate": res["own_top1_rate"],
        "diversity": {"weight": res["weight"], "layer": res["layer"]}}}


# -- summaries ---------------------------------------------------------------------------------------------
def _quality(results: dict) -> dict:
    cl, tr = results["classes"], results["transfer"]["summary"]
    own = cl["own_top1_rate"]
    return {
        "bar": QUALITY_BAR, "render_models": cl["render_models"], "own_top1_rate": own,
        "passed": bool(own) and all(v is not None and v >= QUALITY_BAR for v in own.values()),
        "transfer_top1_rate": {rm: {em: s["top1_rate"] for em, s in ev.items()} for rm, ev in tr.items()},
        "unregularized_own_top1_rate": {m: u.get("own_top1_rate") for m, u in cl["unregularized"].items()},
        "unregularized_transfer_top1_rate": {m: u.get("transfer_top1_rate") for m, u in cl["unregularized"].items()},
    }


def _timing(jobs: Jobs, seconds: float, size: int, render_models: list[str], profile: Profile) -> dict:
    per_model = {}
    for name in profile.photo_models:
        # Jobs through the whole model at the render size: class visualizations and the ladder.
        sel = [j for j in jobs.log if j["name"].startswith(f"{ROOT}/imagenet/{name}/classes")
               or (name == render_models[0] and j["name"].startswith(f"{ROOT}/ladder"))]
        img_steps = sum(j["images"] * j["steps"] for j in sel)
        if img_steps:
            per_model[name] = round(1000 * sum(j["seconds"] for j in sel) / img_steps, 3)
    return {"seconds": round(seconds, 2), "render_seconds": round(sum(j["seconds"] for j in jobs.log), 2),
            "image_steps": sum(j["images"] * j["steps"] for j in jobs.log), "ms_per_image_step": per_model,
            "size": size, "jobs": jobs.log}
