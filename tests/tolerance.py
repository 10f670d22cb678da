"""The suite's one tolerance policy: what "equal to float precision" means, written down once.

Every numerical assert in the suite takes its bound from here, with the rule it follows named at the
assert. A bound is derived from how the two sides are computed, never from the number one machine gave:
the same suite must pass on any x86-64 CPU (AVX-512 or not, Intel or AMD), at any thread count, with or
without denormals (see conftest.py for how to run it under each).

float32 has ``EPS = 2**-23`` (about 1.2e-7): the spacing of floats at 1.0. The rules, by how the two
sides are computed:

1. **Exact** (``torch.equal``). The same elementwise operations on the same values, whatever the batch,
   layout or vector width: IEEE arithmetic rounds each elementwise result once, so a batch of 40 and a
   batch of 1 give the same bits. Examples: the featvis transforms (their coordinates are computed
   elementwise for this reason), a truncated forward against the full one, a checkpoint reloaded, a
   seeded run repeated.

2. **Rounding** (:func:`ulps`). A short computation whose kernel may differ: a reduction or a matrix
   product of ``n`` terms, or a closed form of a few operations, may be summed in another order, fused
   (FMA) or split across threads by another CPU or batch size. Bound: ``n`` float32 spacings of the
   magnitude involved, ``ulps(n, scale)``. Toy models with hand-computed answers use this rule with
   ``n`` = the length of the longest sum in them (the common ``atol=1e-6`` on values of order 1 is
   ``ulps(8)``).

3. **Network** (:data:`NETWORK`). Two float32 passes through a deep network computed differently (a
   folded batch norm, NHWC against NCHW, another batch size, another library's graph): errors of
   ``sqrt(K) * EPS`` per layer of fan-in ``K`` accumulate over the depth ``L``, ``sqrt(K) * L * EPS``;
   for efficientnet_lite0 (``K <= 1152``, ``L`` about 50) that is about 2e-4 in the worst case and far
   less typically. Bound: ``NETWORK = 1e-4`` of the largest magnitude compared, for values that are a
   smooth function of the input (logits, activations, probabilities, gradients of smooth networks).

4. **Kinks** (:func:`ranks_agree`). Gradients through piecewise-linear units (ReLU, ReLU6, max-pool)
   jump where a pre-activation crosses its kink; where it lies within rounding of the kink, two passes
   computed differently (rule 3) take different branches, and the gradient loses or gains that unit's
   contribution over its whole receptive field: one flipped gate in a deep layer moves every pixel.
   Neither an elementwise bound nor a share of pixels holds (Integrated Gradients on a folded copy
   moved 0.1 % of pixels by more than 1e-3 of the maximum with AVX-512 kernels and 5 % without vector
   kernels, same CPU). Such comparisons assert the rank correlation of each image's values,
   ``RANK = 0.999`` (seen: 0.99998), and the same computation on the *same* network is checked by
   rule 3 or 5 on its own.

5. **Another library, same algorithm.** Its difference from ours is rule 3 (or 4) carried through the
   method: ``condition * NETWORK``. Well-conditioned methods (gradient, Integrated Gradients, Grad-CAM,
   occlusion, guided backprop) keep rule 3's bound, scaled by the map's maximum (:data:`CROSS_LIBRARY`).
   An ill-conditioned formula can amplify the network's rounding without bound (Grad-CAM++'s
   denominator ``2 g**2 + sum(a) g**3`` nears zero on signed activations): then the test checks the
   two parts separately, the formula on the *same* inputs in float64 (:data:`FORMULA64`: float64's
   spacing of 2.2e-16 times a condition of up to 1e6, still far below any real difference between two
   formulas) and the inputs by rule 3, and the end-to-end maps only by rank.

6. **Optimization** (:data:`OPTIMIZED`). Iterates of an optimizer (Adam, the featvis renderer, the
   counterfactual search) after many steps: Adam normalises each gradient element by its running
   magnitude, so a rule-3 difference in a near-zero element becomes a step of full size. Runs that
   should be the same (batched against one by one) are compared by their objective values and images
   to ``OPTIMIZED = 1e-3`` of their range; different seeds must differ by far more (``DIFFERENT``).

7. **Statistical.** Estimates from random samples (SmoothGrad, VarGrad, sanity-check correlations) are
   bounded by their standard error (``k * sigma / sqrt(n)``, ``k = 4``), computed in the test.

8. **Resampling** is rule 1 when the coordinates are computed elementwise, and rule 2 with ``n = 4``
   (the bilinear weights of four pixels) against another implementation of the same interpolation.
"""
from __future__ import annotations

import numpy as np
import torch

EPS = float(torch.finfo(torch.float32).eps)  # 2**-23


def ulps(n: float, scale: float = 1.0) -> float:
    """Rule 2: ``n`` float32 spacings at magnitude ``scale``."""
    return n * EPS * scale


NETWORK = 1e-4  # rule 3, relative to the largest magnitude compared
FORMULA64 = 1e-10  # rule 5: two float64 evaluations of the same formula on the same inputs
RANK = 0.999  # rules 4 and 5: Spearman correlation of each image's values, where no elementwise bound holds
CROSS_LIBRARY = 1e-3  # rule 5: a well-conditioned method against another library, relative to the map's max
OPTIMIZED = 1e-3  # rule 6: the same optimization run two ways, relative to the value range
# Things that must differ (another seed, another method, a randomized model) are asserted to differ by
# at least this share of their range: ten times any bound above, so rounding can never pass for a change.
DIFFERENT = 1e-2
SIGMA = 4.0  # rule 7: standard errors


def network_close(a: torch.Tensor, b: torch.Tensor, rel: float = NETWORK) -> bool:
    """Rule 3: every element within ``rel`` of the larger side's maximum magnitude."""
    scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    return bool(((a - b).abs() <= rel * scale + ulps(1)).all())


def share_beyond(a: torch.Tensor, b: torch.Tensor, rel: float = NETWORK) -> float:
    """The share of elements farther apart than ``rel`` of the larger maximum (for things that must differ)."""
    scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    return float(((a - b).abs() > rel * scale + ulps(1)).float().mean())


def ranks_agree(a: torch.Tensor, b: torch.Tensor, rank: float = RANK) -> bool:
    """Rule 4: each image's values (axis 0 indexes images) in the same order, Spearman >= ``rank``."""
    from scipy.stats import spearmanr

    for x, y in zip(a.detach().double().flatten(1).cpu().numpy(), b.detach().double().flatten(1).cpu().numpy()):
        if (x == y).all():
            continue
        if np.ptp(x) == 0 or np.ptp(y) == 0 or spearmanr(x, y).statistic < rank:
            return False
    return True
