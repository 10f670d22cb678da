"""The metric families of xai.metrics: closed forms on toy models, properties, and the shared life cycle.

Bounds follow tests/tolerance.py; each assert names its rule. Agreement with Quantus (and captum's
metrics) is in test_metrics_quantus.py.
"""
import math

import numpy as np
import pytest
import tolerance as tol
import torch
from torch import nn

from xai import attribution as A
from xai import metrics as M
from xai.errors import UnknownNameError, XaiError
from xai.metrics import fidelity, randomisation, road, robustness, shortcut
from xai.metrics._base import generator


def _frozen(m):
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def linear(h=8, w=8, classes=2, seed=0, c=1, zero_first=True):
    """Logits linear in the pixels with independent Gaussian weights per class; class 0's are zero
    (``zero_first``: for two classes the logit difference is then class 1's logit)."""
    g = torch.Generator().manual_seed(seed)
    m = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes)))
    with torch.no_grad():
        m[1].weight.copy_(torch.randn(classes, c * h * w, generator=g) * 2)
        if zero_first:
            m[1].weight[0] = 0
        m[1].bias.zero_()
    return m


def small_cnn(classes=3, c=1, h=8, w=8, seed=0):
    torch.manual_seed(seed)
    return _frozen(nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * h * w, classes)))


def images(b=4, c=1, h=8, w=8, seed=1):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


# -- the shared base and the registry ---------------------------------------------------------------------

def test_registry_covers_every_family():
    assert set(M.by_family("faithfulness")) == {"deletion", "insertion", "road_morf", "road_lerf",
                                                "faithfulness_correlation", "sensitivity_n", "infidelity"}
    assert set(M.by_family("robustness")) == {"max_sensitivity", "avg_sensitivity", "local_lipschitz"}
    assert set(M.by_family("randomisation")) == {"random_logit", "mprt_cascading", "mprt_independent"}
    assert set(M.by_family("complexity")) == {"sparseness", "complexity"}
    assert set(M.by_family("localisation")) == {"pointing_game", "relevance_mass"}
    for name, cls in M.METRICS.items():
        assert cls.name == name and cls.family in M.FAMILIES and isinstance(cls.higher_is_better, bool)
        assert set(cls.requires) <= {"attributions", "explain", "region"}


def test_every_metric_cites_a_reference_of_the_book():
    from xai.paths import REPO

    bib = (REPO / "book" / "references.bib").read_text()
    for name, cls in M.METRICS.items():
        assert "{" + cls.cite + "," in bib, (name, cls.cite)


def test_parameters_are_declared_and_checked_at_construction():
    with pytest.raises(UnknownNameError, match="did you mean: noise"):
        M.metric("road_morf", nois=0.1)
    with pytest.raises(UnknownNameError, match="did you mean: road_morf"):
        M.metric("road_mrf")
    with pytest.raises(M.MetricParameterError) as e:
        M.metric("road_morf", percentages=(0.5, 0.2))
    assert e.value.metric == "road_morf" and e.value.name == "percentages"
    for name, bad in [("max_sensitivity", {"radius": -1.0}), ("sensitivity_n", {"samples": 0}),
                      ("random_logit", {"similarity": "pearson"}), ("pointing_game", {"tolerance": 1.5}),
                      ("infidelity", {"normalize": 1}), ("faithfulness_correlation", {"subset_fraction": 1.0})]:
        with pytest.raises(M.MetricParameterError):
            M.metric(name, **bad)
    assert repr(M.metric("road_lerf", noise=0.0)) == "RoadLeRF(noise=0.0)"


def test_missing_inputs_are_clear_errors():
    m, x = small_cnn(), images()
    a = A.gradient(m, x, 0)
    with pytest.raises(M.MissingInputError) as e:
        M.evaluate("max_sensitivity", m, x, 0, a)
    assert e.value.what == "explain"
    with pytest.raises(M.MissingInputError):
        M.evaluate("pointing_game", None, None, None, a)
    with pytest.raises(M.MissingInputError):
        M.evaluate("deletion", m, x, 0)
    with pytest.raises(XaiError, match="do not match"):
        M.evaluate("deletion", m, x, 0, a[:, :, :4])
    with pytest.raises(XaiError, match="NaN"):
        M.evaluate("sparseness", None, None, None, torch.full((1, 4, 4), math.nan))
    with pytest.raises(UnknownNameError):
        M.explainer("gradiant")


