"""Layer layouts: which axes of a layer's output are channels and which are positions.

A layer's output may be a map ``[B, C, H, W]`` (convolutions), channels-last ``[B, H, W, C]`` (timm's
Swin stages; the MLPs and layer norms inside ConvNeXt and MaxViT blocks) or tokens ``[B, N, C]``: a few
prefix tokens (class, register, distillation) and then the patch tokens of an ``H x W`` grid. The shape
alone does not tell them apart: a Swin stage of 56x56 positions and 96 channels would read as 56
channels of a 56x96 map if taken as NCHW.

So the layout is traced, not guessed. One forward pass of a probe image follows the image's axes through
every torch operation the model runs: convolutions and 2-D pooling give NCHW; permutes and transposes
move the axes; a linear map or layer norm acts on the last axis; flattening a map's positions gives
tokens on that map's grid (the model's own patch grid, square or not); concatenating class tokens in
front adds prefix tokens; elementwise operations keep the layout of the operand they are shaped like.
Each module's output takes the layout of the tensor it returns. Where the trace loses the axes (a
partition into attention windows, an operation it does not follow), the layout is unknown, unless the
model declares it: timm names its stages in ``feature_info`` and their format in ``output_fmt``. Reading
an unknown layout as a map is refused with the layer's name and shape. The rules per operation live in
:mod:`xai.layout_trace`; this module turns them into each module's layout, once per model and input size.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayoutError
from .layout_trace import Axes, Tracer, tensors

NCHW, NHWC, TOKENS, FLAT, UNKNOWN = "NCHW", "NHWC", "tokens", "flat", "unknown"
SPATIAL = (NCHW, NHWC, TOKENS)


@dataclass(frozen=True)
class Layout:
    """How one layer's output is laid out, as traced at one input size.

    ``shape`` is the per-image shape (without the batch axis); ``grid`` the positions (rows, columns);
    ``prefix`` the tokens before the patch tokens; ``reason`` why an unknown layout is unknown.
    """

    kind: str
    shape: tuple[int, ...]
    grid: tuple[int, int] | None = None
    prefix: int = 0
    reason: str = ""

    @property
    def spatial(self) -> bool:
        return self.kind in SPATIAL

    @property
    def channels(self) -> int | None:
        if self.kind in (NCHW, FLAT):
            return self.shape[0]
        if self.kind in (NHWC, TOKENS):
            return self.shape[-1]
        return None

    def describe(self) -> str:
        """A short label for listings: ``NCHW``, ``NHWC``, ``tokens 1+14x10``, ``flat``, ``unknown``."""
        if self.kind == TOKENS:
            grid = f"{self.grid[0]}x{self.grid[1]}"
            return f"tokens {self.prefix}+{grid}" if self.prefix else f"tokens {grid}"
        return self.kind


def to_spatial(t: torch.Tensor, layout: Layout, layer: str = "?") -> torch.Tensor:
    """A layer's output (or its gradient) as a ``[B, C, H, W]`` map, read in the layer's ``layout``.

    Tokens lose their prefix tokens and go back on their grid; channels-last maps are permuted. A layer
    without positions, or whose layout could not be known, is refused with its name and shape.
    """
    shape = tuple(t.shape)
    if layout.kind == NCHW and t.dim() == 4:
        return t
    if layout.kind == NHWC and t.dim() == 4:
        return t.permute(0, 3, 1, 2)
    if layout.kind == TOKENS and t.dim() == 3:
        rows, cols = layout.grid
        if t.shape[1] != layout.prefix + rows * cols:
            raise LayoutError(layer, shape, f"{t.shape[1]} tokens do not fit {layout.describe()}")
        return t[:, layout.prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], rows, cols)
    if layout.kind == FLAT:
        raise LayoutError(layer, shape, "it has no spatial positions")
    if layout.kind == UNKNOWN:
        raise LayoutError(layer, shape, layout.reason)
    raise LayoutError(layer, shape, f"it was traced as {layout.describe()} with shape {list(layout.shape)}")


# -- layouts of every module ----------------------------------------------------------------------------------

@dataclass
class Trace:
    """Every module's output layout (``name``) and input layout (``name:in``), and their execution order."""

    layouts: dict[str, Layout]
    order: list[str]


_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], Trace]]" = weakref.WeakKeyDictionary()


