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
an unknown layout as a map is refused with the layer's name and shape.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import LayoutError

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


# -- the trace ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Axes:
    """What each axis of a traced tensor is: ``order`` spells them (N batch, C channels, H and W rows and
    columns, L tokens); tokens also carry their grid and prefix."""

    order: str  # NCHW, NHWC, NLC or NCL
    grid: tuple[int, int] | None = None
    prefix: int = 0


_MAP_OPS = {"conv2d", "conv_transpose2d", "batch_norm", "instance_norm", "group_norm", "max_pool2d",
            "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "lp_pool2d",
            "fractional_max_pool2d", "interpolate", "upsample", "pixel_shuffle", "pixel_unshuffle",
            "local_response_norm"}
_AXIS_OPS = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
_RESHAPES = {"reshape", "view", "unflatten", "view_as", "reshape_as", "flatten"}
_CATS = {"cat", "concat", "concatenate"}
_MATMULS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm"}
# Operations that can move axes while keeping the shape: never inherit a layout through them.
_OPAQUE = {"einsum", "__get__", "as_strided", "t", "adjoint", "unfold", "fold", "rot90"}
_CHANNEL_AXIS = {"NCHW": 1, "NHWC": 3, "NLC": 2, "NCL": 1}


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _dims(args: tuple, kwargs: dict, key: str) -> list[int]:
    dims = kwargs.get(key, args[1:] if len(args) > 1 else ())
    if len(dims) == 1 and isinstance(dims[0], (list, tuple, torch.Size)):
        dims = dims[0]
    return [int(d) for d in dims]


class _Tracer(TorchFunctionMode):
    """Follows the axes of the probe image through one forward pass (see the module docstring)."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.batch = image.shape[0]
        self.axes: dict[int, _Axes] = {id(image): _Axes("NCHW")}
        self.derived = {id(image)}  # tensors computed from the image (parameters never are)
        self.lost: dict[int, str] = {}  # the operation after which a tensor's axes were no longer known
        self.image = image

    def _watch(self, t: torch.Tensor) -> None:
        """Forget a tensor's id when it is freed, before CPython can give the id to another tensor;
        keeping every tensor alive instead would hold all of a large model's activations at once."""
        if id(t) not in self.derived:
            self.derived.add(id(t))
            weakref.finalize(t, self._forget, id(t))

    def _forget(self, key: int) -> None:
        self.derived.discard(key)
        self.axes.pop(key, None)
        self.lost.pop(key, None)

    def of(self, t: torch.Tensor) -> _Axes | None:
        return self.axes.get(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in _tensors((args, kwargs)) if id(t) in self.derived]
        if not inputs:
            return out
        outs = list(_tensors(out))
        for o in outs:
            self._watch(o)
        if isinstance(out, torch.Tensor):
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.startswith("__"):
                name = name[:-1]  # in-place variants move axes as their originals do
            try:
                axes = self._rule(name, args, kwargs, out, inputs)
            except (TypeError, ValueError, IndexError):  # arguments of a form the rules do not parse
                axes = None
            if axes is None:
                self.axes.pop(id(out), None)
                self.lost[id(out)] = name or type(func).__name__
            else:
                self.axes[id(out)] = axes
        else:
            for o in outs:  # several outputs (split, chunk, unbind): their axes are not followed
                self.axes.pop(id(o), None)
                self.lost[id(o)] = getattr(func, "__name__", "")
        return out

    def _rule(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor, inputs: list) -> _Axes | None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        src = self.of(first) if first is not None else None
        if name in _MAP_OPS and out.dim() == 4:
            return _Axes("NCHW") if out.shape[0] == self.batch else None
        if name == "linear":
            if src is not None and src.order in ("NHWC", "NLC"):
                return src
            return _Axes("NHWC") if src is None and out.dim() == 4 and out.shape[0] == self.batch else None
        if name in ("layer_norm", "rms_norm"):
            shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
            over = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
            if src is not None and (src.order in ("NHWC", "NLC") or (src.order == "NCHW" and over == 3)):
                return src
            return _Axes("NHWC") if src is None and out.dim() == 4 and over == 1 and out.shape[0] == self.batch \
                else None
        if name in _AXIS_OPS:
            return self._moved(name, args, kwargs, src, out)
        if name in _RESHAPES:
            return self._reshaped(first, src, out)
        if name in _CATS:
            return self._concatenated(args, kwargs, out)
        if name == "pad":
            return src if src is not None and src.order in ("NCHW", "NHWC") and out.dim() == 4 else None
        if name == "__getitem__":
            return self._indexed(first, src, args[1], out)
        if name in _OPAQUE:
            return None
        if name in _MATMULS:
            same = [t for t in inputs if t.shape == out.shape]
            return self.of(same[0]) if len(inputs) == 1 and same else None
        # Elementwise and shape-keeping operations (activations, adds, scales, dropout, copies): the
        # layout of the operands shaped like the output, when they agree.
        known = {self.of(t) for t in inputs if t.shape == out.shape and self.of(t) is not None}
        return known.pop() if len(known) == 1 else None

    @staticmethod
    def _moved(name: str, args: tuple, kwargs: dict, src: _Axes | None, out: torch.Tensor) -> _Axes | None:
        if src is None:
            return None
        n = len(src.order)
        if name == "permute":
            perm = [d % n for d in _dims(args, kwargs, "dims")]
        elif name in ("movedim", "moveaxis"):
            a = args[1] if len(args) > 1 else kwargs["source"]
            b = args[2] if len(args) > 2 else kwargs["destination"]
            a, b = ([a], [b]) if isinstance(a, int) else (list(a), list(b))
            perm = [d for d in range(n) if d not in [x % n for x in a]]
            for s, d in sorted(zip([x % n for x in a], [y % n for y in b]), key=lambda p: p[1]):
                perm.insert(d, s)
        else:
            d0 = int(args[1] if len(args) > 1 else kwargs["dim0"]) % n
            d1 = int(args[2] if len(args) > 2 else kwargs["dim1"]) % n
            perm = list(range(n))
            perm[d0], perm[d1] = perm[d1], perm[d0]
        order = "".join(src.order[i] for i in perm)
        return _Axes(order, src.grid, src.prefix) if order in _CHANNEL_AXIS else None

    @staticmethod
    def _reshaped(first: torch.Tensor | None, src: _Axes | None, out: torch.Tensor) -> _Axes | None:
        if first is None or src is None:
            return None
        a, b = tuple(first.shape), tuple(out.shape)
        if a == b:
            return src
        if src.order == "NCHW" and b == (a[0], a[1], a[2] * a[3]):
            return _Axes("NCL", (a[2], a[3]))
        if src.order == "NHWC" and b == (a[0], a[1] * a[2], a[3]):
            return _Axes("NLC", (a[1], a[2]))
        if src.order == "NLC" and src.prefix == 0 and b == (a[0], *src.grid, a[2]):
            return _Axes("NHWC")
        if src.order == "NCL" and src.prefix == 0 and b == (a[0], a[1], *src.grid):
            return _Axes("NCHW")
        return None

    def _concatenated(self, args: tuple, kwargs: dict, out: torch.Tensor) -> _Axes | None:
        parts = list(args[0] if args else kwargs["tensors"])
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        axes = [self.of(p) for p in parts]
        last = axes[-1]
        if last is not None and last.order == "NLC" and dim == 1 and all(a is None for a in axes[:-1]):
            # class / register / distillation tokens put in front of the patch tokens
            return _Axes("NLC", last.grid, last.prefix + sum(p.shape[1] for p in parts[:-1]))
        if last is not None and all(a == last for a in axes) and dim == _CHANNEL_AXIS[last.order]:
            return last  # channels concatenated (DenseNet, Inception branches)
        return None

    @staticmethod
    def _indexed(first: torch.Tensor, src: _Axes | None, index, out: torch.Tensor) -> _Axes | None:
        if src is None:
            return None
        if out.shape == first.shape:
            return src
        if src.order == "NLC" and isinstance(index, tuple) and len(index) >= 2 and index[0] == slice(None) \
                and isinstance(index[1], slice) and index[1].stop is None and index[1].step in (None, 1) \
                and all(i in (slice(None), Ellipsis) for i in index[2:]):
            k = int(index[1].start or 0)
            return _Axes("NLC", src.grid, src.prefix - k) if 0 <= k <= src.prefix else None
        return None


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


