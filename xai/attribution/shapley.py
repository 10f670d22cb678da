"""Reference-based methods through captum: DeepLIFT, DeepLIFT-SHAP and GradientSHAP.

All three explain the difference between the target's logit at the image and at reference images
(``black``, ``blur``, ``uniform``: :func:`xai.attribution.baseline`), and return signed attributions
``[B, C, H, W]`` that sum to it (DeepLIFT exactly, the SHAP variants in expectation).

**DeepLIFT** (Shrikumar et al. 2017, the Rescale rule) replaces the gradient of each nonlinearity by
the ratio of its output and input differences from the reference. captum implements it with hooks on
the nonlinear *modules* it knows (``nn.ReLU``, ``ELU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Softplus``,
``Softmax``, the max-pools); linear operations (convolutions, batch norms, residual adds, average pools)
need no rule, their gradient is their multiplier. On a model with any other nonlinearity (ReLU6, GELU,
Hardswish), a functional activation, a product of two activations (gating, attention), or a rectifier
module called twice in one pass (torchvision's ResNet blocks reuse ``self.relu``; captum keeps one input
per module) captum would return something that is not DeepLIFT without a word, so these refuse with
:class:`~xai.errors.NotApplicableError`.

**DeepLIFT-SHAP** averages DeepLIFT over several references (Lundberg & Lee 2017, sec. 4.2);
**GradientSHAP** is its sampled, gradient version: the expected gradient at random points between a
random reference and the (optionally noisy) image, times their difference. Seeded per image, so an
image's attributions do not depend on the rest of its batch.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import NotApplicableError, XaiError
from ..layers import fast_model
from . import _audit
from ._common import Target, check_positive, finish, prepare, scorer
from ._seeding import seeded
from .gradient import baseline

SHAP_BASELINES = ("black", "blur", "uniform")


class _Net(nn.Module):
    """The model as captum's DeepLift needs it: its own pre-hook concatenates inputs and references,
    which must happen before the model's own pre-hooks (our normalisation) see them."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@contextmanager
def _decoupled(module: nn.Module) -> Iterator[nn.Module]:
    """The model wrapped for captum, each ruled module fed a copy of its input while the block runs.

    captum 0.9 hooks each nonlinear module with a full backward hook; when one hooked module's output
    is directly the next one's input (a ReLU straight into a max-pool, as in our CNNs and VGG), the two
    hooks interfere and the max-pool's rule is lost: on such models the attributions missed
    summation-to-delta by a large share of ``f(x) - f(x0)`` (captum issue #1104). Copying the input in
    a pre-hook (which runs before captum's own) puts a node between the two hooks and restores it
    (tests/test_shapley.py checks the result against DeepLIFT written out by hand)."""
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    handles = [m.register_forward_pre_hook(lambda _m, args: (args[0].clone(), *args[1:]))
               for m in module.modules() if type(m) in SUPPORTED_NON_LINEAR]
    try:
        yield _Net(module)
    finally:
        for h in handles:
            h.remove()


def check_deeplift(model, module: nn.Module, x: torch.Tensor, method: str = "deeplift") -> None:
    """Refuse a model captum's DeepLift would explain wrongly (see the module docstring)."""
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    label = _audit.model_label(model)
    for name, m in module.named_modules():
        if type(m).__module__ == "torch.nn.modules.activation" and type(m) not in SUPPORTED_NON_LINEAR:
            act = type(m).__name__
            raise NotApplicableError(method, label, f"it uses {act} ({name}), for which captum's DeepLift has no "
                                     f"rule", activation=act)
    ruled = {m: n for n, m in module.named_modules() if type(m) in SUPPORTED_NON_LINEAR}
    flags = (_audit.ACTIVATION, _audit.PRODUCT, _audit.MAX)
    with torch.enable_grad(), _audit.audited(ruled, flags) as audit:
        module(x[:1].clone().requires_grad_(True))
    if audit.found:
        raise NotApplicableError(method, label, f"its forward pass computes {audit.summary()} outside the modules "
                                 f"captum's DeepLift has rules for")
    reused = [n for m, n in ruled.items() if audit.calls[id(m)] > 1]
    if reused:
        raise NotApplicableError(method, label, f"its module {reused[0]!r} runs more than once in a forward pass, "
                                 f"and captum's DeepLift keeps one input per module")