def _declared(model: nn.Module) -> dict[str, str]:
    """Stages and their format as the model declares them (timm: ``feature_info``, ``output_fmt``)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        return {}
    fmt = getattr(model, "output_fmt", None)
    fmt = str(getattr(fmt, "value", fmt) or NCHW)
    return {f["module"]: fmt for f in info if isinstance(f, dict) and "module" in f and fmt in (NCHW, NHWC)}


def _layout(axes: Axes | None, shape: tuple[int, ...], lost: str | None, declared: str | None,
            tokens_in: Axes | None) -> Layout:
    """A module's traced output as a :class:`Layout` (``shape`` without the batch axis)."""
    if len(shape) == 1:
        return Layout(FLAT, shape)
    if axes is not None and len(shape) == 3 and axes.order in ("NCHW", "NHWC"):
        grid = shape[1:] if axes.order == "NCHW" else shape[:2]
        return Layout(axes.order, shape, tuple(grid))
    if axes is not None and len(shape) == 2 and axes.order == "NLC" and shape[0] == axes.prefix + axes.grid[0] * \
            axes.grid[1]:
        return Layout(TOKENS, shape, axes.grid, axes.prefix)
    if declared is not None and len(shape) == 3:
        grid = shape[1:] if declared == NCHW else shape[:2]
        return Layout(declared, shape, tuple(grid), reason="as the model declares its stages")
    if tokens_in is not None and len(shape) == 2 and shape[0] != shape[1]:
        # tokens in, as many tokens out: a module that maps each token (attention, an MLP), whose own
        # reshapes the trace does not follow
        return Layout(TOKENS, shape, tokens_in.grid, tokens_in.prefix)
    how = f" after a {lost} operation" if lost else ""
    return Layout(UNKNOWN, shape, reason=f"its axes could not be followed from the input image{how}, so "
                                         f"which are channels and which are positions is unknown")


_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_PRE_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


@contextmanager
def _hooks_set_aside(model: nn.Module) -> Iterator[None]:
    """Run the probe pass without the hooks that callers have on the model (a caller's hook must not see
    the probe, and one that stops a truncated forward would stop it), keeping only the model's own
    input pre-hooks (its normalisation), which shape what the network receives."""
    saved = []
    for name, module in model.named_modules():
        for attr in _HOOKS + (_PRE_HOOKS if name else ()):
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, OrderedDict())
    try:
        yield
    finally:
        for module, attr, hooks in saved:
            setattr(module, attr, hooks)


def trace(model: nn.Module, input_shape: Sequence[int]) -> Trace:
    """The layouts of every module for inputs of ``input_shape`` (C, H, W): one traced forward pass of
    a probe image, remembered per model and input size."""
    key = tuple(int(s) for s in input_shape)
    cached = _TRACES.get(model, {}).get(key)
    if cached is not None:
        return cached
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    probe = torch.rand((1, *key), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    outputs: dict[str, tuple] = {}
    inputs: dict[str, tuple] = {}
    order: list[str] = []
    tracer = Tracer(probe)

    def before(name: str):
        def hook(_m, args):
            t = next(iter(tensors(args)), None)
            if name not in inputs and t is not None:
                inputs[name] = (tracer.of(t), tuple(t.shape[1:]), tracer.lost.get(id(t)))
        return hook

    def after(name: str):
        def hook(_m, _args, out):
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if name not in outputs and isinstance(t, torch.Tensor):
                outputs[name] = (tracer.of(t), tuple(t.shape[1:]), tracer.lost.get(id(t)))
                order.append(name)
        return hook

    with _hooks_set_aside(model):  # the hooks registered here go when the set-aside ones are put back
        for name, module in model.named_modules():
            if name:
                module.register_forward_pre_hook(before(name))
                module.register_forward_hook(after(name))
        with torch.no_grad(), tracer:
            model(probe)
    declared = _declared(model)
    layouts: dict[str, Layout] = {}
    for name in order:
        axes, shape, lost = outputs[name]
        ins = inputs.get(name)
        tokens_in = ins[0] if ins and ins[0] is not None and ins[0].order == "NLC" and ins[1] == shape else None
        layouts[name] = _layout(axes, shape, lost, declared.get(name), tokens_in)
    for name, (axes, shape, lost) in inputs.items():
        layouts[f"{name}:in"] = _layout(axes, shape, lost, None, None)
    result = Trace(layouts, order)
    _TRACES.setdefault(model, {})[key] = result
    return result


def share_trace(source: nn.Module, copy: nn.Module, prefix: str = "") -> None:
    """Let ``copy`` use ``source``'s traces instead of tracing again: a copy computing the same function
    under the same names (a batch-norm-folded one), or with ``prefix`` a wrapper that runs ``source`` as
    its submodule ``prefix[:-1]`` on the same inputs (whose own output layout is then left out)."""
    if source not in _TRACES:
        return
    shared = {}
    for key, t in _TRACES[source].items():
        shared[key] = Trace({prefix + n: lay for n, lay in t.layouts.items()}, [prefix + n for n in t.order])
    _TRACES[copy] = shared


def layout_of(model: nn.Module, name: str, input_shape: Sequence[int]) -> Layout:
    """The layout of layer ``name`` (``name:in``: of its input) for inputs of ``input_shape``."""
    from .layers import resolve

    resolve(model, name.removesuffix(":in"))  # an unknown name gets close-match suggestions
    layouts = trace(model, input_shape).layouts
    if name not in layouts:
        return Layout(UNKNOWN, (), reason="it did not run in a forward pass (or returned no tensor)")
    return layouts[name]
