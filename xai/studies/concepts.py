"""Chapter: what the units mean together. Building Blocks on an ImageNet model, concepts found by
factorization, and the Clever Hans marker as a concept whose truth is known (:mod:`.concepts_marker`).

Building Blocks (Olah et al. 2018) on ``model`` (default: the profile's first ImageNet model), for the
first ``photos`` labelled photos of the profile at the layers of interest at positions ``layers``:

* the **activation grid**: the activation vector (of the tensor feature visualization maximises,
  :func:`xai.featvis.objectives.pre_activation`) at every position, the map first average-pooled to at
  most ``cells`` x ``cells`` positions, each rendered as a ``direction`` objective, all positions of one
  photo and layer in one optimization;
* the **semantic dictionary**: each position's ``dictionary_top`` most active channels, each channel
  rendered once per layer (every channel any dictionary of that layer names, in one optimization);
* the **neuron groups** of each photo at the deeper layer: ``groups`` NMF factors of the layer's
  activations, each with its spatial map, its visualization and its exact share of gradient x
  activation for the predicted class.

Concept discovery on one class: ``concept_views`` random views of ``concept_photo`` (the manifest has
one photo per class), the layer at position ``concept_layer`` factorized into ``concept_k`` concepts,
each with its presence heatmaps on the first views, its feature visualization and its importance.

Every rendering uses the report's defaults (Fourier parameterization, Lucid's transforms at the render
size ``size``, Adam at 0.05) for ``*_steps`` steps. Every part is a cached job of the store
(:meth:`xai.render.store.Store.job`): a warm rebuild renders nothing, a deleted image reruns its job.

Artifacts (under ``concepts/``):

``results.json``
    ``settings`` (the options above, ``render_size``, ``model``), ``blocks`` (``photos``: list of ``id``,
    ``class``, ``name``, ``predicted``, ``predicted_name``, ``photo`` (PNG); ``layers``: list of ``layer``,
    ``objective_layer``, ``shape`` ([h, w] after pooling), ``map_shape`` (before), ``channels`` (the
    dictionary's channel renderings: ``channel`` -> PNG path)), ``grids`` (list of ``photo``, ``layer``,
    ``shape``, ``tiles`` (PNG paths row-major), ``values``, ``image`` (the photo), ``entries`` (per position,
    row-major: ``position``, ``channels``, ``values``, ``norm``, ``images`` (the channels' renderings))), ``groups`` (list, one per photo: ``photo``,
    ``layer``, ``target``, ``target_name``, ``total``, ``error``, ``groups``: list of ``group``,
    ``attribution``, ``share`` (of the summed attributions' magnitude), ``top_channels``, ``map`` (PNG
    of the presence map over the photo), ``attribution_map`` (PNG, signed), ``image`` (its rendering)),
    ``discovery`` (``photo``, ``class``, ``name``, ``layer``, ``views``, ``k``, ``error``, ``concepts``:
    list of ``concept``, ``importance``, ``image``, ``heatmaps`` (PNG paths, one per shown view)),
    ``imagenet`` (TCAV of textures, colours and photo crops: :mod:`.concepts_imagenet`), ``marker``
    (:mod:`.concepts_marker`), ``crp`` (concept-conditional heatmaps: :mod:`.concepts_crp`), ``timing`` (``seconds`` of this run, ``cpu_seconds`` (its process CPU time), ``threads``, ``render_seconds`` of the
    renders (cached or not), ``jobs``: list of ``name``, ``images``, ``steps``, ``seconds``, ``cpu_seconds``, ``cached``).
PNG files: ``blocks/<photo>/photo.png``, ``blocks/<photo>/<layer>/r<i>c<j>.png``,
``blocks/channels/<layer>/c<ch>.png``, ``groups/<photo>/g<k>{,_map,_attr}.png``,
``discovery/c<k>.png``, ``discovery/c<k>_v<i>.png``; ``jobs/*.json`` are the cache records.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..concepts import discovery, sources
from ..data import images
from ..errors import XaiError
from ..featvis import blocks as B
from ..featvis import microscope as M
from ..featvis import objectives as O
from ..featvis.render import activations
from ..profiles import Profile
from ..render import maps as R
from ..render.store import Store
from . import concepts_crp as CRP
from . import concepts_imagenet as CI
from . import concepts_marker as MK
from . import _frame as frame
from ._frame import load, model_id
from .featvis import png

STUDY = "concepts"
CODE_VERSION = 1

DEFAULTS = {
    "model": None,  # None: the profile's first ImageNet model
    # Sized for the study's budget (5 min cold on 2 CPU cores): render cost grows with pixels x positions
    # x steps, and the grids and the dictionary are most of it. At these values (blocks.4 and blocks.6) the
    # cold study's jobs took about 150 CPU seconds on one thread (42,368 image-steps), beside whatever the
    # Clever Hans checkpoints cost to train when their cache is cold.
    "size": 48,  # render size (px); the grid's tiles are small on the page
    "photos": 4,
    # Positions in the model's layers of interest (shallow to deep): on efficientnet_lite0 the 14x14 and
    # the 7x7 stage before the head, the depth of Building Blocks' mixed4d and mixed5a in GoogLeNet.
    "layers": [3, 4],
    "cells": 7,  # the grid's positions per side at most (the map is average-pooled to it)
    "grid_steps": 64,
    "dictionary_top": 3,
    "dictionary_steps": 64,
    "groups": 6,
    "group_steps": 64,
    "concept_photo": None,  # None: the first of the grid's photos
    "concept_views": 16,
    "concept_layer": 4,
    "concept_k": 5,
    "concept_shown": 4,  # views whose heatmaps are written
    "concept_steps": 64,
    **MK.DEFAULTS,
    **CI.DEFAULTS,
    **CRP.DEFAULTS,
}


option = frame.options(STUDY, DEFAULTS)


class Jobs(frame.TimedJobs):
    def __init__(self, store: Store, base: dict):
        super().__init__(store, STUDY, CODE_VERSION, base)


def _floats(t: torch.Tensor, digits: int = 5) -> list[float]:
    return [round(float(v), digits) for v in t.flatten()]


def _overlay(image: torch.Tensor, m: torch.Tensor, signed: bool) -> bytes:
    """``m`` (``[h, w]``) upsampled onto ``image`` and coloured by the report's map rules."""
    up = F.interpolate(m[None, None].float(), size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    return png(torch.from_numpy(R.overlay(image, up.numpy(), signed)).permute(2, 0, 1).float())


def labelled_photos(profile: Profile, entry, n: int) -> list[str]:
    ids = frame.labelled_photos(profile, entry, n)
    if not ids:
        raise XaiError(f"the concepts study needs at least one labelled photo of {entry.name}'s label space")
    return ids


# -- Building Blocks ------------------------------------------------------------------------------------
def building_blocks(entry, photos: list[str], layers: list[str], profile: Profile, jobs: Jobs) -> dict:
    size, cells, top = option(profile, "size"), option(profile, "cells"), option(profile, "dictionary_top")
    model = entry.model
    x = {pid: entry.prepare(images.load(pid)) for pid in photos}
    pred = dict(zip(photos, frame.predicted(entry, torch.stack([x[pid] for pid in photos])).tolist()))
    out_photos, out_layers, grids = [], [], []

    def write_photos(out):
        for pid in photos:
            out.write_bytes(f"{STUDY}/blocks/{pid}/photo.png", png(x[pid]))
        return {}

    jobs.run("photos", {"photos": [images.photo(p).sha256 for p in photos], "input": list(entry.input_size)},
             write_photos)
    for pid in photos:
        ph = images.photo(pid)
        out_photos.append({"id": pid, "class": ph.label, "name": entry.class_names[ph.label],
                           "photo": f"{STUDY}/blocks/{pid}/photo.png", "predicted": pred[pid],
                           "predicted_name": entry.class_names[pred[pid]]})
    for li, layer in enumerate(layers):
        dicts = {pid: B.semantic_dictionary(model, x[pid], layer, top=top, cells=cells) for pid in photos}
        target = O.pre_activation(model, layer)
        chans = sorted({int(c) for d in dicts.values() for c in d.channels.flatten()})
        steps = option(profile, "dictionary_steps")

        def render_dictionary(out, chans=chans, layer=layer, steps=steps):
            r = M.render_channels(model, layer, chans, size=size, steps=steps, seed=profile.seed, batch=None)
            paths = {}
            for c, img in zip(chans, r.images):
                paths[str(c)] = f"{STUDY}/blocks/channels/{layer}/c{c}.png"
                out.write_bytes(paths[str(c)], png(img))
            return {"paths": paths, "values": _floats(r.values), "images": len(chans), "steps": steps,
                    "render_seconds": round(r.seconds, 2)}

        rendered = jobs.run(f"dictionary/{layer}", {"channels": chans, "size": size, "steps": steps},
                            render_dictionary)
        first = next(iter(dicts.values()))
        with torch.no_grad():
            raw = activations(model, x[photos[0]][None].to(entry.device), [target]).layer(target)
        out_layers.append({"layer": layer, "objective_layer": target, "shape": list(first.shape),
                           "map_shape": list(raw.shape[2:]), "channels": rendered["paths"]})
        for pid in photos:
            grids.append(_grid(entry, x[pid], pid, layer, dicts[pid], rendered["paths"], profile, jobs))
    return {"photos": out_photos, "layers": out_layers, "grids": grids, "predicted": pred}


def _grid(entry, image: torch.Tensor, pid: str, layer: str, dictionary: B.SemanticDictionary, channel_paths: dict,
          profile: Profile, jobs: Jobs) -> dict:
    size, cells, steps = option(profile, "size"), option(profile, "cells"), option(profile, "grid_steps")

    def compute(out):
        g = B.activation_grid(entry.model, image, layer, size=size, steps=steps, seed=profile.seed, cells=cells)
        h, w = g.shape
        tiles = []
        for k, img in enumerate(g.rendering.images):
            rel = f"{STUDY}/blocks/{pid}/{layer}/r{k // w}c{k % w}.png"
            out.write_bytes(rel, png(img))
            tiles.append(rel)
        return {"tiles": tiles, "shape": [h, w], "values": _floats(g.rendering.values), "images": h * w,
                "steps": steps, "render_seconds": round(g.rendering.seconds, 2)}

    spec = {"photo": images.photo(pid).sha256, "layer": layer, "size": size, "cells": cells, "steps": steps}
    r = jobs.run(f"grid/{pid}/{layer}", spec, compute)
    d = dictionary.to_json()
    entries = [{**{k: e[k] for k in ("position", "channels", "values", "norm")},
                "images": [channel_paths[str(c)] for c in e["channels"]]} for e in d["entries"]]
    return {"photo": pid, "layer": layer, "shape": r["shape"], "tiles": r["tiles"], "values": r["values"],
            "image": f"{STUDY}/blocks/{pid}/photo.png", "entries": entries}


def neuron_groups(entry, photos: list[str], layer: str, predicted: dict, profile: Profile, jobs: Jobs) -> list[dict]:
    size, k, steps = option(profile, "size"), option(profile, "groups"), option(profile, "group_steps")
    out_all = []
    for pid in photos:
        image = entry.prepare(images.load(pid))

        def compute(out, image=image, pid=pid):
            g = B.neuron_groups(entry.model, image, layer, groups=k, target=predicted[pid], seed=profile.seed)
            r = B.render_groups(entry.model, g, size=size, steps=steps, seed=profile.seed)
            magnitude = float(g.attribution.abs().sum()) or 1.0
            rows = []
            for i in range(k):
                base = f"{STUDY}/groups/{pid}/g{i}"
                out.write_bytes(f"{base}.png", png(r.images[i]))
                out.write_bytes(f"{base}_map.png", _overlay(image, g.maps[i], signed=False))
                out.write_bytes(f"{base}_attr.png", _overlay(image, g.spatial_attribution[i], signed=True))
                rows.append({"group": i, "attribution": round(float(g.attribution[i]), 6),
                             "share": round(float(g.attribution[i]) / magnitude, 4),
                             "top_channels": torch.argsort(g.directions[i], descending=True)[:5].tolist(),
                             "image": f"{base}.png", "map": f"{base}_map.png", "attribution_map": f"{base}_attr.png"})
            return {"groups": rows, "total": round(g.total, 6), "error": round(g.error, 6), "images": k,
                    "steps": steps, "render_seconds": round(r.seconds, 2)}

        spec = {"photo": images.photo(pid).sha256, "layer": layer, "k": k, "size": size, "steps": steps,
                "target": predicted[pid]}
        r = jobs.run(f"groups/{pid}", spec, compute)
        out_all.append({"photo": pid, "layer": layer, "target": predicted[pid],
                        "target_name": entry.class_names[predicted[pid]], "total": r["total"], "error": r["error"],
                        "groups": r["groups"]})
    return out_all


# -- concepts discovered on one class ---------------------------------------------------------------------
def discovered_concepts(entry, pid: str, profile: Profile, jobs: Jobs) -> dict:
    n, k = option(profile, "concept_views"), option(profile, "concept_k")
    shown, steps, size = min(n, option(profile, "concept_shown")), option(profile, "concept_steps"), option(profile, "size")
    layer = entry.layers[option(profile, "concept_layer")]
    target = O.pre_activation(entry.model, layer)
    label = images.photo(pid).label

    def compute(out):
        views = sources.photo_views(pid, n, entry.input_size[-1], seed=profile.seed)
        c = discovery.discover(entry.model, views, target, label, k=k, seed=profile.seed)
        r = B.render_directions(entry.model, target, c.directions, size=size, steps=steps, seed=profile.seed)
        imp = c.importance()
        rows = []
        for g in range(k):
            rel = f"{STUDY}/discovery/c{g}.png"
            out.write_bytes(rel, png(r.images[g]))
            heat = []
            for v in range(shown):
                hrel = f"{STUDY}/discovery/c{g}_v{v}.png"
                out.write_bytes(hrel, _overlay(views[v], c.maps[v, g], signed=False))
                heat.append(hrel)
            rows.append({"concept": g, "importance": round(float(imp[g]), 4), "image": rel, "heatmaps": heat})
        return {"concepts": rows, "error": round(c.error, 6), "images": k, "steps": steps,
                "render_seconds": round(r.seconds, 2)}

    spec = {"photo": images.photo(pid).sha256, "layer": target, "n": n, "k": k, "shown": shown, "steps": steps,
            "size": size}
    r = jobs.run("discovery", spec, compute)
    return {"photo": pid, "class": label, "name": entry.class_names[label], "layer": layer, "objective_layer": target,
            "views": n, "k": k, "error": r["error"], "concepts": r["concepts"]}


# -- the study ---------------------------------------------------------------------------------------------
def run(profile: Profile, store: Store) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    name = option(profile, "model") or profile.photo_models[0]
    entry = load(name, profile)
    jobs = Jobs(store, {"model": model_id(entry), "seed": profile.seed})
    photos = labelled_photos(profile, entry, option(profile, "photos"))
    positions = option(profile, "layers")
    bad = [p for p in positions + [option(profile, "concept_layer"), option(profile, "crp_layer")]
           if not 0 <= p < len(entry.layers)]
    if bad:
        raise XaiError(f"layer positions {bad} lie outside {name}'s {len(entry.layers)} layers of interest")
    layers = [entry.layers[p] for p in positions]
    blocks = building_blocks(entry, photos, layers, profile, jobs)
    groups = neuron_groups(entry, photos, layers[-1], blocks.pop("predicted"), profile, jobs)
    found = discovered_concepts(entry, option(profile, "concept_photo") or photos[0], profile, jobs)
    human = CI.run(entry, labelled_photos(profile, entry, option(profile, "imagenet_tcav_classes")), profile, jobs)
    marker = MK.run(profile, store, jobs)
    conditional = CRP.run(entry, photos, profile, jobs, marker)
    settings = {k: option(profile, k) for k in DEFAULTS}
    settings.update(model=name, render_size=option(profile, "size"), seed=profile.seed)
    results = {"settings": settings, "blocks": {k: blocks[k] for k in ("photos", "layers")},
               "grids": blocks["grids"], "groups": groups, "discovery": found, "imagenet": human, "marker": marker,
               "crp": conditional,
               # CPU seconds beside wall seconds: on a shared machine the wall clock measures the neighbours too.
               "timing": {"seconds": round(time.perf_counter() - start, 2),
                          "cpu_seconds": round(time.process_time() - cpu, 2), "threads": torch.get_num_threads(),
                          "render_seconds": round(sum(j["seconds"] for j in jobs.log), 2), "jobs": jobs.log}}
    store.write_json(f"{STUDY}/results.json", results)
    tcav = marker["tcav"]
    return {"grids": len(blocks["grids"]), "jobs_run": sum(not j["cached"] for j in jobs.log),
            "marker_tcav": {m: tcav[m]["best"]["mean"] for m in tcav}}
