"""Our batched feature-visualization renderer against torch-lucent's ``render_vis``, one unit per call.

Both sides optimise the same objective (a channel's spatial mean) from the same parameterization
(a colour-decorrelated Fourier image of ``size`` px, initial scale 0.01), with Lucid's standard
transforms, Adam at learning rate 0.05 for ``steps`` steps, and the transformed image resized to
``model_size`` px before the model (lucent's own default upsamples anything under 224 px to 224).
The final images of both are scored by the same function: the channel's mean activation on the
image resized to ``model_size``, without transforms.

Time to quality: users want a good image soon, not a number of steps. Each unit's quality bar is
lucent's final activation (its ``steps``-step image, scored as above). Both sides keep their image every
``steps // 32`` steps (ours: ``render(snapshots=...)``; lucent: ``render_vis(thresholds=...)``) and the
wall time at which each step ended (ours: ``render(progress=...)``; lucent: its own Adam, given through
``render_vis(optimizer=...)`` with the default's learning rate, timestamping each ``step``). A unit's
time to quality is the time of the first kept image that scores at or above the bar, counted from the
start of the call: per unit, so ours is its batch's time divided by the units in the batch (as units/s
are), and lucent's is its one-unit call's. Medians over units; the ratio of the two medians stands
beside the fixed-step speed-up.

Patches, in the benchmark only: lucent is called with ``preprocess=False`` (our models normalise
inside), ``progress=False, show_image=False``; and lucent 0.1.8 never removes the forward hooks it
puts on every module, so they are removed after each call (otherwise each later call, and ours,
would run all earlier calls' hooks too).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..featvis import evaluate, objectives, render
from ..featvis.render import forward
from ..layers import fast_model
from ..featvis.param import FFTParam
from ..featvis.schedule import DEFAULT_SCHEDULE
from ..featvis.transforms import standard
from .measure import count_flops, time_sides


@contextmanager
def _lucent_hooks_removed():
    from lucent.optvis import render as lucent_render

    made = []
    original = lucent_render.ModuleHook.__init__

    def init(self, module):
        original(self, module)
        made.append(self)

    with mock.patch.object(lucent_render.ModuleHook, "__init__", init):
        try:
            yield
        finally:
            for h in made:
                h.close()


@dataclass
class Trace:
    """One side's rendering of a layer's units: final images ``[N, 3, size, size]``, the images kept at
    ``kept`` steps (``{step: [N, 3, size, size]}``), and for each unit the seconds from the start of its
    call (lucent) or of the batch (ours) to the end of each step (``[N, steps]``)."""

    images: torch.Tensor
    kept: dict[int, torch.Tensor]
    seconds: torch.Tensor


def kept_steps(steps: int) -> list[int]:
    """The steps whose images time to quality reads: 32 evenly spaced (every step when fewer)."""
    every = max(1, steps // 32)
    return sorted(set(range(every, steps + 1, every)) | {steps})


class _TimedAdam(torch.optim.Adam):
    """lucent's default optimizer (Adam, lr 0.05), recording when each step ends."""

    def __init__(self, params, stamps: list[float]):
        super().__init__(params, lr=5e-2)
        self.stamps = stamps

    def step(self, closure=None):
        loss = super().step(closure)
        self.stamps.append(time.perf_counter())
        return loss


def lucent_render_units(module: nn.Module, layer: str, units: list[int], size: int, model_size: int, steps: int,
                        seed: int, unit_seconds: list[float] | None = None) -> Trace:
    """One ``render_vis`` call per unit, as lucent is used."""
    from lucent.optvis import objectives as lobj
    from lucent.optvis import param as lparam
    from lucent.optvis.render import render_vis

    lucent_layer = layer.replace(".", "_")  # lucent joins module names with underscores
    keep = kept_steps(steps)
    images, kept, seconds = [], {s: [] for s in keep}, []
    for k in units:
        torch.manual_seed(seed + k)  # lucent draws from the global generators
        np.random.seed(seed + k)
        stamps: list[float] = []
        start = time.perf_counter()
        with _lucent_hooks_removed():
            out = render_vis(module, lobj.channel(lucent_layer, k), lambda: lparam.image(size),
                             optimizer=lambda params: _TimedAdam(params, stamps), thresholds=tuple(keep),
                             preprocess=False, progress=False, show_image=False, fixed_image_size=model_size)
        if unit_seconds is not None:
            unit_seconds.append(time.perf_counter() - start)
        for s, im in zip(keep, out):
            kept[s].append(torch.from_numpy(im).permute(0, 3, 1, 2))
        images.append(kept[steps][-1])
        seconds.append(torch.tensor(stamps, dtype=torch.float64) - start)
    return Trace(torch.cat(images), {s: torch.cat(v) for s, v in kept.items()}, torch.stack(seconds))


