"""Black-box methods on superpixels through captum: feature ablation, KernelSHAP and LIME.

Each image is cut into SLIC superpixels (Achanta et al. 2012, ``skimage.segmentation.slic``); a
superpixel is "removed" by replacing it with the same region of a reference image (``black`` or
``blur``). The three methods differ in how they turn removals into one number per superpixel:

* **feature ablation**: the target's logit drop when that superpixel alone is removed;
* **KernelSHAP** (Lundberg & Lee 2017): a weighted linear regression of the logit on which superpixels
  are kept, over sampled coalitions, with the Shapley kernel as weights, which makes its coefficients
  estimates of the Shapley values (their sum is ``f(x) - f(reference)``);
* **LIME** (Ribeiro et al. 2016): the same regression over uniformly sampled coalitions, weighted by
  the exponential kernel of the lime package (cosine distance to the full image, width 0.25).

All three return ``[B, 1, H, W]``: every pixel carries its superpixel's value, signed. Coalitions are
evaluated ``internal_batch_size`` at a time, and the sampled methods are seeded per image, so an image's
map does not depend on the rest of its batch.

Both regressions are solved here in closed form (float64 weighted least squares, with ``ridge`` for
LIME), not by captum's default surrogates: KernelSHAP's default is scikit-learn's, which is not a
dependency, and LIME's is a Lasso (``alpha=0.01``) that shrinks every coefficient. The lime package
itself fits a ridge regression (``alpha=1``); an unregularised fit recovers an additive model exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import XaiError
from ..layers import fast_model
from ._common import Target, check_positive, finish, prepare, scorer
from ._seeding import seeded
from .gradient import baseline

FILLS = ("black", "blur")


def superpixels(x: torch.Tensor, n_segments: int = 50, compactness: float | None = None) -> torch.Tensor:
    """SLIC superpixels of each image, ``[B, 1, H, W]`` labels ``0..K-1`` (K may differ per image).

    ``compactness`` defaults to 10 for colour images, which SLIC compares in CIELAB (0-100), and to
    0.1 for grey ones, compared in their [0, 1] intensity: the same balance of colour against distance.
    """
    from skimage.segmentation import slic

    check_positive("n_segments", n_segments)
    grey = x.shape[1] == 1
    if compactness is None:
        compactness = 0.1 if grey else 10.0
    out = []
    for img in x.detach().cpu().double().numpy():
        image = img[0] if grey else np.moveaxis(img, 0, -1)
        labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0,
                      channel_axis=None if grey else -1)
        out.append(np.unique(labels, return_inverse=True)[1].reshape(labels.shape))
    return torch.from_numpy(np.stack(out)).long()[:, None].to(x.device)


def _masks(x: torch.Tensor, segments: int | torch.Tensor, compactness: float | None) -> torch.Tensor:
    if isinstance(segments, torch.Tensor):
        if segments.shape != (x.shape[0], 1, *x.shape[2:]) or segments.is_floating_point():
            raise XaiError(f"superpixel labels must be integers of shape [B, 1, H, W] = "
                           f"{[x.shape[0], 1, *x.shape[2:]]}, got {segments.dtype} {list(segments.shape)}")
        return segments.to(x.device).long()
    return superpixels(x, segments, compactness)


def _reference(x: torch.Tensor, fill: str) -> torch.Tensor:
    if fill not in FILLS:
        raise XaiError(f"unknown superpixel fill {fill!r}; choose {' or '.join(FILLS)}")
    return baseline(x, fill)


def feature_ablation(model, inputs: torch.Tensor, target: Target, *, segments: int | torch.Tensor = 50,
                     compactness: float | None = None, fill: str = "black", output: str = "logit",
                     internal_batch_size: int = 32) -> torch.Tensor:
    """Logit drop when each superpixel alone is replaced by the reference; ``segments`` is the SLIC
    superpixel count or given labels ``[B, 1, H, W]``."""
    from captum.attr import FeatureAblation

    check_positive("internal_batch_size", internal_batch_size)
    module, x, t = prepare(model, inputs, target)
    masks = _masks(x, segments, compactness)
    ref = _reference(x, fill)
    per_eval = max(1, internal_batch_size // x.shape[0])
    with fast_model(module, x) as fast:
        attr = FeatureAblation(scorer(fast, output)).attribute(x, baselines=ref, target=t, feature_mask=masks,
                                                               perturbations_per_eval=per_eval)
    return finish(attr[:, :1], inputs)


class WeightedLeastSquares:
    """captum's interpretable-model interface (``fit``, ``representation``, ``__call__``; captum only
    calls them, so its ``Model`` base class is not needed), fitted in closed form: weighted least
    squares with an unpenalised intercept and an optional ridge penalty, in float64."""

    def __init__(self, ridge: float = 0.0):
        if not ridge >= 0:
            raise XaiError(f"ridge must be >= 0, got {ridge!r}")
        self.ridge = ridge
        self.coef: torch.Tensor | None = None
        self.intercept: torch.Tensor | None = None

    def fit(self, train_data, **kwargs):
        # on the CPU: the problem is small (coalitions x superpixels), and CUDA's lstsq has no SVD driver
        z, y, w = (torch.cat(parts).double().cpu() for parts in zip(*[batch for batch in train_data]))
        z, y, w = z.flatten(1), y.flatten(), w.flatten()
        design = torch.cat([torch.ones_like(z[:, :1]), z], 1)
        root = w.clamp_min(0).sqrt()[:, None]
        a, b = design * root, y[:, None] * root[:, 0:1]
        if self.ridge > 0:
            penalty = torch.eye(design.shape[1], dtype=design.dtype) * self.ridge ** 0.5
            a, b = torch.cat([a, penalty[1:]]), torch.cat([b, torch.zeros(design.shape[1] - 1, 1, dtype=b.dtype)])
        solution = torch.linalg.lstsq(a, b, driver="gelsd").solution[:, 0]
        self.intercept, self.coef = solution[0], solution[1:]
        return {}

    def representation(self) -> torch.Tensor:
        return self.coef.float()[None]

    def __call__(self, x):
        return x.double().cpu() @ self.coef + self.intercept


def _lime_kernel(width: float):
    """The lime package's image kernel: ``sqrt(exp(-d^2 / width^2))``, ``d`` the cosine distance between
    the coalition and the full image (a coalition of nothing is at distance 1)."""
    def similarity(_original, _perturbed, interpretable, **kwargs):
        z = interpretable.double().flatten()
        n = z.numel()
        cos = z.sum() / (z.norm() * n ** 0.5) if z.any() else torch.zeros((), dtype=z.dtype)
        return float(torch.exp(-((1 - cos) ** 2) / width ** 2).sqrt())
    return similarity


def _regression(explainer_cls, model, inputs, target, *, segments, compactness, fill, samples, output,
                internal_batch_size, seed, **make):
    check_positive("samples", samples)
    check_positive("internal_batch_size", internal_batch_size)
    module, x, t = prepare(model, inputs, target)
    masks = _masks(x, segments, compactness)
    ref = _reference(x, fill)
    out = torch.empty(x.shape[0], 1, *x.shape[2:], device=x.device)
    with fast_model(module, x) as fast:
        explainer = explainer_cls(scorer(fast, output), **make)
        for i in range(x.shape[0]):
            with seeded(seed, x.device):
                attr = explainer.attribute(x[i:i + 1], baselines=ref[i:i + 1], target=t[i:i + 1],
                                           feature_mask=masks[i:i + 1], n_samples=samples,
                                           perturbations_per_eval=internal_batch_size)
            out[i] = attr[0, :1]
    return finish(out, inputs)


def kernel_shap(model, inputs: torch.Tensor, target: Target, *, segments: int | torch.Tensor = 50,
                compactness: float | None = None, fill: str = "black", samples: int = 512,
                output: str = "logit", internal_batch_size: int = 32, seed: int = 0) -> torch.Tensor:
    """KernelSHAP on superpixels: ``samples`` coalitions (the full and the empty one first, with the
    near-infinite weight that makes the coefficients sum to ``f(x) - f(reference)``), seeded."""
    from captum.attr import KernelShap

    class _KernelShap(KernelShap):
        def __init__(self, forward_func):
            super().__init__(forward_func)
            self.interpretable_model = WeightedLeastSquares()

    return _regression(_KernelShap, model, inputs, target, segments=segments, compactness=compactness, fill=fill,
                       samples=samples, output=output, internal_batch_size=internal_batch_size, seed=seed)


def lime(model, inputs: torch.Tensor, target: Target, *, segments: int | torch.Tensor = 50,
         compactness: float | None = None, fill: str = "black", samples: int = 512, kernel_width: float = 0.25,
         ridge: float = 0.0, output: str = "logit", internal_batch_size: int = 32, seed: int = 0) -> torch.Tensor:
    """LIME on superpixels: ``samples`` coalitions, each superpixel kept with probability 1/2, weighted
    by the lime package's kernel of width ``kernel_width``; ``ridge`` penalises the coefficients."""
    from captum.attr import Lime

    if not kernel_width > 0:
        raise XaiError(f"kernel_width must be positive, got {kernel_width!r}")
    return _regression(Lime, model, inputs, target, segments=segments, compactness=compactness, fill=fill,
                       samples=samples, output=output, internal_batch_size=internal_batch_size, seed=seed,
                       interpretable_model=WeightedLeastSquares(ridge), similarity_func=_lime_kernel(kernel_width))
