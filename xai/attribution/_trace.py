"""Tracing a network for incremental passes: ``torch.fx`` with its forward hooks and timm's leaves, and
in-place operations rewritten out of place where that computes the same (the cached activations of the
clean image must never be overwritten)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import fx, nn

from ._rules import OUT_OF_PLACE


class Root(nn.Module):
    """Traced instead of the network itself, so that the network's own forward hooks (our models'
    input normalization) are traced with it: ``fx`` calls a root's ``forward`` without them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


class Tracer(fx.Tracer):
    """Convolutions stay whole (timm's "same" convolutions compute their padding from the input's
    size, which a symbolic trace cannot), as do the modules timm marks as not traceable."""

    def __init__(self):
        leaves, functions = (), ()
        try:
            from timm.layers import get_notrace_functions, get_notrace_modules

            leaves, functions = tuple(get_notrace_modules()), tuple(get_notrace_functions())
        except ImportError:
            pass
        super().__init__(autowrap_functions=tuple(f for f in functions if callable(f)))
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, *self._leaves)) or super().is_leaf_module(m, qualname)


@contextmanager
def out_of_place(module: nn.Module) -> Iterator[None]:
    """Modules built with ``inplace=True`` (torchvision's ReLUs) run out of place for the duration, so
    that no operation overwrites a cached activation; put back afterwards."""
    changed = [m for m in module.modules() if getattr(m, "inplace", None) is True]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


# Operations whose output may share memory with their input: an in-place operation on such an output
# also changes the input, which other operations may read.
_VIEWS = {"view", "reshape", "permute", "transpose", "flatten", "unflatten", "squeeze", "unsqueeze", "expand",
          "narrow", "select", "t", "contiguous", "split", "chunk", "unbind", "__getitem__", "view_as", "as_strided"}


def rewrite_out_of_place(graph: fx.Graph, modules: dict[str, nn.Module]) -> str | None:
    """Rewrite in-place operations out of place (modules are switched by :func:`out_of_place`), or say
    why that would change what the network computes: an in-place operation on a value that another
    operation also reads (or on a view of one) changes that reading in eager mode, not out of place."""
    for n in graph.nodes:
        inplace = False
        if n.op == "call_function" and n.target in OUT_OF_PLACE:
            n.target, inplace = OUT_OF_PLACE[n.target], True
        elif n.op == "call_method" and n.target.endswith("_") and hasattr(torch.Tensor, n.target[:-1]):
            n.target, inplace = n.target[:-1], True
        elif n.op == "call_module" and getattr(modules.get(n.target), "inplace", None) is True:
            inplace = True
        if n.kwargs.get("inplace") is True:
            n.kwargs, inplace = {**n.kwargs, "inplace": False}, True
        first = n.args[0] if n.args else None
        if inplace and isinstance(first, fx.Node):
            shared = len(first.users) > 1 or (first.op in ("call_method", "call_function")
                                              and getattr(first.target, "__name__", first.target) in _VIEWS)
            if shared:
                return f"{n.name} works in place on a value that other operations also read"
    return None


def first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def depends_on_image(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes whose value depends on the image (a tensor's device or dtype does not)."""
    dep: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder":
            dep.add(n)
        elif n.op == "call_function" and n.target is getattr and n.args[1] in ("device", "dtype"):
            continue
        elif any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


def attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
