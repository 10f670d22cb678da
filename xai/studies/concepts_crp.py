"""The concepts chapter's concept-conditional heatmaps (CRP, :mod:`xai.concepts.crp`, by LRP's
``crp_composite``): which channels of a layer carried a prediction, and where in the photo each one's
evidence lies.

* **ImageNet**: for each of the chapter's photos, the predicted class's LRP relevance at the layer at
  position ``crp_layer`` of the model's layers of interest (efficientnet_lite0: blocks.4, a layer the
  Microscope browses), its ``crp_top`` most relevant channels, the heatmap conditioned on each, and
  the heatmap of all the other channels together (``rest``): the parts add up to the LRP heatmap of
  the logit, which the study checks and records (``sum_error``). Each channel is shown by its feature
  visualization, rendered as the Microscope renders it (``crp_unit_size``, ``crp_unit_steps``, seed
  ``seed + channel``).
* **The marker, a concept with known truth**: on ``crp_marker_images`` marked images of the marker
  class, the square-marker model and its clean control (:func:`.concepts_marker.models`) explained at
  the Grad-CAM layer. Per model: the relevance mass on the marker of the whole LRP heatmap and of the
  top channel's heatmap, the top channel's share of the layer's relevance, the channel most often on
  top, and how often the top channel is one that dissection (:mod:`.concepts_marker`) found detecting
  the marker.

``results.json:crp``: ``settings``; ``imagenet``: ``model``, ``layer``, ``channels`` (of the layer),
``propagation``, ``photos`` (per photo: ``photo``, ``target``, ``target_name``, ``logit``,
``layer_total``, ``layer_magnitude``, ``top`` (list of ``channel``, ``relevance``, ``share``,
``heat_sum``), ``rest_share``, ``sum_error`` (max |parts - whole| over max |whole|)), ``panels`` (the
figure's records: ``photo``, ``row`` (heatmap, unit), ``panel``, ``panel_label``, ``image``, ``note``),
``max_sum_error``; ``marker``: ``layer``, ``images``, ``area_share``, per role ``poisoned``/``clean``:
``whole_mass``, ``top_mass``, ``top_share``, ``mode_channel``, ``mode_share``, ``detector_share``
(null without detectors), ``detectors``; ``figure`` (``concepts/crp/marker.webp``).
"""
from __future__ import annotations

from collections import Counter

import torch

from ..attribution.lrp import propagate
from ..concepts import crp
from ..data import fashion_mnist, images
from ..errors import NotApplicableError
from ..featvis import microscope as M
from ..metrics.shortcut import region_mass
from ..profiles import Profile
from ..render import maps as R
from ..shortcuts import poisoned as P
from . import concepts_marker as MK
from . import _frame as frame
from ._frame import skipped
from .featvis import png

ROOT = "concepts/crp"
DEFAULTS = {
    "crp_layer": 3,  # position in the model's layers of interest
    "crp_top": 4,
    "crp_composite": "epsilon_plus_flat",
    # The Microscope's render settings (xai.studies.microscope), so a channel looks the same on both pages.
    "crp_unit_size": 64,
    "crp_unit_steps": 128,
    "crp_marker_images": 50,
}
ORDINALS = ("1st", "2nd", "3rd") + tuple(f"{i}th" for i in range(4, 65))


def _opt(profile: Profile, key: str):
    return profile.option("concepts", key, DEFAULTS[key])


def _r(v: float, digits: int = 4) -> float:
    return round(float(v), digits)


def _overlay(image: torch.Tensor, heat: torch.Tensor) -> tuple[bytes, float]:
    """A signed heatmap (summed over the input's colours) over the photo, and the range its colours span."""
    m = heat.sum(0)  # LRP's input relevance: already the photo's size
    rgb = torch.from_numpy(R.overlay(image, m.numpy(), True)).permute(2, 0, 1).float()
    return png(rgb), R.clip_limit(m.numpy(), True)


def run(entry, photos: list[str], profile: Profile, jobs, marker: dict) -> dict:
    layer = entry.layers[_opt(profile, "crp_layer")]
    settings = {k: _opt(profile, k) for k in DEFAULTS}
    spec = {"photos": [images.photo(p).sha256 for p in photos], "layer": layer, "settings": settings,
            "input": list(entry.input_size)}
    try:
        part = jobs.run(f"crp/imagenet/{layer}", spec, lambda out: _imagenet(entry, photos, layer, profile, out))
    except NotApplicableError as e:  # a model LRP has no rules for: the part says why, the rest goes on
        part = skipped(f"LRP does not apply to {entry.name}: {e.reason}")
    entries, plant = MK.models(profile)
    mspec = {"checkpoints": {k: e.info["key"] for k, e in entries.items()}, "settings": settings,
             "detectors": {role: marker["dissection"][role][P.CAM_LAYER]["detectors"] for role in entries}}
    mpart = jobs.run("crp/marker", mspec, lambda out: _marker(entries, plant, mspec["detectors"], profile, out))
    strip = ("seconds", "cpu_seconds")
    return {"settings": settings, "imagenet": {k: v for k, v in part.items() if k not in strip},
            "marker": {k: v for k, v in mpart.items() if k not in strip}}


