"""Our batched feature-visualization renderer against torch-lucent's ``render_vis``, one unit per call.

Both sides optimise the same objective (a channel's spatial mean) from the same parameterization
(a colour-decorrelated Fourier image of ``size`` px, initial scale 0.01), with Lucid's standard
transforms, Adam at learning rate 0.05 for ``steps`` steps, and the transformed image resized to
``model_size`` px before the model (lucent's own default upsamples anything under 224 px to 224).
The final images of both are scored by the same function: the channel's mean activation on the
image resized to ``model_size``, without transforms.

Patches, in the benchmark only: lucent is called with ``preprocess=False`` (our models normalise
inside), ``progress=False, show_image=False``; and lucent 0.1.8 never removes the forward hooks it
puts on every module, so they are removed after each call (otherwise each later call, and ours,
would run all earlier calls' hooks too).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..featvis import evaluate, objectives, render
from ..featvis.render import forward
from ..layers import fast_model
from ..featvis.param import FFTParam
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


def lucent_render_units(module: nn.Module, layer: str, units: list[int], size: int, model_size: int, steps: int,
                        seed: int, unit_seconds: list[float] | None = None) -> torch.Tensor:
    """One ``render_vis`` call per unit, as lucent is used; ``[N, 3, size, size]`` final images."""
    from lucent.optvis import objectives as lobj
    from lucent.optvis import param as lparam
    from lucent.optvis.render import render_vis

    lucent_layer = layer.replace(".", "_")  # lucent joins module names with underscores
    images = []
    for k in units:
        torch.manual_seed(seed + k)  # lucent draws from the global generators
        np.random.seed(seed + k)
        start = time.perf_counter()
        with _lucent_hooks_removed():
            out = render_vis(module, lobj.channel(lucent_layer, k), lambda: lparam.image(size), thresholds=(steps,),
                             preprocess=False, progress=False, show_image=False, fixed_image_size=model_size)
        if unit_seconds is not None:
            unit_seconds.append(time.perf_counter() - start)
        images.append(torch.from_numpy(out[-1]).permute(0, 3, 1, 2))
    return torch.cat(images)


def our_render_units(module: nn.Module, layer: str, units: list[int], size: int, model_size: int, steps: int,
                     seed: int) -> torch.Tensor:
    """All units of ``layer`` in one batched rendering; ``[N, 3, size, size]`` final images."""
    param = FFTParam(len(units), 3, size, seed=seed)
    return render(module, objectives.channel(layer, units), param, standard(size, out_size=model_size), steps,
                  seed=seed).images


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
    for layer in layers:
        a = final_activation(module, layer, units, outputs["ours"][layer], model_size)
        b = final_activation(module, layer, units, outputs["lucent"][layer], model_size)
        ours_all += a
        lucent_all += b
        per_layer[layer] = {"ours": a, "lucent": b, "ours_mean": float(np.mean(a)), "lucent_mean": float(np.mean(b)),
                            "ours_higher": int(sum(x >= y for x, y in zip(a, b)))}
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
    }
    log(f"bench: featvis: ours {result['ours']['per_second']:.3f} units/s, lucent "
        f"{result['lucent']['per_second']:.3f} units/s (x{result['speedup']:.2f}); mean final activation "
        f"ours {result['ours_mean_activation']:.3f}, lucent {result['lucent_mean_activation']:.3f}; the network "
        f"passes alone take {floor_s:.1f} s per run (doing only them would be "
        f"x{result['floor']['max_speedup']:.2f} over lucent)")
    return result
