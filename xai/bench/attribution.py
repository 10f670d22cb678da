"""Our attribution methods against captum's and pytorch-grad-cam's, on one model, batch and device.

Each anchor is called the way its documentation shows, with the same model object (it takes [0, 1]
images and normalises inside), the same images and the same targets (the model's top-1 class). Where
an anchor's default would not fit in memory (captum's one-batch Integrated Gradients and NoiseTunnel)
it gets the same number of images per forward pass as ours; the call is recorded in the results.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attribution import METHODS, attribute
from ..layers import resolve
from .measure import Timing, agreement, time_sides

# The methods of the issue, in the order of the report.
COMPARED = ("gradient", "integrated_gradients", "smoothgrad", "grad_cam", "grad_cam_pp", "score_cam", "occlusion")
SMOOTHGRAD_NOISE = 0.15
ANCHOR_SEED_OFFSET = 7919


@dataclass
class Anchor:
    library: str
    call: str  # how the anchor was called, for the report
    fn: Callable[[], torch.Tensor | np.ndarray]
    normalise: bool = False  # the anchor returns per-image min-max scaled maps; compare ours scaled alike
    # An untimed check that separates the formula from the passes that feed it (see formula_check).
    check: Callable[[], dict] | None = None


@dataclass
class Comparison:
    method: str
    options: dict
    anchors: list[Anchor] = field(default_factory=list)
    stochastic: bool = False
    # Untimed facts for the row, from the finished row and our output (occlusion: its incremental plan).
    extra: Callable[[dict, torch.Tensor], dict] | None = None


def bench_inputs(entry, size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``batch`` real photos (manifest order, repeated if needed) at ``size`` px and the model's top-1 classes."""
    from ..data import images

    ids = list(images.manifest())
    chosen = [ids[i % len(ids)] for i in range(batch)]
    x = torch.stack([entry.prepare(images.load(i)) for i in chosen])
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    x = x.to(entry.device)
    with torch.no_grad():
        t = entry.model(x).argmax(1)
    return x, t, chosen


@contextmanager
def _quiet_grad_cam():
    """pytorch-grad-cam's Score-CAM draws a tqdm bar per image; silence it (it only costs the anchor)."""
    import tqdm

    with mock.patch.object(tqdm, "tqdm", lambda it, *a, **k: it):
        yield


def _grad_cam_library(cls_name: str, module: nn.Module, layer: str, x: torch.Tensor, t: torch.Tensor,
                      needs_grad: bool) -> np.ndarray:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, cls_name)
    targets = [ClassifierOutputTarget(int(c)) for c in t]
    # Our models' parameters are frozen, so a graph exists only if the input asks for gradients.
    inp = x.clone().requires_grad_(True) if needs_grad else x
    # The context manager removes the library's hooks, so they never slow the other side down.
    with cls(model=module, target_layers=[resolve(module, layer)]) as cam, _quiet_grad_cam():
        return cam(input_tensor=inp, targets=targets)