def test_every_metric_returns_one_score_per_image_and_repeats_when_seeded():
    m, x = small_cnn(), images(3)
    t = torch.tensor([0, 1, 2])
    a = A.gradient_x_input(m, x, t)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:3, :3] = True
    ex = M.explainer("gradient")
    for name, cls in M.METRICS.items():
        kw = {"explain": ex} if "explain" in cls.requires else {}
        if "region" in cls.requires:
            kw["region"] = region
        small = {"samples": 4} if "samples" in cls.defaults() else {}
        s = M.evaluate(name, m, x, t, a, **kw, **small)
        assert s.shape == (3,) and s.dtype == torch.float32, name
        assert torch.isfinite(s).all(), (name, s)
        again = M.evaluate(name, m, x, t, a, **kw, **small)
        assert torch.equal(s, again), name  # rule 1: a seeded run repeated
        summary = cls(**small).aggregate(s)
        assert summary["images"] == 3 and summary["undefined"] == 0


def test_internal_batch_size_does_not_change_scores():
    """On the linear toy, where what batching can change is bounded by hand: its gradients are exact
    (a one-hot row times the weights), so explanation-based metrics repeat bit for bit (rule 1); its
    logits are 64-term sums whose rounding may depend on the batch (rule 2, ``e`` below), so the
    perturbation metrics' curves and terms move by at most the error they inherit from one logit."""
    m, x = linear(), images(3)
    t = torch.ones(3, dtype=torch.long)
    a = A.gradient_x_input(m, x, t)
    gxi = M.explainer("gradient_x_input")
    for name in ("max_sensitivity", "avg_sensitivity", "local_lipschitz", "random_logit", "mprt_cascading",
                 "mprt_independent"):
        small = {"samples": 4} if "samples" in M.get(name).defaults() else {}
        one = M.evaluate(name, m, x, t, a, explain=gxi, internal_batch_size=1, **small)
        many = M.evaluate(name, m, x, t, a, explain=gxi, internal_batch_size=7, **small)
        assert torch.equal(one, many), name  # rule 1: elementwise explanations, the same draws
    # Perturbed images stay within [min(x) - 0.5, max(x) + 0.5] (noise of ROAD and infidelity, 4 sigma).
    e = tol.ulps(64, float(m[1].weight[1].abs().sum()) * 1.5)
    for name in ("road_morf", "road_lerf", "deletion", "insertion"):  # softmax of two logits: |dp| <= e
        one = M.metric(name, internal_batch_size=1).curve(m, x, t, a)
        many = M.metric(name, internal_batch_size=7).curve(m, x, t, a)
        assert torch.allclose(one, many, atol=e + tol.ulps(1), rtol=0), name
    # faithfulness correlation and sensitivity-n: the same subsets, drops of two logits
    batch = M.metric("sensitivity_n").preprocess(m, x, t, a, None, None)
    masks = fidelity.random_subsets(3, 64, 8, 4, generator(0))
    _, one = fidelity.subset_drops(batch, masks, "zero", "logit", 1)
    _, many = fidelity.subset_drops(batch, masks, "zero", "logit", 7)
    assert torch.allclose(one, many, atol=2 * e, rtol=0)
    inf = [M.metric("infidelity", samples=4, internal_batch_size=k) for k in (1, 7)]
    (d1, f1), (d7, f7) = (i.terms(i.preprocess(m, x, t, a, None, None)) for i in inf)
    assert torch.equal(d1, d7) and torch.allclose(f1, f7, atol=2 * e, rtol=0)


def test_aggregate_skips_undefined_images():
    s = torch.tensor([1.0, math.nan, 3.0])
    out = M.metric("sparseness").aggregate(s)
    assert out["mean"] == 2.0 and out["images"] == 2 and out["undefined"] == 1
    # std of 1 and 3 is sqrt(2), over sqrt(2) images: 1 (rule 2 in float64: a square root of a short sum)
    assert out["sem"] == pytest.approx(1.0, abs=1e-12)


# -- complexity ------------------------------------------------------------------------------------------