def _imagenet(entry, photos: list[str], layer: str, profile: Profile, out) -> dict:
    prop = crp.LRP(_opt(profile, "crp_composite"))
    top = _opt(profile, "crp_top")
    rows, panels, units, labels = [], [], {}, {}
    for pid in photos:
        x = entry.prepare(images.load(pid))
        target = int(frame.predicted(entry, x[None]))
        res = crp.conditional_heatmaps(entry.model, x[None], target, layer, top=top, propagation=prop, rest=True)
        whole = propagate(entry.model, x[None], target, composite=prop.composite)
        parts = res.heatmaps[0].sum(0) + res.rest[0]
        scale = float(whole.relevance.abs().max())
        magnitude = float(res.layer_relevance.abs().sum())
        channels = int(res.layer_relevance.shape[1])
        chans = [int(c) for c in res.channels[0]]
        entries = [{"channel": c, "relevance": _r(r, 6), "share": _r(float(r) / magnitude),
                    "heat_sum": _r(float(h.sum()), 6)}
                   for c, r, h in zip(chans, res.channel_relevance[0], res.heatmaps[0])]
        rest_rel = float(res.layer_relevance.sum()) - sum(float(r) for r in res.channel_relevance[0])
        rows.append({"photo": pid, "target": target, "target_name": entry.class_names[target],
                     "logit": _r(whole.logit[0], 5), "layer_total": _r(res.layer_relevance.sum(), 6),
                     "layer_magnitude": _r(magnitude, 6), "top": entries, "rest_share": _r(rest_rel / magnitude),
                     "sum_error": float(f"{float((parts - whole.relevance[0]).abs().max()) / scale:.3g}")})
        labels[pid] = f"{pid} ({entry.class_names[target]})"
        maps = [("whole", "All channels", whole.relevance[0], f"all {channels} channels")]
        maps += [(f"c{i}", ORDINALS[i], res.heatmaps[0, i], f"channel {c}: {e['share']:+.0%} of the layer's relevance")
                 for i, (c, e) in enumerate(zip(chans, entries))]
        maps.append(("rest", "The rest", res.rest[0], f"the other channels: {rows[-1]['rest_share']:+.0%}"))
        for key, label, heat, note in maps:
            data, lim = _overlay(x, heat)
            rel = f"{ROOT}/{pid}/{key}.png"
            out.write_bytes(rel, data)
            panels.append({"photo": pid, "photo_label": labels[pid], "row": "heatmap",
                           "row_label": "Heatmap", "panel": key, "panel_label": label, "image": rel,
                           "note": f"{note}; colours span ±{lim:.2g}"})
        for i, c in enumerate(chans):
            units.setdefault(c, []).append((pid, f"c{i}", ORDINALS[i]))
    rendered = M.render_channels(entry.model, layer, sorted(units), size=_opt(profile, "crp_unit_size"),
                                 steps=_opt(profile, "crp_unit_steps"), seed=profile.seed, batch=None)
    for c, img in zip(sorted(units), rendered.images):
        rel = f"{ROOT}/units/{layer}/c{c}.png"
        out.write_bytes(rel, png(img))
        for pid, key, label in units[c]:
            panels.append({"photo": pid, "photo_label": labels[pid], "row": "unit", "row_label": "The channel",
                           "panel": key, "panel_label": label, "image": rel,
                           "note": f"channel {c}"})
    return {"model": entry.name, "layer": layer, "propagation": prop.name, "photos": rows, "panels": panels,
            "channels": channels,
            "max_sum_error": max(r["sum_error"] for r in rows), "images": len(units),
            "steps": _opt(profile, "crp_unit_steps")}


def _marker(entries: dict, plant, detectors: dict, profile: Profile, out) -> dict:
    x, y = fashion_mnist.load("test")
    own = torch.nonzero(y == plant.class_index).flatten()[:_opt(profile, "crp_marker_images")]
    marked = plant.marker.apply(x[own])
    region = plant.marker.region
    prop = crp.LRP(_opt(profile, "crp_composite"))
    roles, shown = {}, {}
    for role, e in entries.items():
        res = crp.conditional_heatmaps(e.model, marked, plant.class_index, P.CAM_LAYER, top=1, propagation=prop)
        whole = propagate(e.model, marked, plant.class_index, composite=prop.composite)
        first = res.channels[:, 0].tolist()
        mode, count = Counter(first).most_common(1)[0]
        det = set(detectors[role])
        share = res.channel_relevance[:, 0] / res.layer_relevance.abs().sum(1)
        roles[role] = {"whole_mass": _r(region_mass(whole.relevance, region).nanmean()),
                       "top_mass": _r(region_mass(res.heatmaps[:, 0], region).nanmean()),
                       "top_share": _r(share.mean()), "mode_channel": int(mode), "mode_share": _r(count / len(first)),
                       "detector_share": _r(sum(c in det for c in first) / len(first)) if det else None,
                       "detectors": sorted(det)}
        shown[role] = (whole.relevance[:4], res.heatmaps[:4, 0], first[:4])
    out.write_figure(f"{ROOT}/marker.webp", _marker_figure(marked[:4], shown), dpi=100)
    return {"layer": P.CAM_LAYER, "images": int(marked.shape[0]), "area_share": _r(plant.marker.area_share, 6),
            "marker_class": plant.class_name, **roles, "figure": f"{ROOT}/marker.webp"}


def _marker_figure(marked: torch.Tensor, shown: dict):
    """Per model two rows: the whole LRP heatmap and the top channel's, on the same marked images."""
    import matplotlib.pyplot as plt

    n = marked.shape[0]
    fig, axes = plt.subplots(2 * len(shown), n, figsize=(1.3 * n, 1.45 * 2 * len(shown)), squeeze=False)
    for r, (role, (whole, top, chans)) in enumerate(shown.items()):
        for i in range(n):
            R.draw(axes[2 * r, i], whole[i].sum(0).numpy(), signed=True, image=marked[i],
                   title=f"{role}: LRP" if i == 0 else "")
            R.draw(axes[2 * r + 1, i], top[i].sum(0).numpy(), signed=True, image=marked[i],
                   title=f"channel {chans[i]}")
    fig.tight_layout()
    return fig
