"""RISE (Petsiuk et al. 2018): randomized input sampling for explanation.

The image is multiplied by ``masks`` random smooth masks and the map is the score-weighted average
of the masks, ``S = sum_i f(x * M_i) M_i / (n p)``: a Monte Carlo estimate of ``E[f(x * M) M] / E[M]``,
what the score is, on average, when a pixel is kept. Each mask is a ``grid x grid`` field of cells kept
with probability ``p``, upsampled bilinearly to ``(grid + 1)`` cells of ``ceil(H / grid)`` pixels and
cropped at a random offset within one cell, so that masks are smooth and not tied to the grid. The
score is the target's softmax probability as in the paper (``output`` chooses another).

One set of masks, drawn from ``seed``, serves every image of a batch, so an image's map does not depend
on the rest of its batch; the draws are made up front, so it does not depend on
``internal_batch_size`` either, which bounds the masked images per forward pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import XaiError
from ..layers import fast_model
from ._common import Target, check_positive, finish, prepare, select


class MaskSampler:
    """The masks of one RISE run: cells and offsets drawn once, masks made in chunks on demand."""

    def __init__(self, n: int, size: tuple[int, int], *, grid: int = 7, p: float = 0.5, seed: int = 0):
        check_positive("masks", n)
        check_positive("grid", grid)
        if not 0 < p < 1:
            raise XaiError(f"the keep probability p must be in (0, 1), got {p!r}")
        self.n, self.size, self.grid, self.p = n, tuple(size), grid, p
        h, w = self.size
        self.cell = (math.ceil(h / grid), math.ceil(w / grid))
        gen = torch.Generator().manual_seed(seed)
        self.cells = (torch.rand(n, 1, grid, grid, generator=gen) < p).float()
        self.dy = torch.randint(0, self.cell[0], (n,), generator=gen)
        self.dx = torch.randint(0, self.cell[1], (n,), generator=gen)

    def upsample(self, cells: torch.Tensor) -> torch.Tensor:
        """Cell fields ``[k, 1, grid, grid]`` upsampled to ``(grid + 1)`` cells a side."""
        up = ((self.grid + 1) * self.cell[0], (self.grid + 1) * self.cell[1])
        return F.interpolate(cells, size=up, mode="bilinear", align_corners=False)

    def crop(self, up: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        rows = (dy[:, None] + torch.arange(h)).to(up.device)  # [k, H]
        cols = (dx[:, None] + torch.arange(w)).to(up.device)  # [k, W]
        k = up.shape[0]
        return up[torch.arange(k, device=up.device)[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]

    def masks(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Masks ``start..stop-1``, ``[k, 1, H, W]`` in [0, 1]."""
        up = self.upsample(self.cells[start:stop].to(device))
        return self.crop(up, self.dy[start:stop], self.dx[start:stop])


def rise(model, inputs: torch.Tensor, target: Target, *, masks: int = 4000, grid: int = 7, p: float = 0.5,
         output: str = "softmax", internal_batch_size: int = 32, seed: int = 0) -> torch.Tensor:
    """RISE saliency ``[B, 1, H, W]``: the paper's defaults for ImageNet (4000 masks, a 7 x 7 grid, half
    the cells kept). Non-negative with the softmax score; a logit score can make it negative."""
    check_positive("internal_batch_size", internal_batch_size)
    module, x, t = prepare(model, inputs, target)
    b = x.shape[0]
    sampler = MaskSampler(masks, tuple(x.shape[-2:]), grid=grid, p=p, seed=seed)
    total = torch.zeros(b, 1, *x.shape[-2:], dtype=torch.float64, device=x.device)
    per_pass = max(1, internal_batch_size // b)  # masks per forward pass, each applied to every image
    with torch.no_grad(), fast_model(module, x) as fast:
        for start in range(0, masks, per_pass):
            m = sampler.masks(start, min(masks, start + per_pass), x.device)  # [k, 1, H, W]
            k = m.shape[0]
            masked = (x[None] * m[:, None]).reshape(k * b, *x.shape[1:])  # mask-major: [k, b] flattened
            scores = select(fast(masked), t.repeat(k), output).view(k, b)
            total += torch.einsum("kb,khw->bhw", scores.double(), m[:, 0].double())[:, None]
    return finish((total / (masks * p)).float(), inputs)
