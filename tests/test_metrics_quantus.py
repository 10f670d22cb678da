"""Our metrics against Quantus 0.6.0 (and captum.metrics where Quantus's definition differs).

On a small CNN and fixed inputs, each metric that Quantus also has is compared with it on the *same*
random draws (Quantus's ``perturb_func`` is given ours; where Quantus draws inside a metric, its draw is
fed ours), so what is left is arithmetic, bounded by a rule of tests/tolerance.py. Where the two
definitions differ, the test says how and checks the difference itself.

Quantus options used throughout, and why:
- ``normalise=False``: Quantus's default ``normalise_by_max`` divides by the largest value of the whole
  *batch*, so one image's score would depend on the others; ours are per image. (Scale-free scores are
  the same either way.)
- ``perturb_baseline=0.0`` where Quantus says ``"black"``: its ``"black"`` is each image's minimum, ours 0.
- 1-channel images: Quantus's ROAD indexes pixels by channel-broadcast feature and fails on 3 channels
  (IndexError in ``noisy_linear_imputation``); the bench reports the same.
"""
import math

import numpy as np
import pytest
import tolerance as tol
import torch
from torch import nn

from xai import attribution as A
from xai import metrics as M
from xai.metrics import fidelity, road, robustness
from xai.metrics._base import generator

quantus = pytest.importorskip("quantus")

B, H, W, CLASSES = 4, 8, 8, 3


def _frozen(m):
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    m = _frozen(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, CLASSES)))
    x = torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = m(x).argmax(1)
    return m, x, t


def q_explain(model, inputs, targets, **kwargs):
    """Our gradient, as Quantus calls explanation functions (numpy in, numpy out)."""
    return A.gradient(model, torch.as_tensor(np.asarray(inputs)), torch.as_tensor(np.asarray(targets))).numpy()


def _np(t):
    return t.detach().cpu().numpy()


def _q(metric, model, x, t, a, **kw):
    return np.asarray(metric(model=model, x_batch=_np(x), y_batch=_np(t), a_batch=a, device="cpu", **kw),
                      dtype=np.float64)


# -- complexity ------------------------------------------------------------------------------------------

def test_sparseness_differs_from_quantus_by_its_epsilon_only(toy):
    m, x, t = toy
    a = A.gradient_x_input(m, x, t).double()
    ours = M.evaluate("sparseness", None, None, None, a).double().numpy()
    theirs = _q(quantus.Sparseness(abs=True, normalise=False, disable_warnings=True), m, x, t, _np(a))
    # Quantus adds eps = 1e-7 to every |a|; the Gini index's numerator is unchanged by a constant shift
    # (its coefficients sum to 0) and the denominator grows by n eps: G_q = G S / (S + n eps), exactly.
    # Ours is returned in float32: rule 2, one rounding of a value below 1.
    n, s = H * W, a.abs().flatten(1).sum(1).numpy()
    assert np.abs(theirs - ours * s / (s + n * 1e-7)).max() <= tol.ulps(1) + tol.FORMULA64
    assert np.abs(theirs - ours).max() <= ours.max() * n * 1e-7 / s.min() + tol.ulps(1)  # the shift's cost


def test_complexity_differs_from_quantus_by_its_epsilon_only(toy):
    m, x, t = toy
    a = A.gradient_x_input(m, x, t).double()
    ours = M.evaluate("complexity", None, None, None, a).double().numpy()
    theirs = _q(quantus.Complexity(abs=True, normalise=False, disable_warnings=True), m, x, t, _np(a))
    # Quantus takes log(p + 1e-12): sum p log(1 + 1e-12 / p) <= n 1e-12 nats more; ours is returned in
    # float32 (rule 2: one rounding of a value up to log n).
    assert np.abs(theirs - ours).max() <= H * W * 1e-12 + tol.ulps(1, math.log(H * W))


# -- localisation ----------------------------------------------------------------------------------------

def _region():
    s = torch.zeros(B, H, W, dtype=torch.bool)
    s[:, 1:4, 2:6] = True
    s[1] = ~s[1]  # one image with the complement, so that hits and misses both occur
    return s


def test_pointing_game_agrees_with_quantus_on_tie_free_maps(toy):
    m, x, t = toy
    a = A.gradient(m, x, t)
    region = _region()
    assert all(len(v.unique()) == v.numel() for v in a.abs().flatten(1))  # no ties: the definitions coincide
    ours = M.evaluate("pointing_game", None, None, None, a, region=region).double().numpy()
    theirs = _q(quantus.PointingGame(abs=True, normalise=False, disable_warnings=True), m, x, t, _np(a),
                s_batch=_np(region[:, None]).astype(float))
    assert np.array_equal(ours, theirs), (ours, theirs)  # exact: the same argmax


