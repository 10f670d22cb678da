"""The op-by-op trace behind :mod:`xai.layouts`: which axis of each tensor of one forward pass is the
batch, the channels, the rows and columns, or the tokens, followed from the input image.

A ``TorchFunctionMode`` sees every torch operation the model runs, on every tensor computed from the
image (parameters never are), and applies a rule per operation; a tensor whose axes no rule can tell is
marked lost, with the operation that lost them. Rules never guess from a shape alone where an operation
could have moved axes (``einsum``, ``as_strided``, ...).
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Axes:
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
CHANNEL_AXIS = {"NCHW": 1, "NHWC": 3, "NLC": 2, "NCL": 1}


def tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors(o)


def _dims(args: tuple, kwargs: dict, key: str) -> list[int]:
    dims = kwargs.get(key, args[1:] if len(args) > 1 else ())
    if len(dims) == 1 and isinstance(dims[0], (list, tuple, torch.Size)):
        dims = dims[0]
    return [int(d) for d in dims]


class Tracer(TorchFunctionMode):
    """Follows the axes of the probe image through one forward pass (see the module docstring)."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.batch = image.shape[0]
        self.axes: dict[int, Axes] = {id(image): Axes("NCHW")}
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

    def of(self, t: torch.Tensor) -> Axes | None:
        return self.axes.get(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tensors((args, kwargs)) if id(t) in self.derived]
        if not inputs:
            return out
        outs = list(tensors(out))
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

    def _rule(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor, inputs: list) -> Axes | None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        src = self.of(first) if first is not None else None
        if name in _MAP_OPS and out.dim() == 4:
            return Axes("NCHW") if out.shape[0] == self.batch else None
        if name == "linear":
            if src is not None and src.order in ("NHWC", "NLC"):
                return src
            return Axes("NHWC") if src is None and out.dim() == 4 and out.shape[0] == self.batch else None
        if name in ("layer_norm", "rms_norm"):
            shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
            over = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
            if src is not None and (src.order in ("NHWC", "NLC") or (src.order == "NCHW" and over == 3)):
                return src
            return Axes("NHWC") if src is None and out.dim() == 4 and over == 1 and out.shape[0] == self.batch \
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
    def _moved(name: str, args: tuple, kwargs: dict, src: Axes | None, out: torch.Tensor) -> Axes | None:
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
        return Axes(order, src.grid, src.prefix) if order in CHANNEL_AXIS else None

    @staticmethod
    def _reshaped(first: torch.Tensor | None, src: Axes | None, out: torch.Tensor) -> Axes | None:
        if first is None or src is None:
            return None
        a, b = tuple(first.shape), tuple(out.shape)
        if a == b:
            return src
        if src.order == "NCHW" and b == (a[0], a[1], a[2] * a[3]):
            return Axes("NCL", (a[2], a[3]))
        if src.order == "NHWC" and b == (a[0], a[1] * a[2], a[3]):
            return Axes("NLC", (a[1], a[2]))
        if src.order == "NLC" and src.prefix == 0 and b == (a[0], *src.grid, a[2]):
            return Axes("NHWC")
        if src.order == "NCL" and src.prefix == 0 and b == (a[0], a[1], *src.grid):
            return Axes("NCHW")
        return None

    def _concatenated(self, args: tuple, kwargs: dict, out: torch.Tensor) -> Axes | None:
        parts = list(args[0] if args else kwargs["tensors"])
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        axes = [self.of(p) for p in parts]
        last = axes[-1]
        if last is not None and last.order == "NLC" and dim == 1 and all(a is None for a in axes[:-1]):
            # class / register / distillation tokens put in front of the patch tokens
            return Axes("NLC", last.grid, last.prefix + sum(p.shape[1] for p in parts[:-1]))
        if last is not None and all(a == last for a in axes) and dim == CHANNEL_AXIS[last.order]:
            return last  # channels concatenated (DenseNet, Inception branches)
        return None

    @staticmethod
    def _indexed(first: torch.Tensor, src: Axes | None, index, out: torch.Tensor) -> Axes | None:
        if src is None:
            return None
        if out.shape == first.shape:
            return src
        if src.order == "NLC" and isinstance(index, tuple) and len(index) >= 2 and index[0] == slice(None) \
                and isinstance(index[1], slice) and index[1].stop is None and index[1].step in (None, 1) \
                and all(i in (slice(None), Ellipsis) for i in index[2:]):
            k = int(index[1].start or 0)
            return Axes("NLC", src.grid, src.prefix - k) if 0 <= k <= src.prefix else None
        return None
