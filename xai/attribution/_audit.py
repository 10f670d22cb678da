"""What a forward pass computes outside the modules a propagation method has rules for.

LRP (zennit) and DeepLIFT (captum) replace the backward pass of the modules they know. Everything else
is differentiated by autograd, which is right only for operations whose gradient *is* the method's
rule: reshapes, padding, concatenation always; linear maps for DeepLIFT (its multipliers of a linear map
are its gradient). A residual add by plain gradient copies LRP's relevance into both branches, a gate
or attention product has no rule in either method, and a functional activation bypasses the module
hooks that would have applied the rule. On such a model the methods would silently return something
else, so :func:`audited` runs the forward pass under a function mode that records every operation on
input-dependent tensors that runs outside a ruled module, and the method refuses when one is found.

Operations are recognised by the name of the torch function (``torch.add``, ``Tensor.__add__`` and
``x += y`` all report ``add``-type names), so one table covers functional, method and operator forms.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

ACTIVATION, PRODUCT, SUM, LINEAR, REDUCTION, MAX = "activation", "product", "sum", "linear", "reduction", "max"

# Operations by kind. Products and sums count only when two operands depend on the input: scaling by a
# constant or adding one (a normalisation, a bias) is affine and has the gradient either method uses.
_KINDS: dict[str, str] = {
    **dict.fromkeys(("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "sigmoid",
                     "sigmoid_", "tanh", "tanh_", "softmax", "log_softmax", "softmin", "hardswish", "hardswish_",
                     "hardsigmoid", "elu", "elu_", "leaky_relu", "leaky_relu_", "softplus", "mish", "selu", "celu",
                     "prelu", "rrelu", "logsigmoid", "threshold", "glu", "clamp", "clamp_", "clip", "clip_", "exp",
                     "log", "sqrt", "rsqrt", "pow", "__pow__", "abs", "sign", "erf"), ACTIVATION),
    **dict.fromkeys(("mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "div", "div_", "__truediv__",
                     "__rtruediv__", "__itruediv__", "true_divide", "matmul", "__matmul__", "__rmatmul__", "bmm",
                     "mm", "einsum", "baddbmm", "scaled_dot_product_attention"), PRODUCT),
    **dict.fromkeys(("add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__",
                     "__isub__", "subtract"), SUM),
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "linear",
                     "bilinear", "batch_norm", "layer_norm", "group_norm", "instance_norm"), LINEAR),
    **dict.fromkeys(("mean", "sum", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                     "adaptive_avg_pool2d", "adaptive_avg_pool3d"), REDUCTION),
    **dict.fromkeys(("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                     "max", "amax", "min", "amin", "max_pool2d_with_indices"), MAX),
}
# Of these, the ones that combine two input-dependent operands.
_BINARY = (PRODUCT, SUM)


def model_label(model) -> str:
    """How a refusal names the model: the entry's name, or the module's class."""
    name = getattr(model, "name", None)
    return name if isinstance(name, str) else type(getattr(model, "model", model)).__name__


@dataclass(frozen=True)
class Op:
    kind: str
    name: str


class _Audit(TorchFunctionMode):
    def __init__(self, flags: frozenset[str]):
        super().__init__()
        self.flags = flags
        self.depth = 0  # > 0 while a ruled module runs
        self.found: list[Op] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth == 0:
            name = getattr(func, "__name__", "")
            kind = _KINDS.get(name)
            if kind in self.flags:
                graph = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
                if len(graph) >= (2 if kind in _BINARY else 1):
                    self.found.append(Op(kind, name.strip("_")))
        return func(*args, **kwargs)


@dataclass
class Audit:
    """What :func:`audited` saw: operations outside ruled modules, and how often each ruled module ran."""

    found: list[Op]
    calls: Counter

    def summary(self, limit: int = 4) -> str:
        counts = Counter(f"{op.name} ({op.kind})" for op in self.found)
        shown = [f"{name} x{n}" if n > 1 else name for name, n in counts.most_common(limit)]
        more = len(counts) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


@contextmanager
def audited(ruled: Iterable[nn.Module], flags: Iterable[str]) -> Iterator[Audit]:
    """Record, during the block, the flagged operations on input-dependent tensors that run outside the
    ``ruled`` modules (and their children), and how many times each ruled module is called."""
    mode = _Audit(frozenset(flags))
    result = Audit(mode.found, Counter())
    handles = []

    def enter(module, _args):
        mode.depth += 1
        result.calls[id(module)] += 1

    def leave(_module, _args, _out):
        mode.depth -= 1

    for m in dict.fromkeys(ruled):  # a module listed twice is still entered once per call
        handles.append(m.register_forward_pre_hook(enter, prepend=True))
        handles.append(m.register_forward_hook(leave, always_call=True))
    try:
        with mode:
            yield result
    finally:
        for h in handles:
            h.remove()