def test_relevance_mass_agrees_with_quantus(toy):
    m, x, t = toy
    a = A.gradient(m, x, t).double()
    region = _region()
    ours = M.evaluate("relevance_mass", None, None, None, a, region=region).double().numpy()
    theirs = _q(quantus.RelevanceMassAccuracy(abs=True, normalise=False, disable_warnings=True), m, x, t, _np(a),
                s_batch=_np(region[:, None]).astype(float))
    # Ours rounds the share to float32 at the end: rule 2 (one rounding) on a value in [0, 1].
    assert np.abs(ours - theirs).max() <= tol.ulps(1)


# -- faithfulness ----------------------------------------------------------------------------------------

def test_linear_imputation_agrees_with_quantus():
    from quantus.functions.perturb_func import noisy_linear_imputation as q_impute

    rng = np.random.default_rng(0)
    img = rng.random((3, 12, 10))
    for share in (0.1, 0.5, 0.95):
        removed = rng.random((12, 10)) < share
        ours = road.linear_imputation(img, removed)
        theirs = q_impute(img, np.flatnonzero(removed.ravel()), noise=0.0)
        assert np.abs(ours - theirs).max() <= tol.FORMULA64  # rule 5: one system, two float64 sparse solves


@pytest.fixture(scope="module")
def fmnist(fmnist_cnn_smoke):
    """A trained model on real images, whose predictions do change as pixels are removed."""
    from xai.data import fashion_mnist

    m = fmnist_cnn_smoke.model
    x = fashion_mnist.load("test")[0][:8]
    with torch.no_grad():
        t = m(x).argmax(1)
    return m, x, t


@pytest.mark.parametrize("name", ["road_morf", "road_lerf"])
def test_road_agrees_with_quantus_without_noise(fmnist, name):
    """Without noise, on a map whose ties do not straddle a removal level (the gradient: gradient x input
    ties the black background at 0, and tied pixels are ordered by a seeded shuffle here, by np.argsort
    in Quantus, so the removed sets would differ)."""
    m, x, t = fmnist
    a = A.gradient(m, x, t)
    levels = (0.1, 0.3, 0.5, 0.7, 0.9)
    sign = 1 if name == "road_morf" else -1
    ranked = (sign * a).flatten(1).sort(1, descending=True).values
    for p in levels:
        k = int(round(p * x[0].numel(), 6))
        assert (ranked[:, k - 1] != ranked[:, k]).all()  # the k-th and (k+1)-th values are not tied
    metric = M.metric(name, percentages=levels, noise=0.0, output="accuracy")
    ours = metric.curve(m, x, t, a).double().mean(0).numpy()
    # Quantus removes most relevant first only; least relevant first is its MoRF of the negated map.
    q = quantus.ROAD(percentages=[round(100 * p) for p in levels], noise=0.0, abs=False, normalise=False,
                     disable_warnings=True)
    res = q(model=m, x_batch=_np(x), y_batch=_np(t), a_batch=sign * _np(a), device="cpu")
    theirs = np.array([res[round(100 * p)] for p in levels])
    # Exact (0/1 predictions averaged) unless a perturbed image's top two logits lie within rule 3's
    # bound of each other (ours fold the batch norms, Quantus's do not), where the two sides could pick
    # different classes: checked not to happen.
    masks = metric.removal_masks(a[:, 0])
    with torch.no_grad():
        for k in range(len(levels)):
            top2 = m(road.noisy_linear_imputation(x, masks[:, k], 0.0, generator(0))).topk(2, dim=1).values
            assert ((top2[:, 0] - top2[:, 1]) > tol.NETWORK * top2.abs().max()).all()
    assert len(set(ours.tolist())) > 1  # the predictions do change along the curve
    assert np.array_equal(ours, theirs), (ours, theirs)


