"""Guided Backprop (Springenberg et al. 2015) and Deconvolution (Zeiler & Fergus 2014).

Both change how the backward pass crosses each rectifier:

* plain gradient:   g_in = g_out * 1[lo < x < hi]
* guided backprop:  g_in = max(g_out, 0) * 1[lo < x < hi]
* deconvolution:    g_in = max(g_out, 0)

with ``(lo, hi) = (0, inf)`` for ReLU and ``(0, 6)`` for ReLU6 (EfficientNet-Lite, MobileNet).

Why not captum: its ``GuidedBackprop`` and ``Deconvolution`` hook ``nn.ReLU`` modules only, so on a
network built from ``nn.ReLU6`` (or calling ``F.relu`` directly) they return the plain gradient without
a word. Here every activation the forward pass *actually calls* is intercepted at the function level
(a ``TorchFunctionMode``), whether it comes from a module (``nn.ReLU``, ``nn.ReLU6``, timm's
``BatchNormAct2d``) or a functional call (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.hardtanh(x, 0, 6)``).

Both rules are defined for rectifiers only. Smooth or non-monotone activations (GELU, SiLU, Hardswish,
ELU, Mish, ...) have no "positive part" to keep, so the methods refuse a model that uses one
(:class:`~xai.errors.NotApplicableError` with the activation's name) rather than quietly degrade to
something else. Sigmoid-type gates (squeeze-excitation, attention softmax) are multiplicative weights
rather than rectifiers and keep their plain gradient, as in the original definition on networks
without them. ``x.clamp(min=0)`` written by hand is not recognised as a ReLU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import NotApplicableError, XaiError
from ._common import Target, finish, model_label, prepare

_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}
_HARDTANH = {F.hardtanh, F.hardtanh_}
_RELU6 = {F.relu6}
# Activations for which neither rule is defined.
_UNDEFINED = {
    F.gelu: "GELU", F.silu: "SiLU", F.hardswish: "Hardswish", F.mish: "Mish", F.elu: "ELU",
    F.selu: "SELU", F.celu: "CELU", F.leaky_relu: "LeakyReLU", F.softplus: "Softplus",
    F.prelu: "PReLU", F.rrelu: "RReLU", F.logsigmoid: "LogSigmoid", F.tanhshrink: "Tanhshrink",
    torch.tanh: "Tanh", torch.Tensor.tanh: "Tanh", F.tanh: "Tanh",
}
# Their names, which are also the names of the torch.nn modules that call them.
UNDEFINED_ACTIVATIONS = frozenset(_UNDEFINED.values())


class _Rectifier(torch.autograd.Function):
    """``clamp(x, lo, hi)`` whose backward follows the guided or the deconvolution rule."""

    @staticmethod
    def forward(ctx, x, lo, hi, rule):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi, ctx.rule = lo, hi, rule
        return x.clamp(min=lo, max=None if math.isinf(hi) else hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        g = g.clamp_min(0)
        if ctx.rule == "guided":
            g = g * ((x > ctx.lo) & (x < ctx.hi)).to(g.dtype)
        return g, None, None, None


class _ModifiedRectifiers(TorchFunctionMode):
    """Reroutes every rectifier call of a forward pass through :class:`_Rectifier`."""

    def __init__(self, rule: str, method: str, model: str):
        super().__init__()
        self.rule, self.method, self.model = rule, method, model
        self.seen: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bounds = None
        if func in _RELU or func in _RELU_INPLACE:
            bounds, kind = (0.0, math.inf), "ReLU"
        elif func in _RELU6:
            bounds, kind = (0.0, 6.0), "ReLU6"
        elif func in _HARDTANH:
            lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
            hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
            if lo != 0:
                raise self._undefined(f"Hardtanh({lo}, {hi})")
            bounds, kind = (0.0, float(hi)), "ReLU6" if hi == 6 else f"Hardtanh(0, {hi})"
        elif func in _UNDEFINED:
            raise self._undefined(_UNDEFINED[func])
        if bounds is None:
            return func(*args, **kwargs)
        self.seen[kind] = self.seen.get(kind, 0) + 1
        # The in-place flag is dropped on purpose: the replacement needs the pre-activation kept.
        return _Rectifier.apply(args[0], bounds[0], bounds[1], self.rule)

    def _undefined(self, activation: str) -> NotApplicableError:
        return NotApplicableError(self.method, self.model,
                                  f"it uses {activation} activations, and the method is defined for rectifiers "
                                  f"(ReLU, ReLU6) only; it would otherwise be the plain gradient, which is not "
                                  f"what it claims to be", activation=activation)


def modified_gradient(model, inputs: torch.Tensor, target: Target, rule: str) -> tuple[torch.Tensor, dict]:
    """Input gradient of the target logit with the ``rule`` ("guided" or "deconv") at every rectifier.

    Returns the attributions and how many rectifier calls of each kind were modified.
    """
    method = {"guided": "guided_backprop", "deconv": "deconvolution"}.get(rule)
    if method is None:
        raise XaiError(f"unknown rule {rule!r}; choose guided or deconv")
    module, x, t = prepare(model, inputs, target)
    x = x.clone().requires_grad_(True)
    mode = _ModifiedRectifiers(rule, method, model_label(model))
    with torch.enable_grad(), mode:
        out = module(x)
    if not mode.seen:
        raise NotApplicableError(method, model_label(model), "it has no ReLU or ReLU6 activation, so the method "
                                                             "would be the plain gradient")
    score = out.gather(1, t[:, None]).sum()
    (g,) = torch.autograd.grad(score, x)
    return finish(g, inputs), dict(mode.seen)


def guided_backprop(model, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """Guided Backprop: only positive gradient passes through active rectifier units."""
    return modified_gradient(model, inputs, target, "guided")[0]


def deconvolution(model, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """Deconvolution (deconvnet): rectifiers pass the positive part of the gradient, whatever their input."""
    return modified_gradient(model, inputs, target, "deconv")[0]