def test_sparseness_and_entropy_closed_forms():
    n = 64
    one_hot = torch.zeros(1, 1, 8, 8)
    one_hot[0, 0, 3, 5] = 2.0
    const = torch.ones(1, 1, 8, 8)
    # Exact: every partial sum is an integer multiple of the map's value.
    assert torch.equal(M.evaluate("sparseness", None, None, None, one_hot), torch.tensor([(n - 1) / n]))
    assert torch.equal(M.evaluate("sparseness", None, None, None, const), torch.tensor([0.0]))
    assert torch.equal(M.evaluate("complexity", None, None, None, one_hot), torch.tensor([0.0]))
    h = M.evaluate("complexity", None, None, None, const)
    assert abs(float(h) - math.log(n)) <= tol.ulps(n, math.log(n))  # rule 2: a 64-term sum of p log p
    by_hand = torch.tensor([[[0.0, 0.0], [1.0, 3.0]]])  # sorted 0, 0, 1, 3: (1 * 1 + 3 * 3) / (4 * 4)
    assert torch.equal(M.evaluate("sparseness", None, None, None, by_hand), torch.tensor([0.625]))
    two = torch.tensor([[[0.0, 5.0], [0.0, -5.0]]])  # signs do not matter: two equal masses
    assert abs(float(M.evaluate("complexity", None, None, None, two)) - math.log(2)) <= tol.ulps(2)
    zero = M.evaluate("sparseness", None, None, None, torch.zeros(1, 4, 4))
    assert zero.isnan().all() and M.evaluate("complexity", None, None, None, torch.zeros(1, 4, 4)).isnan().all()


def test_complexity_is_scale_free_and_orders_maps():
    a = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in ("sparseness", "complexity"):
        s = M.evaluate(name, None, None, None, a)
        scaled = M.evaluate(name, None, None, None, -3.7 * a)
        assert torch.allclose(s, scaled, atol=tol.ulps(64, math.log(64)), rtol=0)  # rule 2: 64-term sums
    peaked = a ** 8  # the same order, mass pushed to the largest values
    assert (M.evaluate("sparseness", None, None, None, peaked) > M.evaluate("sparseness", None, None, None, a)).all()
    assert (M.evaluate("complexity", None, None, None, peaked) < M.evaluate("complexity", None, None, None, a)).all()


# -- localisation ----------------------------------------------------------------------------------------

def test_pointing_game_by_hand():
    region = torch.zeros(6, 6, dtype=torch.bool)
    region[0:2, 0:2] = True
    maps = torch.zeros(5, 6, 6)
    maps[0, 1, 1] = 1.0  # max inside
    maps[1, 4, 4] = 1.0  # max outside
    maps[2, 0, 0] = maps[2, 5, 5] = 1.0  # tied maxima, one inside: half a hit
    maps[3] = 1.0  # constant: the region's area share
    maps[4, 3, 3] = -2.0  # the largest magnitude is negative and outside
    maps[4, 0, 1] = 1.0
    pg = M.evaluate("pointing_game", None, None, None, maps, region=region)
    assert torch.equal(pg, torch.tensor([1.0, 0.0, 0.5, 4 / 36, 0.0]))  # exact: ratios of small counts
    signed = M.evaluate("pointing_game", None, None, None, maps, region=region, absolute=False)
    assert float(signed[4]) == 1.0
    # Zhang et al.'s tolerance: the max of map 1 is two pixels (Chebyshev) from the region
    far = M.evaluate("pointing_game", None, None, None, maps[1:2], region=region, tolerance=1)
    near = M.evaluate("pointing_game", None, None, None, maps[1:2], region=region, tolerance=3)
    assert float(far) == 0.0 and float(near) == 1.0
    assert M.evaluate("pointing_game", None, None, None, torch.zeros(1, 6, 6), region=region).isnan().all()


def test_relevance_mass_by_hand_with_one_region_per_image():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, -1.0  # |.| mass 3 of 4 inside region 0
    maps[1, 0, 0], maps[1, 3, 3] = 3.0, -1.0  # 1 of 4 inside region 1
    regions = torch.zeros(2, 4, 4, dtype=torch.bool)
    regions[0, :2, :2] = True
    regions[1, 2:, 2:] = True
    rm = M.evaluate("relevance_mass", None, None, None, maps, region=regions)
    assert torch.equal(rm, torch.tensor([0.75, 0.25]))  # exact: dyadic
    assert torch.equal(rm, shortcut.region_mass(maps, regions))  # rule 1: the one implementation
    with pytest.raises(XaiError, match="empty"):
        M.evaluate("relevance_mass", None, None, None, maps, region=torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(XaiError, match="regions for a batch"):
        M.evaluate("relevance_mass", None, None, None, maps, region=regions[:1].expand(3, -1, -1))


def test_localisation_finds_a_planted_marker_on_a_model_that_reads_only_it():
    """A model whose logit is the mean brightness of a marker patch: its gradient x input lies entirely on
    the marker (relevance mass 1, a certain hit), a gradient-blind random map does not."""
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[1:3, 5:8] = True
    m = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)))
    with torch.no_grad():
        m[1].weight.zero_()
        m[1].bias.zero_()
        m[1].weight[1] = region.flatten().float() / region.sum()
    x = images(4)
    gxi = A.gradient_x_input(m, x, 1)
    assert torch.equal(M.evaluate("relevance_mass", None, None, None, gxi, region=region), torch.ones(4))
    assert torch.equal(M.evaluate("pointing_game", None, None, None, gxi, region=region), torch.ones(4))
    rnd = M.random_map((4, 8, 8), seed=3)
    share = float(region.float().mean())
    assert (M.evaluate("relevance_mass", None, None, None, rnd, region=region) < 2 * share).all()


