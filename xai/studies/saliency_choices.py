"""The saliency chapter's figures about the choices behind a map, on the same photos as its gallery:
the logit against the softmax, sign, channel aggregation and smoothing, and one free parameter per
method (IG's baseline, SmoothGrad's noise, occlusion's window). Part of :mod:`xai.studies.saliency`,
whose options and cached maps it uses.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import attribution, models
from ..errors import XaiError
from ..profiles import Profile
from ..render import maps as R
from ..render.store import Store
from ._frame import Batch
from .saliency import STUDY, compute_maps, method_options, option


def logit_vs_softmax(entries: dict, batches: dict, store: Store, photos: list[str]) -> dict:
    """Gradients of the logit and of the softmax probability, side by side. (The log-probability's
    gradient is the softmax's divided by p: the same map, so it is not drawn.)"""
    import matplotlib.pyplot as plt

    from ..metrics import spearman

    out: dict = {}
    rows = []
    for name, entry in entries.items():
        b = batches[name].subset(len(photos))
        grads = {o: R.saliency_map(attribution.gradient(entry, b.x, b.targets, output=o), "sensitivity")
                 for o in ("logit", "softmax")}
        rho = spearman(grads["logit"], grads["softmax"])
        out[name] = {pid: {"p": round(float(b.probs[i]), 4), "spearman_softmax": round(float(rho[i]), 4)}
                     for i, pid in enumerate(b.ids)}
        rows += [(name, pid, b.x[i], grads["logit"][i], grads["softmax"][i], float(b.probs[i]))
                 for i, pid in enumerate(b.ids)]
    fig, axes = plt.subplots(len(rows), 3, figsize=(3 * 1.8, len(rows) * 1.95), squeeze=False)
    for r, (name, pid, img, g_logit, g_soft, p) in enumerate(rows):
        R.show_image(axes[r, 0], img, f"{name}\n{pid}, p = {p:.2f}", fontsize=7)
        R.draw(axes[r, 1], g_logit, signed=False, title="∂ logit / ∂x", fontsize=7)
        R.draw(axes[r, 2], g_soft, signed=False, title="∂ softmax / ∂x", fontsize=7)
    fig.subplots_adjust(wspace=0.04, hspace=0.4)
    rel = f"{STUDY}/logit_vs_softmax.webp"
    store.write_figure(rel, fig, dpi=100)
    out["figure"] = rel
    return out


def choices(entry: models.ModelEntry, batch: Batch, store: Store, profile: Profile) -> dict:
    """Sign, channel aggregation and smoothing of one photo's maps, side by side."""
    import matplotlib.pyplot as plt

    b = batch.subset(1)
    ig = attribution.integrated_gradients(entry, b.x, b.targets, **method_options(profile, "integrated_gradients"))[0]
    grad = attribution.gradient(entry, b.x, b.targets)[0]
    sg = attribution.smoothgrad(entry, b.x, b.targets, **method_options(profile, "smoothgrad"))[0]
    signed = R.aggregate(ig, "sum")
    g_abs = R.aggregate(grad, "max_abs")
    rows = [
        ("sign (Integrated Gradients)", [
            ("signed, sum over channels", signed, True, None),
            ("positive part", signed.clamp_min(0), False, None),
            ("negative part (magnitude)", (-signed).clamp_min(0), False, None),
            ("absolute value", signed.abs(), False, None)]),
        ("channel aggregation (gradient)", [
            ("sum (signed)", R.aggregate(grad, "sum"), True, None),
            ("max |·|", g_abs, False, None),
            ("L2 norm", R.aggregate(grad, "l2"), False, None),
            ("", None, False, None)]),
        ("smoothing (gradient, max |·|)", [
            ("raw", g_abs, False, None),
            ("display blur", g_abs, False, 2.0),
            ("display blur", g_abs, False, 5.0),
            ("SmoothGrad (the method)", R.aggregate(sg, "max_abs"), False, None)]),
    ]
    fig, axes = plt.subplots(len(rows), 5, figsize=(5 * 1.8, len(rows) * 2.0), squeeze=False)
    for r, (row_title, panels) in enumerate(rows):
        R.show_image(axes[r, 0], b.x[0], row_title, fontsize=7)
        for c, (title, m, is_signed, sigma) in enumerate(panels, start=1):
            if m is None:
                axes[r, c].axis("off")
                continue
            R.draw(axes[r, c], m, signed=is_signed, title=title, smooth_sigma=sigma, fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.35)
    rel = f"{STUDY}/choices.webp"
    store.write_figure(rel, fig, dpi=90)
    return {"figure": rel, "model": entry.name, "photo": b.ids[0], "target": entry.class_names[int(b.targets[0])]}


def sensitivity(entry: models.ModelEntry, batch: Batch, store: Store, profile: Profile) -> dict:
    """How much a map depends on a free parameter of its method, on the same photos: the baseline of
    Integrated Gradients, the noise level of SmoothGrad and the window of occlusion. Each variant's 2-D
    map (as drawn and as the metrics rank it) is compared with a reference by Spearman's rank
    correlation: the study's own baseline and window, and for SmoothGrad the plain gradient (no noise)
    that it smooths. Integrated Gradients also records what each baseline leaves to explain, the logit
    difference f(x) - f(x'), and the sum of its attributions. Maps go through the attribution cache, so
    the study's own settings cost nothing here."""
    import matplotlib.pyplot as plt

    from ..metrics import spearman

    start = time.perf_counter()
    x, t = batch.x, batch.targets

    def maps_of(name: str, options: dict) -> torch.Tensor:
        mp = compute_maps(entry, batch, name, options)
        if mp.maps is None:
            raise XaiError(f"sensitivity: {mp.error}")
        return mp.maps

    @torch.no_grad()
    def target_logit(images: torch.Tensor) -> torch.Tensor:
        out = entry.model(images.to(entry.device)).float().cpu()
        return out.gather(1, t.view(-1, 1)).squeeze(1)

    def rho(a: torch.Tensor, b: torch.Tensor) -> list:
        return [None if np.isnan(v) else round(float(v), 4) for v in spearman(a, b)]

    params: dict = {}
    ig = method_options(profile, "integrated_gradients", entry)
    fx = target_logit(x)
    ig_maps = [maps_of("integrated_gradients", {**ig, "baseline_kind": kind}) for kind in attribution.BASELINES]
    reference = ig_maps[attribution.BASELINES.index(ig["baseline_kind"])]
    # The signed map is the sum over colour channels, so its total is the attributions' total.
    variants = [{"value": kind, "label": f"{kind} baseline", "spearman": rho(m, reference),
                 "score_difference": [round(float(v), 4) for v in fx - target_logit(
                     attribution.baseline(x, kind, seed=ig["seed"]))],
                 "attribution_sum": [round(float(v), 4) for v in m.flatten(1).sum(1)]}
                for kind, m in zip(attribution.BASELINES, ig_maps)]
    params["ig_baseline"] = {"method": "integrated_gradients", "parameter": "baseline",
                             "reference": ig["baseline_kind"], "steps": ig["steps"], "variants": variants,
                             "maps": ig_maps}

    sg = method_options(profile, "smoothgrad", entry)
    sg_maps = [maps_of("gradient", method_options(profile, "gradient", entry))]
    sg_maps += [maps_of("smoothgrad", {**sg, "noise": noise}) for noise in option(profile, "sensitivity_noise")]
    variants = [{"value": noise, "label": f"noise {noise:.0%}" if noise else "gradient (no noise)",
                 "spearman": rho(m, sg_maps[0])}
                for noise, m in zip([0.0, *option(profile, "sensitivity_noise")], sg_maps)]
    params["smoothgrad_noise"] = {"method": "smoothgrad", "parameter": "noise", "reference": 0.0,
                                  "samples": sg["samples"], "variants": variants, "maps": sg_maps}

    occ = method_options(profile, "occlusion", entry)
    side = int(min(x.shape[-2:]))

    def pixels(size: int | float | None, default: int) -> int:
        """An occlusion option as the method reads it: a float is a fraction of the side, None its default."""
        return default if size is None else max(1, round(size * side)) if isinstance(size, float) else size

    w = pixels(occ["window"], max(1, side // 7))
    stride = pixels(occ["stride"], max(1, w // 2))
    # Half and twice the study's window; the study's own map (its options as they are) comes from the cache.
    # Strides never exceed the study's, so that a window that divides the side covers every pixel.
    windows = [(max(1, w // 2), max(1, min(w // 2, stride))), (w, stride), (2 * w, stride)]
    occ_maps = [maps_of("occlusion", occ if size == w else {**occ, "window": size, "stride": st})
                for size, st in windows]
    variants = [{"value": size, "label": f"{size} px window", "stride": st, "spearman": rho(m, occ_maps[1])}
                for (size, st), m in zip(windows, occ_maps)]
    params["occlusion_window"] = {"method": "occlusion", "parameter": "window (px)", "reference": w,
                                  "side": side, "variants": variants, "maps": occ_maps}

    cols = 1 + max(len(p["variants"]) for p in params.values())
    titles = {"ig_baseline": "Integrated Gradients:\nbaseline", "smoothgrad_noise": "SmoothGrad:\nnoise level",
              "occlusion_window": "Occlusion:\nwindow"}
    fig, axes = plt.subplots(len(params), cols, figsize=(cols * 1.8, len(params) * 2.0), squeeze=False)
    for r, (pid, p) in enumerate(params.items()):
        R.show_image(axes[r, 0], x[0], titles[pid], fontsize=7)
        signed = R.is_signed(attribution.get(p["method"]).kind)
        for c, (v, m) in enumerate(zip(p["variants"], p.pop("maps")), start=1):
            first = v["spearman"][0]
            rho_text = "reference" if v["value"] == p["reference"] else (
                "ρ undefined" if first is None else f"ρ = {first:.2f}")
            R.draw(axes[r, c], m[0], signed=signed, title=f"{v['label']}\n{rho_text}", fontsize=7)
        for c in range(1 + len(p["variants"]), cols):
            axes[r, c].axis("off")
    fig.subplots_adjust(wspace=0.05, hspace=0.45)
    rel = f"{STUDY}/sensitivity.webp"
    store.write_figure(rel, fig, dpi=110)
    return {"figure": rel, "model": entry.name, "photos": batch.ids,
            "targets": [entry.class_names[int(i)] for i in t], "parameters": params,
            "seconds": round(time.perf_counter() - start, 2)}




def lrp_accounts(entries: dict, batches: dict, photos: list[str]) -> dict:
    """Where LRP's relevance goes, per model and composite, with the model's canonizers and without
    any: the shares of the explained logit that reach the input, that the biases absorb, and that
    appear or vanish outside every rule (``unaccounted``), as lists over ``photos``. The canonized pass
    is the gallery's; one that the package refuses has ``not_applicable`` (the reason) instead."""
    from ..attribution.lrp import COMPOSITES, propagate
    from ..errors import NotApplicableError

    def shares(p) -> dict:
        logit = p.logit.double()
        def sig(t):  # four significant digits: the unaccounted share is of order 1e-7 where the books balance
            return [float(f"{float(v):.4g}") for v in t]

        return {"logit": sig(logit), "input": sig(p.relevance.flatten(1).sum(1).double() / logit),
                "biases": sig(p.total_absorbed.double() / logit), "unaccounted": sig(p.unaccounted.double() / logit)}

    out: dict = {"photos": list(photos), "models": {}}
    for name, entry in entries.items():
        b = batches[name].subset(len(photos))
        rows = {}
        for composite in COMPOSITES:
            row = {}
            try:
                row["canonized"] = shares(propagate(entry, b.x, b.targets, composite=composite))
            except NotApplicableError as e:
                row["canonized"] = {"not_applicable": e.reason}
            try:  # unchecked: this pass exists to measure what a missing rule does
                row["plain"] = shares(propagate(entry, b.x, b.targets, composite=composite, canonizers=(),
                                                    check=False))
            except NotApplicableError as e:
                row["plain"] = {"not_applicable": e.reason}
            rows[composite] = row
        out["models"][name] = rows
    return out
