"""Counterfactual inputs: the smallest edit of an image that makes a chosen class win (Wachter et al. 2017).

The optimizer minimises, per image,

    loss = max(0, log(confidence) - log p_target(x + d))  +  weight * dist(d)  +  tv * TV(d)

over the change ``d``, with ``x + d`` projected back into the valid range [0, 1] after every step, so
every iterate is a real image. ``dist`` is the mean squared change (``l2``) or the mean absolute change
(``l1``, which favours changing few pixels); ``TV`` (total variation of ``d``) favours smooth, blob-like
edits over scattered pixels. The classification term is a hinge on the log-probability: once the target
reaches ``confidence`` only the proximity terms act, so the edit stops growing.

The returned counterfactual of each image is the iterate at the first step where the target reached
``confidence`` (the least-edited success along the path); an image that never gets there returns its
last iterate with ``success = False``. Images are optimized together in one batch.
"""
from __future__ import annotations

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
    steps: torch.Tensor  # [B] steps taken to reach it (the step budget where it did not)
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
                "confidence": float(self.confidence[i]), "prediction": int(self.prediction[i]),
                "l2": float(self.l2[i]), "linf": float(self.linf[i]), "l1": float(self.l1[i]),
                "changed_pixels": int((self.delta[i].abs().amax(0) > 1 / 255).sum())}


def total_variation(d: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image."""
    dh = (d[..., 1:, :] - d[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (d[..., :, 1:] - d[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def _class_indices(model, target):
    """Class names resolved through the model entry (which suggests close matches); indices pass through."""
    if isinstance(target, torch.Tensor) or not hasattr(model, "class_index"):
        return target
    if isinstance(target, (str, int)):
        return model.class_index(target)
    return [model.class_index(c) for c in target]


def counterfactual(model, inputs: torch.Tensor, target, *, confidence: float = 0.5, distance: str = "l2",
                   weight: float = 1.0, tv: float = 0.0, steps: int = 300, lr: float = 0.01) -> CounterfactualResult:
    """Optimize ``inputs`` (``[B, C, H, W]`` in [0, 1]) until ``target`` (a class or one per image) wins.

    ``weight`` scales the proximity penalty and ``tv`` the total-variation penalty (see the module
    docstring); ``lr`` is Adam's step size in pixel units, so it bounds how far a pixel moves per step.
    """
    if distance not in DISTANCES:
        raise XaiError(f"unknown distance {distance!r}; choose from {', '.join(DISTANCES)}")
    if not 0 < confidence < 1:
        raise XaiError(f"confidence must be in (0, 1), got {confidence}")
    if weight < 0 or tv < 0 or lr <= 0:
        raise XaiError("weight and tv must be >= 0 and lr > 0")
    if not isinstance(steps, int) or steps < 1:
        raise XaiError(f"steps must be a positive integer, got {steps!r}")
    module, x, t = prepare(model, inputs, _class_indices(model, target))
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise XaiError("inputs must lie in the valid range [0, 1]")
    log_conf = torch.log(torch.tensor(confidence, device=x.device))
    delta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    b = x.shape[0]
    best = x.clone()
    done = torch.zeros(b, dtype=torch.bool, device=x.device)
    taken = torch.full((b,), steps, dtype=torch.long, device=x.device)
    history: list[float] = []

    def losses(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp = module(x + d).log_softmax(-1).gather(1, t[:, None]).squeeze(1)
        dist = d.pow(2).flatten(1).mean(1) if distance == "l2" else d.abs().flatten(1).mean(1)
        loss = (log_conf - logp).clamp_min(0) + weight * dist
        if tv:
            loss = loss + tv * total_variation(d)
        return loss, logp

    with torch.enable_grad():
        for step in range(steps + 1):
            loss, logp = losses(delta)
            history.append(float(loss.mean()))
            reached = (logp.detach() >= log_conf) & ~done
            if reached.any():
                best[reached] = (x + delta.detach())[reached]
                taken[reached] = step
                done |= reached
            if done.all() or step == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            with torch.no_grad():  # project: x + delta stays a valid image
                delta.copy_((x + delta).clamp(0, 1) - x)
    best[~done] = (x + delta.detach())[~done]
    with torch.no_grad():
        probs = module(best).softmax(-1)
    return CounterfactualResult(
        inputs=x.detach().to(inputs.device), counterfactuals=best.detach().to(inputs.device), target=t.cpu(),
        success=done.cpu(), steps=taken.cpu(), confidence=probs.gather(1, t[:, None]).squeeze(1).cpu(),
        prediction=probs.argmax(-1).cpu(), loss_history=history)