def our_render_units(module: nn.Module, layer: str, units: list[int], size: int, model_size: int, steps: int,
                     seed: int, **options) -> Trace:
    """All units of ``layer`` in one batched rendering (``options`` go to :func:`render`)."""
    param = FFTParam(len(units), 3, size, seed=seed)
    stamps: list[float] = []
    start = time.perf_counter()
    r = render(module, objectives.channel(layer, units), param, standard(size, out_size=model_size), steps,
               seed=seed, snapshots=kept_steps(steps), progress=lambda step, values: stamps.append(time.perf_counter()),
               **options)
    seconds = (torch.tensor(stamps, dtype=torch.float64) - start).expand(len(units), -1)
    return Trace(r.images, {s: r.snapshots[s] for s in kept_steps(steps)}, seconds.clone())


def time_to_quality(module: nn.Module, layer: str, units: list[int], trace: Trace, bar: list[float], model_size: int,
                    per_unit: int = 1) -> dict:
    """Each unit's first kept step whose image scores at least ``bar`` (its activation, as
    :func:`final_activation` scores), and the seconds to the end of that step divided by ``per_unit`` (the
    units sharing the call); None where no kept image reaches it."""
    keep = sorted(trace.kept)
    scores = torch.tensor([final_activation(module, layer, units, trace.kept[s], model_size) for s in keep])  # [K, N]
    steps, seconds = [], []
    for i in range(len(units)):
        hit = next((s for s, v in zip(keep, scores[:, i].tolist()) if v >= bar[i]), None)
        steps.append(hit)
        seconds.append(None if hit is None else float(trace.seconds[i, hit - 1]) / per_unit)
    return {"steps": steps, "seconds": seconds, "curve": {"steps": keep, "activation": scores.T.tolist()}}


def _median(values: list) -> float | None:
    """The median where unreached counts as slower than anything (None if half or more are unreached)."""
    ranked = sorted(float("inf") if v is None else v for v in values)
    if not ranked:
        return None
    m = float(np.median(ranked))
    return None if math.isinf(m) or math.isnan(m) else m


def final_activation(module: nn.Module, layer: str, units: list[int], images: torch.Tensor, model_size: int) -> list:
    """Each unit's mean activation on its final image, resized to the model's input size, untransformed."""
    x = F.interpolate(images.float(), size=(model_size, model_size), mode="bilinear", align_corners=False)
    return evaluate(module, objectives.channel(layer, units), x).tolist()


def network_floor(module: nn.Module, layer: str, units: list[int], model_size: int, seed: int,
                  timed_steps: int = 8, rounds: int = 3) -> float:
    """Seconds per step of the network passes alone: the truncated forward and backward of one batch
    of ``len(units)`` images at ``model_size`` px through the same fast copy our renderer uses, with no
    parameterization, transforms or optimizer. ``steps`` times this is what any renderer that makes these
    passes needs (up to this machine's run-to-run spread), and lucent's time over it is the most any of
    them could gain."""
    objective = objectives.channel(layer, units)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(len(units), 3, model_size, model_size, generator=gen).to(_device(module))
    with torch.enable_grad(), fast_model(module, x, keep=objective.layers) as fast:
        xr = x.clone().requires_grad_(True)

        def step():
            torch.autograd.grad(objective(forward(fast, xr, objective)).sum(), xr)

        # Warm-up: the first passes after other work run up to 1.5x slower (measured 279 vs 191 ms per
        # step for blocks.3 in one process), and a floor must not be inflated: the fastest round counts.
        for _ in range(3):
            step()
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(timed_steps):
                step()
            best = min(best, (time.perf_counter() - start) / timed_steps)
        return best


