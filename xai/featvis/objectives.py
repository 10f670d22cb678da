"""What to maximise. An objective maps a batch's activations to one value per image.

Per-image values are what make batching work: ``channel("blocks.3", [0, 1, ..., 15])`` asks image
``i`` to excite channel ``i``, so 16 channels are rendered by one optimization of 16 images. Every
unit argument takes either one index (the same unit for every image) or one index per image.

Objectives compose with ``+``, ``-`` and ``*`` (by a number, by a ``[N]`` tensor of per-image
weights, or by another objective), e.g. ``class_logit(c) - 0.5 * channel(l, k)``. Per-image weights
also let one batch mix objectives: ``mask * deepdream(a) + (1 - mask) * deepdream(b)``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XaiError
from ..layers import FLAT, Layout, resolve, to_spatial

# The model's output (logits), as a pseudo-layer name no real module can have.
OUTPUT = ":output"
# ``"<module>:in"`` reads a module's input instead of its output (e.g. an activation's pre-activation).
INPUT = ":in"
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardtanh, nn.Mish)


def pre_activation(model: nn.Module, layer: str) -> str:
    """What to maximise for ``layer``: its pre-activation when the layer is, or ends with, an activation
    function (``"<activation module>:in"``), else the layer itself. Lucid visualizes pre-ReLU tensors for
    the same reasons: a unit that is zero on the start image has no gradient, and a capped one
    (ReLU6) stops giving any once it saturates."""
    module = resolve(model, layer)
    if isinstance(module, ACTIVATIONS):
        return layer + INPUT
    children = list(module.named_children())
    if children and isinstance(children[-1][1], ACTIVATIONS):
        return f"{layer}.{children[-1][0]}{INPUT}"
    return layer

Units = int | Sequence[int] | torch.Tensor


class Activations:
    """One forward pass's activations, read by objectives: ``layer(name)`` as ``[B, C, H, W]``, ``output()``.

    ``layouts`` gives each captured layer's traced layout (:mod:`xai.layouts`), so ViT tokens and
    channels-last maps are read as maps, and a layer whose layout cannot be known is refused."""

    def __init__(self, acts: dict[str, torch.Tensor], output: torch.Tensor | None,
                 layouts: dict[str, Layout] | None = None):
        self.acts, self._output, self.layouts = acts, output, dict(layouts or {})
        first = output if output is not None else next(iter(acts.values()))
        self.batch = first.shape[0]

    def layer(self, name: str) -> torch.Tensor:
        """The layer's output as a map, in its layout; an output without positions (``[B, C]``) is 1x1."""
        if name not in self.acts:
            raise XaiError(f"layer {name!r} was not captured; the objective did not declare it")
        a = self.acts[name]
        layout = self.layouts.get(name)
        if a.dim() == 2 and (layout is None or layout.kind == FLAT):
            return a[:, :, None, None]
        if layout is None:
            raise XaiError(f"layer {name!r} was captured without its layout")
        return to_spatial(a, layout, name)

    def output(self) -> torch.Tensor:
        if self._output is None:
            raise XaiError("the model output was not computed; the objective did not declare it")
        return self._output


class Objective:
    """A differentiable ``Activations -> [B]`` map that knows which layers it reads."""

    def __init__(self, fn: Callable[[Activations], torch.Tensor], layers: Sequence[str], name: str):
        self.fn, self.layers, self.name = fn, tuple(dict.fromkeys(layers)), name

    @property
    def needs_output(self) -> bool:
        return OUTPUT in self.layers

    def __call__(self, acts: Activations) -> torch.Tensor:
        v = self.fn(acts)
        if v.dim() != 1 or v.shape[0] != acts.batch:
            raise XaiError(f"objective {self.name} gave shape {tuple(v.shape)}, expected one value per image")
        return v

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # -- arithmetic ----------------------------------------------------------------------------
    @staticmethod
    def _lift(other, name: str) -> Objective:
        if isinstance(other, Objective):
            return other
        if isinstance(other, (int, float)):
            c = float(other)
            return Objective(lambda a: torch.full((a.batch,), c, device=_device(a)), (), repr(c))
        if isinstance(other, torch.Tensor):
            t = other.detach().float().flatten() if other.dim() else other.detach().float()

            def weights(a: Activations) -> torch.Tensor:
                if t.numel() == 1:
                    return t.expand(a.batch).to(_device(a))
                if t.shape[0] != a.batch:
                    raise XaiError(f"per-image weights of length {t.shape[0]} for a batch of {a.batch}")
                return t.to(_device(a))
            return Objective(weights, (), "weights")
        raise XaiError(f"cannot combine an objective with {type(other).__name__} ({name})")

    def _combine(self, other, op, sym: str, swap: bool = False) -> Objective:
        other = self._lift(other, sym)
        a, b = (other, self) if swap else (self, other)
        return Objective(lambda acts: op(a(acts), b(acts)), a.layers + b.layers, f"({a.name} {sym} {b.name})")

    def __add__(self, other):
        return self._combine(other, torch.add, "+")

    def __radd__(self, other):
        return self._combine(other, torch.add, "+", swap=True)

    def __sub__(self, other):
        return self._combine(other, torch.sub, "-")

    def __rsub__(self, other):
        return self._combine(other, torch.sub, "-", swap=True)

    def __mul__(self, other):
        return self._combine(other, torch.mul, "*")

    def __rmul__(self, other):
        return self._combine(other, torch.mul, "*", swap=True)

    def __neg__(self):
        return Objective(lambda acts: -self(acts), self.layers, f"-{self.name}")


