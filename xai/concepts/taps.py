"""A layer's activations and the class score's gradient with respect to them, in batches.

``layer_gradients`` cuts the network at the layer: the layer's tensor is replaced by a detached leaf
for the rest of the pass, so the backward pass stops there (nothing below the layer is differentiated)
and the gradient is exactly ``d score / d activation``. The network consumes a copy of the leaf, so an
in-place activation after the layer (timm's ``inplace=True`` ReLUs) cannot overwrite what is returned.
A name ending in ``:in`` taps a module's input (the pre-activation of an activation function).

Both run through the batch-norm-folded copy of the model (:func:`xai.layers.fast_model`), which
computes the same function with fewer passes (rule 3 of the tolerance policy apart); the tapped layers
are kept unfolded.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..attribution._common import select, targets
from ..errors import XaiError
from ..featvis.objectives import INPUT
from ..featvis.render import activations
from ..layers import fast_model, resolve


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def activations_at(model: nn.Module, x: torch.Tensor, layers: Sequence[str], *,
                   batch: int = 32) -> dict[str, torch.Tensor]:
    """Each of ``layers``' values for every image of ``x``, on the CPU, from one pass per batch that stops
    after the deepest of them, through the batch-norm-folded fast copy (:func:`xai.layers.fast_model`;
    the layers read keep their values)."""
    device, out = _device(model), {layer: [] for layer in layers}
    if not x.shape[0]:
        raise XaiError("no images given")
    with fast_model(model, x[:1].to(device), keep=list(layers)) as fast:
        for chunk in x.split(batch):
            acts = activations(fast, chunk.to(device), list(layers)).acts
            for layer in layers:
                out[layer].append(acts[layer].float().cpu().contiguous())
    return {layer: torch.cat(v) for layer, v in out.items()}


def layer_activations(model: nn.Module, x: torch.Tensor, layer: str, *, batch: int = 32) -> torch.Tensor:
    """``layer``'s values for every image of ``x`` (:func:`activations_at` for one layer)."""
    return activations_at(model, x, [layer], batch=batch)[layer]


def layer_gradients(model: nn.Module, x: torch.Tensor, layer: str, target, *, output: str = "logit",
                    batch: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(activations, d score / d activations, logits)`` for every image of ``x`` (on the CPU).

    ``target`` is one class or one per image; ``output`` the explained score (logit, softmax, log_softmax).
    """
    resolve(model, layer.removesuffix(INPUT))
    device = _device(model)
    acts, grads, logits = [], [], []
    t_all = None
    if not x.shape[0]:
        raise XaiError("no images given")
    with fast_model(model, x[:1].to(device), keep=[layer]) as fast:
        module = resolve(fast, layer.removesuffix(INPUT))
        for start in range(0, x.shape[0], batch):
            chunk = x[start:start + batch].to(device)
            leaf: dict[str, torch.Tensor] = {}

            def swap(t: torch.Tensor) -> torch.Tensor:
                a = t.detach().clone().requires_grad_(True)
                leaf["a"] = a
                return a.clone()

            if layer.endswith(INPUT):
                handle = module.register_forward_pre_hook(
                    lambda _m, args: None if "a" in leaf else (swap(args[0]),) + tuple(args[1:]))
            else:
                handle = module.register_forward_hook(
                    lambda _m, _a, o: None if "a" in leaf else swap(_single(o, layer)))
            try:
                with torch.enable_grad():
                    out = fast(chunk)
                    if t_all is None:
                        t_all = targets(target, x.shape[0], out.shape[1])
                    score = select(out, t_all[start:start + batch].to(out.device), output)
                    if "a" not in leaf:
                        raise XaiError(f"layer {layer} did not run in the forward pass")
                    g, = torch.autograd.grad(score.sum(), leaf["a"])
            finally:
                handle.remove()
            acts.append(leaf["a"].detach().float().cpu().contiguous())
            grads.append(g.float().cpu().contiguous())
            logits.append(out.detach().float().cpu())
    if not acts:
        raise XaiError("no images given")
    return torch.cat(acts), torch.cat(grads), torch.cat(logits)


def as_targets(target, n: int) -> torch.Tensor:
    """``[n]`` class indices from one index or one per image (their range is checked against the model
    by :func:`layer_gradients`, which every caller runs first)."""
    t = torch.as_tensor(target).long().flatten()
    return t.expand(n).clone() if t.numel() == 1 else t.clone()


def _single(o, layer: str) -> torch.Tensor:
    if isinstance(o, torch.Tensor):
        return o
    raise XaiError(f"layer {layer} returns {type(o).__name__}, not one tensor: tap one of its submodules")