def deeplift_with_delta(model, inputs: torch.Tensor, target: Target, *, baseline_kind: str = "black",
                        sigma: float | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepLIFT attributions and captum's convergence delta per image: the sum of the attributions
    minus ``f(x) - f(reference)``, zero up to rounding for the Rescale rule."""
    from captum.attr import DeepLift

    module, x, t = prepare(model, inputs, target)
    check_deeplift(model, module, x)
    ref = _references(x, (baseline_kind,), sigma, seed)[:, 0]
    with warnings.catch_warnings(), _decoupled(module) as net:
        warnings.simplefilter("ignore")  # captum announces its hooks on every call
        attr, delta = DeepLift(net).attribute(x, baselines=ref, target=t, return_convergence_delta=True)
    return finish(attr, inputs), delta.detach().to(inputs.device, torch.float32)


def deeplift(model, inputs: torch.Tensor, target: Target, **options) -> torch.Tensor:
    """DeepLIFT (Rescale rule) against one reference image; options as :func:`deeplift_with_delta`."""
    return deeplift_with_delta(model, inputs, target, **options)[0]


def _references(x: torch.Tensor, kinds: Sequence[str] | torch.Tensor, sigma: float | None, seed: int) -> torch.Tensor:
    """``[B, N, C, H, W]``: the references of each image (a tensor is one set shared by all images)."""
    if isinstance(kinds, torch.Tensor):
        if kinds.dim() != 4 or kinds.shape[1:] != x.shape[1:]:
            raise XaiError(f"reference images must be [N, {', '.join(map(str, x.shape[1:]))}], got "
                           f"{list(kinds.shape)}")
        return kinds.to(x.device, x.dtype)[None].expand(x.shape[0], *kinds.shape)
    if isinstance(kinds, str) or not kinds:
        raise XaiError(f"give the references as a list of kinds ({', '.join(SHAP_BASELINES)}) or images")
    # One image at a time: a uniform-noise reference is then the same whatever batch the image is in.
    return torch.stack([torch.cat([baseline(x[i:i + 1], k, sigma=sigma, seed=seed) for i in range(x.shape[0])])
                        for k in kinds], 1)


def deeplift_shap(model, inputs: torch.Tensor, target: Target, *,
                  baselines: Sequence[str] | torch.Tensor = SHAP_BASELINES, sigma: float | None = None,
                  seed: int = 0) -> torch.Tensor:
    """DeepLIFT-SHAP: DeepLIFT averaged over references (kinds made per image, or ``[N, C, H, W]``
    images), all references of one image in one forward pass."""
    from captum.attr import DeepLiftShap

    module, x, t = prepare(model, inputs, target)
    check_deeplift(model, module, x, "deeplift_shap")
    refs = _references(x, baselines, sigma, seed)
    if refs.shape[1] < 2:
        raise XaiError("DeepLIFT-SHAP averages over at least two references")
    out = torch.empty_like(x)
    with warnings.catch_warnings(), _decoupled(module) as net:
        warnings.simplefilter("ignore")
        for i in range(x.shape[0]):
            out[i] = DeepLiftShap(net).attribute(x[i:i + 1], baselines=refs[i], target=t[i:i + 1])[0]
    return finish(out, inputs)


def gradient_shap(model, inputs: torch.Tensor, target: Target, *,
                  baselines: Sequence[str] | torch.Tensor = SHAP_BASELINES, samples: int = 32, noise: float = 0.0,
                  output: str = "logit", internal_batch_size: int = 32, sigma: float | None = None,
                  seed: int = 0) -> torch.Tensor:
    """GradientSHAP: ``samples`` draws of a reference, a point between it and the image (with Gaussian
    noise of standard deviation ``noise``, in [0, 1] pixel units, added to the image), the gradient
    there times the image's difference from the reference; averaged. ``internal_batch_size`` bounds
    the draws per forward pass."""
    from captum.attr import GradientShap

    check_positive("samples", samples)
    check_positive("internal_batch_size", internal_batch_size)
    if not noise >= 0:
        raise XaiError(f"noise must be a non-negative standard deviation, got {noise!r}")
    module, x, t = prepare(model, inputs, target)
    refs = _references(x, baselines, sigma, seed)
    out = torch.zeros_like(x, dtype=torch.float64)
    with fast_model(module, x) as fast:
        explainer = GradientShap(scorer(fast, output))
        for i in range(x.shape[0]):
            with seeded(seed, x.device):
                done = 0
                while done < samples:
                    k = min(internal_batch_size, samples - done)
                    attr = explainer.attribute(x[i:i + 1], baselines=refs[i], n_samples=k, stdevs=noise,
                                               target=t[i:i + 1])
                    out[i] += attr[0].double() * k
                    done += k
    return finish((out / samples).float(), inputs)
