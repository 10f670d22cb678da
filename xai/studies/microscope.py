"""The Microscope: every channel of several layers, each with its feature visualization and its top
dataset exemplars, for the book's browsable page (in the spirit of OpenAI Microscope).

For the ImageNet model ``model`` (default: the profile's first) at the layers of interest at positions
``layers`` (default: the three before the last), and for the Fashion-MNIST model ``fmnist_model``
(default: the profile's first) at ``fmnist_layers`` (default: all of them):

* **visualizations**: every channel rendered by :func:`xai.featvis.microscope.render_channels` (the
  channel objective on the tensor feature visualization maximises, the report's default
  regularisation, seed ``seed + channel``), a layer's channels ``batch`` at a time in one optimization;
  ``size`` px and ``steps`` steps for ImageNet, the input size and ``fmnist_steps`` for Fashion-MNIST;
* **exemplars**: the ``exemplars`` images where each channel is most active, found for every channel of
  every layer in one pass (:func:`xai.featvis.microscope.top_exemplars`): for ImageNet, by the spatial
  maximum over the profile's photos, each shown as the crop its receptive field covers at that
  position; for Fashion-MNIST, by the spatial mean over the test set (``fmnist_images`` of it, None:
  all), each shown whole.

Each layer's units are laid out as sprite sheets of ``sheet_units`` units, ``columns`` per row (the
visualizations) and one row of exemplars per unit (the exemplar sheets), so that the page loads a few
images lazily rather than thousands. Every part is a cached job of the store.

Artifacts (under ``microscope/``):

``results.json``
    ``settings`` (the options above, ``model``, ``fmnist_model``, ``seed``), ``layers`` (list, ImageNet
    model first, shallow to deep, of ``model``, ``group`` (imagenet | fmnist), ``layer``,
    ``objective_layer``, ``position`` (in the model's layers of interest), ``units`` (channels),
    ``input`` (its [h, w]), ``map_shape``, ``anchors`` (one per channel, :func:`unit_anchors`), ``tile``
    (px of a visualization), ``columns``, ``sheets`` (list of ``image``, ``exemplars`` (PNG paths), ``first`` (channel),
    ``count``, ``rows``), ``values`` (each rendering's final objective), ``exemplar_tile``,
    ``exemplar_rule`` (text), ``k``, ``exemplar_sources`` (per channel, the exemplars' photo ids or
    test-image numbers), ``exemplar_labels`` (per channel, their class names; for photos, the manifest's
    label or None), ``exemplar_values`` (per channel), ``receptive_field`` (``size``, ``jump`` in input
    px; ImageNet only), ``render_seconds``, ``exemplar_seconds``; a skipped part when there is no model at
    all), ``skipped`` (part -> reason, for a
    part without a model), ``summary`` (``units``, ``layers``, ``render_seconds``, ``seconds``),
    ``timing`` (``seconds``, ``cpu_seconds``, ``threads``, ``jobs``: list of ``name``, ``images``,
    ``steps``, ``seconds``, ``cpu_seconds``, ``cached``).
PNG files: ``<model>/<layer>/units-<s>.png`` and ``<model>/<layer>/exemplars-<s>.png`` per sheet ``s``;
``jobs/*.json`` are the cache records.
"""
from __future__ import annotations

import math
import time
from collections import Counter

import torch

from .. import models
from ..data import fashion_mnist, images
from ..errors import UnknownNameError, XaiError
from ..featvis import microscope as M
from ..featvis import transforms as T
from ..featvis.render import activations
from ..profiles import Profile
from ..render.store import Store
from . import _frame as frame
from ._frame import load, model_id, photos_of, require_label_space
from .featvis_base import montage, png

STUDY = "microscope"
CODE_VERSION = 1

DEFAULTS = {
    "model": None,  # a model with photos (its label space's are the exemplars); None: the profile's first
    # Positions in its layers of interest; None: the three before the last (on efficientnet_lite0 blocks.2,
    # blocks.4 and blocks.6: 40, 112 and 320 channels on 28, 14 and 7 px maps; the last is the 1280-channel
    # head). At 64 px the render costs about 2.2 ms per image-step on one 2-core Xeon whatever the layer
    # (the stem at that size dominates), so 472 units x 128 steps is about 2 min, inside the full build's
    # 60-minute budget; 128 px would cost four times that.
    "layers": None,
    "size": 64,
    "steps": 128,
    "fmnist_model": None,  # Fashion-MNIST model id; None: the profile's first
    "fmnist_layers": None,  # positions; None: every layer of interest
    "fmnist_steps": 128,
    "fmnist_images": None,  # test images scanned for exemplars; None: all 10,000
    "batch": 64,  # units in one optimization
    "exemplars": 6,
    "exemplar_size": 64,  # px of an ImageNet exemplar crop (Fashion-MNIST's are shown at 28)
    "sheet_units": 32,
    "columns": 8,
}

option = frame.options(STUDY, DEFAULTS)


