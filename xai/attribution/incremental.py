"""Incremental occlusion (Krypton: Nakandala, Kumar & Papakonstantinou, SIGMOD 2019).

An occluding window changes a network's activations only inside its receptive field: a small
rectangle of each early feature map, growing with every convolution until it covers the map. So the
occluded images need not be run in full. The network is traced once (``torch.fx``); the clean image
runs through it, and every activation is kept; then, for a batch of windows, each operation computes
only its changed rectangle (plus the halo its window reads), from the patches of its inputs laid over
their cached maps. Where a rectangle would cover more than ``switch`` of its map, or where an
operation has no rule (global pooling, attention, a linear head, anything :mod:`._rules` does not
know), the patches are written into copies of the cached maps and the rest runs in full.

Exactness: outside its rectangle every activation equals the cached one exactly (the same function
of the same inputs); inside, it is computed by the same kernels on a crop, so the scores differ from
full recomputation only by float rounding (tests/tolerance.py, rule 3). A network that cannot be
traced runs in full, and :attr:`Network.reason` says why; so does the first operation of each batch
computed in full (:attr:`Batch.full_from`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import XaiError
from . import _rects
from ._rects import Crop, Rects
from ._rules import Rule, rule
from ._trace import Root, Tracer, attr, depends_on_image, first_line, out_of_place, rewrite_out_of_place

# Past this share of a map, the rest of the network runs in full: the crops and patch writes of a
# rectangle that large cost about what they save. On efficientnet_lite0 at 224 px (windows of 28 px),
# CPU time per image was flat within noise from 0.35 to 0.7 (2.3-2.6 s), 10 % more at 0.2 and at 0.9,
# four times more at 0 (everything in full).
SWITCH = 0.5


class IncrementalUnsupported(XaiError):
    """Incremental occlusion was asked for but cannot run on this network (``reason`` says why)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"incremental occlusion does not apply: {reason}")


@dataclass
class Batch:
    """The plan for one batch of windows: which nodes run on rectangles (``rects``), which in full,
    and how the patches move between them. It depends only on where the windows are, so one plan
    serves every image of a call."""

    rects: dict[fx.Node, Rects]
    crops: dict[tuple[fx.Node, fx.Node], Crop]
    scatter: dict[fx.Node, torch.Tensor]
    full: list[fx.Node]
    full_from: tuple[str, str] | None  # the first node computed in full, and why
    flops: int = 0  # matmul and convolution FLOPs of this batch's pass, as planned
    full_flops: int = 0  # ... and of the same images run in full


class Clean:
    """The clean image's activations (one image), and each one's rows ``[H*W + 1, C]`` with a padding
    row, which crops gather from: built once per image and fill value, read by every batch."""

    def __init__(self, values: dict[fx.Node, object]):
        self.values = values
        self._rows: dict[tuple[fx.Node, float], torch.Tensor] = {}

    def rows(self, a: fx.Node, fill: float) -> torch.Tensor:
        key = (a, fill)
        if key not in self._rows:
            v = self.values[a]
            rows = v.permute(0, 2, 3, 1).reshape(-1, v.shape[1])
            self._rows[key] = torch.cat([rows, rows.new_full((1, v.shape[1]), fill)])
        return self._rows[key]


