"""Receptive fields from a network's geometry: which input pixels a unit at a layer position can see.

The geometry is read off one forward pass, not from a table of architectures: every operation the
pass runs is intercepted (a :class:`torch.overrides.TorchFunctionMode`), and each tensor carries, per
spatial axis, the receptive field of its first position in input pixels (``size``), the step between
neighbouring positions (``jump``) and the input coordinate of that first field's centre (``start``),
pixel centres being the integers ``0 .. H-1``. The rules are the usual ones (Araujo et al. 2019,
"Computing receptive fields of convolutional neural networks"):

* a convolution or pooling of kernel ``k``, stride ``s``, dilation ``d`` and padding ``p``:
  ``size += (d (k - 1)) jump``, ``start += (d (k - 1) / 2 - p) jump``, ``jump *= s``;
* an explicit pad (TensorFlow "same" padding, as timm's ``Conv2dSame`` does it): ``start -= p_before jump``;
* an operation of several tensors (a residual add, a concatenation): the union of their fields;
* a global pooling or a spatial mean: the whole input (``size`` infinite), so a squeeze-and-excitation
  gate makes every later field global, as it is.

Everything else (norms, activations, dropout) keeps the field. An operation that changes the spatial
size by a rule not listed here (an interpolation, a slice), or turns a map into something else (a ViT's
tokens, which attention then mixes), leaves the field unknown, and asking for it raises an error rather
than guessing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import XaiError
from ..layers import resolve
from .objectives import INPUT


@dataclass(frozen=True)
class Axis:
    size: float  # receptive field of one position, input pixels (inf: the whole input)
    jump: float  # input pixels between neighbouring positions
    start: float  # input coordinate of the centre of position 0's field

    def union(self, other: Axis) -> Axis:
        if self.jump != other.jump:
            raise XaiError(f"two branches of strides {self.jump:g} and {other.jump:g} meet: their fields do not align")
        if math.isinf(self.size) or math.isinf(other.size):
            return Axis(math.inf, self.jump, self.start)
        lo = min(self.start - (self.size - 1) / 2, other.start - (other.size - 1) / 2)
        hi = max(self.start + (self.size - 1) / 2, other.start + (other.size - 1) / 2)
        return Axis(hi - lo + 1, self.jump, (lo + hi) / 2)

    def window(self, k: int, stride: int, dilation: int, pad_before: float) -> Axis:
        span = dilation * (k - 1)
        return Axis(self.size + span * self.jump, self.jump * stride, self.start + (span / 2 - pad_before) * self.jump)


Geometry = tuple[Axis, Axis]  # (rows, columns)
IDENTITY: Geometry = (Axis(1, 1, 0), Axis(1, 1, 0))


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of every position of one layer, for one input size."""

    layer: str
    rows: Axis
    cols: Axis
    shape: tuple[int, int]  # the layer's map (h, w)
    input_shape: tuple[int, int]  # (H, W)

    @property
    def size(self) -> tuple[float, float]:
        return self.rows.size, self.cols.size

    @property
    def jump(self) -> tuple[float, float]:
        return self.rows.jump, self.cols.jump

    def centre(self, i: int, j: int) -> tuple[float, float]:
        return self.rows.start + i * self.rows.jump, self.cols.start + j * self.cols.jump

    def box(self, i: int, j: int, clip: bool = True) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` input pixels (inclusive) that position ``(i, j)`` sees; clipped to
        the image by default (the padding a field reaches beyond it holds no pixels)."""
        h, w = self.input_shape
        out = []
        (cy, cx) = self.centre(i, j)
        for centre, size, limit in ((cy, self.rows.size, h), (cx, self.cols.size, w)):
            if math.isinf(size):
                lo, hi = 0.0, float(limit - 1)
            else:
                lo, hi = centre - (size - 1) / 2, centre + (size - 1) / 2
            lo, hi = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
            out.append((max(0, lo), min(limit - 1, hi)) if clip else (lo, hi))
        (top, bottom), (left, right) = out
        return top, left, bottom, right


_WINDOWS = {"conv1d", "conv2d", "conv3d", "max_pool2d", "avg_pool2d", "_max_pool2d", "max_pool2d_with_indices",
            "lp_pool2d"}
_GLOBAL = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}
_SPATIAL_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "logsumexp"}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[-1]))


def _arg(args, kwargs, i: int, name: str, default):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


class _Tracer(TorchFunctionMode):
    """Carries a :data:`Geometry` along every tensor of one forward pass (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.geo: dict[int, Geometry | None] = {}
        self._alive: list[torch.Tensor] = []  # keeps ids unique while the pass runs

    def mark(self, t: torch.Tensor, g: Geometry | None) -> None:
        self.geo[id(t)] = g
        self._alive.append(t)

    def of(self, t) -> Geometry | None:
        return self.geo.get(id(t), None) if isinstance(t, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in _flat(args) + _flat(list(kwargs.values())) if id(a) in self.geo]
        if not tensors:
            return out
        name = getattr(func, "__name__", "")
        first = tensors[0]
        g = self.geo[id(first)]
        if g is not None:
            g = self._rule(name, func, first, g, tensors, args, kwargs, out)
        for o in _flat([out]):
            if isinstance(o, torch.Tensor):
                self.mark(o, g)
        return out

    def _rule(self, name, func, x, g, tensors, args, kwargs, out) -> Geometry | None:
        if name in _GLOBAL:
            return (Axis(math.inf, g[0].jump, 0), Axis(math.inf, g[1].jump, 0))
        if name in _WINDOWS:
            if name.startswith("conv"):
                weight = args[1] if len(args) > 1 else kwargs["weight"]
                k = tuple(weight.shape[2:])
                stride = _pair(_arg(args, kwargs, 3, "stride", 1))
                padding = _arg(args, kwargs, 4, "padding", 0)
                dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
            else:
                k = _pair(_arg(args, kwargs, 1, "kernel_size", None))
                stride_arg = _arg(args, kwargs, 2, "stride", None)
                stride = k if stride_arg in (None, [], ()) else _pair(stride_arg)
                padding = _arg(args, kwargs, 3, "padding", 0)
                dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
            if padding == "valid":
                pad = (0, 0)
            elif padding == "same":  # PyTorch's "same" puts the smaller half before
                pad = tuple((d * (kk - 1)) // 2 for d, kk in zip(dilation, k))
            else:
                pad = _pair(padding)
            return tuple(a.window(kk, s, d, p) for a, kk, s, d, p in zip(g, _pair(k), stride, dilation, pad))
        if name == "pad":
            p = list(_arg(args, kwargs, 1, "pad", ()))
            left = p[0] if len(p) >= 2 else 0
            top = p[2] if len(p) >= 4 else 0
            return (Axis(g[0].size, g[0].jump, g[0].start - top * g[0].jump),
                    Axis(g[1].size, g[1].jump, g[1].start - left * g[1].jump))
        if name in _SPATIAL_REDUCTIONS and x.dim() == 4:
            dims = _arg(args, kwargs, 1, "dim", None)
            dims = {d % 4 for d in ((dims,) if isinstance(dims, int) else (dims or (0, 1, 2, 3)))}
            if dims & {2, 3}:
                return (Axis(math.inf, g[0].jump, 0), Axis(math.inf, g[1].jump, 0))
        for t in tensors[1:]:
            other = self.geo[id(t)]
            if other is None:
                return None
            g = (g[0].union(other[0]), g[1].union(other[1]))
        # An unlisted operation that changes the map's size (an interpolation, a crop) or lays the positions
        # out otherwise (tokens, whose attention then mixes them) has a rule we do not know.
        res = [o for o in _flat([out]) if isinstance(o, torch.Tensor)]
        same = bool(res) and res[0].dim() == 4 and tuple(res[0].shape[2:]) == tuple(x.shape[2:])
        if res and x.dim() == 4 and not same and not all(math.isinf(a.size) for a in g):
            return None
        return g


def _flat(items) -> list:
    out = []
    for a in items:
        if isinstance(a, (list, tuple)):
            out.extend(_flat(a))
        else:
            out.append(a)
    return out


def receptive_fields(model: nn.Module, layers: list[str],
                     input_size: tuple[int, int, int]) -> dict[str, ReceptiveField]:
    """The receptive field of each of ``layers`` (a name ending in ``:in`` means that module's input),
    traced in one forward pass of a ``[1, *input_size]`` zero image."""
    tracer = _Tracer()
    found: dict[str, tuple[Geometry | None, tuple[int, int]]] = {}
    handles = []

    def record(name: str, t):
        if name in found or not isinstance(t, torch.Tensor):
            return
        if t.dim() != 4:
            raise XaiError(f"layer {name} gives a tensor of shape {tuple(t.shape)}: no spatial map to give a field for")
        found[name] = (tracer.of(t), tuple(t.shape[2:]))

    for name in layers:
        module = resolve(model, name.removesuffix(INPUT))
        if name.endswith(INPUT):
            handles.append(module.register_forward_pre_hook(lambda _m, a, n=name: record(n, a[0])))
        else:
            handles.append(module.register_forward_hook(
                lambda _m, _a, o, n=name: record(n, o[0] if isinstance(o, (tuple, list)) else o)))
    p = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=p.device if p is not None else "cpu")
    try:
        with torch.no_grad(), tracer:
            tracer.mark(x, IDENTITY)
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name in layers:
        if name not in found:
            raise XaiError(f"layer {name} did not run in the forward pass")
        g, shape = found[name]
        if g is None:
            raise XaiError(f"cannot compute the receptive field of {name}: an operation before it changes the "
                           "map's size by a rule the tracer does not know (an interpolation or a crop)")
        out[name] = ReceptiveField(name, g[0], g[1], shape, tuple(input_size[1:]))
    return out


def receptive_field(model: nn.Module, layer: str, input_size: tuple[int, int, int]) -> ReceptiveField:
    return receptive_fields(model, [layer], input_size)[layer]


def measured_support(model: nn.Module, layer: str, input_size: tuple[int, int, int], position: tuple[int, int],
                     samples: int = 4, seed: int = 0) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)``: the bounding box of the input pixels whose gradient on the sum of
    ``layer``'s channels at ``position`` is non-zero, over ``samples`` uniform-noise images (the
    empirical counterpart of :meth:`ReceptiveField.box`; a unit whose path is cut by an inactive ReLU
    can see less on one image, so the union is taken)."""
    from .render import activations

    gen = torch.Generator().manual_seed(seed)
    p = next(model.parameters(), None)
    x = torch.rand(samples, *input_size, generator=gen).to(p.device if p is not None else "cpu").requires_grad_(True)
    with torch.enable_grad():
        a = activations(model, x, [layer]).layer(layer)
        g, = torch.autograd.grad(a[:, :, position[0], position[1]].sum(), x)
    support = g.abs().sum((0, 1)) > 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    if not rows.numel():
        raise XaiError(f"no input pixel reaches {layer} at {position}")
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def crop(images: torch.Tensor, boxes: torch.Tensor, size: int, fill: float = 0.5) -> torch.Tensor:
    """``[K, C, size, size]``: each ``images[k]`` cut to ``boxes[k]`` = ``(top, left, bottom, right)``
    (inclusive, may reach beyond the image: the outside is ``fill``), resized to ``size``."""
    out = []
    for img, (top, left, bottom, right) in zip(images, boxes.tolist()):
        c, h, w = img.shape
        pad = max(0, -top, -left, bottom - h + 1, right - w + 1)
        padded = F.pad(img[None], [pad] * 4, value=fill)[0] if pad else img
        patch = padded[:, top + pad:bottom + pad + 1, left + pad:right + pad + 1]
        out.append(F.interpolate(patch[None], size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)[0])
    return torch.stack(out).clamp(0, 1) if out else images.new_zeros(0, images.shape[1], size, size)