def _fmt_s(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.2f} s"


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def run(entry, cfg, peak_flops: float, log: Callable[[str], None] = print) -> dict:
    module = entry.model
    device = entry.device
    units = list(range(cfg.featvis_channels))
    layers = list(cfg.featvis_layers)
    n_units = len(units) * len(layers)
    size, model_size, steps, seed = cfg.featvis_size, cfg.featvis_model_size, cfg.featvis_steps, cfg.seed
    unit_seconds: list[float] = []

    def ours(steps: int = steps) -> dict:
        return {layer: our_render_units(module, layer, units, size, model_size, steps, seed) for layer in layers}

    def lucent(steps: int = steps, record: bool = True) -> dict:
        if record:
            unit_seconds.clear()
        return {layer: lucent_render_units(module, layer, units, size, model_size, steps, seed,
                                           unit_seconds if record else None) for layer in layers}

    # Warm-ups of one and two steps, which also give each side's FLOPs as fixed + per_step * steps
    # (the fixed part: our final scoring pass; a full-length warm-up would double lucent's long run).
    flops = {}
    for name, fn in (("ours", ours), ("lucent", lambda s: lucent(s, False))):
        _, one = count_flops(lambda: fn(1))
        _, two = count_flops(lambda: fn(2))
        flops[name] = (one - (two - one)) + (two - one) * steps
    timings, outputs = time_sides({"ours": ours, "lucent": lucent}, cfg.featvis_repeats, device, warmup=False)
    for name, tm in timings.items():
        tm.flops = flops[name]
    # Measured after both sides, on the same warmed-up machine.
    floor_step = {layer: network_floor(module, layer, units, model_size, seed) for layer in layers}
    floor_s = sum(floor_step.values()) * steps
    per_layer = {}
    ours_all, lucent_all = [], []
    ttq = {"ours": {"steps": [], "seconds": []}, "lucent": {"steps": [], "seconds": []}}
    for layer in layers:
        a = final_activation(module, layer, units, outputs["ours"][layer].images, model_size)
        b = final_activation(module, layer, units, outputs["lucent"][layer].images, model_size)
        ours_all += a
        lucent_all += b
        per_layer[layer] = {"ours": a, "lucent": b, "ours_mean": float(np.mean(a)), "lucent_mean": float(np.mean(b)),
                            "ours_higher": int(sum(x >= y for x, y in zip(a, b)))}
        for side, per_unit in (("ours", len(units)), ("lucent", 1)):
            q = time_to_quality(module, layer, units, outputs[side][layer], b, model_size, per_unit)
            per_layer[layer][f"{side}_time_to_quality"] = q
            ttq[side]["steps"] += q["steps"]
            ttq[side]["seconds"] += q["seconds"]
    quality = {side: {"median_s": _median(v["seconds"]), "median_steps": _median(v["steps"]),
                      "reached": sum(x is not None for x in v["steps"]), "units": len(v["steps"])}
               for side, v in ttq.items()}
    o, l_ = quality["ours"]["median_s"], quality["lucent"]["median_s"]
    quality["speedup"] = l_ / o if o and l_ else None
    result = {
        "model": entry.name, "layers": layers, "channels": units, "units": n_units, "size": size,
        "model_size": model_size, "steps": steps, "repeats": cfg.featvis_repeats,
        "ours": timings["ours"].summary(n_units, peak_flops),
        "lucent": timings["lucent"].summary(n_units, peak_flops),
        "speedup": timings["lucent"].median / timings["ours"].median,
        "lucent_unit_seconds": [round(s, 4) for s in unit_seconds],
        "floor": {"step_seconds": floor_step, "run_seconds": floor_s,
                  "max_speedup": timings["lucent"].median / floor_s,
                  "ours_over_floor": timings["ours"].median / floor_s},
        "final_activation": per_layer,
        "ours_mean_activation": float(np.mean(ours_all)), "lucent_mean_activation": float(np.mean(lucent_all)),
        "ours_higher_fraction": float(np.mean([x >= y for x, y in zip(ours_all, lucent_all)])),
        "schedule": DEFAULT_SCHEDULE, "kept_steps": kept_steps(steps), "time_to_quality": quality,
    }
    log(f"bench: featvis: ours {result['ours']['per_second']:.3f} units/s, lucent "
        f"{result['lucent']['per_second']:.3f} units/s (x{result['speedup']:.2f}); mean final activation "
        f"ours {result['ours_mean_activation']:.3f}, lucent {result['lucent_mean_activation']:.3f}; the network "
        f"passes alone take {floor_s:.1f} s per run (doing only them would be "
        f"x{result['floor']['max_speedup']:.2f} over lucent); time to lucent's final activation (median unit): "
        f"ours {_fmt_s(quality['ours']['median_s'])}, lucent {_fmt_s(quality['lucent']['median_s'])} "
        f"(x{quality['speedup'] or float('nan'):.2f})")
    return result