# -- ROAD ------------------------------------------------------------------------------------------------

def test_linear_imputation_reproduces_linear_images_and_keeps_kept_pixels():
    h, w = 9, 11
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ramp = np.stack([0.05 * rr + 0.02 * cc, 0.3 - 0.01 * rr + 0.04 * cc])
    rng = np.random.default_rng(0)
    removed = np.zeros((h, w), dtype=bool)
    removed[1:-1, 1:-1] = rng.random((h - 2, w - 2)) < 0.6  # every removed pixel has all 8 neighbours
    out = road.linear_imputation(ramp, removed)
    # The 8-neighbour mean of a linear function is its centre value, so the ramp solves the system
    # (uniquely); rule 5's float64 bound for the sparse solve.
    assert np.abs(out - ramp).max() <= tol.FORMULA64
    assert np.array_equal(out[:, ~removed], ramp[:, ~removed])  # exact: kept pixels are copied
    flat = road.linear_imputation(np.full((1, h, w), 0.7), np.ones((h, w), dtype=bool) & ~np.eye(h, w, dtype=bool))
    assert np.abs(flat - 0.7).max() <= tol.FORMULA64
    with pytest.raises(ValueError):
        road.linear_imputation(ramp, np.ones((h, w), dtype=bool))


def test_road_closed_form_on_a_model_that_reads_one_patch():
    """The logit is the sum over a patch of 10 % of a 10x10 image; the image is bright there and black
    elsewhere. MoRF with the oracle map removes the patch first; its imputation from black neighbours
    is black, so the logit is 0 at every level. LeRF removes the 90 black pixels first, which the model
    does not read: the logit stays f(x) at every level up to 90 %."""
    patch = torch.zeros(10, 10, dtype=torch.bool)
    patch[4:6, 2:7] = True
    m = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(100, 2)))
    with torch.no_grad():
        m[1].weight.zero_()
        m[1].bias.zero_()
        m[1].weight[1] = patch.flatten().float()
    x = (patch.float() * torch.linspace(0.5, 1.0, 100).view(10, 10))[None, None].repeat(2, 1, 1, 1)
    oracle = A.gradient_x_input(m, x, 1)
    fx = m(x)[:, 1]
    morf = M.metric("road_morf", noise=0.0, output="logit").curve(m, x, 1, oracle)
    lerf = M.metric("road_lerf", noise=0.0, output="logit").curve(m, x, 1, oracle)
    assert torch.equal(morf, torch.zeros_like(morf))  # exact: a zero right-hand side solves to zeros
    assert torch.equal(lerf, fx[:, None].expand_as(lerf))  # exact: only zero-weight pixels changed
    noisy = M.metric("road_morf", noise=0.05, output="logit", seed=1).curve(m, x, 1, oracle)
    # Rule 7: 10 patch pixels of N(0, 0.05^2) noise each: the logit is N(0, 10 * 0.05^2)
    assert (noisy.abs() <= tol.SIGMA * 0.05 * math.sqrt(10)).all() and not torch.equal(noisy, morf)


def test_road_orders_an_oracle_above_a_random_map():
    m = linear(h=8, w=8)
    x = images(6)
    oracle = A.gradient_x_input(m, x, 1)  # exact contributions on a linear model
    rnd = M.random_map((6, 8, 8), seed=2)
    kw = {"noise": 0.0, "output": "logit"}
    assert (M.evaluate("road_morf", m, x, 1, oracle, **kw) < M.evaluate("road_morf", m, x, 1, rnd, **kw)).all()
    assert (M.evaluate("road_lerf", m, x, 1, oracle, **kw) > M.evaluate("road_lerf", m, x, 1, rnd, **kw)).all()
    acc = M.metric("road_morf", output="accuracy").curve(m, x, 1, oracle)
    assert set(acc.unique().tolist()) <= {0.0, 1.0}


