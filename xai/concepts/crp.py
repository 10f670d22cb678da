"""Concept-conditional heatmaps (CRP, Achtibat et al. 2023): where in the input is the evidence that one
channel of a layer contributed to a prediction?

CRP runs the backward pass of an attribution method from the class score down to ``layer``, keeps the
relevance of one channel there (zeroing the others) and carries it on to the input. The sum of the
conditional heatmaps over all channels is the unconditional heatmap, so each channel's heatmap is its
part of the whole.

**Gradient x activation, not LRP (yet).** zennit-crp conditions LRP, which this project does not have
until the methods branch adds it through zennit. Until then the propagation is the gradient:

* relevance of channel ``c`` at the layer: ``R_c = sum_p a_c(p) * dS/da_c(p)`` (gradient x activation);
* its heatmap: gradient x input of the backward pass seeded at the layer with ``dS/da`` masked to
  channel ``c``, ``x * J^T (g * 1[channel c])``, with ``J`` the Jacobian of the layer w.r.t. the input.

Because the backward is linear in its seed, the heatmaps of all channels sum to the gradient x input
of the score itself. Unlike LRP's, gradient x activation is not conserved from layer to layer (biases
and nonlinearities take their share), so ``R_c`` and the sum of channel ``c``'s heatmap differ.

The propagation is an object (:class:`Propagation`) with two steps, the relevance at the layer and the
way a masked seed is carried to the input; an LRP propagation (a zennit composite active during both
passes, the seed being the masked relevance) plugs in there without changing the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..errors import XaiError
from ..featvis.render import activations
from ..layers import fast_layout
from .taps import as_targets, layer_gradients


class Propagation(Protocol):
    name: str

    def at_layer(self, model: nn.Module, x: torch.Tensor, layer: str, target: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(relevance, seed)`` at the layer, both shaped like its tensor ``[B, C, ...]``: what each
        entry contributed, and what the backward pass to the input starts from."""

    def to_input(self, model: nn.Module, x: torch.Tensor, layer: str, seeds: torch.Tensor) -> torch.Tensor:
        """The input relevance of the backward pass from ``layer`` seeded with ``seeds`` (one per image of ``x``)."""


class GradientTimesActivation:
    """The gradient x activation propagation of the module docstring."""

    name = "gradient_x_activation"

    def __init__(self, output: str = "logit", batch: int = 32):
        self.output, self.batch = output, batch

    def at_layer(self, model, x, layer, target):
        a, g, _ = layer_gradients(model, x, layer, target, output=self.output, batch=self.batch)
        return a * g, g

    def to_input(self, model, x, layer, seeds):
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        out = []
        with fast_layout(model):
            for s in range(0, x.shape[0], self.batch):
                xi = x[s:s + self.batch].to(device).detach().requires_grad_(True)
                with torch.enable_grad():
                    a = activations(model, xi, [layer]).acts[layer]
                    g, = torch.autograd.grad(a, xi, grad_outputs=seeds[s:s + self.batch].to(a.device, a.dtype))
                out.append((xi * g).detach().float().cpu())
        return torch.cat(out)


@dataclass
class ConditionalHeatmaps:
    layer: str
    target: torch.Tensor  # [B]
    channels: torch.Tensor  # [B, K] the conditioned channels, most relevant first
    channel_relevance: torch.Tensor  # [B, K] their relevance at the layer
    layer_relevance: torch.Tensor  # [B, C] every channel's relevance at the layer
    heatmaps: torch.Tensor  # [B, K, C_in, H, W] input relevance conditioned on each channel
    propagation: str


def conditional_heatmaps(model: nn.Module, x: torch.Tensor, target, layer: str, *, top: int = 4,
                         channels: torch.Tensor | list[int] | None = None,
                         propagation: Propagation | None = None) -> ConditionalHeatmaps:
    """Heatmaps of ``x`` conditioned on each of the ``top`` channels of ``layer`` most relevant to ``target``
    (by signed relevance), or on the given ``channels`` (the same for every image, or ``[B, K]``)."""
    prop = propagation or GradientTimesActivation()
    b = x.shape[0]
    relevance, seed = prop.at_layer(model, x, layer, target)
    if relevance.dim() != 4:
        raise XaiError(f"layer {layer} gives {tuple(relevance.shape)}, not a [B, C, H, W] map: CRP here conditions "
                       "on the channels of convolutional maps")
    t = as_targets(target, b)
    per_channel = relevance.flatten(2).sum(2)  # [B, C]
    n_ch = per_channel.shape[1]
    if channels is None:
        if not 1 <= top <= n_ch:
            raise XaiError(f"top must be between 1 and {n_ch} (the channels of {layer}), got {top}")
        chosen = per_channel.topk(top, dim=1).indices
    else:
        chosen = torch.as_tensor(channels, dtype=torch.long)
        chosen = chosen.expand(b, -1) if chosen.dim() == 1 else chosen
        if chosen.shape[0] != b or bool(((chosen < 0) | (chosen >= n_ch)).any()):
            raise XaiError(f"channels must be indices below {n_ch}, one list or one per image ({b})")
    k = chosen.shape[1]
    mask = torch.zeros(b, k, n_ch, dtype=seed.dtype)
    mask.scatter_(2, chosen[:, :, None], 1.0)
    seeds = (seed[:, None] * mask.view(b, k, n_ch, 1, 1)).flatten(0, 1)  # [B K, C, h, w]
    xr = x.repeat_interleave(k, dim=0)
    heat = prop.to_input(model, xr, layer, seeds)
    return ConditionalHeatmaps(layer=layer, target=t, channels=chosen,
                               channel_relevance=per_channel.gather(1, chosen), layer_relevance=per_channel,
                               heatmaps=heat.view(b, k, *x.shape[1:]), propagation=prop.name)
