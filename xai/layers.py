"""Dotted layer names, activation capture in one forward pass, truncated forwards, and fast copies.

Layer names are exactly those of ``model.named_modules()``, so every name maps back to the model
(``model.get_submodule(name)``). Truncation stops the forward pass as soon as every requested layer has
produced its output: feature visualization of an early layer never pays for the deep ones. Each layer's
layout (NCHW, NHWC, tokens) is traced by :mod:`xai.layouts`; :func:`to_spatial` reads an output in it.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .errors import UnknownNameError, XaiError
from .layouts import FLAT, NCHW, NHWC, TOKENS, UNKNOWN, Layout, layout_of, share_trace, to_spatial, trace

__all__ = ["FLAT", "NCHW", "NHWC", "TOKENS", "UNKNOWN", "Layout", "layout_of", "to_spatial", "trace", "capture",
           "layer_names", "layer_shapes", "layer_table", "resolve", "fast_layout", "fast_model", "fold_batchnorm"]


class _Truncated(Exception):
    """Raised inside a hook to stop the forward pass once all requested layers have run."""


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def resolve(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name gets an error listing close matches."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    raise UnknownNameError("layer", name, [n for n in modules if n],
                           hint="`xai layers MODEL` lists them")


def capture(
    model: nn.Module,
    x: torch.Tensor,
    names: Sequence[str],
    *,
    truncate: bool = True,
    spatial: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Run ``model(x)`` once and return ``({name: activation}, output)``.

    With ``truncate`` the pass stops after the last requested layer has run and ``output`` is None.
    Activations stay in the autograd graph, so objectives on them can be differentiated w.r.t. ``x``.
    With ``spatial`` every activation is returned as ``[B, C, H, W]``, read in its traced layout (see
    :func:`to_spatial`); a layer whose layout cannot be known is refused.
    """
    if not names:
        raise XaiError("capture needs at least one layer name")
    wanted = list(dict.fromkeys(names))
    modules = {n: resolve(model, n) for n in wanted}
    acts: dict[str, torch.Tensor] = {}
    layouts = trace(model, x.shape[1:]).layouts if spatial else {}

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if name in acts:  # a module run twice: keep its first output
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            acts[name] = to_spatial(out, layouts.get(name, Layout(UNKNOWN, ())), name) if spatial else out
            if truncate and len(acts) == len(wanted):
                raise _Truncated
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    output = None
    try:
        output = model(x)
    except _Truncated:
        output = None
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in wanted if n not in acts]
    if missing:
        raise XaiError(f"layers {missing} did not run in the forward pass")
    return {n: acts[n] for n in wanted}, output


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, tuple[int, ...], Layout]]:
    """Each module that returns a tensor, in execution order: ``(name, output shape, layout)`` for one
    input of ``input_shape`` (C, H, W)."""
    t = trace(model, input_shape)
    return [(n, t.layouts[n].shape, t.layouts[n]) for n in t.order]