def test_deletion_and_insertion_metrics_are_the_curves_areas():
    m = linear()
    x = images(3)
    a = A.gradient_x_input(m, x, 1)
    for mode in ("deletion", "insertion"):
        direct = M.auc(M.perturbation_curves(m, x, 1, a[:, 0], mode=mode, steps=8))
        assert torch.equal(M.evaluate(mode, m, x, 1, a, steps=8), direct)  # rule 1: the same computation


# -- fidelity: faithfulness correlation, sensitivity-n, infidelity --------------------------------------------

def _linear_rounding(m, x):
    """Rule 2 for a logit of the linear toy: a 64-term sum of terms up to sum |w x|."""
    return tol.ulps(64, float((m[1].weight[1] * x.flatten(1)).abs().sum(1).max()))


def test_exact_attributions_of_a_linear_model_correlate_perfectly_at_every_n():
    m = linear()
    x = images(4)
    gxi = A.gradient_x_input(m, x, 1)
    samples = 16
    sn = M.metric("sensitivity_n", samples=samples)
    curve = sn.curve(m, x, 1, gxi).double()
    assert curve.shape == (4, len(sn.params.fractions))
    # Closed form: each drop is the subset's attribution sum, up to e per value (rule 2: two 64-term logits
    # and the rounded products w x). A centred error r on top of the centred sums u tilts the vector by
    # sin(theta) <= ||r|| / ||u||, so 1 - rho <= (||r|| / ||u||)^2 with ||r|| <= sqrt(samples) e.
    e = 2 * _linear_rounding(m, x) + tol.ulps(1, float(gxi.abs().flatten(1).sum(1).max()))
    batch = sn.preprocess(m, x, 1, gxi, None, None)
    gen = generator(sn.params.seed)
    for k, size in enumerate(sn.sizes(64)):  # the metric's own subsets, drawn in its order
        sums, drops = fidelity.subset_drops(batch, fidelity.random_subsets(4, 64, size, samples, gen), "zero",
                                            "logit", 32)
        assert ((sums - drops).abs() <= e).all()
        spread = (sums - sums.mean(1, keepdim=True)).norm(dim=1)
        assert ((1 - curve[:, k]) <= (samples ** 0.5 * e / spread) ** 2 + tol.FORMULA64).all(), curve[:, k]
    fc = M.metric("faithfulness_correlation", samples=samples)
    sums, _ = fidelity.subset_drops(batch, fidelity.random_subsets(4, 64, 6, samples, generator(0)), "zero",
                                    "logit", 32)
    spread = (sums - sums.mean(1, keepdim=True)).norm(dim=1)
    assert ((1 - fc(m, x, 1, gxi).double()) <= (samples ** 0.5 * e / spread) ** 2 + tol.FORMULA64).all()
    grad = A.gradient(m, x, 1)  # sums of w over a subset, not of w x: imperfect
    assert (M.evaluate("faithfulness_correlation", m, x, 1, grad, samples=samples) < 1 - tol.DIFFERENT).all()


def test_faithfulness_correlation_of_a_random_map_is_near_zero():
    m = linear()
    x = images(4)
    s = 256
    rnd = M.random_map((4, 8, 8), seed=5)
    fc = M.evaluate("faithfulness_correlation", m, x, 1, rnd, samples=s)
    # Rule 7. Over subsets of a fixed size, the correlation of two subset sums tends to the correlation
    # over pixels of the two summands (the map and w x), here of 64 independent values (standard error
    # 1 / sqrt(63)); the 256 subsets add their own sampling error (1 / sqrt(255)).
    assert (fc.abs() <= tol.SIGMA * math.sqrt(1 / 63 + 1 / (s - 1))).all(), fc


def test_random_subsets_have_their_size_and_depend_on_the_seed():
    masks = fidelity.random_subsets(3, 64, 10, 5, generator(0))
    assert masks.shape == (3, 5, 64) and (masks.sum(-1) == 10).all()
    assert torch.equal(masks, fidelity.random_subsets(3, 64, 10, 5, generator(0)))
    assert not torch.equal(masks, fidelity.random_subsets(3, 64, 10, 5, generator(1)))
    with pytest.raises(XaiError):
        fidelity.random_subsets(1, 64, 64, 1, generator(0))