def unit_anchors(layers: list[tuple[str, str, int]]) -> dict[tuple[str, str], list[str]]:
    """``(model, layer)`` -> one anchor per channel: :func:`xai.featvis.microscope.unit_anchor`, prefixed
    with the model's id where two models of the page share a layer name (an anchor must be unique)."""
    count = Counter(layer for _, layer, _ in layers)
    return {(m, layer): [(f"{m}." if count[layer] > 1 else "") + M.unit_anchor(layer, c) for c in range(n)]
            for m, layer, n in layers}


def _positions(entry: models.ModelEntry, positions: list[int] | None, default: str) -> list[str]:
    n = len(entry.layers)
    if positions is None:
        positions = list(range(n)) if default == "all" else list(range(max(0, n - 4), max(1, n - 1)))
    bad = [p for p in positions if not 0 <= p < len(entry.layers)]
    if bad:
        raise XaiError(f"microscope layer positions {bad} lie outside {entry.name}'s {len(entry.layers)} "
                       f"layers of interest ({', '.join(entry.layers)})")
    return [entry.layers[p] for p in positions]


def _sheets(n: int, per: int) -> list[tuple[int, int]]:
    return [(first, min(per, n - first)) for first in range(0, n, per)]


def _part(entry: models.ModelEntry, layers: list[str], pool: torch.Tensor, pool_key, sources: list, labels: list,
          reduce: str, size: int, steps: int, ex_size: int, profile: Profile, jobs: frame.TimedJobs) -> list[dict]:
    """Every channel of ``layers``: rendered (one job per layer) and its exemplars among ``pool`` (one job
    for all layers), written as sprite sheets."""
    model, name = entry.model, entry.name
    k = min(option(profile, "exemplars"), pool.shape[0])
    per, cols = option(profile, "sheet_units"), option(profile, "columns")
    channels_in = entry.input_size[0]
    prefix = f"{STUDY}/{name}"
    rule = ("the photos where the channel's maximum over positions is highest, each cut to the receptive "
            "field of that position (squared inside the photo) with the position's cell outlined"
            if reduce == "max" else
            "the test images with the highest spatial-mean activation of the channel")

    def scan(out):
        found = M.top_exemplars(model, pool, layers, k=k, reduce=reduce,
                                 batch=256 if frame.small_inputs(entry) else 32)
        res = {}
        for layer in layers:
            ex = found[layer]
            crops = M.exemplar_crops(pool, ex, ex_size, within=True, mark=True)  # [C, k, c, s, s]
            paths = []
            for s, (first, count) in enumerate(_sheets(ex.channels, per)):
                rel = f"{prefix}/{layer}/exemplars-{s}.png"
                out.write_bytes(rel, png(montage(list(crops[first:first + count].flatten(0, 1)), k, gap=0)))
                paths.append(rel)
            idx = ex.indices.tolist()
            res[layer] = {"objective_layer": ex.objective_layer, "units": ex.channels, "sheets": paths,
                          "sources": [[sources[i] for i in row] for row in idx],
                          "labels": [[labels[i] for i in row] for row in idx],
                          "values": [[round(float(v), 4) for v in row] for row in ex.values],
                          **({"receptive_field": {"size": list(ex.field.size), "jump": list(ex.field.jump)}}
                             if ex.field is not None else {})}
        return {"layers": res, "images": int(pool.shape[0])}

    spec = {"model": model_id(entry), "layers": layers, "k": k, "reduce": reduce, "size": ex_size,
            "sheet_units": per, "pool": pool_key}
    found = jobs.run(f"{name}/exemplars", spec, scan)
    rows = []
    for layer in layers:
        ex = found["layers"][layer]
        units = ex["units"]

        def render(out, layer=layer, units=units):
            r = M.render_channels(model, layer, list(range(units)), size=size, steps=steps, seed=profile.seed,
                                  batch=option(profile, "batch"), channels_in=channels_in)
            paths = []
            for s, (first, count) in enumerate(_sheets(units, per)):
                rel = f"{prefix}/{layer}/units-{s}.png"
                out.write_bytes(rel, png(montage(list(r.images[first:first + count]), cols, gap=0)))
                paths.append(rel)
            return {"sheets": paths, "values": [round(float(v), 4) for v in r.values], "images": units,
                    "steps": steps, "render_seconds": round(r.seconds, 2)}

        spec = {"model": model_id(entry), "layer": layer, "units": units, "size": size, "steps": steps,
                "sheet_units": per, "columns": cols, "transforms": repr(T.default_transforms(size)),
                "batch": option(profile, "batch")}
        vis = jobs.run(f"{name}/{layer}", spec, render)
        with torch.no_grad():
            probe = torch.zeros(1, *entry.input_size, device=entry.device)
            shape = list(activations(model, probe, [ex["objective_layer"]]).layer(ex["objective_layer"]).shape[2:])
        sheets = [{"image": img, "exemplars": exs, "first": first, "count": count, "rows": math.ceil(count / cols)}
                  for img, exs, (first, count) in zip(vis["sheets"], ex["sheets"], _sheets(units, per))]
        top1 = Counter(row[0] for row in ex["sources"])
        mode, mode_units = top1.most_common(1)[0]
        rows.append({"model": name, "group": frame.book_group(entry), "layer": layer,
                     "objective_layer": ex["objective_layer"], "position": entry.layers.index(layer), "units": units,
                     "input": list(entry.input_size[1:]), "map_shape": shape, "tile": size, "columns": cols,
                     "sheets": sheets, "values": vis["values"],
                     "exemplar_tile": ex_size, "exemplar_rule": rule, "k": k, "exemplar_sources": ex["sources"],
                     "exemplar_labels": ex["labels"], "exemplar_values": ex["values"],
                     "exemplar_pool": found["images"], "top1_distinct": len(top1), "top1_mode": mode,
                     "top1_mode_units": mode_units, **_beats(reduce, vis["values"], ex["values"]),
                     **({"receptive_field": ex["receptive_field"]} if "receptive_field" in ex else {}),
                     "render_seconds": vis["seconds"], "exemplar_seconds": found["seconds"]})
    return rows


