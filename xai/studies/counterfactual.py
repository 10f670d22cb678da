"""Chapter (with misclassification): counterfactual inputs for misclassified images.

For misclassified Fashion-MNIST test images and photos, :func:`xai.counterfactual.counterfactual` edits
the image until the *true* class wins with the set confidence, under an L1 penalty (few pixels) and a
total-variation penalty (smooth edits), inside the valid range [0, 1]. The edit ``d = x' - x`` is
compared with the contrastive saliency map of the same direction, i.e. the attribution of
``logit_true - logit_pred`` (:func:`xai.contrastive.contrastive_map`), by Spearman rank correlation over
pixels (colour channels summed): signed (do the edit and the map push the same pixels the same way?) and
of magnitudes (do they pick the same pixels?). Fashion-MNIST cases are the most confident mistakes of
the top confusion pairs of one model, round-robin over pairs; photos are the labelled photos the
ImageNet models get wrong (first model first, out-of-distribution photos excluded).

Artifacts (under ``counterfactual/``):

``results.json``
    ``settings.fmnist`` / ``settings.photos``: the optimizer's options (``confidence``, ``distance``,
    ``weight``, ``tv``, ``steps``, ``lr``, ``patience``); ``compare_methods``: the contrastive methods.
    ``fmnist.model``, ``fmnist.figure``, ``photos.figure``.
    ``fmnist.cases`` and ``photos.cases``: lists of records: ``id`` (test index or photo id), ``model``,
    ``true`` / ``true_name``, ``pred`` / ``pred_name``, ``p_true_before``, ``success``, ``steps``
    (to first reach the confidence), ``steps_run``, ``confidence`` (p_true after), ``prediction`` /
    ``prediction_name`` (top-1 after), ``l2``, ``linf``, ``l1``, ``changed_pixels`` (|d| > 1/255 in any
    channel), ``spearman.<method>`` and ``spearman_abs.<method>``; Fashion-MNIST cases also carry
    ``l2_variant``: the same numbers for a squared-L2 penalty without TV (``settings.fmnist_l2``).
    ``summary.fmnist`` / ``summary.photos``: ``cases``, ``success_rate``, ``median_steps``,
    ``median_l2``, ``median_linf``, ``median_spearman.<method>``, ``median_spearman_abs.<method>``.
``fmnist.webp``, ``photos.webp``: rows cases; columns original, counterfactual, difference (diverging,
centred at 0, scaled to the row's max |d|), and the contrastive maps.
"""
from __future__ import annotations

import statistics

import numpy as np
import torch

from .. import attribution, models
from ..contrastive import contrastive_map
from ..counterfactual import counterfactual
from ..data import fashion_mnist, images
from ..metrics import spearman
from ..profiles import Profile
from ..render import maps as R
from ..render.store import Store, cache_key
from . import _frame as frame
from . import saliency as S
from .misclassification import confusion_matrix, num, top_confusions

STUDY = "counterfactual"
CODE_VERSION = 1

DEFAULTS = {
    "fmnist_model": None,  # None: the profile's first Fashion-MNIST model
    "fmnist_cases": 8,
    "test_images": None,  # Fashion-MNIST test images searched for confusions (first N); None: all 10,000
    "photo_cases": 3,
    "compare_methods": ("gradient", "integrated_gradients"),
    # A confident, sparse, smooth edit on 28 px images; on photos the first win is already a few steps
    # away, so a plain win (0.5) and a short refinement keep the CPU budget.
    "fmnist": {"confidence": 0.9, "distance": "l1", "weight": 0.01, "tv": 0.01, "steps": 400, "lr": 0.01,
               "patience": 50},
    "fmnist_l2": {"confidence": 0.9, "distance": "l2", "weight": 0.1, "tv": 0.0, "steps": 400, "lr": 0.01,
                  "patience": 50},
    "photos": {"confidence": 0.5, "distance": "l1", "weight": 0.01, "tv": 0.01, "steps": 60, "lr": 0.005,
               "patience": 20},
}


option = frame.options(STUDY, DEFAULTS)


def compare(entry: models.ModelEntry, x: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, delta: torch.Tensor,
            methods, profile: Profile) -> tuple[dict, dict]:
    """Contrastive maps (true vs pred) ``{method: [B, H, W]}`` and the rank correlations with ``delta``."""
    maps, rho = {}, {}
    d = delta.sum(1).cpu()
    for m in methods:
        maps[m] = contrastive_map(entry, x.to(entry.device), true, pred, m, **S.method_options(profile, m)).sum(1).cpu()
        rho[m] = (spearman(d, maps[m]), spearman(d.abs(), maps[m].abs()))
    return maps, rho