def test_infidelity_closed_forms_on_a_linear_model():
    m = linear()
    x = images(3)
    w = m[1].weight[1].view(1, 1, 8, 8)
    grad = A.gradient(m, x, 1)
    gxi = A.gradient_x_input(m, x, 1)
    e = _linear_rounding(m, x + 1)
    for normalize in (False, True):  # the gradient predicts f(x) - f(x - I) = w . I exactly
        inf = M.evaluate("infidelity", m, x, 1, grad, normalize=normalize, samples=16)
        assert (inf <= (2 * e) ** 2).all(), inf  # rule 2: two 64-term sums, squared error
    # Gradient x input predicts (w x) . I: the error per draw is (w (x - 1)) . I, from the same draws
    p = M.metric("infidelity", normalize=False, samples=16, noise=0.1, seed=3)
    noise = fidelity.gaussian_perturbations(tuple(x.shape), 16, 0.1, generator(3)).double()
    by_hand = ((noise * (w * (x - 1)).double()[:, None]).flatten(2).sum(-1) ** 2).mean(1)
    ours = p(m, x, 1, gxi).double()
    # Rule 2: each drop is off by 2e, which moves a mean square v by at most 2 sqrt(v) 2e + (2e)^2.
    assert ((ours - by_hand).abs() <= 4 * by_hand.sqrt() * e + (2 * e) ** 2 + tol.ulps(64, by_hand)).all()
    assert (p(m, x, 1, grad) < ours).all()
    zero = M.evaluate("infidelity", m, x, 1, torch.zeros_like(grad))
    assert torch.isfinite(zero).all()  # no scale to choose: the error of predicting no change


# -- robustness ------------------------------------------------------------------------------------------

def test_sensitivity_closed_forms_on_a_linear_model():
    m = linear()
    x = images(3)
    w = m[1].weight[1].view(1, 1, 8, 8)
    grad, gxi = M.explainer("gradient"), M.explainer("gradient_x_input")
    for name in ("max_sensitivity", "avg_sensitivity", "local_lipschitz"):
        # exact: the gradient of a linear layer is its weight row, whatever the input
        assert torch.equal(M.evaluate(name, m, x, 1, explain=grad), torch.zeros(3)), name
    r, s = 0.05, 24
    d = robustness.uniform_ball(tuple(x.shape), s, r, generator(7)).double()
    own = (w * x).flatten(1).double().norm(dim=1)
    ratios = (w.double() * d).flatten(2).norm(dim=-1) / own  # [samples, B]
    mx = M.evaluate("max_sensitivity", m, x, 1, explain=gxi, radius=r, samples=s, seed=7)
    avg = M.evaluate("avg_sensitivity", m, x, 1, explain=gxi, radius=r, samples=s, seed=7)
    # Rule 2: each perturbed input is rounded once (x + d) and its product with w once, each by at most
    # one spacing of |w| (|x| + |d|): an error of norm 2 ulps(1) ||w (|x| + r)|| on a change of norm ||w d||;
    # the norms themselves are 64-term sums.
    def relative(d, reach):
        return tol.ulps(64) + 2 * tol.ulps(1) * float(((w * (x.abs() + reach)).flatten(1).norm(dim=1)
                                                      / (w.double() * d).flatten(2).norm(dim=-1)).max())
    bound = relative(d, r)
    assert torch.allclose(mx.double(), ratios.amax(0), rtol=bound, atol=0)
    assert torch.allclose(avg.double(), ratios.mean(0), rtol=bound, atol=0)
    assert (mx <= r * w.norm() / own.float() * (1 + bound)).all()  # the corner of the ball
    g = robustness.gaussian(tuple(x.shape), s, 0.1, generator(7)).double()
    lips = (w.double() * g).flatten(2).norm(dim=-1) / g.flatten(2).norm(dim=-1)
    ll = M.evaluate("local_lipschitz", m, x, 1, explain=gxi, noise=0.1, samples=s, seed=7)
    assert torch.allclose(ll.double(), lips.amax(0), rtol=relative(g, float(g.abs().max())), atol=0)  # as above
    assert (ll <= w.abs().max() * (1 + bound)).all()