def _device(a: Activations) -> torch.device:
    return (a._output if a._output is not None else next(iter(a.acts.values()))).device


def _units(units: Units, batch: int, size: int, what: str, device: torch.device) -> torch.Tensor:
    """One index per image, each checked against ``size``."""
    idx = torch.as_tensor(units, dtype=torch.long).flatten()
    if idx.numel() == 1:
        idx = idx.expand(batch)
    if idx.numel() != batch:
        raise XaiError(f"{idx.numel()} {what} indices for a batch of {batch} images (give one, or one per image)")
    bad = idx[(idx < 0) | (idx >= size)]
    if bad.numel():
        raise XaiError(f"{what} {int(bad[0])} is out of range: there are {size} ({what} 0 to {size - 1})")
    return idx.to(device)


def _pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[i, idx[i]]`` for each image ``i``."""
    return t[torch.arange(t.shape[0], device=t.device), idx]


def class_logit(classes: Units) -> Objective:
    """The logit of the class (one per image, or one for all)."""
    def fn(a: Activations) -> torch.Tensor:
        out = a.output()
        return _pick(out, _units(classes, a.batch, out.shape[1], "class", out.device))
    return Objective(fn, (OUTPUT,), f"class_logit({_short(classes)})")


def class_prob(classes: Units) -> Objective:
    """The softmax probability of the class: raising it also means lowering every other class."""
    def fn(a: Activations) -> torch.Tensor:
        out = a.output()
        return _pick(out.softmax(-1), _units(classes, a.batch, out.shape[1], "class", out.device))
    return Objective(fn, (OUTPUT,), f"class_prob({_short(classes)})")


def channel(layer: str, channels: Units) -> Objective:
    """The spatial mean of a channel of ``layer``."""
    def fn(a: Activations) -> torch.Tensor:
        x = a.layer(layer)
        return _pick(x.mean((2, 3)), _units(channels, a.batch, x.shape[1], f"channel of {layer}", x.device))
    return Objective(fn, (layer,), f"channel({layer}, {_short(channels)})")


def neuron(layer: str, channels: Units) -> Objective:
    """A channel of ``layer`` at the centre position of its map (one neuron)."""
    def fn(a: Activations) -> torch.Tensor:
        x = a.layer(layer)
        centre = x[:, :, x.shape[2] // 2, x.shape[3] // 2]
        return _pick(centre, _units(channels, a.batch, x.shape[1], f"channel of {layer}", x.device))
    return Objective(fn, (layer,), f"neuron({layer}, {_short(channels)})")


def deepdream(layer: str) -> Objective:
    """Mean squared activation of the whole layer: whatever it already sees, amplified."""
    return Objective(lambda a: a.layer(layer).pow(2).mean((1, 2, 3)), (layer,), f"deepdream({layer})")


def direction(layer: str, vectors: torch.Tensor) -> Objective:
    """Mean over positions of the cosine similarity between the activation vector and a direction
    (``[C]`` for every image, or ``[N, C]`` one per image)."""
    v = torch.as_tensor(vectors, dtype=torch.float32)

    def fn(a: Activations) -> torch.Tensor:
        x = a.layer(layer)
        d = v if v.dim() == 2 else v[None].expand(a.batch, -1)
        if d.shape != (a.batch, x.shape[1]):
            raise XaiError(f"direction of shape {tuple(v.shape)} for layer {layer} with {x.shape[1]} channels "
                           f"and a batch of {a.batch}")
        return F.cosine_similarity(x, d.to(x.device)[:, :, None, None], dim=1).mean((1, 2))
    return Objective(fn, (layer,), f"direction({layer})")


def diversity(layer: str, groups: Units | None = None) -> Objective:
    """Negative mean cosine similarity between an image's Gram matrix at ``layer`` and those of the
    other images of its group (all images form one group by default). Images alone in their group get 0.
    This couples the images of a group: their renderings are no longer independent."""
    def fn(a: Activations) -> torch.Tensor:
        x = a.layer(layer)
        b = x.shape[0]
        f = x.flatten(2)
        gram = F.normalize((f @ f.transpose(1, 2)).flatten(1), dim=1)
        sim = gram @ gram.T
        g = torch.zeros(b, dtype=torch.long) if groups is None else torch.as_tensor(groups, dtype=torch.long)
        if g.numel() != b:
            raise XaiError(f"{g.numel()} group ids for a batch of {b} images")
        g = g.to(x.device)
        same = (g[:, None] == g[None, :]) & ~torch.eye(b, dtype=torch.bool, device=x.device)
        return -(sim * same).sum(1) / same.sum(1).clamp(min=1)
    return Objective(fn, (layer,), f"diversity({layer})")


def _short(units) -> str:
    if isinstance(units, int):
        return str(units)
    u = torch.as_tensor(units).flatten().tolist()
    return str(u[0]) if len(u) == 1 else f"{u[0]}..{u[-1]} ({len(u)})"