def formula_check(method: str, cls_name: str, module: nn.Module, layer: str, x: torch.Tensor,
                  t: torch.Tensor) -> dict:
    """Our CAM formula on pytorch-grad-cam's own layer activations and gradients, against its formula.

    End to end, the two sides' maps also differ by the float rounding of the passes that give the
    gradients (ours start the graph at the layer, in NHWC; the library differentiates the whole
    network in NCHW). An ill-conditioned formula (Grad-CAM++'s ``2 g**2 + sum(a) g**3`` comes near
    zero on signed activations) amplifies that rounding. So the parts are compared on their own: the
    two passes' layer activations and gradients, and the two formulas on the *same* activations and
    gradients, both in float64 (so that what is left is the formulas, not their float32 rounding),
    before upsampling (which Grad-CAM's end-to-end agreement already covers).
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ..attribution.cam import layer_activations

    cls = getattr(pytorch_grad_cam, cls_name)
    with cls(model=module, target_layers=[resolve(module, layer)]) as cam, _quiet_grad_cam():
        cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(int(c)) for c in t])
        acts = cam.activations_and_grads.activations[0].double().cpu()
        grads = cam.activations_and_grads.gradients[0].double().cpu()
        theirs = np.maximum(cam.get_cam_image(x, None, None, acts.numpy(), grads.numpy()), 0)
    ours_acts, ours_grads = layer_activations(module, x, t, layer)
    same_inputs = METHODS[method].fn.combine(acts, grads, tuple(acts.shape[-2:]))[:, 0]
    return {"formula_float64": agreement(same_inputs, theirs), "layer_activations": agreement(ours_acts, acts),
            "layer_gradients": agreement(ours_grads, grads)}


def comparisons(module: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg) -> list[Comparison]:
    """Every compared method with its options and its anchors, as zero-argument calls."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency

    b = x.shape[0]
    ibs = cfg.internal_batch_size
    layer = cfg.cam_layer
    span = float((x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean())
    noise_sd = SMOOTHGRAD_NOISE * span
    window, stride = cfg.occlusion_window, cfg.occlusion_stride

    def captum_grad_cam():
        attr = LayerGradCam(module, resolve(module, layer)).attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")

    def pgc(name: str, needs_grad: bool):
        return lambda: _grad_cam_library(name, module, layer, x, t, needs_grad)

    def check(method: str, name: str):
        return lambda: formula_check(method, name, module, layer, x, t)

    def incremental(row: dict, ours: torch.Tensor) -> dict:
        """Whether our occlusion ran incrementally (and where it switched to full recomputation), the
        FLOPs it saved (counted, against captum's), and the incremental map against our own full
        recomputation on the warm-up images (both forced, so the check holds even where it did not run)."""
        from ..attribution.occlusion import occlusion_plan

        wb = min(cfg.warmup_batch, b)
        forced = [METHODS["occlusion"].fn(module, x[:wb], t[:wb], **row["options"], incremental=flag)
                  for flag in (True, False)]
        anchor = row["anchors"][0]["timing"]["flops"]
        return {"incremental": {
            "plan": occlusion_plan(module, x[:1], window=window, stride=stride,
                                   internal_batch_size=cfg.occlusion_batch),
            "flops_saved_counted": 1 - row["ours"]["flops"] / anchor if anchor else None,
            "against_full": agreement(*forced)}}

    def ig_auto(row: dict, ours: torch.Tensor) -> dict:
        """``steps="auto"`` (1 % gap, from the row's step count) against one fixed step count that gives
        every image as many steps as the worst one needed: timed side by side, with the steps and gaps."""
        from ..attribution import integrated_gradients_refined
        from ..metrics import completeness_gap

        opts = {k: v for k, v in row["options"].items() if k != "steps"}
        start, budget = row["options"]["steps"], max(cfg.ig_auto_max_steps, row["options"]["steps"])
        refined = integrated_gradients_refined(module, x, t, completeness=cfg.ig_auto_target, start_steps=start,
                                               max_steps=budget, **opts)
        worst = max(refined.steps)
        timings, outputs = time_sides(
            {"auto": lambda: integrated_gradients_refined(module, x, t, completeness=cfg.ig_auto_target,
                                                          start_steps=start, max_steps=budget, **opts).attributions,
             "fixed": lambda: attribute("integrated_gradients", module, x, t, **{**opts, "steps": worst})},
            cfg.repeats, x.device)
        ref = torch.zeros_like(x)
        fixed_gap = completeness_gap(module, x, t, outputs["fixed"], ref).tolist()
        return {"auto": {"target": cfg.ig_auto_target, "start_steps": start, "max_steps": budget,
                         "steps": refined.steps, "gap": [None if g != g else round(g, 5) for g in refined.gap],
                         "reached": refined.reached, "fixed_steps": worst,
                         "fixed_gap": [None if g != g else round(g, 5) for g in fixed_gap],
                         "auto_s": timings["auto"].summary(b, 0)["median_s"],
                         "fixed_s": timings["fixed"].summary(b, 0)["median_s"],
                         "speedup": timings["fixed"].median / timings["auto"].median}}

    def score_cam_passes(row: dict, ours: torch.Tensor) -> dict:
        """The passes Score-CAM skipped exactly, and its approximations' time and agreement."""
        from .scorecam import approximations

        return {"passes": approximations(module, x, t, row["options"], ours, row["ours"]["median_s"])}

    return [
        Comparison("gradient", {}, [Anchor(
            "captum", "Saliency(model).attribute(x, target, abs=False)",
            lambda: Saliency(module).attribute(x, target=t, abs=False))]),
        Comparison("integrated_gradients", {"steps": cfg.ig_steps, "baseline_kind": "black",
                                            "internal_batch_size": ibs}, [Anchor(
            "captum", f"IntegratedGradients(model).attribute(x, baselines=0, target, n_steps={cfg.ig_steps}, "
                      f"internal_batch_size={ibs})",
            lambda: IntegratedGradients(module).attribute(x, baselines=torch.zeros_like(x), target=t,
                                                          n_steps=cfg.ig_steps, internal_batch_size=ibs))],
                   extra=ig_auto),
        Comparison("smoothgrad", {"samples": cfg.smoothgrad_samples, "noise": SMOOTHGRAD_NOISE,
                                  "internal_batch_size": ibs, "seed": cfg.seed}, [Anchor(
            "captum", f"NoiseTunnel(Saliency(model)).attribute(x, nt_type='smoothgrad', "
                      f"nt_samples={cfg.smoothgrad_samples}, nt_samples_batch_size={max(1, ibs // b)}, "
                      f"stdevs={noise_sd:.3f}, target, abs=False)",
            lambda: NoiseTunnel(Saliency(module)).attribute(
                x, nt_type="smoothgrad", nt_samples=cfg.smoothgrad_samples, nt_samples_batch_size=max(1, ibs // b),
                stdevs=noise_sd, target=t, abs=False))], stochastic=True),
        Comparison("grad_cam", {"layer": layer}, [
            Anchor("pytorch-grad-cam", f"GradCAM(model, target_layers=[{layer}])(x, targets)",
                   pgc("GradCAM", True), normalise=True, check=check("grad_cam", "GradCAM")),
            Anchor("captum", f"LayerGradCam(model, {layer}).attribute(x, target, relu_attributions=True), "
                             "upsampled bilinearly", captum_grad_cam)]),
        Comparison("grad_cam_pp", {"layer": layer}, [Anchor(
            "pytorch-grad-cam", f"GradCAMPlusPlus(model, target_layers=[{layer}])(x, targets)",
            pgc("GradCAMPlusPlus", True), normalise=True, check=check("grad_cam_pp", "GradCAMPlusPlus"))]),
        Comparison("score_cam", {"layer": layer, "internal_batch_size": ibs}, [Anchor(
            "pytorch-grad-cam", f"ScoreCAM(model, target_layers=[{layer}])(x, targets) (its batch size: 16)",
            pgc("ScoreCAM", False), normalise=True)], extra=score_cam_passes),
        Comparison("occlusion", {"window": window, "stride": stride, "fill": "black",
                                 "internal_batch_size": cfg.occlusion_batch},
                   [Anchor("captum", f"Occlusion(model).attribute(x, sliding_window_shapes=(3, {window}, {window}), "
                                     f"strides=(3, {stride}, {stride}), baselines=0, target)",
                           lambda: Occlusion(module).attribute(
                               x, sliding_window_shapes=(x.shape[1], window, window),
                               strides=(x.shape[1], stride, stride), baselines=0, target=t))],
                   extra=incremental),
    ]


def run(entry, cfg, peak_flops: float, log: Callable[[str], None] = print) -> dict:
    """Time and compare every method of :data:`COMPARED` against its anchors."""
    device = entry.device
    module = entry.model
    x, t, photo_ids = bench_inputs(entry, cfg.image_size, cfg.batch)
    b = x.shape[0]

    def reseed():
        # Anchors draw noise from the global generator; seeded apart from ours (our methods take their
        # own generator seeded cfg.seed), so no noise sample is shared and agreement is not flattered.
        torch.manual_seed(cfg.seed + ANCHOR_SEED_OFFSET)
        np.random.seed(cfg.seed + ANCHOR_SEED_OFFSET)

    # Warm-ups run on the first few images only (the long methods would otherwise cost a fourth more);
    # every method's work is per image, so their FLOPs scale to the batch.
    wb = min(cfg.warmup_batch, b)
    warm_comps = comparisons(module, x[:wb], t[:wb], cfg)
    rows = []
    for comp, warm in zip(comparisons(module, x, t, cfg), warm_comps):
        method = METHODS[comp.method]

        def ours(comp=comp, x=x, t=t):
            return attribute(comp.method, module, x, t, **comp.options)

        sides = {"ours": ours, **{a.library: a.fn for a in comp.anchors}}
        warmups = {"ours": lambda comp=comp: ours(comp, x[:wb], t[:wb]), **{a.library: a.fn for a in warm.anchors}}
        timings, outputs = time_sides(sides, cfg.repeats, device, before=reseed, warmup=warmups)
        for tm in timings.values():
            tm.flops = round(tm.flops * b / wb)
        row = {"method": comp.method, "label": method.label, "options": comp.options,
               "ours": timings["ours"].summary(b, peak_flops), "anchors": []}
        for a in comp.anchors:
            tm: Timing = timings[a.library]
            row["anchors"].append({
                "library": a.library, "call": a.call, "timing": tm.summary(b, peak_flops),
                "speedup": tm.median / timings["ours"].median,
                "agreement": agreement(_cam_2d(outputs["ours"], outputs[a.library]), outputs[a.library],
                                       normalise=a.normalise),
                **_map_agreement(method.kind, outputs["ours"], outputs[a.library]),
                **({"check": a.check()} if a.check else {}),
            })
        if comp.extra:
            row.update(comp.extra(row, outputs["ours"]))
        if comp.stochastic:
            # What agreement two draws of the noise give: the ceiling for any SmoothGrad anchor.
            other = attribute(comp.method, module, x, t, **{**comp.options, "seed": cfg.seed + 1})
            row["self_agreement"] = agreement(outputs["ours"], other)
            row.update({f"self_{k}": v for k, v in _map_agreement(method.kind, outputs["ours"], other).items()})
        rows.append(row)
        log("bench: " + _line(row))
    return {"model": entry.name, "image_size": cfg.image_size, "batch": b, "photos": photo_ids,
            "targets": [int(c) for c in t], "cam_layer": cfg.cam_layer, "repeats": cfg.repeats, "rows": rows}


def _map_agreement(kind: str, ours: torch.Tensor, anchor) -> dict:
    """For multi-channel attributions, also the agreement of the 2-D maps the book draws from them
    (:func:`xai.render.maps.saliency_map`): pixel noise in one colour channel matters less there."""
    from ..render.maps import saliency_map

    anchor = torch.as_tensor(anchor)
    if ours.dim() != 4 or ours.shape[1] == 1 or anchor.shape != ours.shape:
        return {}
    return {"map_agreement": agreement(saliency_map(ours, kind), saliency_map(anchor.to(ours), kind))}


def _cam_2d(ours: torch.Tensor, anchor) -> torch.Tensor:
    """pytorch-grad-cam returns ``[B, H, W]``, ours ``[B, 1, H, W]``: drop our channel axis to match."""
    if ours.dim() == 4 and ours.shape[1] == 1 and np.ndim(anchor) == 3:
        return ours[:, 0]
    return ours


def _line(row: dict) -> str:
    parts = [f"{row['method']}: ours {row['ours']['per_second']:.2f} img/s"]
    for a in row["anchors"]:
        ag = a["agreement"]
        rho = f"{ag['spearman_mean']:.3f}" if ag["spearman_mean"] is not None else "n/a"
        parts.append(f"{a['library']} {a['timing']['per_second']:.2f} img/s (x{a['speedup']:.2f}, rho {rho}, "
                     f"max|d| {ag['max_abs_diff']:.2g})")
    return "; ".join(parts)
