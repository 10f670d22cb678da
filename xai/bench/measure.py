"""Timing, FLOP counting, the machine's matmul peak, and agreement between two attribution outputs."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _NoModuleTracking:
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TotalFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` counting totals only. Its per-module tracker puts backward hooks on module
    outputs that make ``torch.autograd.grad`` with respect to a leaf input fail (captum's gradients)."""

    def __init__(self):
        super().__init__(display=False)
        self.mod_tracker = _NoModuleTracking()


def count_flops(fn: Callable[[], object]) -> tuple[object, int]:
    """``(fn(), FLOPs of its matmuls and convolutions, forward and backward)``.

    ``FlopCounterMode`` counts only the ops that dominate a CNN's cost (mm, bmm, addmm, convolution
    and their backward); elementwise work is left out, so fractions of peak are slight underestimates.
    """
    with TotalFlopCounter() as counter:
        out = fn()
    return out, int(counter.get_total_flops())


@dataclass
class Timing:
    """Wall times of repeated calls of one side of a comparison."""

    seconds: list[float] = field(default_factory=list)
    flops: int = 0  # per call, counted on the warm-up call

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self, items: int, peak_flops: float) -> dict:
        """JSON-ready: ``items`` (images or units) per call gives the rate; ``peak_flops`` per second."""
        med = self.median
        achieved = self.flops / med if med > 0 else float("nan")
        return {
            "seconds": [round(s, 4) for s in self.seconds], "median_s": round(med, 4),
            "spread": round((max(self.seconds) - min(self.seconds)) / med, 3) if med > 0 else None,
            "per_second": items / med if med > 0 else None, "flops": self.flops,
            "gflops_per_s": achieved / 1e9, "fraction_of_peak": achieved / peak_flops if peak_flops else None,
        }


def time_sides(sides: dict[str, Callable[[], object]], repeats: int, device: torch.device,
               before: Callable[[], None] | None = None,
               warmup: bool | dict[str, Callable[[], object]] = True) -> tuple[dict[str, Timing], dict[str, object]]:
    """Time every side ``repeats`` times after one warm-up call each, which also counts its FLOPs.

    The sides alternate within each round and the order rotates between rounds, so a slow phase of a
    shared machine falls on both sides rather than on whichever ran second. ``before`` runs ahead of
    every call, untimed (e.g. reseeding). ``warmup`` may instead give a cheaper warm-up call per side
    (the FLOPs recorded are then that call's, for the caller to scale), or be False when the caller
    has warmed up and counts FLOPs itself. Returns the timings and each side's last timed output.
    """
    timings = {name: Timing() for name in sides}
    outputs: dict[str, object] = {}
    if warmup:
        calls = warmup if isinstance(warmup, dict) else sides
        for name in sides:
            if before:
                before()
            outputs[name], timings[name].flops = count_flops(calls[name])
            sync(device)
    names = list(sides)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if before:
                before()
            sync(device)
            start = time.perf_counter()
            outputs[name] = sides[name]()
            sync(device)
            timings[name].seconds.append(time.perf_counter() - start)
    return timings, outputs


def matmul_peak(device: torch.device, size: int = 2048, seconds: float = 1.0) -> dict:
    """The machine's float32 matmul rate (best of a few rounds): the roofline our methods are held to.

    On a GPU the matrices are at least 8192 wide, as smaller ones leave it partly idle. cuDNN may run
    convolutions in TF32 (PyTorch's default) while this peak is measured in float32: the result says so.
    """
    if device.type == "cuda":
        size = max(size, 8192)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    flops_per = 2 * size ** 3
    torch.mm(a, b)
    sync(device)
    best = 0.0
    rounds = 3
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            n += 1
            sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / rounds:
                break
        best = max(best, n * flops_per / elapsed)
    cuda = device.type == "cuda"
    return {"gflops_per_s": best / 1e9, "matrix": size, "dtype": "float32",
            "matmul_tf32": bool(cuda and torch.backends.cuda.matmul.allow_tf32),
            "conv_tf32": bool(cuda and torch.backends.cudnn.allow_tf32)}


def machine(device: torch.device) -> dict:
    """What the numbers were measured on."""
    from ..render.store import _cpu_model

    info = {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "device": str(device), "gpu": None,
    }
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1)}
    return info


def minmax(a: np.ndarray) -> np.ndarray:
    """Each image's map scaled to [0, 1] (axis 0 indexes images); a constant map becomes zeros."""
    flat = a.reshape(a.shape[0], -1)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return ((flat - lo) / np.where(hi > lo, hi - lo, 1.0)).reshape(a.shape)


SHARE_THRESHOLDS = (1e-4, 1e-3)  # relative to the anchor's largest magnitude


def agreement(ours: torch.Tensor | np.ndarray, anchor: torch.Tensor | np.ndarray, *,
              normalise: bool = False) -> dict:
    """How closely two batches of attributions agree, image by image.

    ``max_abs_diff`` over all values (after per-image min-max scaling when ``normalise``, for anchors
    that only return scaled maps); ``rel_max_abs_diff`` divides it by the anchor's largest magnitude;
    ``spearman`` is the rank correlation of each image's values (mean and minimum over images; images
    where either map is constant have none and are counted in ``constant_maps``); ``share_beyond``
    is the share of values farther apart than each of :data:`SHARE_THRESHOLDS` of that magnitude.
    """
    from scipy.stats import spearmanr

    a = _numpy(ours)
    b = _numpy(anchor)
    if a.size != b.size or a.shape[0] != b.shape[0]:
        raise ValueError(f"cannot compare attributions of shapes {a.shape} and {b.shape}")
    a, b = a.reshape(b.shape[0], -1), b.reshape(b.shape[0], -1)
    if normalise:
        a, b = minmax(a), minmax(b)
    absdiff = np.abs(a - b)
    diff = float(absdiff.max())
    scale = float(np.abs(b).max())
    rhos, constant = [], 0
    for x, y in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            constant += 1
            continue
        rhos.append(float(spearmanr(x, y).statistic))
    return {
        "normalised": normalise, "max_abs_diff": diff, "anchor_max_abs": scale,
        "rel_max_abs_diff": diff / scale if scale > 0 else None,
        "spearman_mean": float(np.mean(rhos)) if rhos else None,
        "spearman_min": float(np.min(rhos)) if rhos else None,
        "images": int(b.shape[0]), "constant_maps": constant,
        # Where the differences are, not only how large the largest is: a gate flipped by rounding
        # moves a few values a lot, a formula error moves many.
        "share_beyond": {f"{r:.0e}": float((absdiff > r * scale).mean()) if scale > 0 else None
                         for r in SHARE_THRESHOLDS},
    }


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
