"""Occlusion (Zeiler & Fergus 2014): incremental where the network allows it (:mod:`.incremental`),
else captum's ``Occlusion`` with windows batched; both on the batch-norm-folded copy."""
from __future__ import annotations

import logging

import torch

from ..errors import XaiError
from ..layers import fast_model
from . import _rects
from ._common import Target, check_positive, finish, prepare, scorer, select
from .gradient import baseline as make_baseline
from ._trace import out_of_place
from .incremental import SWITCH, Batch, Clean, IncrementalUnsupported, Network

log = logging.getLogger(__name__)


def occlusion(model, inputs: torch.Tensor, target: Target, *, window: int | float | None = None,
              stride: int | float | None = None, fill: str = "black", output: str = "logit",
              internal_batch_size: int = 32, incremental: bool | None = None) -> torch.Tensor:
    """Score drop when a square window is replaced by ``fill`` (black or blur), averaged over the windows
    that cover each pixel: positive where hiding the region lowers the target's score.

    ``window`` and ``stride`` are pixels (int) or fractions of the shorter side (float), so one setting
    fits every resolution. ``window`` defaults to a seventh of the shorter side and ``stride`` to half
    the window: 13 x 13 windows, each pixel covered by up to four. ``internal_batch_size`` bounds the
    occluded images per forward pass.

    ``incremental``: recompute only what each window changes (:mod:`.incremental`); the same map to
    float rounding. ``None`` (default) uses it where the network can be traced and it saves more
    FLOPs than the clean pass it needs costs, and otherwise logs why not and runs every occluded image
    in full; ``True`` uses it wherever it can run and raises :class:`IncrementalUnsupported` where it
    cannot; ``False`` always runs in full (captum's ``Occlusion``).
    """
    check_positive("internal_batch_size", internal_batch_size)
    module, x, t = prepare(model, inputs, target)
    window, stride = _window_and_stride(x, window, stride)
    if fill not in ("black", "blur"):
        raise XaiError(f"unknown occlusion fill {fill!r}; choose black or blur")
    scorer(module, output)  # checks the output space before any pass
    ref = make_baseline(x, fill)
    with fast_model(module, x) as fast:
        if incremental is not False:
            net = Network.trace(fast, x)
            reason = net.reason
            with torch.no_grad(), out_of_place(fast):
                if reason is None:
                    plans = _plans(net, x.shape, window, stride, internal_batch_size, SWITCH)
                    reason = None if incremental else _not_worth_it(plans)
                    if reason is None:
                        return finish(_incremental(net, plans, x, ref, t, output), inputs)
            if incremental:
                raise IncrementalUnsupported(reason)
            log.info("occlusion runs every occluded image in full: %s", reason)
        return finish(_captum(fast, x, ref, t, window, stride, output, internal_batch_size), inputs)


def occlusion_plan(model, inputs: torch.Tensor, *, window: int | float | None = None,
                   stride: int | float | None = None, internal_batch_size: int = 32,
                   switch: float = SWITCH) -> dict:
    """How :func:`occlusion` would run on ``inputs``, without running it: whether incremental (else
    why not), where each batch of windows switches to full recomputation and why, and the planned
    matmul and convolution FLOPs per image against running every occluded image in full."""
    module, x, _ = prepare(model, inputs, 0)
    window, stride = _window_and_stride(x, window, stride)
    with fast_model(module, x) as fast:
        net = Network.trace(fast, x)
        if net.reason is not None:
            return {"incremental": False, "reason": net.reason}
        plans = _plans(net, x.shape, window, stride, internal_batch_size, switch)
    switches: dict[str, dict] = {}
    for plan, _ in plans:
        node, why = plan.full_from or ("nowhere", "")
        entry = switches.setdefault(node, {"batches": 0, "why": why})
        entry["batches"] += 1
    planned, full = sum(p.flops for p, _ in plans), sum(p.full_flops for p, _ in plans)
    reason = _not_worth_it(plans)
    return {"incremental": reason is None, "reason": reason, "switch": switch,
            "windows": sum(len(w) for _, w in plans), "batches": len(plans), "switches_at": switches,
            "flops_per_image": planned, "full_flops_per_image": full, "flops_saved": 1 - planned / full}


def _plans(net: Network, shape, window: int, stride: int, batch: int,
           switch: float) -> list[tuple[Batch, torch.Tensor]]:
    return [(net.plan(rects, switch), wins) for rects, wins in _window_batches(shape, window, stride, batch)]


