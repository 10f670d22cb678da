"""Chapter 3, Grad-CAM: which layer, segmentation by threshold, and counterfactual maps.

Every map explains the model's top-1 class unless stated; the CAM layer is the deepest of the entry's
layers whose spatial positions move the prediction (:func:`xai.attribution.default_layer`).

Artifacts (under ``gradcam/``):

``results.json``
    ``layers.<model>``: ``layers`` (shallow to deep, as tried), ``grid`` (``<layer>: [h, w]``, the
    map's native resolution), ``photos`` (ids, or Fashion-MNIST test indices as strings),
    ``not_applicable.<layer>`` (reason), ``figure`` (rows: photo x {Grad-CAM, Layer-CAM}, columns: layers).
    ``segmentation``: ``thresholds`` (fractions of each map's maximum), ``rule`` (text),
    ``models.<model>.<photo>``: ``target`` (class name), ``p`` (on the full image), ``area`` (fraction
    of pixels kept, per threshold), ``confidence_black`` / ``confidence_blur`` (softmax probability of the
    target with everything outside the kept region black / blurred, per threshold), ``top1_kept``
    (whether the target is still top-1 on the black-masked image, per threshold), ``images`` (per
    threshold: the black-masked image, for a slider); ``mean.<model>``: ``area``, ``confidence_black``,
    ``confidence_blur`` averaged over photos; ``figure`` (curves), ``strip`` (one photo at every threshold).
    ``counterfactual.<model>.layers``: the layers shown (the CAM layer, then the one before it);
    ``counterfactual.<model>.<layer>``: ``figure``, ``empty`` (photos whose top-1 counterfactual map is zero
    everywhere), ``photos.<photo>``: ``top1``/``top2`` (``name``, ``p``), ``counterfactual_area`` (fraction
    of pixels where the counterfactual map of the top-1 class is positive), ``spearman_cf1_cam2`` (rank
    correlation between the counterfactual map of the top-1 class and the Grad-CAM of the top-2 class;
    null when a map is constant).
``layers/<model>.webp``, ``segmentation.webp``, ``segmentation_strip.webp``, ``parts/*.json`` (cached pieces),
``segmentation/<model>/<photo>/<percent>.webp``, ``counterfactual/<model>/<layer>.webp``.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import attribution, models
from ..errors import NotApplicableError
from ..metrics import spearman, substrate
from ..profiles import Profile
from ..render import figures
from ..render import maps as R
from ..render.store import Store, cache_key
from . import _frame as frame
from ._frame import Batch, batch_for, load, model_id, photo_batch, photos_of
from .saliency import cam_layer

STUDY = "gradcam"
CODE_VERSION = 2

DEFAULTS = {
    "layer_photos": 2,  # photos (and Fashion-MNIST images) per model in the layer figure
    "segmentation_photos": 8,  # first N of the profile's photos; None: all
    "thresholds": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "counterfactual_photos": 4,
    # None: the CAM layer and the layer of interest before it. After a final ReLU(6) every channel is
    # non-negative, and a confident class's weighted sum is often positive everywhere, which leaves its
    # counterfactual map empty; the layer before (a linear projection in EfficientNet) keeps signs.
    "counterfactual_layers": None,
}


option = frame.options(STUDY, DEFAULTS)


def _entries(profile: Profile) -> dict[str, models.ModelEntry]:
    return {n: load(n, profile) for n in [*profile.photo_models, *profile.fmnist_models]}


def _with_photos(entries: dict, profile: Profile) -> dict[str, models.ModelEntry]:
    """The entries the report has photos for (the segmentation and the counterfactual maps are judged on
    photos; Fashion-MNIST's test images are too small for either)."""
    return {n: e for n, e in entries.items() if e.label_space in profile.photo_spaces}


def _batch(entry: models.ModelEntry, profile: Profile, n: int) -> Batch:
    return batch_for(entry, profile, n, n)


# -- layers ----------------------------------------------------------------------------------------------------

def layers_part(entries: dict, profile: Profile, store: Store) -> dict:
    n = option(profile, "layer_photos")
    out = {}
    for name, entry in entries.items():
        key = cache_key(STUDY, CODE_VERSION, "layers", model_id(entry), n, entry.layers)
        out[name] = store.cached_json(f"{STUDY}/parts/layers_{name}.json", key,
                                      lambda e=entry: _layers_of(e, profile, store, n))
    return out


def _layers_of(entry: models.ModelEntry, profile: Profile, store: Store, n: int) -> dict:
    import matplotlib.pyplot as plt

    b = _batch(entry, profile, n)
    maps, grid, skipped = {}, {}, {}
    for layer in entry.layers:
        try:
            for method in ("grad_cam", "layer_cam"):
                maps[(layer, method)] = attribution.attribute(method, entry, b.x, b.targets, layer=layer)[:, 0]
        except NotApplicableError as e:
            skipped[layer] = str(e)
            continue
        grid[layer] = _native_grid(entry, b.x, layer)
    shown = [layer for layer in entry.layers if layer in grid]
    rel = f"{STUDY}/layers/{entry.name}.webp"
    rows = [(i, method) for i in range(len(b.ids)) for method in ("grad_cam", "layer_cam")]
    fig, axes = plt.subplots(len(rows), len(shown) + 1, figsize=(1.9 * (len(shown) + 1), 1.95 * len(rows)),
                             squeeze=False)
    for r, (i, method) in enumerate(rows):
        target = entry.class_names[int(b.targets[i])]
        R.show_image(axes[r, 0], b.x[i], f"{b.ids[i]} → {target}\n{attribution.get(method).label}", fontsize=7)
        for c, layer in enumerate(shown, start=1):
            title = f"{layer} ({grid[layer][0]}×{grid[layer][1]})" if r == 0 else ""
            R.draw(axes[r, c], maps[(layer, method)][i], signed=False, image=b.x[i], title=title, fontsize=7)
    fig.subplots_adjust(wspace=0.04, hspace=0.22)
    store.write_figure(rel, fig, dpi=90)
    return {"layers": list(entry.layers), "grid": grid, "photos": b.ids, "not_applicable": skipped, "figure": rel}


def _native_grid(entry: models.ModelEntry, x: torch.Tensor, layer: str) -> list[int]:
    """The layer's own grid (rows, columns), as its traced layout reads it."""
    return list(entry.layout(layer).grid)


# -- segmentation by threshold -------------------------------------------------------------------------------

def segmentation_part(entries: dict, profile: Profile, store: Store) -> dict:
    thresholds = [float(t) for t in option(profile, "thresholds")]
    n = option(profile, "segmentation_photos")
    own, photos = frame.photos_by_model(profile, _with_photos(entries, profile), n)
    out = {"thresholds": thresholds, "photos": photos, "models": {}, "mean": {},
           "rule": "kept region: pixels where the upsampled Grad-CAM map is at least the threshold times its "
                   "maximum; outside it the image is black (confidence_black) or blurred (confidence_blur)"}
    for name, ids in own.items():
        entry = entries[name]
        key = cache_key(STUDY, CODE_VERSION, "segmentation", model_id(entry), ids, thresholds)
        out["models"][name] = store.cached_json(f"{STUDY}/parts/segmentation_{name}.json", key,
                                                lambda e=entry, p=ids: _segmentation_of(e, p, thresholds, store))
        per = out["models"][name].values()
        out["mean"][name] = {k: [round(float(np.mean(v)), 4) for v in zip(*[r[k] for r in per])]
                             for k in ("area", "confidence_black", "confidence_blur")}
    if out["models"]:
        out["figure"] = _segmentation_curves(out, store)
        first = next(iter(out["models"]))
        out["strip"] = _segmentation_strip(out, first, own[first][0], store)
    return out


def _segmentation_of(entry: models.ModelEntry, photos: list[str], thresholds: list[float], store: Store) -> dict:
    b = photo_batch(entry, photos)
    layer = cam_layer(entry, b.x)
    cams = attribution.grad_cam(entry, b.x, b.targets, layer=layer)[:, 0]
    peak = cams.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    tau = torch.tensor(thresholds).view(1, -1, 1, 1)
    keep = (cams / peak)[:, None] >= tau  # [N, T, H, W]
    masked, probs = {}, {}
    for sub in ("zero", "blur"):
        fill = substrate(b.x, sub)
        masked[sub] = torch.where(keep[:, :, None], b.x[:, None], fill[:, None])  # [N, T, C, H, W]
        p = frame.probabilities(entry, masked[sub].flatten(0, 1), 32)
        probs[sub] = p.view(len(photos), len(thresholds), -1)
    rows = {}
    for i, pid in enumerate(photos):
        t = int(b.targets[i])
        paths = []
        for j, th in enumerate(thresholds):
            rel = f"{STUDY}/segmentation/{entry.name}/{pid}/{round(th * 100):02d}.webp"
            store.write_bytes(rel, figures.thumbnail_webp(masked["zero"][i, j], 320))
            paths.append(rel)
        rows[pid] = {
            "target": entry.class_names[t], "p": round(float(b.probs[i]), 4), "layer": layer,
            "area": [round(float(a), 4) for a in keep[i].float().mean((1, 2))],
            "confidence_black": [round(float(p), 4) for p in probs["zero"][i, :, t]],
            "confidence_blur": [round(float(p), 4) for p in probs["blur"][i, :, t]],
            "top1_kept": [bool(p.argmax() == t) for p in probs["zero"][i]],
            "images": paths,
        }
    return rows


def _segmentation_curves(out: dict, store: Store) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    th = out["thresholds"]
    for name, mean in out["mean"].items():
        line, = axes[0].plot(th, mean["area"], marker="o", ms=3, label=name)
        axes[1].plot(th, mean["confidence_black"], marker="o", ms=3, color=line.get_color(), label=f"{name}, black")
        axes[1].plot(th, mean["confidence_blur"], ls="--", color=line.get_color(), label=f"{name}, blurred")
    axes[0].set(xlabel="threshold (fraction of the map's maximum)", ylabel="kept area (fraction of image)")
    axes[1].set(xlabel="threshold (fraction of the map's maximum)", ylabel="p(target | kept region)")
    for ax in axes:
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    rel = f"{STUDY}/segmentation.webp"
    store.write_figure(rel, fig, dpi=100)
    return rel


def _segmentation_strip(out: dict, model: str, photo: str, store: Store) -> str:
    import matplotlib.pyplot as plt
    from PIL import Image

    row = out["models"][model][photo]
    th = out["thresholds"]
    fig, axes = plt.subplots(1, len(th), figsize=(1.6 * len(th), 2.1), squeeze=False)
    for j, ax in enumerate(axes[0]):
        ax.imshow(Image.open(store.path(row["images"][j])))
        ax.set_title(f"τ = {th[j]:.1f}\narea {row['area'][j]:.2f}, p {row['confidence_black'][j]:.2f}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(wspace=0.05)
    rel = f"{STUDY}/segmentation_strip.webp"
    store.write_figure(rel, fig, dpi=100)
    return rel


# -- counterfactual -------------------------------------------------------------------------------------------

def counterfactual_part(entries: dict, profile: Profile, store: Store) -> dict:
    chosen = option(profile, "counterfactual_layers")
    out = {}
    for name, entry in _with_photos(entries, profile).items():
        photos = photos_of(profile, entry, option(profile, "counterfactual_photos"))
        key = cache_key(STUDY, CODE_VERSION, "counterfactual", model_id(entry), photos, chosen)
        out[name] = store.cached_json(f"{STUDY}/parts/counterfactual_{name}.json", key,
                                      lambda e=entry, p=photos: _counterfactual_of(e, p, chosen, store))
    return out


def _counterfactual_of(entry: models.ModelEntry, photos: list[str], layers: list[str] | None, store: Store) -> dict:
    b = photo_batch(entry, photos)
    if layers is None:
        last = cam_layer(entry, b.x)
        before = entry.layers[:entry.layers.index(last)] if last in entry.layers else []
        layers = [last] + before[-1:]
    top = frame.probabilities(entry, b.x).topk(2, dim=-1)
    out = {"layers": list(layers)}
    for layer in layers:
        out[layer] = _counterfactual_at(entry, b, top, layer, store)
    return out


def _counterfactual_at(entry: models.ModelEntry, b: Batch, top, layer: str, store: Store) -> dict:
    import matplotlib.pyplot as plt

    c1, c2 = top.indices[:, 0], top.indices[:, 1]
    cam1 = attribution.grad_cam(entry, b.x, c1, layer=layer)[:, 0]
    cf1 = attribution.counterfactual_grad_cam(entry, b.x, c1, layer=layer)[:, 0]
    cam2 = attribution.grad_cam(entry, b.x, c2, layer=layer)[:, 0]
    cf2 = attribution.counterfactual_grad_cam(entry, b.x, c2, layer=layer)[:, 0]
    rho = spearman(cf1, cam2)
    rows = {}
    for i, pid in enumerate(b.ids):
        rows[pid] = {
            "top1": {"name": entry.class_names[int(c1[i])], "p": round(float(top.values[i, 0]), 4)},
            "top2": {"name": entry.class_names[int(c2[i])], "p": round(float(top.values[i, 1]), 4)},
            "counterfactual_area": round(float((cf1[i] > 0).float().mean()), 4),
            "spearman_cf1_cam2": None if np.isnan(rho[i]) else round(float(rho[i]), 4),
        }
    fig, axes = plt.subplots(len(b.ids), 5, figsize=(5 * 1.9, 2.0 * len(b.ids)), squeeze=False)
    for i, pid in enumerate(b.ids):
        n1, n2 = rows[pid]["top1"]["name"], rows[pid]["top2"]["name"]
        R.show_image(axes[i, 0], b.x[i], f"{pid} ({layer})", fontsize=7)
        panels = [(cam1, f"Grad-CAM: {n1}"), (cf1, f"counterfactual: {n1}"),
                  (cam2, f"Grad-CAM: {n2}"), (cf2, f"counterfactual: {n2}")]
        for c, (m, title) in enumerate(panels, start=1):
            if float(m[i].max()) > 0:
                R.draw(axes[i, c], m[i], signed=False, image=b.x[i], title=title, fontsize=7)
            else:
                R.blank(axes[i, c], f"{title}\n\nzero everywhere: no region\nargues against this class\n"
                                    f"at {layer}")
    fig.subplots_adjust(wspace=0.05, hspace=0.3)
    rel = f"{STUDY}/counterfactual/{entry.name}/{layer}.webp"
    store.write_figure(rel, fig, dpi=90)
    return {"figure": rel, "photos": rows,
            "empty": sum(1 for r in rows.values() if r["counterfactual_area"] == 0)}


def run(profile: Profile, store: Store) -> dict:
    entries = _entries(profile)
    results = {
        "layers": layers_part(entries, profile, store),
        "segmentation": segmentation_part(entries, profile, store),
        "counterfactual": counterfactual_part(entries, profile, store),
    }
    store.write_json(f"{STUDY}/results.json", results)
    return {"models": list(entries), "segmentation_photos": len(results["segmentation"]["photos"]),
            "counterfactual_photos": option(profile, "counterfactual_photos")}
