"""The leaderboard: Kendall's τ and its bootstrap (xai.metrics.groundtruth), a planted ground truth, the study."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tolerance import FORMULA64
from xai import attribution, metrics
from xai.errors import XaiError
from xai.metrics import groundtruth as G


def _distinct(gen: np.random.Generator, n: int) -> np.ndarray:
    return gen.permutation(n).astype(float) + gen.random(n) * 0.5  # distinct values in a random order


def test_tau_of_an_ordering_with_itself_is_one_and_with_its_reverse_minus_one():
    gen = np.random.default_rng(0)
    for n in (2, 5, 29):
        a = _distinct(gen, n)
        assert G.kendall_tau(a, a) == 1.0
        assert G.kendall_tau(a, -a) == -1.0
        assert G.kendall_tau(a, 3 * a + 7) == 1.0  # τ reads only the order
    assert math.isnan(G.kendall_tau(np.ones(4), np.arange(4.0)))  # a constant side orders nothing


def test_tau_matches_scipy_on_random_rankings_with_and_without_ties():
    from scipy.stats import kendalltau

    gen = np.random.default_rng(1)
    for trial in range(200):
        n = int(gen.integers(3, 30))
        # Half the trials draw from few values, so that both sides have ties (τ-b's denominator).
        levels = n if trial % 2 else 4
        a, b = gen.integers(0, levels, n).astype(float), gen.integers(0, levels, n).astype(float)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        # Rule 5 (FORMULA64): the same formula in float64, counted pairwise here and by sorting in SciPy.
        assert abs(G.kendall_tau(a, b) - kendalltau(a, b).statistic) <= FORMULA64


def test_ranks_put_the_best_first_share_ties_and_skip_undefined():
    r = G.ranks(np.array([0.2, 0.9, 0.5, 0.5, np.nan]))
    assert r[:4].tolist() == [4.0, 1.0, 2.5, 2.5] and math.isnan(r[4])
    assert G.ranks(np.array([0.2, 0.9, 0.5]), higher_is_better=False).tolist() == [1.0, 3.0, 2.0]


def _scores(gen: np.random.Generator, methods: int, images: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-image scores whose method means follow one hidden order, plus per-image noise."""
    quality = np.linspace(0, 1, methods)[gen.permutation(methods)]
    truth = quality[:, None] + gen.normal(0, 1, (methods, images)) / signal
    metric = quality[:, None] + gen.normal(0, 1, (methods, images)) / signal
    return truth, metric


def test_bootstrap_interval_holds_the_estimate_and_is_seeded():
    gen = np.random.default_rng(2)
    for signal in (0.5, 2.0, 8.0):
        for images in (3, 12, 40):
            truth, metric = _scores(gen, 10, images, signal)
            a = G.agreement(truth, metric, resamples=300, seed=5)
            assert -1 <= a.low <= a.tau <= a.high <= 1
            assert a.methods == 10 and a.resamples == 300
            assert G.agreement(truth, metric, resamples=300, seed=5) == a  # seeded: repeated exactly
    truth, metric = _scores(gen, 10, 12, 1.0)
    draws = {G.agreement(truth, metric, resamples=100, seed=s) for s in range(5)}
    assert len({(d.low, d.high) for d in draws}) > 1  # another seed draws other resamples
    assert len({d.tau for d in draws}) == 1  # but the estimate is the full sample's


def test_agreement_reads_orientation_and_drops_methods_without_a_defined_score():
    gen = np.random.default_rng(3)
    truth, _ = _scores(gen, 8, 10, 4.0)
    same = G.agreement(truth, truth, resamples=50)
    assert same.tau == same.low == same.high == 1.0
    # A lower-is-better metric that is the negated truth agrees perfectly; read as higher-is-better, reversed.
    assert G.agreement(truth, -truth, metric_higher_is_better=False, resamples=50).tau == 1.0
    assert G.agreement(truth, -truth, resamples=50).tau == -1.0
    metric = truth.copy()
    metric[2] = np.nan  # a metric undefined for one method ranks the others
    a = G.agreement(truth, metric, resamples=50)
    assert a.methods == 7 and a.tau == 1.0
    with pytest.raises(XaiError):
        G.agreement(truth, truth[:, :5])