@dataclass
class Network:
    """A network traced for incremental passes; ``reason`` is set (and nothing else) when it cannot be."""

    module: nn.Module
    reason: str | None = None
    graph: fx.GraphModule | None = None
    nodes: list[fx.Node] = field(default_factory=list)
    rules: dict[fx.Node, Rule | str] = field(default_factory=dict)
    dependent: set[fx.Node] = field(default_factory=set)
    shapes: dict[fx.Node, torch.Size] = field(default_factory=dict)
    channels_last: bool = False
    modules: dict[str, nn.Module] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    dead_after: list[list[fx.Node]] = field(default_factory=list)  # per node: the values no later node reads

    @classmethod
    def trace(cls, module: nn.Module, probe: torch.Tensor) -> Network:
        """Trace ``module`` and check the trace against it on ``probe`` (one image suffices)."""
        net = cls(module, device=probe.device)
        if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
            net.reason = "global module hooks are registered"
            return net
        root = Root(module)
        try:
            graph = Tracer().trace(root)
        except Exception as e:  # any failure of the symbolic trace: the network then runs in full
            net.reason = f"torch.fx cannot trace it ({first_line(e)})"
            return net
        net.graph = fx.GraphModule(root, graph)
        net.modules = dict(net.graph.named_modules())
        net.reason = rewrite_out_of_place(graph, net.modules)
        if net.reason is not None:
            return net
        net.nodes = list(graph.nodes)
        net.dependent = depends_on_image(net.nodes)
        probe = probe[:1]
        with torch.no_grad():
            ref = module(probe)  # as built, in place where it is
            with out_of_place(module):
                try:
                    values, out = net.clean(probe)
                except Exception as e:  # the trace runs, but not as the module does
                    net.reason = f"the traced graph fails on the image ({first_line(e)})"
                    return net
        if not (isinstance(out, torch.Tensor) and out.shape == ref.shape
                and torch.allclose(out, ref, rtol=0, atol=1e-4 * float(ref.abs().max()) + 1e-6)):
            # the same operations in the same order: only a trace that lost something can differ
            net.reason = "the traced graph computes something other than the module"
            return net
        last = {a: i for i, n in enumerate(net.nodes) for a in n.all_input_nodes}
        net.dead_after = [[] for _ in net.nodes]
        for a, i in last.items():
            if i + 1 < len(net.nodes):
                net.dead_after[i + 1].append(a)
        modules = net.modules
        for n in net.nodes:
            if n in net.dependent and n.op not in ("placeholder", "output"):
                net.rules[n] = rule(n, modules.get(n.target) if n.op == "call_module" else None, values,
                                    net.dependent)
            if isinstance(values.get(n), torch.Tensor):
                net.shapes[n] = values[n].shape
        net.channels_last = any(isinstance(m, nn.Conv2d) and not m.weight.is_contiguous()
                                and m.weight.is_contiguous(memory_format=torch.channels_last)
                                for m in module.modules())
        return net

    # -- passes -----------------------------------------------------------------------------------

    def clean(self, x: torch.Tensor) -> tuple[dict[fx.Node, object], object]:
        """Every node's value on ``x``, and the output."""
        values: dict[fx.Node, object] = {}
        for n in self.nodes:
            if n.op == "placeholder":
                values[n] = x
            elif n.op == "output":
                return values, fx.node.map_arg(n.args[0], values.__getitem__)
            else:
                values[n] = self._call(n, values.__getitem__)
        raise XaiError("the traced graph has no output")

    def _call(self, n: fx.Node, get: Callable[[fx.Node], object]):
        args, kwargs = fx.node.map_arg(n.args, get), fx.node.map_arg(n.kwargs, get)
        if n.op == "call_module":
            return self.modules[n.target](*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "get_attr":
            return attr(self.graph, n.target)
        raise XaiError(f"unexpected node {n.op} in the traced graph")

    def plan(self, windows: Rects, switch: float = SWITCH) -> Batch:
        """Propagate the windows' rectangles through the graph: a node runs on rectangles while it has
        a rule, all its image-dependent inputs do, and its rectangle covers at most ``switch`` of its map."""
        rects: dict[fx.Node, Rects] = {}
        crops: dict[tuple[fx.Node, fx.Node], Crop] = {}
        full: list[fx.Node] = []
        full_from = None
        flops = full_flops = 0
        for n in self.nodes:
            if n not in self.dependent or n.op == "output":
                continue
            if n.op == "placeholder":
                rects[n] = windows
                continue
            r = self.rules.get(n)
            ins = [a for a in n.all_input_nodes if a in self.dependent]
            why = r if isinstance(r, str) else None
            if isinstance(r, Rule) and all(a in rects for a in ins):
                if r.kind == "window":
                    out, reads = r.window.through(rects[ins[0]])
                    wanted = {ins[0]: reads}
                else:
                    out = _rects.union([rects[a] for a in ins])
                    wanted = {a: out for a in ins}
                if out.fraction <= switch:
                    rects[n] = out
                    for a, target in wanted.items():
                        crops[(n, a)] = _rects.crop(rects[a], target).to(self.device)
                    f = self._flops(n, windows.n, out)
                    flops, full_flops = flops + f[0], full_flops + f[1]
                    continue
                why = f"its changed region would cover {out.fraction:.0%} of the map (switch at {switch:.0%})"
            elif why is None:
                why = "an input is already computed in full"
            if full_from is None:
                full_from = (_name(n), why)
            full.append(n)
            f = self._flops(n, windows.n, None)
            flops, full_flops = flops + f[0], full_flops + f[1]
        users_in_full = {a for n in full + [self.nodes[-1]] for a in n.all_input_nodes if a in rects}
        scatter = {a: _rects.scatter_rows(rects[a]).to(self.device) for a in users_in_full}
        return Batch(rects, crops, scatter, full, full_from, flops, full_flops)

    def run(self, batch: Batch, clean: Clean, patch: torch.Tensor):
        """The output for a batch of occluded images: ``patch`` holds their input rectangles
        (``batch.rects`` of the input), ``clean`` the clean pass of the one image they occlude."""
        patches: dict[fx.Node, torch.Tensor] = {}
        values: dict[fx.Node, object] = {}
        cached = clean.values

        def read(n: fx.Node, a: fx.Node, fill: float = 0.0) -> torch.Tensor:
            return self._read(batch.crops[(n, a)], lambda: clean.rows(a, fill), patches[a])

        def whole(a: fx.Node):
            if a not in self.dependent:
                return cached[a]
            if a not in values:  # a node on rectangles read by one in full: its patches written into copies
                values[a] = self._materialize(cached[a], patches[a], batch.scatter[a])
            return values[a]

        full = set(batch.full)
        for i, n in enumerate(self.nodes):
            for a in self.dead_after[i]:  # freed as in eager mode: held, they would defeat the allocator's reuse
                patches.pop(a, None)
                values.pop(a, None)
            if n not in self.dependent:
                continue
            if n.op == "placeholder":
                patches[n] = patch
            elif n.op == "output":
                return fx.node.map_arg(n.args[0], whole)
            elif n in full:
                values[n] = self._call(n, whole)
            else:
                r: Rule = self.rules[n]
                if r.kind == "window":
                    (a,) = [a for a in n.all_input_nodes if a in self.dependent]
                    patches[n] = _window(r, self.modules[n.target], read(n, a, r.pad_value))
                else:
                    patches[n] = self._call(n, lambda a, n=n: read(n, a) if a in self.dependent else cached[a])
        raise XaiError("the traced graph has no output")

    # -- moving values between rectangles and maps ---------------------------------------------------

    def _read(self, c: Crop, source: Callable[[], torch.Tensor], patch: torch.Tensor) -> torch.Tensor:
        if c.whole_patch:
            return patch
        channels = patch.shape[1]
        out = source().index_select(0, c.cached_rows)
        if c.into.numel():
            out.index_copy_(0, c.into, _rows(patch).index_select(0, c.from_patch))
        out = out.view(*c.shape, channels).permute(0, 3, 1, 2)
        return out if self.channels_last else out.contiguous()

    def _materialize(self, cached: torch.Tensor, patch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        n, channels = patch.shape[:2]
        full = cached.expand(n, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        full.permute(0, 2, 3, 1).view(-1, channels).index_copy_(0, rows, _rows(patch))
        return full if self.channels_last else full.contiguous()

    def _flops(self, n: fx.Node, images: int, out: Rects | None) -> tuple[int, int]:
        """``(planned, in full)`` FLOPs of a convolution or linear node for ``images`` images."""
        if n.op != "call_module":
            return 0, 0
        m = self.modules[n.target]
        shape = self.shapes.get(n)
        if isinstance(m, nn.Conv2d) and shape is not None:
            per_output = 2 * m.weight[0].numel()
            whole = images * shape[1] * shape[2] * shape[3] * per_output
            return (whole if out is None else images * shape[1] * out.h * out.w * per_output), whole
        if isinstance(m, nn.Linear) and shape is not None:
            whole = images * 2 * m.weight.numel() * (shape.numel() // shape[-1])
            return whole, whole
        return 0, 0


def _rows(patch: torch.Tensor) -> torch.Tensor:
    """A patch ``[N, C, h, w]`` as rows ``[N*h*w, C]`` (a view when it is channels last)."""
    return patch.permute(0, 2, 3, 1).reshape(-1, patch.shape[1])


def _window(r: Rule, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A window operation on a crop that already holds its padding."""
    if r.op == "conv":
        return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
    if r.op == "max":
        return F.max_pool2d(x, m.kernel_size, m.stride, 0, m.dilation)
    return F.avg_pool2d(x, m.kernel_size, m.stride, 0)


def _name(n: fx.Node) -> str:
    """The module path of a node (without the tracing root's prefix), or its operation."""
    if n.op == "call_module":
        return n.target.removeprefix("net.")
    return str(n.name)