def test_faithfulness_correlation_agrees_with_quantus_on_the_same_subsets(toy, monkeypatch):
    m, x, t = toy
    a = A.gradient_x_input(m, x, t)
    samples, size = 24, 16
    metric = M.metric("faithfulness_correlation", subset_fraction=size / (H * W), samples=samples, seed=4)
    ours = metric(m, x, t, a).double().numpy()
    # The subsets the metric drew, handed to Quantus in its drawing order (run by run, image by image).
    masks = fidelity.random_subsets(B, H * W, size, samples, generator(4))
    queue = [np.flatnonzero(masks[b, s].numpy()) for s in range(samples) for b in range(B)]
    monkeypatch.setattr(np.random, "choice", lambda *args, **kw: queue.pop(0))
    q = quantus.FaithfulnessCorrelation(nr_runs=samples, subset_size=size, perturb_baseline=0.0, abs=False,
                                        normalise=False, return_aggregate=False, disable_warnings=True)
    theirs = _q(q, m, x, t, _np(a))
    assert not queue
    # Both sides' score drops come from float32 passes of the toy (rule 3: NETWORK of the largest logit).
    # A perturbation e of one side moves a Pearson correlation by at most 2 ||e|| / ||drops - mean||.
    sums, drops = fidelity.subset_drops(metric.preprocess(m, x, t, a, None, None), masks, "zero", "logit", 32)
    e = tol.NETWORK * float(m(x).abs().max()) * math.sqrt(samples)
    spread = (drops - drops.mean(1, keepdim=True)).norm(dim=1).numpy()
    assert (np.abs(ours - theirs) <= 2 * e / spread).all(), (ours, theirs)


def test_sensitivity_n_differs_from_quantus_by_definition():
    """Ancona et al.'s sensitivity-n (ours) correlates, per image, the attribution sum of random subsets of
    n pixels with the score drop of removing them. Quantus's SensitivityN instead removes pixels
    cumulatively in the map's order and correlates, at each step, the images' drops so far with the
    attribution of that step's pixels alone, across the batch: one value per step, not per image.
    On a linear model with exact attributions ours is 1 at every n; Quantus's is not."""
    h = w = 4
    m = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(h * w, 2)))
    with torch.no_grad():
        m[1].weight.copy_(torch.randn(2, h * w, generator=torch.Generator().manual_seed(0)))
        m[1].bias.zero_()
    x = torch.rand(6, 1, h, w, generator=torch.Generator().manual_seed(2))
    t = torch.ones(6, dtype=torch.long)
    gxi = A.gradient_x_input(m, x, t)
    sn = M.metric("sensitivity_n", fractions=(0.25, 0.5), samples=16)
    ours = sn.curve(m, x, t, gxi).double()
    assert ours.shape == (6, 2)
    # As in test_metrics_families: drops equal subset sums up to e (rule 2), so 1 - rho <= (sqrt(16) e / spread)^2
    e = (2 * tol.ulps(h * w, float((m[1].weight[1] * x.flatten(1)).abs().sum(1).max()))
         + tol.ulps(1, float(gxi.abs().flatten(1).sum(1).max())))
    batch, gen = sn.preprocess(m, x, t, gxi, None, None), generator(0)
    for k, size in enumerate(sn.sizes(h * w)):
        sums, _ = fidelity.subset_drops(batch, fidelity.random_subsets(6, h * w, size, 16, gen), "zero", "logit", 32)
        spread = (sums - sums.mean(1, keepdim=True)).norm(dim=1)
        assert ((1 - ours[:, k]) <= (4 * e / spread) ** 2 + tol.FORMULA64).all()
    q = quantus.SensitivityN(features_in_step=1, n_max_percentage=0.8, perturb_baseline=0.0, abs=False,
                             normalise=False, return_aggregate=False, disable_warnings=True)
    theirs = np.asarray(q(model=m, x_batch=_np(x), y_batch=_np(t), a_batch=_np(gxi), device="cpu", softmax=False))
    assert theirs.shape == (int(0.8 * h * w),)  # one correlation per removal step, across the 6 images
    assert np.nanmax(np.abs(1 - theirs)) > tol.DIFFERENT  # it measures something else


