"""The feature-visualization study's DeepDream by depth: every layer of interest of every ImageNet model
dreams from the same photo and from the same noise, and what changes as the layer gets deeper is
measured: the pattern's wavelength and colourfulness (as for the channel grids), how far the image
moved from its start, and the photo's class probability under the model that dreamt.

One job per model: its layers' dreams from the photo and from noise in one batch (the objective is
each image's own layer's DeepDream term), ``dream_depth_steps`` steps of the report's defaults
(Fourier parameterization, Lucid's transforms, Adam).
"""
from __future__ import annotations

import torch

from .. import featvis, models
from ..data import images
from ..featvis import objectives as O
from ..featvis import param as P
from ..profiles import Profile
from ..render.store import Store
from ._frame import labelled_photos, model_id
from .featvis_base import ROOT, Jobs, _pngs, colourfulness, default_transforms, option, pattern_wavelength, png, \
    square_crop
from .featvis_ladder import _target_p

STARTS = ("photo", "noise")


def dream_depth(imagenet: dict[str, models.ModelEntry], profile: Profile, jobs: Jobs, store: Store) -> dict:
    size, steps = option(profile, "size"), option(profile, "dream_depth_steps")
    labelled = labelled_photos(profile, next(iter(imagenet.values())))
    if not labelled:
        return {"skipped": "the profile has no labelled photo to dream from"}
    pid = labelled[0]
    label = images.photo(pid).label
    start = square_crop(images.load(pid), size)
    store.write_bytes(f"{ROOT}/dream/{pid}.png", png(start))
    out = {"photo": pid, "class": label, "start": f"{ROOT}/dream/{pid}.png", "size": size, "steps": steps,
           "start_wavelength": pattern_wavelength(start[None])[0], "start_colourfulness": colourfulness(start[None])[0],
           "models": {}}
    for name, entry in imagenet.items():
        layers = list(entry.layers)
        n = len(layers)
        seeds = [profile.seed + 900 + i for i in range(2 * n)]
        objective = None
        for i, layer in enumerate(layers):
            w = torch.tensor([1.0 if k % n == i else 0.0 for k in range(2 * n)])
            term = w * O.deepdream(layer)
            objective = term if objective is None else objective + term
        paths = [f"{ROOT}/dream/{name}/{s}/{layer}.png" for s in STARTS for layer in layers]
        spec = {"model": model_id(entry), "photo": images.photo(pid).sha256, "layers": layers, "size": size,
                "steps": steps, "seeds": seeds, "transforms": repr(default_transforms(size))}

        def compute(n=n, seeds=seeds, objective=objective, entry=entry):
            param = P.Stack([P.FFTParam(n, 3, size, init=start[None].expand(n, -1, -1, -1).contiguous()),
                             P.FFTParam(n, 3, size, seed=seeds[n:])])
            return featvis.render(entry.model, objective, param, default_transforms(size), steps, seed=seeds)

        rec = jobs.run(f"{ROOT}/dream/{name}", spec, paths, compute)
        x = _pngs(store, paths)
        wl, col = pattern_wavelength(x), colourfulness(x)
        p = _target_p(entry, x, [label] * len(paths))
        change = [round(float((x[k] - start).abs().mean()), 4) for k in range(len(paths))]
        rows = {s: [{"layer": layer, "path": paths[si * n + i], "value": rec["values"][si * n + i],
                     "wavelength": wl[si * n + i], "colourfulness": col[si * n + i], "target_p": p[si * n + i],
                     "change": change[si * n + i]} for i, layer in enumerate(layers)]
                for si, s in enumerate(STARTS)}
        out["models"][name] = {"layers": layers, "photo_p": _target_p(entry, start[None], [label])[0],
                               "name": entry.class_names[label], **rows}
    return out
