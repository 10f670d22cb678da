"""Exact tests and intervals on paired yes/no outcomes: what the shortcut detector decides by.

The detector's evidence is a pair of yes/no outcomes per image: whether the model under test is turned
to the class by the marker, and whether the reference (the clean control, or a placebo marker) is.
Both are measured on the *same* images, so the two rates are paired and their difference is judged by
the discordant images alone:

* :func:`mcnemar_exact`: the exact McNemar test (the sign test on the discordant pairs: under the null
  hypothesis that the two outcomes are exchangeable on every image, the ``b`` images where only the
  model says yes are ``Binomial(b + c, 1/2)`` given ``b + c``). One-sided, since a shortcut makes the
  model say yes *more* often than the reference.
* :func:`paired_difference_interval`: Newcombe's square-and-add (hybrid score) interval for the
  difference of two paired proportions, method 10 of Newcombe (1998), "Improved confidence intervals
  for the difference between binomial proportions based on paired data", Statistics in Medicine 17,
  2635-2650, with the correlation term as in Fagerland, Lydersen & Laake (2014), "Recommended tests
  and confidence intervals for paired binomial proportions", Statistics in Medicine 33, 2850-2875
  (their recommended interval for this design). It combines the Wilson intervals of the two rates;
  unlike the Wald interval it stays inside [-1, 1] and keeps close to its nominal coverage when the
  rates are near 0, where a weak shortcut's rates lie. It is not exact: its coverage is checked by
  simulation in the tests.
* :func:`margin_p_value`: the one-sided test of "the difference is at most a margin", by inverting
  that interval (the exact McNemar test when the margin is 0).
* :func:`rate_interval`: the Clopper-Pearson interval of one rate (exact: coverage at least nominal).
* :func:`holm`: Holm's step-down adjustment, which keeps the chance of any false "relies" among a
  report's tests at most ``alpha`` whatever their dependence (the flip and removal tests share a model).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from dataclasses import dataclass

import torch

from ..errors import XaiError


@dataclass(frozen=True)
class PairedCounts:
    """A paired 2x2 table: ``both`` yes, ``only_first`` (model yes, reference no), ``only_second``, ``neither``."""

    both: int
    only_first: int
    only_second: int
    neither: int

    def __post_init__(self) -> None:
        if min(self.both, self.only_first, self.only_second, self.neither) < 0:
            raise XaiError(f"paired counts must be non-negative, got {self}")

    @property
    def n(self) -> int:
        return self.both + self.only_first + self.only_second + self.neither

    @property
    def first_rate(self) -> float:
        return (self.both + self.only_first) / self.n if self.n else float("nan")

    @property
    def second_rate(self) -> float:
        return (self.both + self.only_second) / self.n if self.n else float("nan")

    @property
    def difference(self) -> float:
        return (self.only_first - self.only_second) / self.n if self.n else float("nan")

    @classmethod
    def from_outcomes(cls, first: Sequence[bool] | torch.Tensor, second: Sequence[bool] | torch.Tensor) -> PairedCounts:
        """Counts of two yes/no outcomes on the same items (tensors, arrays or lists of bools)."""
        a = torch.as_tensor(first, dtype=torch.bool).flatten()
        b = torch.as_tensor(second, dtype=torch.bool).flatten()
        if len(a) != len(b):
            raise XaiError(f"paired outcomes need one of each per item, got {len(a)} and {len(b)}")
        both, only_first, only_second = int((a & b).sum()), int((a & ~b).sum()), int((b & ~a).sum())
        return cls(both, only_first, only_second, len(a) - both - only_first - only_second)


def _check_level(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise XaiError(f"confidence must be in (0, 1), got {confidence}")


def rate_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate ``k / n`` (beta quantiles); ``(0, 1)`` when ``n == 0``."""
    from scipy.stats import beta

    _check_level(confidence)
    if n == 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    lower = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    upper = float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return lower, upper


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``k / n`` (the building block of the paired interval), in closed form."""
    _check_level(confidence)
    return _wilson(k, n, _z(confidence))


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / 2))


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 or n the interval touches the boundary exactly (rounding would leave it a hair inside).
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def paired_difference_interval(t: PairedCounts, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's square-and-add interval for ``first_rate - second_rate`` (see the module docstring)."""
    _check_level(confidence)
    return _newcombe(t, _z(confidence))