def records(entry, ids, x, true, pred, p_true, result, rho, methods) -> list[dict]:
    out = []
    for i, cid in enumerate(ids):
        r = result.summary(i)
        out.append({
            "id": cid, "model": entry.name, "true": int(true[i]), "true_name": entry.class_names[int(true[i])],
            "pred": int(pred[i]), "pred_name": entry.class_names[int(pred[i])], "p_true_before": num(p_true[i]),
            **{k: num(v) if isinstance(v, float) else v for k, v in r.items() if k != "target"},
            "prediction_name": entry.class_names[r["prediction"]],
            "spearman": {m: num(rho[m][0][i]) for m in methods},
            "spearman_abs": {m: num(rho[m][1][i]) for m in methods}})
    return out


def summary(cases: list[dict], methods) -> dict:
    def med(values):
        values = [v for v in values if v is not None]
        return num(statistics.median(values)) if values else None

    return {"cases": len(cases), "success_rate": num(np.mean([c["success"] for c in cases])) if cases else None,
            "median_steps": med([c["steps"] for c in cases]), "median_l2": med([c["l2"] for c in cases]),
            "median_linf": med([c["linf"] for c in cases]),
            "median_spearman": {m: med([c["spearman"][m] for c in cases]) for m in methods},
            "median_spearman_abs": {m: med([c["spearman_abs"][m] for c in cases]) for m in methods}}


def cf_title(case: dict) -> str:
    reached = f"{case['steps']} steps" if case["success"] else f"not reached in {case['steps_run']} steps"
    return f"counterfactual\np true {case['confidence']:.2f}, {reached}"


