"""Chapter: misclassifications. Why the predicted class rather than the true one, on photos and Fashion-MNIST.

Conventions. *pred* is the model's top-1 class, *true* the manifest label (photos) or the test label
(Fashion-MNIST). Per method, the **class maps** are the method's 2-D maps (by its kind, as in every
chapter: :func:`xai.render.maps.saliency_map`) for pred and for true, and the **difference** is
``map_pred - map_true``. The **contrastive map** (margin map) attributes ``logit_pred - logit_true``
with the same method (:func:`xai.contrastive.contrastive_map`), summed over colour channels and
drawn signed: red pushes towards pred, blue towards true. For gradient, Integrated Gradients and
SmoothGrad (all linear in the explained score) the contrastive map equals the difference of the raw
signed attributions; the 2-D *difference* of gradient and SmoothGrad maps differs from it because those
maps take ``max |.|`` over channels first. The contrastive Grad-CAM rectifies the combined weights, so it
shows where evidence *for pred over true* sits. Photos without an ImageNet label are out of distribution
and skipped.

Artifacts (under ``misclassification/``):

``results.json``
    ``methods``: the contrastive methods (ids of ``xai.attribution.METHODS``); ``options.<method>``: their
    options; ``cam_method``: ``grad_cam``.
    ``photos``: a list, one record per (model, misclassified labelled photo): ``model``, ``photo``,
    ``true`` / ``true_name``, ``pred`` / ``pred_name``, ``p_pred``, ``p_true`` (softmax), ``true_rank``
    (1 = top), ``logit_margin`` (``logit_pred - logit_true``), ``cam_layer``, ``figure``,
    ``spearman_pred_true.<method>`` (rank correlation of the pred and true class maps: near 1 means both
    classes are explained by the same pixels), ``margin_positive_share.<method>`` (share of
    ``|contrastive map|`` that is positive, i.e. favours pred).
    ``photo_counts.<model>``: ``labelled``, ``misclassified``.
    ``fmnist.<model>``: ``accuracy``, ``test_images`` (10,000 in the full profile), ``confusion`` (10 x 10
    counts, rows true, columns pred), ``classes``, ``cam_layer``, ``confusion_figure``, ``means_figure``, ``top_confusions``: a list of
    ``true`` / ``true_name``, ``pred`` / ``pred_name``, ``count``, ``share_of_true`` (count / images of
    true), ``figure`` (the examples), ``examples`` (list of ``index``, ``p_pred``, ``p_true``; the most
    confident mistakes), ``mean_images`` (how many misclassified images the mean maps average),
    ``mean_margin_positive_share.<method>``.
``photos/<model>/<photo>.webp``: rows methods + Grad-CAM; columns photo, pred map, true map, difference,
contrastive map. ``fmnist/<model>/confusion.webp``, ``fmnist/<model>/<true>-<pred>.webp`` (rows examples;
columns image, contrastive maps per method, contrastive Grad-CAM), ``fmnist/<model>/means.webp`` (rows
confusion pairs; columns mean image, mean contrastive map per method).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import attribution, models
from ..contrastive import contrastive_map
from ..data import fashion_mnist, images
from ..errors import NotApplicableError, XaiError
from ..metrics import spearman
from ..profiles import Profile
from ..render import maps as R
from ..render.store import Store, cache_key
from . import _frame as frame
from . import saliency as S
from ._frame import labelled_photos

STUDY = "misclassification"
CODE_VERSION = 1  # bump when what is computed or drawn changes meaning

DEFAULTS = {
    "methods": ("gradient", "integrated_gradients", "smoothgrad"),  # contrastive methods (>= 3)
    "top_confusions": 3,  # confusion pairs per Fashion-MNIST model
    "examples": 6,  # misclassified examples shown per pair
    "mean_images": 64,  # misclassified images averaged into the mean contrastive map of a pair
    "test_images": None,  # Fashion-MNIST test images in the confusion matrix (first N); None: all 10,000
}


# Methods linear in the explained score (with the seed fixed): their contrastive map is the difference of the
# two class attributions, so the photos reuse those instead of a third pass.
LINEAR = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad")


option = frame.options(STUDY, DEFAULTS)


def num(v: float | None, digits: int = 4) -> float | None:
    """A JSON-safe rounded number: NaN and infinities become null (JSON has no NaN)."""
    if v is None:
        return None
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, classes: int) -> torch.Tensor:
    """Counts ``[classes, classes]``: row = true class, column = predicted class."""
    if true.shape != pred.shape:
        raise XaiError(f"{true.numel()} labels but {pred.numel()} predictions")
    return torch.bincount(true.long() * classes + pred.long(), minlength=classes * classes).view(classes, classes)


def top_confusions(cm: torch.Tensor, k: int) -> list[tuple[int, int, int]]:
    """The ``k`` most frequent ``(true, pred, count)`` off-diagonal cells, ties broken by class order."""
    n = cm.shape[0]
    cells = [(int(cm[t, p]), t, p) for t in range(n) for p in range(n) if t != p and cm[t, p] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(t, p, c) for c, t, p in cells[:k]]


def positive_share(m: torch.Tensor) -> float:
    """Share of ``|m|`` carried by positive values (favouring pred in a contrastive map)."""
    total = float(m.abs().sum())
    return float(m.clamp_min(0).sum()) / total if total > 0 else float("nan")


def margin_maps(entry: models.ModelEntry, x: torch.Tensor, pred, true, method: str, options: dict) -> torch.Tensor:
    """Contrastive maps ``[B, H, W]`` (signed, summed over channels) of ``logit_pred - logit_true``."""
    return contrastive_map(entry, x.to(entry.device), pred, true, method, **options).sum(1).cpu()


def _method_options(profile: Profile, methods) -> dict:
    return {m: S.method_options(profile, m) for m in methods}


# -- photos -----------------------------------------------------------------------------------------------------

def photo_case(entry: models.ModelEntry, batch: frame.Batch, i: int, true: int, layer: str, methods, opts: dict,
               store: Store, key: str) -> dict:
    pid, x = batch.ids[i], batch.x[i:i + 1]
    pred = int(batch.targets[i])
    with torch.no_grad():
        logits = entry.model(x.to(entry.device))[0].cpu()
    probs = logits.softmax(-1)
    rows, record = [], {
        "model": entry.name, "photo": pid, "true": true, "true_name": entry.class_names[true], "pred": pred,
        "pred_name": entry.class_names[pred], "p_pred": num(probs[pred]), "p_true": num(probs[true]),
        "true_rank": int((logits > logits[true]).sum()) + 1, "logit_margin": num(logits[pred] - logits[true]),
        "cam_layer": layer, "spearman_pred_true": {}, "margin_positive_share": {}}
    xd = x.to(entry.device)
    for m in [*methods, "grad_cam"]:
        meth = attribution.get(m)
        o = dict(opts.get(m, {}))
        if m == "grad_cam":
            o["layer"] = layer
        # One call per class (batch 1, same seed): a noise method then draws the same noise for both.
        raw_pred, raw_true = (meth(entry, xd, c, **o).cpu() for c in (pred, true))
        pm, tm = R.saliency_map(raw_pred, meth.kind)[0], R.saliency_map(raw_true, meth.kind)[0]
        if m in LINEAR:
            margin = (raw_pred - raw_true)[0].sum(0)  # exactly the attribution of logit_pred - logit_true
        else:
            margin = margin_maps(entry, x, pred, true, m, o)[0]
        record["spearman_pred_true"][m] = num(spearman(pm[None], tm[None])[0])
        record["margin_positive_share"][m] = num(positive_share(margin))
        rows.append((m, pm, tm, margin))
    rel = f"{STUDY}/photos/{entry.name}/{pid}.webp"
    store.write_figure(rel, photo_figure(x[0], record, rows), key, dpi=90)
    record["figure"] = rel
    return record


def photo_figure(image: torch.Tensor, record: dict, rows: list):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 5, figsize=(5 * 1.7, len(rows) * 1.8), squeeze=False)
    heads = ["", f"pred: {record['pred_name']} ({record['p_pred']:.2f})",
             f"true: {record['true_name']} ({record['p_true']:.2f})", "pred − true", "contrastive: pred vs true"]
    for r, (m, pm, tm, margin) in enumerate(rows):
        meth = attribution.get(m)
        signed = R.is_signed(meth.kind)
        R.show_image(axes[r, 0], image, f"{record['model']}\n{record['photo']}" if r == 0 else "", fontsize=7)
        axes[r, 0].set_ylabel(meth.label, fontsize=8)
        R.draw(axes[r, 1], pm, signed=signed, image=image, title=heads[1] if r == 0 else "", fontsize=7)
        R.draw(axes[r, 2], tm, signed=signed, image=image, title=heads[2] if r == 0 else "", fontsize=7)
        R.draw(axes[r, 3], pm - tm, signed=True, image=image, title=heads[3] if r == 0 else "", fontsize=7)
        # A contrastive Grad-CAM is rectified: evidence for pred over true only.
        R.draw(axes[r, 4], margin, signed=m != "grad_cam", image=image, title=heads[4] if r == 0 else "",
               fontsize=7)
    fig.subplots_adjust(wspace=0.04, hspace=0.12)
    return fig


def photos_part(profile: Profile, store: Store, methods, opts: dict) -> tuple[list[dict], dict]:
    records, counts = [], {}
    for name in profile.photo_models:
        entry = frame.load(name, profile)
        labelled = labelled_photos(profile, entry)
        batch = frame.photo_batch(entry, labelled) if labelled else None
        wrong = [i for i, p in enumerate(labelled) if int(batch.targets[i]) != images.photo(p).label]
        counts[name] = {"labelled": len(labelled), "misclassified": len(wrong)}
        if not wrong:
            continue
        layer = S.cam_layer(entry, batch.x)
        for i in wrong:
            pid, true = labelled[i], images.photo(labelled[i]).label
            key = cache_key(STUDY, CODE_VERSION, "photo", frame.model_id(entry), batch.keys[i], true, layer,
                            {m: attribution.get(m).version for m in [*methods, "grad_cam"]}, opts)
            rel_json = f"{STUDY}/photos/{name}/{pid}.json"
            if store.fresh(rel_json, key) and store.fresh(f"{STUDY}/photos/{name}/{pid}.webp", key):
                records.append(store.read_json(rel_json))
                continue
            record = photo_case(entry, batch, i, true, layer, methods, opts, store, key)
            store.write_json(rel_json, record, key)
            records.append(record)
    return records, counts


# -- Fashion-MNIST ------------------------------------------------------------------------------------------------



def _try_margin(entry, x, pred, true, method, options) -> tuple[torch.Tensor | None, str | None]:
    try:
        return margin_maps(entry, x, pred, true, method, options), None
    except NotApplicableError as e:  # e.g. Grad-CAM at a layer that cannot move the prediction
        return None, str(e)


def fmnist_model(entry: models.ModelEntry, profile: Profile, store: Store, methods, opts: dict) -> dict:
    x, y = fashion_mnist.load("test")
    n = option(profile, "test_images")
    x, y = (x[:n], y[:n]) if n else (x, y)
    probs = frame.probabilities(entry, x, 500)
    pred = probs.argmax(-1)
    classes = entry.class_names
    cm = confusion_matrix(y, pred, len(classes))
    try:
        layer, cam_error = S.cam_layer(entry, x[:1]), None
    except NotApplicableError as e:
        layer, cam_error = None, str(e)
    out = {"accuracy": num(float((pred == y).float().mean())), "test_images": len(y), "classes": classes,
           "confusion": cm.tolist(), "cam_layer": layer, "top_confusions": []}
    base = f"{STUDY}/fmnist/{entry.name}"
    out["confusion_figure"] = f"{base}/confusion.webp"
    store.write_figure(out["confusion_figure"], confusion_figure(cm, classes, entry.name, out["accuracy"]), dpi=90)
    cam_opts = {"layer": layer}
    mean_rows = []
    for t, p, count in top_confusions(cm, option(profile, "top_confusions")):
        idx = ((y == t) & (pred == p)).nonzero().flatten()
        idx = idx[probs[idx, p].argsort(descending=True, stable=True)]  # most confident mistakes first
        shown = idx[: option(profile, "examples")]
        xs = x[shown]
        cols = {m: _try_margin(entry, xs, p, t, m, opts.get(m, {})) for m in methods}
        cols["grad_cam"] = (None, cam_error) if layer is None else _try_margin(entry, xs, p, t, "grad_cam", cam_opts)
        rel = f"{base}/{_slug(classes[t])}-{_slug(classes[p])}.webp"
        store.write_figure(rel, examples_figure(xs, cols, classes[t], classes[p], probs[shown, p]), dpi=90)
        averaged = idx[: option(profile, "mean_images")]
        means = {}
        for m in methods:
            maps, _ = _try_margin(entry, x[averaged], p, t, m, opts.get(m, {}))
            means[m] = None if maps is None else maps.mean(0)
        mean_rows.append((classes[t], classes[p], x[averaged].mean(0), means, len(averaged)))
        out["top_confusions"].append({
            "true": t, "true_name": classes[t], "pred": p, "pred_name": classes[p], "count": count,
            "share_of_true": num(count / int((y == t).sum())), "figure": rel,
            "examples": [{"index": int(i), "p_pred": num(probs[i, p]), "p_true": num(probs[i, t])} for i in shown],
            "mean_images": len(averaged),
            "mean_margin_positive_share": {m: num(positive_share(v)) if v is not None else None
                                           for m, v in means.items()}})
    out["means_figure"] = f"{base}/means.webp"
    store.write_figure(out["means_figure"], means_figure(mean_rows, methods), dpi=90)
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def fmnist_part(profile: Profile, store: Store, methods, opts: dict) -> dict:
    out = {}
    for name in profile.fmnist_models:
        entry = frame.require_label_space(frame.load(name, profile), models.FASHION_MNIST)
        key = cache_key(STUDY, CODE_VERSION, "fmnist", frame.model_id(entry), opts,
                        {m: attribution.get(m).version for m in [*methods, "grad_cam"]},
                        {k: option(profile, k) for k in DEFAULTS if k != "methods"})
        rel = f"{STUDY}/fmnist/{name}.json"
        if store.fresh(rel, key) and all(store.path(f).exists() for f in _figures(store.read_json(rel))):
            out[name] = store.read_json(rel)
            continue
        out[name] = fmnist_model(entry, profile, store, methods, opts)
        store.write_json(rel, out[name], key)
    return out


def _figures(record: dict) -> list[str]:
    return [record["confusion_figure"], record["means_figure"], *(c["figure"] for c in record["top_confusions"])]


# -- figures -------------------------------------------------------------------------------------------------------

def confusion_figure(cm: torch.Tensor, classes: list[str], model: str, accuracy: float):
    import matplotlib.pyplot as plt

    n = len(classes)
    off = cm.double().numpy().copy()
    np.fill_diagonal(off, np.nan)  # errors only: the diagonal would swamp the colour scale
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    ax.imshow(off, cmap="Reds", interpolation="nearest")
    for t in range(n):
        for p in range(n):
            v = int(cm[t, p])
            ax.text(p, t, str(v), ha="center", va="center", fontsize=6,
                    color="0.45" if t == p else ("white" if v > np.nanmax(off) * 0.6 else "black"))
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(f"{model}: accuracy {accuracy:.1%} on {int(cm.sum()):,} test images\n"
                 "(colour: errors only; the diagonal is greyed)", fontsize=8)
    return fig


def examples_figure(xs: torch.Tensor, cols: dict, true_name: str, pred_name: str, p_pred: torch.Tensor):
    import matplotlib.pyplot as plt

    names = list(cols)
    fig, axes = plt.subplots(len(xs), len(names) + 1, figsize=((len(names) + 1) * 1.3, len(xs) * 1.35),
                             squeeze=False)
    for r in range(len(xs)):
        R.show_image(axes[r, 0], xs[r], f"{true_name} → {pred_name}\np = {float(p_pred[r]):.2f}" if r == 0
                     else f"p = {float(p_pred[r]):.2f}", fontsize=6)
        for c, m in enumerate(names, start=1):
            maps, err = cols[m]
            title = f"{attribution.get(m).label}\npred vs true" if r == 0 else ""
            if maps is None:
                R.blank(axes[r, c], f"not applicable: {err[:60]}", fontsize=5)
            else:
                R.draw(axes[r, c], maps[r], signed=m != "grad_cam", image=xs[r], title=title, fontsize=6)
    fig.subplots_adjust(wspace=0.04, hspace=0.18)
    return fig


def means_figure(rows: list, methods):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(methods) + 1, figsize=((len(methods) + 1) * 1.4, len(rows) * 1.5),
                             squeeze=False)
    for r, (tn, pn, mean_img, means, n) in enumerate(rows):
        R.show_image(axes[r, 0], mean_img, f"{tn} → {pn}\nmean of {n}", fontsize=6)
        for c, m in enumerate(methods, start=1):
            title = f"mean {attribution.get(m).label}\npred vs true" if r == 0 else ""
            if means[m] is None:
                R.blank(axes[r, c], "not applicable", fontsize=6)
            else:
                R.draw(axes[r, c], means[m], signed=True, image=mean_img, title=title, fontsize=6)
    fig.subplots_adjust(wspace=0.04, hspace=0.45)
    return fig


def run(profile: Profile, store: Store) -> dict:
    methods = list(option(profile, "methods"))
    for m in methods:
        if attribution.get(m).needs_layer:
            raise XaiError(f"{m}: the contrastive methods are input-space methods; Grad-CAM is added separately")
    if len(methods) < 3:
        raise XaiError(f"the chapter compares at least 3 contrastive methods, got {len(methods)}")
    opts = _method_options(profile, [*methods, "grad_cam"])
    photos, counts = photos_part(profile, store, methods, opts) if profile.photo_models else ([], {})
    fm = fmnist_part(profile, store, methods, opts) if profile.fmnist_models else frame.skipped(frame.NO_FMNIST)
    results = {"methods": methods, "cam_method": "grad_cam", "options": opts, "photos": photos,
               "photo_counts": counts, "fmnist": fm}
    store.write_json(f"{STUDY}/results.json", results)
    fm = fm if profile.fmnist_models else {}
    return {"misclassified_photos": {m: c["misclassified"] for m, c in counts.items()},
            "fmnist_accuracy": {m: r["accuracy"] for m, r in fm.items()},
            "top_confusion": {m: f"{r['top_confusions'][0]['true_name']} -> {r['top_confusions'][0]['pred_name']}"
                              for m, r in fm.items() if r["top_confusions"]}}
