"""ROAD: RemOve And Debias (Rong et al. 2022), removal by noisy linear imputation.

Deletion to black or to a blur (:mod:`.faithfulness`) gives the model images it never saw, and part of
the score drop measures that, not the removed evidence; worse, the shape of the removed set leaks
which pixels the map chose. ROAD fills each removed pixel with the weighted mean of its eight
neighbours (weights 1/6 for edge neighbours, 1/12 for diagonal ones), solving for all removed pixels
at once, so that a removed region is a smooth continuation of what surrounds it; Gaussian noise
(``noise``, standard deviation in [0, 1] units) is added to the filled values to hide the rest of the
mask's outline.

* **MoRF** (most relevant first) removes the top ``p`` of the pixels by the map: a faithful map makes
  the score fall fast (lower is better).
* **LeRF** (least relevant first) removes the bottom ``p``: the score should stay (higher is better).

Pixels tied in the map are removed in a seeded random order (:func:`.faithfulness.pixel_order`), never
in raster order; Quantus takes ``np.argsort``'s order, which differs wherever a map is flat (gradient x
input on a black background ties half the pixels of a Fashion-MNIST image at 0).

The score per image is the mean of its curve over the removal ``percentages``; ``output`` is the
target's softmax probability (as deletion uses), its logit, or ``"accuracy"``: whether the prediction
is still the target (Rong et al.'s and Quantus's measure, 0 or 1 per image and level).

The imputation is a sparse linear system per image and level: the 8-neighbour Laplace equation on the
removed pixels, the kept ones as boundary values (Rong et al.'s ``road`` package and Quantus build
the same system). It is solved exactly, in float64, with SciPy's sparse LU on the CPU; the model
passes are then batched, ``internal_batch_size`` images per pass, on the model's device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..attribution._common import select
from ..layers import fast_model
from ._base import Batch, Metric, fraction_tuple, generator, non_negative, non_negative_int, one_of, param, \
    pixel_maps, positive_int
from .faithfulness import pixel_order

# (row offset, column offset, weight) of the eight neighbours, as in Rong et al.
NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
              (1, 0, 1 / 6), (-1, 0, 1 / 6))
ROAD_OUTPUTS = ("softmax", "logit", "log_softmax", "accuracy")


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``image`` ``[C, H, W]`` with the ``removed`` pixels (bool ``[H, W]``) replaced by the solution of
    the neighbour-mean equations, in float64.

    For a removed pixel ``p`` with valid neighbours ``q`` (weights ``w_pq``): ``sum_q w_pq (v_p - v_q) = 0``,
    kept neighbours entering as known values. The matrix is symmetric and positive definite as long as
    one pixel is kept (every removed component then touches a kept pixel), so the solution is unique.
    """
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = image.shape
    flat = image.reshape(c, h * w).astype(np.float64)
    unknown = np.flatnonzero(removed.reshape(-1))
    n = unknown.size
    out = flat.copy()
    if n == 0:
        return out.reshape(c, h, w)
    if n == h * w:
        raise ValueError("linear imputation needs at least one kept pixel")
    var = np.full(h * w, -1)
    var[unknown] = np.arange(n)
    r, col = unknown // w, unknown % w
    diag = np.zeros(n)
    rhs = np.zeros((n, c))
    rows, cols, vals = [], [], []
    for dy, dx, weight in NEIGHBOURS:
        rr, cc = r + dy, col + dx
        valid = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        i = np.flatnonzero(valid)
        q = rr[valid] * w + cc[valid]
        diag[i] += weight
        inner = var[q] >= 0
        rows.append(i[inner])
        cols.append(var[q[inner]])
        vals.append(np.full(int(inner.sum()), -weight))
        rhs[i[~inner]] += weight * flat[:, q[~inner]].T
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    a = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    solution = np.asarray(spsolve(a, rhs)).reshape(n, c)
    out[:, unknown] = solution.T
    return out.reshape(c, h, w)


def noisy_linear_imputation(x: torch.Tensor, removed: torch.Tensor, noise: float,
                            gen: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` ``[N, C, H, W]`` with its ``removed`` pixels (``[N, H, W]``) imputed, plus
    Gaussian noise of standard deviation ``noise`` on the imputed values (drawn on the CPU from ``gen``,
    one ``[C, H, W]`` draw per image in order)."""
    xs = x.detach().cpu().double().numpy()
    masks = removed.detach().cpu().numpy()
    out = torch.from_numpy(np.stack([linear_imputation(xi, mi) for xi, mi in zip(xs, masks)]))
    if noise > 0:
        eps = torch.stack([torch.randn(x.shape[1:], generator=gen, dtype=torch.float64) for _ in range(x.shape[0])])
        out = torch.where(removed.cpu()[:, None], out + noise * eps, out)
    return out.to(x.device, x.dtype)


class _Road(Metric):
    family = "faithfulness"
    cite = "rong2022consistent"
    stochastic = True
    most_relevant_first: bool

    @dataclass(frozen=True)
    class Params:
        percentages: tuple[float, ...] = param((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), fraction_tuple)
        noise: float = param(0.01, non_negative)
        output: str = param("softmax", one_of(*ROAD_OUTPUTS))
        internal_batch_size: int = param(32, positive_int)
        seed: int = param(0, non_negative_int)

    def removal_masks(self, maps: torch.Tensor) -> torch.Tensor:
        """``[B, P, H, W]``: the pixels removed at each level, in the map's order (ties seeded)."""
        b, h, w = maps.shape
        order = pixel_order(maps if self.most_relevant_first else -maps, self.params.seed)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(h * w).expand(b, -1).contiguous())
        # round first: 0.29 * 100 is 28.999999999999996 in floats, and 29 pixels are meant
        counts = torch.tensor([int(round(p * h * w, 6)) for p in self.params.percentages])
        return (rank[:, None, :] < counts[None, :, None]).view(b, -1, h, w)

    def evaluate_curve(self, batch: Batch) -> torch.Tensor:
        """The score ``[B, P]`` at each removal level."""
        p = self.params
        x, t = batch.x, batch.t
        b = x.shape[0]
        masks = self.removal_masks(pixel_maps(batch.attributions).cpu())
        levels = masks.shape[1]
        gen = generator(p.seed)
        scores = torch.empty(b * levels, dtype=torch.float64)
        jobs_t = t.repeat_interleave(levels)
        with torch.no_grad(), fast_model(batch.module, x) as fast:
            for j in range(0, b * levels, p.internal_batch_size):
                idx = torch.arange(j, min(j + p.internal_batch_size, b * levels))
                images = noisy_linear_imputation(x[idx // levels], masks.view(b * levels, *masks.shape[2:])[idx],
                                                 p.noise, gen)
                logits = fast(images)
                tt = jobs_t[idx.to(jobs_t.device)]
                if p.output == "accuracy":
                    s = (logits.argmax(1) == tt).double()
                else:
                    s = select(logits, tt, p.output).double()
                scores[idx] = s.cpu()
        return scores.view(b, levels)

    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return self.evaluate_curve(batch).mean(1)


class RoadMoRF(_Road):
    name = "road_morf"
    label = "ROAD, most relevant first"
    higher_is_better = False
    most_relevant_first = True


class RoadLeRF(_Road):
    name = "road_lerf"
    label = "ROAD, least relevant first"
    higher_is_better = True
    most_relevant_first = False


METRICS = (RoadMoRF, RoadLeRF)
