"""Counterfactual inputs: a small edit of an image that makes a chosen class win (Wachter et al. 2017).

The optimizer minimises, per image,

    loss = max(0, log(confidence) - log p_target(x + d))  +  weight * dist(d)  +  tv * TV(d)

over the change ``d`` with Adam, projecting ``x + d`` back into the valid range [0, 1] after every step,
so every iterate is a real image. ``dist`` is the squared L2 norm (``l2``) or the L1 norm (``l1``, which
favours changing few pixels) of ``d``; ``TV`` (the total variation of ``d``) favours smooth, blob-like
edits over scattered pixels. Both are sums over pixels, so ``weight`` and ``tv`` are per-pixel prices.
The classification term is a hinge on the log-probability: once the target reaches ``confidence`` only
the penalties act and pull the edit back towards the boundary. An image still short of the target after
``patience`` steps has its penalties halved (and again every ``patience`` steps), as Carlini & Wagner
(2017) search their constant, so that strong penalties delay success rather than prevent it.

This is a search for ``min penalty(d) subject to p_target(x + d) >= confidence``: the returned
counterfactual is the successful iterate with the smallest penalty seen, not merely the first success
(with small steps the first success is a dense, near-invisible change; the penalties need steps after it
to make the edit sparse or smooth). An image that never succeeds returns its last iterate with
``success = False``. Images are optimized together in one batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .attribution._common import prepare
from .errors import XaiError

DISTANCES = ("l2", "l1")


@dataclass
class CounterfactualResult:
    inputs: torch.Tensor  # [B, C, H, W] the originals
    counterfactuals: torch.Tensor  # [B, C, H, W] in [0, 1]
    target: torch.Tensor  # [B] the class made to win
    success: torch.Tensor  # [B] bool: the target reached the confidence
    steps: torch.Tensor  # [B] steps until the target first reached the confidence (the budget where it did not)
    steps_run: int  # steps the batch ran (the least-penalty success is searched until then)
    confidence: torch.Tensor  # [B] the target's probability at the counterfactual
    prediction: torch.Tensor  # [B] the top-1 class at the counterfactual
    loss_history: list[float] = field(default_factory=list)  # mean loss per step, first value at step 0

    @property
    def delta(self) -> torch.Tensor:
        return self.counterfactuals - self.inputs

    @property
    def l2(self) -> torch.Tensor:
        return self.delta.flatten(1).norm(dim=1)

    @property
    def linf(self) -> torch.Tensor:
        return self.delta.flatten(1).abs().amax(dim=1)

    @property
    def l1(self) -> torch.Tensor:
        return self.delta.flatten(1).abs().sum(dim=1)

    def summary(self, i: int) -> dict:
        """JSON-able numbers of image ``i``."""
        return {"target": int(self.target[i]), "success": bool(self.success[i]), "steps": int(self.steps[i]),
                "steps_run": self.steps_run,
                "confidence": float(self.confidence[i]), "prediction": int(self.prediction[i]),
                "l2": float(self.l2[i]), "linf": float(self.linf[i]), "l1": float(self.l1[i]),
                "changed_pixels": int((self.delta[i].abs().amax(0) > 1 / 255).sum())}


def total_variation(d: torch.Tensor) -> torch.Tensor:
    """Sum of absolute differences between neighbouring pixels, per image."""
    dh = (d[..., 1:, :] - d[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (d[..., :, 1:] - d[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


def _class_indices(model, target):
    """Class names resolved through the model entry (which suggests close matches); indices pass through."""
    if isinstance(target, torch.Tensor) or not hasattr(model, "class_index"):
        return target
    if isinstance(target, (str, int)):
        return model.class_index(target)
    return [model.class_index(c) for c in target]


def counterfactual(model, inputs: torch.Tensor, target, *, confidence: float = 0.5, distance: str = "l1",
                   weight: float = 0.01, tv: float = 0.0, steps: int = 300, lr: float = 0.01,
                   patience: int = 50) -> CounterfactualResult:
    """Optimize ``inputs`` (``[B, C, H, W]`` in [0, 1]) until ``target`` (a class or one per image) wins.

    ``weight`` scales the proximity penalty and ``tv`` the total-variation penalty (see the module
    docstring), both per pixel; ``lr`` is Adam's step size in pixel units, so it bounds how far a pixel
    moves per step. ``patience`` is also the stopping rule: after every image has succeeded, optimization
    stops once no image's best penalty has improved for ``patience`` steps.
    """
    if distance not in DISTANCES:
        raise XaiError(f"unknown distance {distance!r}; choose from {', '.join(DISTANCES)}")
    if not 0 < confidence < 1:
        raise XaiError(f"confidence must be in (0, 1), got {confidence}")
    if weight < 0 or tv < 0 or lr <= 0:
        raise XaiError("weight and tv must be >= 0 and lr > 0")
    for name, v in (("steps", steps), ("patience", patience)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise XaiError(f"{name} must be a positive integer, got {v!r}")
    module, x, t = prepare(model, inputs, _class_indices(model, target))
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise XaiError("inputs must lie in the valid range [0, 1]")
    log_conf = math.log(confidence)
    delta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    b = x.shape[0]
    best = x.clone()
    best_penalty = torch.full((b,), math.inf, device=x.device)
    first = torch.full((b,), -1, dtype=torch.long, device=x.device)
    history: list[float] = []
    since_improved = 0
    scale = torch.ones(b, device=x.device)

    def penalty(d: torch.Tensor) -> torch.Tensor:
        p = d.pow(2).flatten(1).sum(1) if distance == "l2" else d.abs().flatten(1).sum(1)
        return weight * p + (tv * total_variation(d) if tv else 0.0)

    with torch.enable_grad():
        for step in range(steps + 1):
            logp = module(x + delta).log_softmax(-1).gather(1, t[:, None]).squeeze(1)
            pen = penalty(delta)
            loss = (log_conf - logp).clamp_min(0) + scale * pen
            history.append(float(loss.detach().mean()))
            with torch.no_grad():
                ok = logp >= log_conf
                first[ok & (first < 0)] = step
                better = ok & (pen < best_penalty)
                best[better] = (x + delta)[better]
                best_penalty[better] = pen[better]
                since_improved = 0 if better.any() else since_improved + 1
            if step == steps or (bool((first >= 0).all()) and since_improved >= patience):
                break
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            before = delta.detach().clone()
            opt.step()
            with torch.no_grad():
                if distance == "l1":
                    # Adam's normalised steps make an L1-penalised pixel hop across zero forever; stopping it
                    # at zero (as orthant-wise L1 methods do) lets unneeded pixels return exactly to the original.
                    crossed = delta * before < 0
                    delta[crossed] = 0
                delta.copy_((x + delta).clamp(0, 1) - x)  # project: x + delta stays a valid image
                if step and step % patience == 0:
                    scale[first < 0] /= 2  # still short of the target: the penalties give way
    success = first >= 0
    best[~success] = (x + delta.detach())[~success]
    with torch.no_grad():
        probs = module(best).softmax(-1)
    return CounterfactualResult(
        inputs=x.detach().to(inputs.device), counterfactuals=best.detach().to(inputs.device), target=t.cpu(),
        success=success.cpu(), steps=torch.where(success, first, torch.full_like(first, steps)).cpu(),
        steps_run=step, confidence=probs.gather(1, t[:, None]).squeeze(1).cpu(),
        prediction=probs.argmax(-1).cpu(), loss_history=history)