def _newcombe(t: PairedCounts, z: float) -> tuple[float, float]:
    n = t.n
    if n == 0:
        return -1.0, 1.0
    p1, p2 = t.first_rate, t.second_rate
    l1, u1 = _wilson(t.both + t.only_first, n, z)
    l2, u2 = _wilson(t.both + t.only_second, n, z)
    margins = ((t.both + t.only_first) * (t.only_second + t.neither) * (t.both + t.only_second)
               * (t.only_first + t.neither))
    if margins == 0:
        phi = 0.0
    else:
        # The correlation of the two rates, shrunk towards 0 by n/2 when positive (Fagerland et al.'s psi).
        a = t.both * t.neither - t.only_first * t.only_second
        phi = (a - n / 2) / math.sqrt(margins) if a > n / 2 else (0.0 if a >= 0 else a / math.sqrt(margins))
    d = p1 - p2
    lower = d - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    upper = d + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return max(-1.0, lower), min(1.0, upper)


def margin_p_value(t: PairedCounts, margin: float) -> float:
    """One-sided p-value for ``first_rate - second_rate <= margin``.

    ``margin = 0``: the exact McNemar test. Otherwise the paired design has a nuisance parameter (the
    share of discordant items) and no exact conditional test; the p-value inverts Newcombe's interval
    (the ``z`` at which its lower end, or upper end when the estimate is below the margin, meets the
    margin), so the decision agrees with the interval that is reported.
    """
    from scipy.stats import norm

    if not 0 <= margin < 1:
        raise XaiError(f"the margin must be in [0, 1), got {margin}")
    if margin == 0:
        return mcnemar_exact(t)
    if t.n == 0:
        return 1.0
    d = t.difference
    side = 0 if d > margin else 1  # the end of the interval that moves towards the margin as z grows
    lo, hi = 0.0, 1.0
    while (_newcombe(t, hi)[side] - margin) * (1 if side == 0 else -1) > 0 and hi < 64:
        hi *= 2
    for _ in range(60):  # bisection: both ends move monotonically outwards with z
        mid = (lo + hi) / 2
        if (_newcombe(t, mid)[side] - margin) * (1 if side == 0 else -1) > 0:
            lo = mid
        else:
            hi = mid
    z = (lo + hi) / 2
    return float(norm.sf(z)) if side == 0 else float(norm.cdf(z))


def mcnemar_exact(t: PairedCounts) -> float:
    """One-sided exact McNemar p-value for ``first_rate > second_rate``; 1 when no item is discordant.

    ``P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``, summed in integers and divided once: exact up to the
    final rounding to float, with no cancellation in the tail (tests compare it with scipy's binomtest).
    """
    m = t.only_first + t.only_second
    if m == 0:
        return 1.0
    b = t.only_first
    # The shorter sum: the upper tail itself, or 2**m minus the lower tail P(X <= b - 1).
    upper = 2 * b > m
    ks = range(m, b - 1, -1) if upper else range(b)
    term, total = 1, 0  # C(m, m) or C(m, 0), then each coefficient from its neighbour, in integers
    for k in ks:
        total += term
        term = term * k // (m - k + 1) if upper else term * (m - k) // (k + 1)
    return float(Fraction(total if upper else (1 << m) - total, 1 << m))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (reject where adjusted ``< alpha``: family-wise error at most ``alpha``)."""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[k]))  # step-down: adjusted values never decrease
        out[k] = running
    return out