def figure(rows: list[dict], methods):
    """rows: dicts with image, cf, title, cf_title, maps {method: [H, W]}."""
    import matplotlib.pyplot as plt

    ncol = 3 + len(methods)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(ncol * 1.55, len(rows) * 1.7), squeeze=False)
    for r, row in enumerate(rows):
        R.show_image(axes[r, 0], row["image"], row["title"], fontsize=6)
        R.show_image(axes[r, 1], row["cf"], row["cf_title"], fontsize=6)
        d = (row["cf"] - row["image"]).sum(0).numpy()
        lim = float(np.abs(d).max()) or 1.0
        ax = axes[r, 2]
        ax.imshow(d, cmap=R.DIVERGING, vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"difference (±{lim:.2f})", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        for c, m in enumerate(methods, start=3):
            R.draw(axes[r, c], row["maps"][m], signed=True, image=row["image"],
                   title=f"{attribution.get(m).label}\ntrue vs pred", fontsize=6)
    fig.subplots_adjust(wspace=0.05, hspace=0.45)
    return fig


def _fresh(store: Store, rel: str, key: str, fig: str) -> dict | None:
    if store.fresh(rel, key) and store.path(fig).exists():
        return store.read_json(rel)
    return None


def fmnist_part(profile: Profile, store: Store, methods) -> dict:
    name = option(profile, "fmnist_model") or profile.fmnist_models[0]
    entry = frame.require_label_space(frame.load(name, profile), models.FASHION_MNIST)
    settings, variant = option(profile, "fmnist"), option(profile, "fmnist_l2")
    n = option(profile, "fmnist_cases")
    key = cache_key(STUDY, CODE_VERSION, "fmnist", frame.model_id(entry), settings, variant, n,
                    option(profile, "test_images"), methods, {m: S.method_options(profile, m) for m in methods})
    rel, fig_rel = f"{STUDY}/fmnist.json", f"{STUDY}/fmnist.webp"
    cached = _fresh(store, rel, key, fig_rel)
    if cached is not None:
        return cached
    x, y = fashion_mnist.load("test")
    m = option(profile, "test_images")
    x, y = (x[:m], y[:m]) if m else (x, y)
    probs = frame.probabilities(entry, x, 500)
    pred = probs.argmax(-1)
    pairs = top_confusions(confusion_matrix(y, pred, entry.num_classes), 3)
    queues = []
    for t, p, _ in pairs:
        idx = ((y == t) & (pred == p)).nonzero().flatten()
        queues.append(idx[probs[idx, p].argsort(descending=True, stable=True)].tolist())
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    idx = torch.tensor(chosen, dtype=torch.long)
    xs, ts, ps = x[idx], y[idx], pred[idx]
    res = counterfactual(entry, xs, ts, **settings)
    res_l2 = counterfactual(entry, xs, ts, **variant)
    maps, rho = compare(entry, xs, ts, ps, res.delta, methods, profile)
    cases = records(entry, chosen, xs, ts, ps, probs[idx, ts], res, rho, methods)
    for i, c in enumerate(cases):
        c["l2_variant"] = {k: num(v) if isinstance(v, float) else v for k, v in res_l2.summary(i).items()}
    rows = [{"image": xs[i], "cf": res.counterfactuals[i].cpu(),
             "title": f"#{c['id']}: {c['true_name']}\n→ {c['pred_name']} (p true {c['p_true_before']:.2f})",
             "cf_title": cf_title(c),
             "maps": {m: maps[m][i] for m in methods}} for i, c in enumerate(cases)]
    store.write_figure(fig_rel, figure(rows, methods), key, dpi=100)
    out = {"model": name, "figure": fig_rel, "cases": cases}
    store.write_json(rel, out, key)
    return out


def photos_part(profile: Profile, store: Store, methods) -> dict:
    settings = option(profile, "photos")
    want = option(profile, "photo_cases")
    picked: list[tuple[str, str]] = []  # (model, photo): each photo once, first model that gets it wrong
    entries = {}
    for name in profile.photo_models:
        if len(picked) >= want:
            break
        entry = entries[name] = frame.load(name, profile)
        labelled = frame.labelled_photos(profile, entry)
        if not labelled:
            continue
        batch = frame.photo_batch(entry, labelled)
        seen = {p for _, p in picked}
        for i, pid in enumerate(labelled):
            if len(picked) < want and pid not in seen and int(batch.targets[i]) != images.photo(pid).label:
                picked.append((name, pid))
    key = cache_key(STUDY, CODE_VERSION, "photos", picked, {m: frame.model_id(entries[m]) for m, _ in picked},
                    [images.photo(p).sha256 for _, p in picked], settings, methods,
                    {m: S.method_options(profile, m) for m in methods})
    rel, fig_rel = f"{STUDY}/photos.json", f"{STUDY}/photos.webp"
    cached = _fresh(store, rel, key, fig_rel)
    if cached is not None:
        return cached
    cases, rows = [], []
    for name in dict.fromkeys(m for m, _ in picked):
        entry = entries[name]
        ids = [p for m, p in picked if m == name]
        xs = torch.stack([entry.prepare(images.load(p)) for p in ids])
        probs = frame.probabilities(entry, xs)
        ts = torch.tensor([images.photo(p).label for p in ids])
        ps = probs.argmax(-1)
        res = counterfactual(entry, xs, ts, **settings)
        maps, rho = compare(entry, xs, ts, ps, res.delta, methods, profile)
        new = records(entry, ids, xs, ts, ps, probs[torch.arange(len(ids)), ts], res, rho, methods)
        cases += new
        rows += [{"image": xs[i], "cf": res.counterfactuals[i].cpu(),
                  "title": f"{name}: {c['id']}\n{c['true_name']} → {c['pred_name']}",
                  "cf_title": cf_title(c),
                  "maps": {m: maps[m][i] for m in methods}} for i, c in enumerate(new)]
    if rows:
        store.write_figure(fig_rel, figure(rows, methods), key, dpi=90)
    out = {"figure": fig_rel if rows else None, "cases": cases}
    store.write_json(rel, out, key)
    return out


def run(profile: Profile, store: Store) -> dict:
    methods = list(option(profile, "compare_methods"))
    for m in methods:
        attribution.get(m)
    fm = fmnist_part(profile, store, methods) if profile.fmnist_models else frame.skipped(frame.NO_FMNIST)
    ph = photos_part(profile, store, methods) if profile.photo_models else frame.skipped(frame.NO_PHOTOS)
    results = {"settings": {k: option(profile, k) for k in ("fmnist", "fmnist_l2", "photos")},
               "compare_methods": methods, "fmnist": fm, "photos": ph,
               "summary": {k: part if "skipped" in part else summary(part["cases"], methods)
                           for k, part in (("fmnist", fm), ("photos", ph))}}
    store.write_json(f"{STUDY}/results.json", results)
    return {"fmnist_cases": len(fm.get("cases", [])), "photo_cases": len(ph.get("cases", [])),
            "success_rate": {k: v.get("success_rate") for k, v in results["summary"].items()}}