class RegionModel(nn.Module):
    """Two logits: class 1 is a fixed positive weighting of the pixels of a 6x6 block, class 0 its negative."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        w = torch.rand(region.shape, generator=torch.Generator().manual_seed(0)) + 0.5
        self.register_buffer("w", w * region)

    def forward(self, x):
        s = (x[:, 0] * self.w).sum((1, 2))
        return torch.stack([-s, s], 1)


def test_planted_region_the_method_that_finds_it_ranks_first():
    region = torch.zeros(28, 28, dtype=torch.bool)
    region[4:10, 16:22] = True
    model = RegionModel(region).eval()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    # incremental=False: the FLOP planner divides by the FLOPs of the model's layers, zero for this one (no conv)
    chosen = {"gradient_x_input": {}, "occlusion": {"window": 7, "stride": 3, "incremental": False},
              "rise": {"masks": 256}}
    mass = metrics.metric("relevance_mass")
    maps = {n: attribution.attribute(n, model, x, 1, **o) for n, o in chosen.items()}
    per_image = np.stack([mass(None, None, None, maps[n], region=region).double().numpy() for n in chosen])
    # The output is a function of the region alone, so gradient x input is zero outside it exactly.
    assert np.allclose(per_image[0], 1.0, rtol=0, atol=FORMULA64)
    rank = G.ranks(G.method_means(per_image))
    assert rank[0] == 1.0 and set(rank[1:]) == {2.0, 3.0}
    # Occlusion's windows straddle the region's edge and RISE's coarse masks cover the whole image:
    # both spill mass outside it, which is what the ranking must see.
    assert (per_image[1:] < 1 - 1e-3).all()


def test_leaderboard_study_smoke(tmp_path):
    from xai import profiles
    from xai.render.store import Store
    from xai.studies import leaderboard

    profile = profiles.with_options(
        profiles.get("smoke"),
        cleverhans={"budget": "smoke", "sets": ["clean", "square"], "fraction": 1.0, "test_images": 1000},
        leaderboard={"images": 8, "explain_images": 3, "resamples": 100,
                     "methods": {"gradient_x_input": {}, "grad_cam": {}, "lrp_epsilon_plus_flat": {},
                                 "guided_backprop": {}},
                     "metrics": ["deletion", "sparseness", "max_sensitivity"],
                     "metric_options": {"deletion": {"steps": 4}, "max_sensitivity": {"samples": 2}}})
    store = Store(tmp_path, "smoke")
    summary = leaderboard.run(profile, store)
    res = store.read_json("leaderboard/results.json")
    case = res["cases"][res["headline"]]
    assert res["headline"] == "square-Shirt" and case["images"] == 8 and case["flipped"]["count"] >= 8
    assert set(case["methods"]) == {"gradient_x_input", "grad_cam", "lrp_epsilon_plus_flat", "guided_backprop"}
    ranks = sorted(v["rank"] for v in case["ground_truth"]["relevance_mass"].values())
    assert sum(ranks) == 1 + 2 + 3 + 4  # every method ranked once (ties share their mean)
    for m in ("deletion", "sparseness", "max_sensitivity"):
        a = case["agreement"]["relevance_mass"][m]
        assert a["low"] <= a["tau"] <= a["high"] and a["methods"] == 4
    assert case["metrics"]["max_sensitivity"]["images"] == 3 and case["metrics"]["deletion"]["images"] == 8
    # The control: the poisoned model's maps weigh the marker more than the clean model's for most methods.
    assert case["control"]["higher_on_poisoned"] > case["control"]["of"] / 2
    assert (tmp_path / res["figure"]).stat().st_size > 0
    assert not list(tmp_path.rglob("*.md"))  # the book builds the rank table from results.json
    assert summary["tau"] == {m: a["tau"] for m, a in case["agreement"]["relevance_mass"].items()}
    assert leaderboard.run(profile, store) == summary  # cached