def _layout(axes: _Axes | None, shape: tuple[int, ...], lost: str | None, declared: str | None,
            tokens_in: _Axes | None) -> Layout:
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
    tracer = _Tracer(probe)

    def before(name: str):
        def hook(_m, args):
            t = next(iter(_tensors(args)), None)
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


def stage_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Layers of interest from the model's stage structure, shallow to deep: the last module (other than a
    pooling) at each resolution of its feature maps, looking into plain containers (``nn.Sequential``)
    whose children work at three resolutions or more. Positions of 1x1 (after a global pool) are left out.

    On torchvision's ResNet this gives ``relu, layer1, ..., layer4``; on VGG the last ReLU before each
    pooling and the last pooling; on DenseNet the dense blocks and the final norm.
    """
    t = trace(model, input_shape)
    ran = set(t.order)
    position = {n: i for i, n in enumerate(t.order)}
    pooling = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
               nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)

    def grid(name: str) -> tuple[int, int] | None:
        lay = t.layouts.get(name)
        return lay.grid if lay is not None and lay.spatial and lay.grid[0] * lay.grid[1] > 1 else None

    def units(prefix: str, module: nn.Module) -> list[str]:
        kids = sorted((f"{prefix}{n}" for n, _ in module.named_children() if f"{prefix}{n}" in ran),
                      key=position.get)
        out = []
        for name in kids:
            child = model.get_submodule(name)
            inner = {grid(f"{name}.{n}") for n, _ in child.named_children()} - {None}
            # a feature extractor (VGG's ``features``) works at many resolutions; a downsampling unit
            # (DenseNet's transition: conv then pool) at two, and stays one unit
            out += units(f"{name}.", child) if isinstance(child, nn.Sequential) and len(inner) > 2 else [name]
        return out

    runs: list[list[str]] = []
    for name in units("", model):
        g = grid(name)
        if g is None:
            continue
        if runs and grid(runs[-1][-1]) == g:
            runs[-1].append(name)
        else:
            runs.append([name])
    picks: list[str] = []
    for run in runs:
        kept = [n for n in run if not isinstance(model.get_submodule(n), pooling)]
        if kept:
            picks.append(kept[-1])
        elif not picks or _area(grid(run[0])) < _area(grid(picks[-1])):
            picks.append(run[0])  # a pooling that resamples to a fixed size larger than the map is skipped
    return picks


def _area(grid: tuple[int, int]) -> int:
    return grid[0] * grid[1]
