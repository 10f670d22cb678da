"""The gradient family: gradient, gradient x input, SmoothGrad / SmoothGrad² / VarGrad, Integrated Gradients.

Captum computes the gradient (``Saliency``, ``InputXGradient``) and Integrated Gradients underneath. The
noise methods are ours: Smilkov et al. scale the noise by each image's own range, and captum's
``NoiseTunnel`` takes one standard deviation for a whole batch; ours also draws the three statistics
(mean, mean of squares, variance) from one seeded set of samples, batched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XaiError
from ..layers import fast_layout, fast_model
from ._common import Target, check_positive, finish, prepare, scorer

BASELINES = ("black", "blur", "uniform")


def gradient(model, inputs: torch.Tensor, target: Target, *, output: str = "logit") -> torch.Tensor:
    """d score / d input (Simonyan et al. 2014); ``output`` picks the score: logit, softmax or log_softmax."""
    module, x, t = prepare(model, inputs, target)
    return finish(_gradient(module, x, t, output), inputs)


def gradient_x_input(model, inputs: torch.Tensor, target: Target, *, output: str = "logit") -> torch.Tensor:
    """Gradient times input (Shrikumar et al. 2016): the first-order Taylor term against a black image."""
    from captum.attr import InputXGradient

    module, x, t = prepare(model, inputs, target)  # x is a detached copy: marking it does not touch inputs
    with fast_layout(module):
        attr = InputXGradient(scorer(module, output)).attribute(x.requires_grad_(True), target=t)
    return finish(attr, inputs)


def _gradient(module: nn.Module, x: torch.Tensor, t: torch.Tensor, output: str) -> torch.Tensor:
    from captum.attr import Saliency

    # captum warns about inputs that do not require gradients; ours are fresh copies, so ask up front
    with fast_layout(module):
        return Saliency(scorer(module, output)).attribute(x.detach().requires_grad_(True), target=t, abs=False)


def noise_gradient_moments(model, inputs: torch.Tensor, target: Target, *, samples: int = 32,
                           noise: float = 0.15, output: str = "logit", internal_batch_size: int = 32,
                           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and mean square of the gradient over ``samples`` noisy copies of each image.

    The noise is Gaussian with standard deviation ``noise * (max - min)`` of each image (Smilkov et al.
    2017 recommend 10-20 %). Noisy copies are not clipped to the valid range, as in the paper.
    ``internal_batch_size`` bounds how many noisy images go through the model at once.
    """
    check_positive("samples", samples)
    check_positive("internal_batch_size", internal_batch_size)
    if not noise >= 0:
        raise XaiError(f"noise must be a non-negative fraction of the input range, got {noise!r}")
    module, x, t = prepare(model, inputs, target)
    b = x.shape[0]
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(b, 1, 1, 1, 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    total_sq = torch.zeros_like(total)
    per_chunk = max(1, internal_batch_size // b)  # samples of every image per forward pass
    done = 0
    with fast_model(module, x) as fast:  # once for the whole loop, not per chunk
        while done < samples:
            k = min(per_chunk, samples - done)
            eps = torch.randn((k, *x.shape), generator=gen).to(x.device)
            noisy = (x[None] + eps * noise * span.transpose(0, 1)).reshape(k * b, *x.shape[1:])
            g = _gradient(fast, noisy, t.repeat(k), output).reshape(k, *x.shape).double()
            total += g.sum(0)
            total_sq += (g * g).sum(0)
            done += k
    return finish((total / samples).float(), inputs), finish((total_sq / samples).float(), inputs)


def smoothgrad(model, inputs: torch.Tensor, target: Target, **options) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the gradient averaged over noisy copies. Options as
    :func:`noise_gradient_moments`."""
    return noise_gradient_moments(model, inputs, target, **options)[0]


def smoothgrad_sq(model, inputs: torch.Tensor, target: Target, **options) -> torch.Tensor:
    """SmoothGrad²: the mean of the squared gradient over noisy copies (Hooker et al. 2019). Non-negative."""
    return noise_gradient_moments(model, inputs, target, **options)[1]


def vargrad(model, inputs: torch.Tensor, target: Target, **options) -> torch.Tensor:
    """VarGrad: the variance of the gradient over noisy copies (Adebayo et al. 2018). Non-negative."""
    mean, mean_sq = noise_gradient_moments(model, inputs, target, **options)
    return (mean_sq - mean * mean).clamp_min(0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with reflected borders (radius 3 sigma)."""
    if sigma <= 0:
        return x.clone()
    radius = min(math.ceil(3 * sigma), x.shape[-2] - 1, x.shape[-1] - 1)
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def baseline(x: torch.Tensor, kind: str = "black", *, sigma: float | None = None, seed: int = 0) -> torch.Tensor:
    """A reference image per input: ``black`` (zeros), ``blur`` (the image blurred with ``sigma`` px,
    default a tenth of its shorter side) or ``uniform`` (seeded uniform noise in [0, 1])."""
    if kind == "black":
        return torch.zeros_like(x)
    if kind == "blur":
        return gaussian_blur(x, sigma if sigma is not None else min(x.shape[-2:]) / 10)
    if kind == "uniform":
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    raise XaiError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")


def integrated_gradients(model, inputs: torch.Tensor, target: Target, *, baseline_kind: str = "black",
                         steps: int | str = 32, method: str = "gausslegendre", output: str = "logit",
                         internal_batch_size: int = 32, sigma: float | None = None, seed: int = 0,
                         completeness: float | None = None, max_steps: int = 1024) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al. 2017) from a black, blurred or uniform-noise baseline.

    The attributions sum to ``f(x) - f(baseline)`` up to the quadrature error of ``steps`` points
    (see :func:`xai.metrics.completeness_gap`). ``steps="auto"`` refines the quadrature image by image
    until that gap is at most ``completeness`` (default 1 %) or ``max_steps`` is reached
    (:func:`integrated_gradients_refined` also returns the steps and gaps). ``internal_batch_size``
    bounds the number of path points per forward pass.
    """
    if steps == "auto":
        return integrated_gradients_refined(
            model, inputs, target, completeness=0.01 if completeness is None else completeness,
            max_steps=max_steps, baseline_kind=baseline_kind, method=method, output=output,
            internal_batch_size=internal_batch_size, sigma=sigma, seed=seed).attributions
    if completeness is not None:
        raise XaiError("completeness= is the target of steps='auto'; with a fixed step count leave it out")
    check_positive("steps", steps)
    check_positive("internal_batch_size", internal_batch_size)
    module, x, t = prepare(model, inputs, target)
    ref = baseline(x, baseline_kind, sigma=sigma, seed=seed)
    with fast_model(module, x) as fast:
        attr = _ig(scorer(fast, output), x, ref, t, steps, method, internal_batch_size)
    return finish(attr, inputs)


def _ig(score, x: torch.Tensor, ref: torch.Tensor, t: torch.Tensor, steps: int, method: str,
        internal_batch_size: int) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    return IntegratedGradients(score).attribute(x, baselines=ref, target=t, n_steps=steps, method=method,
                                                internal_batch_size=max(internal_batch_size, x.shape[0]))


@dataclass(frozen=True)
class RefinedIG:
    """Integrated Gradients to a completeness target: per image, the steps used, the relative gap
    ``|sum(a) - (f(x) - f(x'))| / |f(x) - f(x')|`` reached with them, and whether it met the target."""

    attributions: torch.Tensor
    steps: list[int]
    gap: list[float]
    reached: list[bool]


def integrated_gradients_refined(model, inputs: torch.Tensor, target: Target, *, completeness: float = 0.01,
                                 start_steps: int = 16, max_steps: int = 1024, baseline_kind: str = "black",
                                 method: str = "gausslegendre", output: str = "logit",
                                 internal_batch_size: int = 32, sigma: float | None = None,
                                 seed: int = 0) -> RefinedIG:
    """IG whose step count doubles from ``start_steps``, for the images still above the target only,
    until each image's completeness gap is at most ``completeness`` or ``max_steps`` is reached.

    Gauss-Legendre nodes do not nest, so a refinement recomputes its image's path: an image that needs
    ``n`` steps costs at most about ``2 n``. An image whose score does not change along the path (``f(x) =
    f(x')``) has no relative gap; it keeps ``start_steps`` and a gap of NaN, counted as reached.
    """
    if not (isinstance(completeness, (int, float)) and 0 < completeness < 1):
        raise XaiError(f"completeness is a relative gap in (0, 1), e.g. 0.01; got {completeness!r}")
    check_positive("start_steps", start_steps)
    check_positive("max_steps", max_steps)
    check_positive("internal_batch_size", internal_batch_size)
    if start_steps > max_steps:
        raise XaiError(f"start_steps ({start_steps}) is above max_steps ({max_steps})")
    module, x, t = prepare(model, inputs, target)
    ref = baseline(x, baseline_kind, sigma=sigma, seed=seed)
    n = x.shape[0]
    out = torch.zeros_like(x)
    used, gaps = [start_steps] * n, [math.nan] * n
    with fast_model(module, x) as fast:
        score = scorer(fast, output)
        with torch.no_grad():
            diff = (score(x).gather(1, t[:, None]) - score(ref).gather(1, t[:, None])).squeeze(1).double()
        pending = [i for i in range(n) if abs(float(diff[i])) > 1e-12]
        steps = start_steps
        while pending:
            idx = torch.tensor(pending, device=x.device)
            attr = _ig(score, x[idx], ref[idx], t[idx], steps, method, internal_batch_size)
            gap = ((attr.flatten(1).sum(1).double() - diff[idx]).abs() / diff[idx].abs()).tolist()
            still = []
            for k, i in enumerate(pending):
                out[i], used[i], gaps[i] = attr[k].detach(), steps, gap[k]
                if gap[k] > completeness and steps < max_steps:
                    still.append(i)
            pending, steps = still, min(2 * steps, max_steps)
    reached = [not (g > completeness) for g in gaps]  # NaN (nothing to explain) counts as reached
    return RefinedIG(finish(out, inputs), used, gaps, reached)