def _not_worth_it(plans: list[tuple[Batch, torch.Tensor]]) -> str | None:
    """Why running incrementally would cost more than it saves, or None: its savings must exceed the
    one clean pass per image it needs (about one occluded image's FLOPs)."""
    planned, full = sum(p.flops for p, _ in plans), sum(p.full_flops for p, _ in plans)
    windows = sum(len(w) for _, w in plans)
    if full - planned <= full / windows:
        return (f"it would save {(full - planned) / full:.0%} of the FLOPs of {windows} occluded images, "
                "less than the clean pass it needs")
    return None


def _window_and_stride(x: torch.Tensor, window, stride) -> tuple[int, int]:
    h, w = x.shape[2:]
    window = _pixels(window, min(h, w)) or max(1, min(h, w) // 7)
    stride = _pixels(stride, min(h, w)) or max(1, window // 2)
    check_positive("window", window)
    check_positive("stride", stride)
    if window > min(h, w):
        raise XaiError(f"occlusion window {window} px is larger than the image ({h}x{w})")
    return window, stride


def _captum(fast, x, ref, t, window, stride, output, internal_batch_size) -> torch.Tensor:
    from captum.attr import Occlusion

    c = x.shape[1]
    per_eval = max(1, internal_batch_size // x.shape[0])
    return Occlusion(scorer(fast, output)).attribute(
        x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride), baselines=ref,
        target=t, perturbations_per_eval=per_eval)


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window positions along one axis, as captum places them: the last may reach past the edge (and
    is clipped there)."""
    count = -(-(size - window) // stride) + 1
    return [i * stride for i in range(count)]


def _windows(shape, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    h, w = shape[2:]
    return [(y, min(y + window, h), x, min(x + window, w))
            for y in _starts(h, window, stride) for x in _starts(w, window, stride)]


def _window_batches(shape, window: int, stride: int, size: int):
    """``(input rectangles, the windows in them)`` per batch of at most ``size`` windows, in raster
    order (neighbours share a batch, so its rectangles stay small)."""
    wins = _windows(shape, window, stride)
    for i in range(0, len(wins), size):
        chunk = torch.tensor(wins[i:i + size])
        yield _rects.make(chunk[:, 0], chunk[:, 1], chunk[:, 2], chunk[:, 3], *shape[2:]), chunk


def _incremental(net: Network, plans: list[tuple[Batch, torch.Tensor]], x, ref, t, output) -> torch.Tensor:
    b, c, h, w = x.shape
    batches = []
    for plan, wins in plans:
        rects = plan.rects[net.nodes[0]]
        yy = rects.y[:, None] + torch.arange(rects.h)  # [N, h] image rows of each rectangle
        xx = rects.x[:, None] + torch.arange(rects.w)
        inside = (((yy >= wins[:, 0:1]) & (yy < wins[:, 1:2]))[:, :, None]
                  & ((xx >= wins[:, 2:3]) & (xx < wins[:, 3:4]))[:, None, :])
        pixels = (yy[:, :, None] * w + xx[:, None, :]).flatten()
        shape = (len(wins), rects.h, rects.w, c)
        batches.append((plan, wins, inside[..., None].to(x.device), pixels.to(x.device), shape))
    attr = torch.zeros(b, 1, h, w, dtype=x.dtype, device=x.device)
    count = torch.zeros(1, 1, h, w, dtype=x.dtype, device=x.device)
    for _, wins in plans:
        for y0, y1, x0, x1 in wins.tolist():
            count[..., y0:y1, x0:x1] += 1
    for i in range(b):
        values, out = net.clean(x[i:i + 1])
        clean = Clean(values)
        base = select(out, t[i:i + 1], output)
        img = x[i].permute(1, 2, 0).reshape(h * w, c)
        blank = ref[i].permute(1, 2, 0).reshape(h * w, c)
        for plan, wins, inside, pixels, shape in batches:
            patch = torch.where(inside, blank[pixels].view(shape), img[pixels].view(shape)).permute(0, 3, 1, 2)
            drops = base - select(net.run(plan, clean, patch), t[i].expand(len(wins)), output)
            for (y0, y1, x0, x1), d in zip(wins.tolist(), drops):
                attr[i, 0, y0:y1, x0:x1] += d
    return (attr / count).expand(b, c, h, w)


def _pixels(size: int | float | None, side: int) -> int | None:
    if size is None or isinstance(size, int):
        return size
    if not 0 < size <= 1:
        raise XaiError(f"a fractional window or stride must be in (0, 1], got {size}")
    return max(1, round(size * side))
