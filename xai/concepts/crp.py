"""Concept-conditional heatmaps (CRP, Achtibat et al. 2023): where in the input is the evidence that one
channel of a layer contributed to a prediction?

CRP runs the backward pass of an attribution method from the class score down to ``layer``, keeps the
relevance of one channel there (zeroing the others) and carries it on to the input. Two propagations:

* :class:`LRP` (the default, as in zennit-crp): the relevance of channel ``c`` at the layer is what
  LRP's rules bring to its output, ``R_c = sum_p R_c(p)``, and its heatmap is LRP started there with
  the other channels' relevance zeroed (:func:`xai.attribution.lrp.propagate_from`). The rules are
  linear in the relevance they receive, so the heatmaps of all channels sum to the LRP heatmap of the
  score, for a layer every path from input to output runs through (a block's output; not a layer
  inside a residual block, whose skip path carries the rest). The heatmap of channel ``c`` sums to
  ``R_c`` minus what the biases below the layer absorb.
* :class:`GradientTimesActivation`: ``R_c = sum_p a_c(p) * dS/da_c(p)``, and the heatmap is gradient
  x input of the backward pass seeded at the layer with ``dS/da`` masked to channel ``c``. The backward
  is linear in its seed too, so the heatmaps sum to the gradient x input of the score; but gradient x
  activation is not conserved from layer to layer, and ``R_c`` and the heatmap's sum differ. It serves
  models LRP refuses (smooth activations, gates), and says so in its ``propagation`` name.

``rest`` (on request) is the heatmap of every channel not conditioned on, so that the chosen channels'
heatmaps plus ``rest`` are the whole heatmap: what the top channels leave out is shown, not dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..errors import UnknownNameError, XaiError
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


class LRP:
    """The LRP propagation of the module docstring, with one of the composites of
    :mod:`xai.attribution.lrp` (and its canonizers, chosen by the model's blocks). A model LRP has no
    rules for is refused with the reason (:class:`xai.errors.NotApplicableError`)."""

    def __init__(self, composite: str = "epsilon_plus_flat", batch: int = 16, canonizers="auto"):
        from ..attribution.lrp import COMPOSITES

        if composite not in COMPOSITES:
            raise UnknownNameError("LRP composite", composite, COMPOSITES)
        self.composite, self.batch, self.canonizers = composite, batch, canonizers
        self.name = f"lrp_{composite}"

    def at_layer(self, model, x, layer, target):
        from ..attribution.lrp import propagate

        t = as_targets(target, x.shape[0])
        rel = [propagate(model, x[s:s + self.batch], t[s:s + self.batch], composite=self.composite,
                         canonizers=self.canonizers, layer=layer).layer_relevance.float().cpu()
               for s in range(0, x.shape[0], self.batch)]
        r = torch.cat(rel)
        return r, r

    def to_input(self, model, x, layer, seeds):
        from ..attribution.lrp import propagate_from

        return torch.cat([propagate_from(model, x[s:s + self.batch], layer, seeds[s:s + self.batch],
                                         composite=self.composite, canonizers=self.canonizers).relevance.float().cpu()
                          for s in range(0, x.shape[0], self.batch)])


@dataclass
class ConditionalHeatmaps:
    layer: str
    target: torch.Tensor  # [B]
    channels: torch.Tensor  # [B, K] the conditioned channels, most relevant first
    channel_relevance: torch.Tensor  # [B, K] their relevance at the layer
    layer_relevance: torch.Tensor  # [B, C] every channel's relevance at the layer
    heatmaps: torch.Tensor  # [B, K, C_in, H, W] input relevance conditioned on each channel
    propagation: str
    rest: torch.Tensor | None = None  # [B, C_in, H, W] conditioned on all the other channels together


def conditional_heatmaps(model: nn.Module, x: torch.Tensor, target, layer: str, *, top: int = 4,
                         channels: torch.Tensor | list[int] | None = None,
                         propagation: Propagation | None = None, rest: bool = False) -> ConditionalHeatmaps:
    """Heatmaps of ``x`` conditioned on each of the ``top`` channels of ``layer`` most relevant to ``target``
    (by signed relevance), or on the given ``channels`` (the same for every image, or ``[B, K]``), by
    ``propagation`` (LRP's ε-z⁺-flat composite unless given). With ``rest``, also the heatmap of all the
    channels not chosen."""
    prop = propagation or LRP()
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
    if rest:  # one more seed per image: every channel not chosen
        mask = torch.cat([mask, (1 - mask.sum(1, keepdim=True)).clamp(min=0)], 1)
    kk = mask.shape[1]
    seeds = (seed[:, None] * mask.view(b, kk, n_ch, 1, 1)).flatten(0, 1)  # [B kk, C, h, w]
    xr = x.repeat_interleave(kk, dim=0)
    heat = prop.to_input(model, xr, layer, seeds).view(b, kk, *x.shape[1:])
    return ConditionalHeatmaps(layer=layer, target=t, channels=chosen,
                               channel_relevance=per_channel.gather(1, chosen), layer_relevance=per_channel,
                               heatmaps=heat[:, :k], propagation=prop.name, rest=heat[:, k] if rest else None)