def test_sensitivity_uses_given_attributions_or_computes_them():
    m, x = small_cnn(), images(2)
    ex = M.explainer("gradient")
    given = M.evaluate("max_sensitivity", m, x, 1, A.gradient(m, x, 1), explain=ex, samples=4)
    computed = M.evaluate("max_sensitivity", m, x, 1, explain=ex, samples=4)
    assert torch.equal(given, computed)  # rule 1: the same call, made by the metric
    with pytest.raises(XaiError, match="shape"):
        M.evaluate("max_sensitivity", m, x, 1, A.gradient(m, x, 1)[:, 0], explain=ex, samples=4)


# -- randomisation ---------------------------------------------------------------------------------------

def test_other_classes_are_uniform_over_the_rest():
    t = torch.tensor([0, 1, 2, 3] * 250)
    off = randomisation.other_classes(t, 4, generator(0))
    assert (off != t).all() and off.min() >= 0 and off.max() <= 3
    for c in range(4):  # rule 7: each of the 3 other classes with probability 1/3 among 250 images
        counts = torch.bincount(off[t == c], minlength=4).double()
        counts = counts[torch.arange(4) != c]
        assert ((counts - 250 / 3).abs() <= tol.SIGMA * math.sqrt(250 * (1 / 3) * (2 / 3))).all()


def test_random_logit_fails_a_class_blind_method_and_passes_the_gradient():
    m = linear(classes=5, h=8, w=8, zero_first=False)
    x = images(6)
    t = torch.tensor([1, 2, 3, 4, 1, 2])

    def class_blind(model, inputs, targets):  # the gradient of class 1, whatever was asked
        return A.gradient(model, inputs, 1)

    for sim in ("spearman_abs", "ssim"):
        blind = M.evaluate("random_logit", m, x, t, explain=class_blind, similarity=sim)
        assert torch.allclose(blind, torch.ones(6), atol=tol.ulps(64), rtol=0), (sim, blind)  # rule 2, float64
    grad = M.evaluate("random_logit", m, x, t, explain=M.explainer("gradient"), similarity="spearman_abs")
    # Rule 7: the maps are |w_t| and |w_other| (independent Gaussian rows); the rank correlation of two
    # independent vectors of 64 values has standard error 1 / sqrt(63).
    assert (grad.abs() <= tol.SIGMA / math.sqrt(63)).all(), grad


def test_independent_randomization_changes_one_unit_at_a_time(fmnist_cnn_smoke):
    m = fmnist_cnn_smoke.model
    before = {k: v.clone() for k, v in m.state_dict().items()}
    units = M.randomization_units(m)
    cascading = {u: {n: v.clone() for n, v in net.named_parameters()} for u, net in M.cascading_randomization(m, 3)}
    for (unit, names), (name, net) in zip(units, M.independent_randomization(m, seed=3)):
        assert name == unit
        now = dict(net.named_parameters())
        changed = {n for n, v in now.items() if not torch.equal(v, before[n])}
        assert changed == {n for n in names if now[n].numel() > 1}
        for n in names:  # the same draw as the cascading walk gives the unit (one stream, unit by unit)
            assert torch.equal(now[n], cascading[unit][n])
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_independent_randomization_changes_the_gradient_maps(fmnist_cnn_smoke):
    from xai.data import fashion_mnist

    x = fashion_mnist.load("test")[0][:4]
    t = torch.tensor([0, 1, 2, 3])
    ex = M.explainer("gradient")
    metric = M.metric("mprt_independent", similarity="spearman_abs")
    curve = metric.curve(fmnist_cnn_smoke.model, x, t, explain=ex)
    units = [u for u, _ in M.randomization_units(fmnist_cnn_smoke.model)]
    assert curve.shape == (4, len(units))
    # Not rounding bounds: the property. Every unit's randomization moves the map (a similarity of 1 is
    # an unchanged map), and the output layer's moves it most (seen: 0.1-0.3, as for cascading).
    assert (curve.mean(0) < 1 - tol.DIFFERENT).all(), dict(zip(units, curve.mean(0).tolist()))
    assert float(curve[:, 0].mean()) < 0.5
    # a model-blind "explanation" shows no change: similarity 1 at every unit
    blind = metric.curve(fmnist_cnn_smoke.model, x, t, explain=lambda model, inputs, targets: inputs.clone())
    assert torch.allclose(blind, torch.ones_like(blind), atol=tol.ulps(784), rtol=0)  # rule 2, float64 ranks
