"""Non-negative matrix factorization ``V ~ W H`` by hierarchical alternating least squares (HALS).

A small torch implementation rather than scikit-learn's (not a dependency of the project): seeded,
on the activations' device, and with one extra that concept discovery needs, :func:`nmf_transform`,
which fits ``W`` for new rows against a fixed ``H`` (CRAFT's "transform": a concept bank learned on a
class's images, then located on any image).

HALS (Cichocki and Phan 2009) updates one component at a time by its exact non-negative least-squares
step; it is the coordinate-descent solver scikit-learn's ``NMF`` (used by pytorch-grad-cam's DFF and by
CRAFT) runs by default. Lee and Seung's multiplicative updates were tried first and dropped: on an
exactly rank-3 60x40 matrix they were still at a relative error of 2e-3 after 500 iterations, HALS at
5e-8 after 50. Every update minimises the Frobenius error over one block, so the error never increases.
The start is seeded uniform noise scaled so ``W H`` has ``V``'s mean (scikit-learn's ``init="random"``).
Iterations stop when the relative error improves by less than ``tol`` over ``check_every`` steps, or
after ``iters``. Entries are floored at a tiny positive value, so a component never dies to an all-zero
column (its update would divide by zero).

Activations that can be negative (a linear bottleneck's output) are split into their positive and
negative parts, ``[relu(a), relu(-a)]``, before factorizing (:func:`split_signs`); a factor's direction in
the layer's own space is then its positive half minus its negative half (:func:`merge_signs`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import XaiError

_TINY = 1e-12  # keeps a ratio finite where a factor column has gone to zero
_FLOOR = 1e-16  # the smallest entry a factor keeps (Gillis 2014's epsilon for HALS)


@dataclass
class Factorization:
    W: torch.Tensor  # [n, k] non-negative
    H: torch.Tensor  # [k, m] non-negative
    error: float  # ||V - W H||_F / ||V||_F
    iterations: int


def _check(v: torch.Tensor, k: int) -> None:
    if v.dim() != 2:
        raise XaiError(f"NMF factorizes a matrix [n, m], got shape {tuple(v.shape)}")
    if not 1 <= k <= min(v.shape):
        raise XaiError(f"NMF rank must be between 1 and {min(v.shape)} for a {v.shape[0]}x{v.shape[1]} matrix, got {k}")
    if bool((v < 0).any()):
        raise XaiError("NMF needs a non-negative matrix (split signed activations with split_signs)")


def _relative_error(v: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> float:
    return float(torch.linalg.norm(v - w @ h) / torch.linalg.norm(v).clamp_min(_TINY))


def nmf(v: torch.Tensor, k: int, *, iters: int = 200, tol: float = 1e-6, check_every: int = 5,
        seed: int = 0) -> Factorization:
    """Factorize a non-negative ``[n, m]`` matrix into ``W [n, k] @ H [k, m]``, computed in float64."""
    _check(v, k)
    v64 = v.detach().double()
    n, m = v64.shape
    gen = torch.Generator().manual_seed(seed)
    scale = (v64.mean() / k).clamp_min(0).sqrt()
    w = (torch.rand(n, k, generator=gen, dtype=torch.float64) * scale).to(v64.device)
    h = (torch.rand(k, m, generator=gen, dtype=torch.float64) * scale).to(v64.device)
    last = _relative_error(v64, w, h)
    done = 0
    for done in range(1, iters + 1):
        h = _hals_rows(h, w.T @ w, w.T @ v64)
        w = _hals_rows(w.T.contiguous(), h @ h.T, h @ v64.T).T
        if done % check_every == 0:
            err = _relative_error(v64, w, h)
            converged = last - err < tol * max(last, _TINY)
            last = err
            if converged:
                break
    w, h = _normalise(w, h)
    return Factorization(w.to(v.dtype), h.to(v.dtype), _relative_error(v64, w, h), done)


def _hals_rows(x: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """One HALS sweep over the rows of ``x`` [k, m] minimising ``||V - F^T x||`` with ``gram = F F^T``
    [k, k] and ``cross = F V`` [k, m]: row ``l`` moves to its exact non-negative least-squares value."""
    x = x.clone()
    for l in range(x.shape[0]):
        step = (cross[l] - gram[l] @ x) / gram[l, l].clamp_min(_TINY)
        x[l] = (x[l] + step).clamp_min(_FLOOR)
    return x


def _normalise(w: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each component so its row of ``H`` has unit norm (``W H`` unchanged): concepts compare by
    direction, and ``W`` carries how strongly each position expresses them."""
    norm = h.norm(dim=1, keepdim=True).clamp_min(_TINY)
    return w * norm.T, h / norm


def nmf_transform(v: torch.Tensor, h: torch.Tensor, *, iters: int = 100, seed: int = 0) -> torch.Tensor:
    """``W [n, k] >= 0`` minimising ``||V - W H||`` for a fixed ``H`` (the same HALS sweeps, ``H`` held)."""
    if h.dim() != 2 or v.dim() != 2 or v.shape[1] != h.shape[1]:
        raise XaiError(f"cannot fit rows of width {v.shape[-1]} to factors of shape {tuple(h.shape)}")
    _check(v, 1)
    v64, h64 = v.detach().double(), h.detach().double()
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(h.shape[0], v.shape[0], generator=gen, dtype=torch.float64).to(v64.device)
    gram, cross = h64 @ h64.T, h64 @ v64.T
    for _ in range(iters):
        w = _hals_rows(w, gram, cross)
    return w.T.contiguous().to(v.dtype)


def split_signs(a: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``([relu(a), relu(-a)], True)`` along the last axis when ``a`` has negative entries, else ``(a, False)``."""
    if bool((a < 0).any()):
        return torch.cat([a.clamp_min(0), (-a).clamp_min(0)], dim=-1), True
    return a, False


def merge_signs(h: torch.Tensor, signed: bool) -> torch.Tensor:
    """The factors' directions in the layer's own space: positive half minus negative half."""
    if not signed:
        return h
    c = h.shape[-1] // 2
    return h[..., :c] - h[..., c:]
