"""What each operation of a traced network does to a changed rectangle, decided from its type and
the shapes of one clean pass: nothing else passes for safe.

A node gets a :class:`Rule` when its output at a position depends only on its inputs in a known
window around that position (convolutions and pools: :class:`~._rects.Window`) or at that position
alone (pointwise operations, concatenation along channels). Every other node gets a reason instead,
and is computed on full maps: that is always exact, so an operation nobody listed costs speed, never
correctness.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._rects import Window

# Modules whose output at a position is a function of their input at that position (in eval mode).
POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                     nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d)
POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub, torch.mul,
    torch.div, torch.neg, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, F.relu, F.relu6,
    F.hardtanh, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.sigmoid, F.leaky_relu, F.elu, F.mish, F.softplus,
}
POINTWISE_METHODS = {"add", "sub", "mul", "div", "neg", "relu", "sigmoid", "tanh", "clamp", "clamp_min",
                     "clamp_max", "contiguous"}
# In-place forms are rewritten out of place (see incremental.Network): the cached activations of the
# clean image must never change.
OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                operator.itruediv: operator.truediv}


@dataclass(frozen=True)
class Rule:
    kind: str  # "window", "pointwise" or "cat"
    window: Window | None = None
    op: str = ""  # for windows: "conv", "max" or "avg"
    pad_value: float = 0.0


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _same_total(size: int, k: int, s: int, d: int) -> int:
    """TF "same" padding in total along one axis (timm's ``Conv2dSame``; half of it, rounded down,
    goes before the map)."""
    return max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)


def _conv_window(m: nn.Module, size: tuple[int, int], out: tuple[int, int]) -> tuple[Window, tuple] | str:
    """The window of a convolution and its padding after the map, from how its type pads."""
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    if len(k) != 2:
        return f"{type(m).__name__} is not two-dimensional"
    if m.padding_mode != "zeros":
        return f"{type(m).__name__} pads with {m.padding_mode!r}, not zeros"
    same_type = _timm_conv2d_same()
    if type(m).forward is nn.Conv2d.forward:
        if m.padding == "same":  # torch puts the odd one after the map
            total = tuple(d[i] * (k[i] - 1) for i in range(2))
            pad, after = tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
        elif m.padding == "valid":
            pad = after = (0, 0)
        else:
            pad = after = _pair(m.padding)
    elif same_type is not None and type(m).forward is same_type.forward:
        total = tuple(_same_total(size[i], k[i], s[i], d[i]) for i in range(2))
        pad, after = tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    else:
        return f"{type(m).__name__} overrides Conv2d.forward"
    return Window(k, s, d, pad, out), after


def _pool_window(m: nn.Module, out: tuple[int, int]) -> tuple[Window, tuple] | str:
    if m.ceil_mode:
        return f"{type(m).__name__} rounds its output size up (ceil_mode)"
    pad = _pair(m.padding)
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            return "MaxPool2d returns indices"
        return Window(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.dilation), pad, out), pad
    if m.divisor_override is not None or (not m.count_include_pad and pad != (0, 0)):
        return "AvgPool2d divides by a count other than its window's"
    return Window(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), (1, 1), pad, out), pad


def _timm_conv2d_same():
    try:
        from timm.layers import Conv2dSame
    except ImportError:
        return None
    return Conv2dSame


def _spatial(v, like: torch.Size) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == like[0] and v.shape[2:] == like[2:]


def _broadcasts_pointwise(v) -> bool:
    """A constant operand that is the same at every position of the map (a scalar or ``[.., C, 1, 1]``)."""
    if not isinstance(v, torch.Tensor):
        return True
    return v.dim() == 0 or (v.shape[-1] == 1 and (v.dim() < 2 or v.shape[-2] == 1))


def rule(node: fx.Node, module: nn.Module | None, values: dict, dependent: set) -> Rule | str:
    """The node's rule, or why it has none. ``values`` are the clean pass's, ``dependent`` the nodes
    that depend on the image."""
    out = values[node]
    if not (isinstance(out, torch.Tensor) and out.dim() == 4):
        return "its output is not a batch of 2-D maps"
    args = [values[a] for a in node.all_input_nodes if a in dependent]
    if node.op == "call_module":
        if module._forward_hooks or module._forward_pre_hooks:
            return f"{type(module).__name__} has hooks"
        if not (len(node.all_input_nodes) == 1 and _spatial(args[0], args[0].shape) and not node.kwargs):
            return f"{type(module).__name__} is called with other than one map"
        size, o = tuple(args[0].shape[2:]), tuple(out.shape[2:])
        if isinstance(module, nn.Conv2d):
            w = _conv_window(module, size, o)
            return w if isinstance(w, str) else _checked(Rule("window", w[0], "conv"), w[1], size)
        if type(module) in (nn.MaxPool2d, nn.AvgPool2d):
            w = _pool_window(module, o)
            op = "max" if isinstance(module, nn.MaxPool2d) else "avg"
            fill = float("-inf") if op == "max" else 0.0
            return w if isinstance(w, str) else _checked(Rule("window", w[0], op, fill), w[1], size)
        if type(module) in POINTWISE_MODULES and (not module.training or type(module) is nn.Identity):
            return _pointwise(node, values, dependent, out)
        if type(module) is nn.BatchNorm2d and not module.training and module.running_var is not None:
            return _pointwise(node, values, dependent, out)
        return f"{type(module).__name__} has no rule"
    if node.op == "call_function":
        if node.target is torch.cat:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            parts = node.args[0]
            if dim in (1, -3) and all(isinstance(p, fx.Node) and p in dependent and _spatial(values[p], out.shape)
                                      for p in parts):
                return Rule("cat")
            return "it concatenates other than maps along channels"
        if node.target in POINTWISE_FUNCTIONS:
            return _pointwise(node, values, dependent, out)
        return f"{getattr(node.target, '__name__', node.target)} has no rule"
    if node.op == "call_method" and node.target in POINTWISE_METHODS:
        return _pointwise(node, values, dependent, out)
    return f"{node.op} {node.target} has no rule"


def _pointwise(node: fx.Node, values: dict, dependent: set, out: torch.Tensor) -> Rule | str:
    for a in node.all_input_nodes:
        v = values[a]
        if a in dependent and not _spatial(v, out.shape):
            return "an operand that depends on the image is not a map of the output's size"
        if a not in dependent and not _broadcasts_pointwise(v):
            return "a constant operand varies across the map"
    return Rule("pointwise")


def _checked(r: Rule, after: tuple[int, int], size: tuple[int, int]) -> Rule | str:
    """The output size the assumed padding implies must be the one the clean pass gave."""
    w = r.window
    for i in range(2):
        expected = (size[i] + w.pad[i] + after[i] - w.dilation[i] * (w.kernel[i] - 1) - 1) // w.stride[i] + 1
        if expected != w.out[i]:
            return "its output size does not follow from the padding the rule assumes"
    return r