def test_infidelity_agrees_with_captum_on_the_same_noise(toy):
    """Quantus's Infidelity removes square patches cumulatively to a baseline (no random draws); Yeh et al.'s
    definition averages over random perturbations I, which captum's ``infidelity`` implements: that is
    the anchor here, fed our Gaussian draws. On a linear model's gradient both definitions are 0."""
    from captum.metrics import infidelity

    m, x, t = toy
    a = A.gradient_x_input(m, x, t)
    s, sigma = 12, 0.1
    noise = fidelity.gaussian_perturbations(tuple(x.shape), s, sigma, generator(5))  # [B, S, ...]

    def perturb(inputs):  # captum repeats each image S times in a row: the same order as ours
        i = noise.reshape(B * s, *x.shape[1:])
        return i, inputs - i

    for normalize in (False, True):
        ours = M.evaluate("infidelity", m, x, t, a, samples=s, noise=sigma, normalize=normalize, seed=5).double()
        theirs = infidelity(m, perturb, x, a, target=t, n_perturb_samples=s, max_examples_per_batch=B * s,
                            normalize=normalize).double()
        # Rule 3 on each of the two terms (logits of the toy, float32 dot products of 64 terms): an error e
        # per term moves a mean square error v by at most 2 sqrt(v) e + e^2 (at the optimal scale, too:
        # the value is stationary in the scale, so its error adds only to second order).
        dots = (noise * a[:, None]).flatten(2).sum(-1)
        e = tol.NETWORK * float(m(x).abs().max()) + tol.ulps(64, float(dots.abs().max()) * 2)
        assert ((ours - theirs).abs() <= 2 * ours.sqrt() * e + e * e).all(), (normalize, ours, theirs)

    lin = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(H * W, CLASSES)))
    grad = A.gradient(lin, x, t)
    q = quantus.Infidelity(perturb_baseline=0.0, perturb_patch_sizes=[4], n_perturb_samples=1, abs=False,
                           normalise=False, disable_warnings=True)
    theirs = _q(q, lin, x, t, _np(grad))
    ours = M.evaluate("infidelity", lin, x, t, grad, normalize=False).double().numpy()
    bound = tol.ulps(2 * H * W, float(lin(x).abs().max() + x.sum((1, 2, 3)).max())) ** 2 * 16
    assert (np.abs(theirs) <= bound).all() and (np.abs(ours) <= bound).all()  # rule 2: both 0 up to rounding


# -- robustness ------------------------------------------------------------------------------------------

def _feeder(draws: torch.Tensor):
    """A Quantus ``perturb_func`` that hands out our draws ``[S, B, ...]``, one sample per call."""
    queue = list(draws.float().numpy())

    def perturb(arr, indices, **kw):
        return (arr.reshape(queue[0].shape) + queue.pop(0)).reshape(arr.shape)
    return perturb, queue


@pytest.mark.parametrize("name,cls", [("max_sensitivity", "MaxSensitivity"), ("avg_sensitivity", "AvgSensitivity")])
def test_sensitivity_agrees_with_quantus_on_the_same_draws(toy, name, cls):
    m, x, t = toy
    a = A.gradient(m, x, t)
    s, r = 8, 0.05
    draws = robustness.uniform_ball(tuple(x.shape), s, r, generator(6))
    # One sample's images per explanation call, as Quantus makes them: the same passes on both sides.
    ours = M.evaluate(name, m, x, t, a, explain=M.explainer("gradient"), samples=s, radius=r, seed=6,
                      internal_batch_size=B).double().numpy()
    perturb, queue = _feeder(draws)
    q = getattr(quantus, cls)(nr_samples=s, perturb_func=perturb, abs=False, normalise=False, disable_warnings=True)
    theirs = _q(q, m, x, t, _np(a), explain_func=q_explain)
    assert not queue
    # The same float32 additions x + d and the same explanation calls on the same batches (rule 1); what is
    # left is Quantus's float32 norms of 64 values in a ratio (rule 2), against ours in float64.
    assert np.abs(ours - theirs).max() <= tol.ulps(2 * H * W, np.abs(theirs).max()), (ours, theirs)


def test_max_sensitivity_agrees_with_captum_on_the_same_draws(toy):
    from captum.metrics import sensitivity_max

    m, x, t = toy
    s, r = 8, 0.05
    draws = robustness.uniform_ball(tuple(x.shape), s, r, generator(6))
    ours = M.evaluate("max_sensitivity", m, x, t, explain=M.explainer("gradient"), samples=s, radius=r,
                      seed=6).double()

    queue = list(range(s))

    def perturb(inputs):
        # captum asks for k samples at a time, each image repeated k times in a row; ours are sample-major
        k = inputs.shape[0] // B
        taken = [queue.pop(0) for _ in range(k)]
        return inputs + draws[taken].transpose(0, 1).reshape(B * k, *x.shape[1:])

    def explain(inputs, target):  # captum passes the images' own inputs as a tuple and wants one back
        if isinstance(inputs, tuple):
            return (A.gradient(m, inputs[0], target),)
        return A.gradient(m, inputs, target)

    theirs = sensitivity_max(explain, x, perturb_func=perturb,
                             n_perturb_samples=s, target=t, max_examples_per_batch=B * s).double()
    assert not queue
    # captum explains the S x B perturbed images in one call, ours B at a time: rule 3 for the gradients
    # of the toy, carried into a ratio of norms of order 1 (relative to the ratio's size, at least 1).
    assert (ours - theirs).abs().max() <= tol.NETWORK * max(1.0, float(theirs.abs().max()))