def layer_shapes(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """Each named module's output shape for one input of ``input_shape`` (C, H, W), in execution order."""
    return [(n, shape) for n, shape, _ in layer_table(model, input_shape)]


def _wants_nhwc(module: nn.Module) -> bool:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    depthwise = any(c.groups > 1 and c.groups == c.in_channels for c in convs)
    return depthwise and convs[0].weight.device.type == "cpu"


@contextmanager
def fast_layout(module: nn.Module) -> Iterator[None]:
    """Run a block of passes over many images (masked, occluded, noisy, path or feature-visualization
    batches) in NHWC layout, where that is measured to be faster: on CPU, for networks with depthwise
    convolutions.

    oneDNN's NHWC depthwise convolutions are much faster on CPU: on this 2-core Xeon, efficientnet_lite0
    forwards 32 images at 41 img/s in NCHW and 72 img/s in NHWC, and a forward + input-gradient pass of
    16 images runs at 28 vs 34 img/s, with the same float32 arithmetic; MobileNetV3 trains 1.75x faster.
    Dense 3x3 networks gain nothing or lose (ResNet-18 trained at 256 vs 317 img/s), so they are left
    alone, as is every network on a GPU. The module is put back in its own layout afterwards, so callers
    never see the change; inputs need no conversion, since an NHWC convolution returns NHWC whatever it
    is given.
    """
    first = next((m.weight for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if not _wants_nhwc(module) or first.is_contiguous(memory_format=torch.channels_last):
        yield
        return
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


@contextmanager
def fast_model(module: nn.Module, probe: torch.Tensor, keep: Sequence[str] = ()) -> Iterator[nn.Module]:
    """The module to run a long series of passes with: a copy with its batch norms folded into the
    convolutions before them (:func:`fold_batchnorm`), in NHWC layout where :func:`fast_layout` would
    use it; the module itself (in that layout) when nothing can be folded. ``probe`` is one input of
    the size the passes will use; ``keep`` names layers the caller reads, whose values must not change.

    A folded network computes the same function with two elementwise passes fewer per norm, forward
    and backward: on this CPU efficientnet_lite0 forwards 8 images in NHWC 1.8x faster (86 -> 47 ms),
    a forward + input-gradient pass is 1.5x faster (191 -> 124 ms), and feature visualization steps
    1.45x faster. The copy costs a deep copy and two single-image passes (about 0.1 s for lite0), so
    it is meant for loops, not for one pass; the caller's model is never modified.
    """
    import copy

    try:
        folded = fold_batchnorm(module, probe[:1].detach(), keep)
    except (TypeError, copy.Error):  # a module that cannot be deep-copied keeps its norms
        folded = None
    if folded is None:
        with fast_layout(module):
            yield module
        return
    if _wants_nhwc(folded):
        folded.to(memory_format=torch.channels_last)
    yield folded


class _FoldedNorm(nn.Module):
    """What is left of a batch norm folded into the convolution before it: the norm's own activation
    and dropout, when it carries them (timm's ``BatchNormAct2d``), under their own names."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        for name in ("drop", "act"):
            child = getattr(norm, name, None)
            if isinstance(child, nn.Module):
                self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


def _conv_norm_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv, norm)`` names where, in one forward pass of ``probe``, an eval-mode ``BatchNorm2d``
    received exactly the tensor a ``Conv2d`` produced, and no other module received it."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept: their ids stay unique
    consumers: dict[int, list[str]] = {}
    alive: list[torch.Tensor] = []
    modules = dict(model.named_modules())

    def after(name):
        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor) and id(out) not in produced:
                produced[id(out)] = (name, out)
        return hook

    def before(name):
        def hook(_m, args):
            for a in args:
                if isinstance(a, torch.Tensor):
                    consumers.setdefault(id(a), []).append(name)
                    alive.append(a)
        return hook

    handles = []
    try:
        for n, m in modules.items():
            if n and isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(after(n)))
            # every module that could take a convolution's output: leaves, norms and containers alike
            if n:
                handles.append(m.register_forward_pre_hook(before(n)))
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for tid, (conv, _) in produced.items():
        users = [u for u in consumers.get(tid, []) if not u.startswith(conv + ".")]
        norm = modules[users[0]] if len(users) == 1 else None
        # eval mode with running statistics: a norm without them normalises by each batch's own
        if (type(norm).__name__ in ("BatchNorm2d", "BatchNormAct2d") and not norm.training
                and norm.running_var is not None):
            pairs.append((conv, users[0]))
    return pairs


def fold_batchnorm(model: nn.Module, probe: torch.Tensor, keep: Sequence[str] = ()) -> nn.Module | None:
    """A copy of ``model`` with each eval-mode batch norm that only reads a convolution's output
    folded into that convolution's weights and bias, or None when there is nothing to fold or the
    copy's output differs from the model's on ``probe``. Layer names are unchanged; pairs that
    involve a name in ``keep`` (a layer the caller reads) are left alone."""
    import copy

    keep = {k.split(":")[0] for k in keep}
    pairs = [(c, n) for c, n in _conv_norm_pairs(model, probe) if c not in keep and n not in keep]
    if not pairs:
        return None
    folded = copy.deepcopy(model)
    share_trace(model, folded)  # the same function under the same names: the same layouts
    with torch.no_grad():
        for conv_name, norm_name in pairs:
            conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale
            if norm.bias is not None:
                shift = shift + norm.bias
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift, requires_grad=conv.weight.requires_grad)
            parent_name, _, child = norm_name.rpartition(".")
            parent = folded.get_submodule(parent_name) if parent_name else folded
            setattr(parent, child, _FoldedNorm(norm))
        a, b = model(probe), folded(probe)
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max()) + 1e-6):
        return None
    return folded