def _beats(reduce: str, values: list[float], exemplar_values: list[list[float]]) -> dict:
    """For exemplars ranked by the spatial mean (the objective's own reduction, at the render size = the
    input size): how many units' visualizations excite them more than their strongest exemplar does."""
    if reduce != "mean":
        return {}
    ratios = [v / e[0] for v, e in zip(values, exemplar_values) if e[0] > 0]
    return {"beats_top_exemplar": sum(v > e[0] for v, e in zip(values, exemplar_values)),
            "median_ratio_to_top_exemplar": round(float(torch.tensor(ratios).median()), 3) if ratios else None}


def imagenet_part(entry: models.ModelEntry, profile: Profile, jobs: frame.TimedJobs) -> list[dict]:
    ids = photos_of(profile, entry)
    if not ids:
        raise XaiError("the microscope study needs at least one photo in the profile for the exemplars")
    pool = torch.stack([entry.prepare(images.load(pid)) for pid in ids])
    labels = [images.photo(pid).label_name for pid in ids]
    key = [images.photo(pid).sha256 for pid in ids]
    return _part(entry, _positions(entry, option(profile, "layers"), "before_last"), pool, key, ids, labels, "max",
                 option(profile, "size"), option(profile, "steps"), option(profile, "exemplar_size"), profile, jobs)


def fmnist_part(entry: models.ModelEntry, profile: Profile, jobs: frame.TimedJobs) -> list[dict]:
    x, y = fashion_mnist.load("test")
    n = option(profile, "fmnist_images")
    if n is not None:
        x, y = x[:n], y[:n]
    sources = [f"test #{i}" for i in range(x.shape[0])]
    labels = [fashion_mnist.CLASSES[int(c)] for c in y]
    key = {"data": fashion_mnist.data_hash(), "images": x.shape[0]}
    return _part(entry, _positions(entry, option(profile, "fmnist_layers"), "all"), x, key, sources, labels, "mean",
                 entry.input_size[1], option(profile, "fmnist_steps"), entry.input_size[1], profile, jobs)


def _pick(profile: Profile, key: str, available: tuple[str, ...], what: str) -> str | None:
    chosen = option(profile, key)
    if chosen is None:
        return available[0] if available else None
    if chosen not in available:
        raise UnknownNameError(f"{what} model of the microscope study", chosen, available)
    return chosen


def run(profile: Profile, store: Store) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    imagenet = _pick(profile, "model", profile.photo_models, "photo")
    fmnist = _pick(profile, "fmnist_model", profile.fmnist_models, "Fashion-MNIST")
    entries = {}
    if imagenet:
        entries["imagenet"] = load(imagenet, profile)
    if fmnist:
        entries["fmnist"] = require_label_space(load(fmnist, profile), models.FASHION_MNIST)
    jobs = frame.TimedJobs(store, STUDY, CODE_VERSION, {"seed": profile.seed})
    rows, skipped = [], {}
    if imagenet:
        rows += imagenet_part(entries["imagenet"], profile, jobs)
    else:
        skipped["imagenet"] = frame.NO_PHOTOS
    if fmnist:
        rows += fmnist_part(entries["fmnist"], profile, jobs)
    else:
        skipped["fmnist"] = frame.NO_FMNIST
    anchors = unit_anchors([(r["model"], r["layer"], r["units"]) for r in rows])
    for r in rows:
        r["anchors"] = anchors[(r["model"], r["layer"])]
    settings = {k: option(profile, k) for k in DEFAULTS}
    settings.update(model=imagenet, fmnist_model=fmnist, seed=profile.seed)
    seconds = round(time.perf_counter() - start, 2)
    summary = {"units": sum(r["units"] for r in rows), "layers": len(rows),
               "render_seconds": round(sum(j["seconds"] for j in jobs.log), 2), "seconds": seconds}
    # With neither model there is nothing to browse: the page shows why in place of the figure.
    layers = rows or frame.skipped(f"{frame.NO_PHOTOS}, and no Fashion-MNIST model either")
    results = {"settings": settings, "layers": layers, "skipped": skipped, "summary": summary,
               "timing": {"seconds": seconds, "cpu_seconds": round(time.process_time() - cpu, 2),
                          "threads": torch.get_num_threads(), "jobs": jobs.log}}
    store.write_json(f"{STUDY}/results.json", results)
    return summary