def test_local_lipschitz_agrees_with_quantus_on_the_same_draws(toy):
    m, x, t = toy
    a = A.gradient(m, x, t)
    s, sigma = 8, 0.1
    draws = robustness.gaussian(tuple(x.shape), s, sigma, generator(8))
    ours = M.evaluate("local_lipschitz", m, x, t, a, explain=M.explainer("gradient"), samples=s, noise=sigma,
                      seed=8, internal_batch_size=B).double().numpy()
    perturb, queue = _feeder(draws)
    q = quantus.LocalLipschitzEstimate(nr_samples=s, perturb_func=perturb, abs=False, normalise=False,
                                       disable_warnings=True)
    theirs = _q(q, m, x, t, _np(a), explain_func=q_explain)
    assert not queue
    # The same passes on the same batches (rule 1) and Quantus's float32 norms (rule 2, 64 values each);
    # its denominator ||x - (x + d)|| is taken from the rounded x + d, ours from the draws: an error of at
    # most one spacing of |x| + |d| per element, against ||d||.
    reach = (x.abs()[None] + draws.abs()).flatten(2).norm(dim=-1)
    rel = tol.ulps(2 * H * W) + tol.ulps(1) * float((reach / draws.flatten(2).norm(dim=-1)).max())
    assert np.abs(ours - theirs).max() <= rel * np.abs(theirs).max(), (ours, theirs)


# -- randomisation ---------------------------------------------------------------------------------------

def test_random_logit_agrees_with_quantus_on_two_classes(toy):
    """With two classes the other class is forced, so the two tests explain the same pair of classes.
    Similarity: Spearman on the signed maps (Quantus's SSIM runs on flattened 1-D maps with a window of
    7 values, ours on the 2-D maps as drawn: a definitional difference, so SSIM is not compared)."""
    from quantus.functions.similarity_func import correlation_spearman

    torch.manual_seed(3)
    m = _frozen(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, 2)))
    x = torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 0, 1])
    ours = M.evaluate("random_logit", m, x, t, explain=M.explainer("gradient"),
                      similarity="spearman_signed").double().numpy()
    q = quantus.RandomLogit(num_classes=2, similarity_func=correlation_spearman, abs=False, normalise=False,
                            disable_warnings=True)
    theirs = _q(q, m, x, t, _np(A.gradient(m, x, t)), explain_func=q_explain)
    # Both sides explain with the same function on the same batch of the same images: the same values
    # (rule 1, a run repeated), hence the same ranks; what is left is two float64 evaluations of
    # Spearman's formula (rule 5) and ours rounded to float32 (rule 2, one rounding of a value below 1).
    assert np.abs(ours - theirs).max() <= tol.FORMULA64 + tol.ulps(1), (ours, theirs)


def test_independent_randomisation_differs_from_quantus_by_definition(toy):
    """Quantus's MPRT(layer_order="independent") re-runs each module's initializer (``reset_parameters``:
    Kaiming-uniform weights, and a batch norm's running statistics reset); ours redraws a unit's
    parameters from a Gaussian with their own mean and spread and keeps buffers (xai.metrics.sanity).
    On a model whose units are single layers, both walk the same layers; only the redraw differs, so
    both show the gradient changing, by different amounts."""
    m, x, t = toy
    units = [u for u, _ in M.randomization_units(m)]
    q = quantus.MPRT(layer_order="independent", abs=True, normalise=False, disable_warnings=True)
    res = q(model=m, x_batch=_np(x), y_batch=_np(t), a_batch=_np(A.gradient(m, x, t)), explain_func=q_explain,
            device="cpu")
    q_layers = [k for k in res if k != "original"]
    assert sorted(q_layers) == sorted(units)  # the same layers (Quantus: input side first; ours: output side)
    ours = M.metric("mprt_independent").curve(m, x, t, explain=M.explainer("gradient"))
    assert (ours.mean(0) < 1 - tol.DIFFERENT).all()
    assert all(np.mean(res[k]) < 1 - tol.DIFFERENT for k in q_layers)
