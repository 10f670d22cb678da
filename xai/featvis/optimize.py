"""How the images move at each step of :func:`xai.featvis.render`: the optimizer.

- ``adam``: Adam (what Lucid and lucent use). It divides each parameter element's step by that
  element's running gradient magnitude, so every element moves about ``lr`` per step whatever the
  objective's scale.
- ``sgd``: the plain gradient ascent of the textbook loop, "multiply the gradients with a small constant
  and add them to the input": ``x += lr * grad``. The step grows with the gradient, so ``lr`` depends on
  the objective's scale and there is no default.
- ``normalized_sgd``: gradient ascent with each image's gradient divided by its norm, so each image
  moves by the same distance per step whatever its objective's scale: ``x_i += lr * g_i / rms(g_i)``,
  with the root-mean-square over that image's parameter elements (the norm divided by the square root
  of their count), so ``lr`` is the typical per-element step, as with Adam.

All three work per image: Adam and SGD are elementwise, and the normalised step divides each image's
gradient by that image's own norm, never by one taken across the batch, so an image's trajectory does
not depend on the others in its batch (the batched = one-by-one property of :func:`render`).
"""
from __future__ import annotations

import torch

from ..errors import UnknownNameError, XaiError
from .param import ImageParam

OPTIMIZERS = ("adam", "sgd", "normalized_sgd")
DEFAULT_LR = 0.05  # Lucid's Adam learning rate; also the per-element step of normalized_sgd


def default_lr(optimizer: str) -> float:
    check_optimizer(optimizer)
    if optimizer == "sgd":
        raise XaiError("optimizer 'sgd' needs an explicit lr: its step is lr x the gradient, whose scale "
                       "depends on the objective (or use 'normalized_sgd', whose lr is a step size)")
    return DEFAULT_LR


def check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise UnknownNameError("optimizer", optimizer, OPTIMIZERS)


class Optimizer:
    """One of :data:`OPTIMIZERS` on ``param``'s parameters; :meth:`step` after each backward pass (of the
    loss to *minimise*, the negated objective), with the learning rate of that step."""

    def __init__(self, param: ImageParam, optimizer: str, lr: float, betas: tuple[float, float] | None = None):
        check_optimizer(optimizer)
        if not lr > 0:
            raise XaiError(f"lr must be positive, got {lr!r}")
        self.kind, self.lr = optimizer, float(lr)
        self.groups = param.image_groups()
        params = [p for g in self.groups for p in g]
        if optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=lr, **({} if betas is None else {"betas": tuple(betas)}))
        else:
            self.opt = torch.optim.SGD(params, lr=lr)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.lr if lr is None else lr
        if self.kind == "normalized_sgd":
            self._normalise()
        self.opt.step()

    def _normalise(self) -> None:
        for group in self.groups:
            grads = [p.grad for p in group if p.grad is not None]
            if not grads:
                continue
            # Per image (row i of each tensor): its own sum of squares, never one across the batch.
            sq = sum(g.flatten(1).pow(2).sum(1) for g in grads)
            count = sum(g[0].numel() for g in grads)
            scale = torch.where(sq > 0, (count / sq).sqrt(), torch.zeros_like(sq))  # a zero gradient stays zero
            for g in grads:
                g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
