"""Faithfulness and sanity-check metrics, and the renderer's rules for maps."""
import numpy as np
import pytest
import tolerance as tol
import torch
from torch import nn

from xai import attribution as A
from xai import metrics as M
from xai.errors import XaiError
from xai.render import maps as R

PROB = tol.ulps(64)  # rule 2: probabilities from the toy model's 64-term logits


def _frozen(m):
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def toy_linear(seed=0, h=8, w=8):
    """Two classes, logit difference linear in the pixels: the exact evidence of pixel i is w_i x_i."""
    torch.manual_seed(seed)
    m = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(h * w, 2)))
    with torch.no_grad():
        m[1].weight[0] = 0
        m[1].bias.zero_()
        m[1].weight[1] = torch.randn(h * w) * 2
    return m


# -- deletion / insertion ----------------------------------------------------------------------------

def test_oracle_map_beats_random_map_in_deletion_and_insertion():
    m = toy_linear()
    x = torch.rand(6, 1, 8, 8)
    oracle = (m[1].weight[1].view(8, 8) * x[:, 0])  # exact contribution of each pixel to the target
    t = 1
    rnd = M.random_map((6, 8, 8), seed=1)
    kw = dict(steps=16, internal_batch_size=40)
    del_oracle = M.auc(M.perturbation_curves(m, x, t, oracle, mode="deletion", **kw))
    del_random = M.auc(M.perturbation_curves(m, x, t, rnd, mode="deletion", **kw))
    ins_oracle = M.auc(M.perturbation_curves(m, x, t, oracle, mode="insertion", **kw))
    ins_random = M.auc(M.perturbation_curves(m, x, t, rnd, mode="insertion", **kw))
    assert (del_oracle < del_random).all()
    assert (ins_oracle > ins_random).all()
    # and a method with the oracle's information (gradient x input is exact on a linear model) ties it
    gxi = R.saliency_map(A.gradient_x_input(m, x, t), "signed")
    assert torch.allclose(M.auc(M.perturbation_curves(m, x, t, gxi, **kw)),  # rule 2: probabilities of
                          M.auc(M.perturbation_curves(m, x, t, oracle, **kw)), atol=PROB, rtol=0)  # 64-term logits


def test_curve_end_points_and_batching_do_not_change_values():
    m = toy_linear()
    x = torch.rand(2, 1, 8, 8)
    mp = M.random_map((2, 8, 8))
    p = m(x).softmax(-1)[:, 1]
    p_black = m(torch.zeros_like(x)).softmax(-1)[:, 1]
    for sub in ("zero", "blur"):
        a = M.perturbation_curves(m, x, 1, mp, substrate_kind=sub, steps=8, internal_batch_size=3)
        b = M.perturbation_curves(m, x, 1, mp, substrate_kind=sub, steps=8, internal_batch_size=18)
        assert torch.allclose(a, b, atol=PROB, rtol=0)
        assert torch.allclose(a[:, 0], p, atol=PROB, rtol=0)  # nothing deleted yet
    d = M.perturbation_curves(m, x, 1, mp, mode="deletion", substrate_kind="zero", steps=8)
    assert torch.allclose(d[:, -1], p_black, atol=PROB, rtol=0)  # everything deleted
    i = M.perturbation_curves(m, x, 1, mp, mode="insertion", substrate_kind="zero", steps=8)
    assert torch.allclose(i[:, 0], p_black, atol=PROB, rtol=0) and torch.allclose(i[:, -1], p, atol=PROB, rtol=0)


def test_auc_trapezoid_and_orders():
    assert torch.equal(M.auc(torch.tensor([[1.0, 0.5, 0.0]])), torch.tensor([0.5]))  # rule 1: dyadic sums
    assert torch.equal(M.auc(torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])), torch.tensor([0.875]))
    flat = torch.zeros(1, 10, 10)
    flat[0, 9, 9] = 1
    order = M.pixel_order(flat, seed=0)
    assert order[0, 0] == 99  # the one hot pixel first
    assert not torch.equal(order[0, 1:11], torch.arange(10))  # ties not in raster order
    assert torch.equal(order, M.pixel_order(flat, seed=0))
    g = M.centre_map((1, 9, 9))
    assert g[0].argmax() == 40
    with pytest.raises(XaiError, match="do not match"):
        M.perturbation_curves(toy_linear(), torch.rand(1, 1, 8, 8), 1, torch.rand(1, 7, 8))


def test_completeness_gap_by_hand():
    m = toy_linear()
    x = torch.rand(3, 1, 8, 8)
    zero = torch.zeros_like(x)
    exact = A.gradient_x_input(m, x, 1)  # linear: sum of w x = f(x) - f(0)
    # Rule 2, relative to |f(x) - f(0)|: two 64-term sums whose terms add up to sum |w x|.
    diff = (m(x) - m(zero))[:, 1].abs()
    bound = tol.ulps(2 * 64) * (exact.flatten(1).abs().sum(1) / diff)
    assert (M.completeness_gap(m, x, 1, exact, zero) <= bound).all()
    half = exact / 2
    assert ((M.completeness_gap(m, x, 1, half, zero) - 0.5).abs() <= bound).all()


# -- sanity checks -------------------------------------------------------------------------------------

def test_randomization_units_of_real_architectures(lite0):
    units = M.randomization_units(lite0.model)
    names = [u for u, _ in units]
    assert names == ["classifier", "conv_head"] + [f"blocks.{i}" for i in range(6, -1, -1)] + ["conv_stem"]
    params = dict(units)
    assert "bn2.weight" in params["conv_head"] and "bn1.weight" in params["conv_stem"]
    assert sum(len(p) for p in params.values()) == len(list(lite0.model.parameters()))


def test_cascading_randomization_leaves_the_model_alone_and_changes_each_unit(fmnist_cnn_smoke):
    m = fmnist_cnn_smoke.model
    before = {k: v.clone() for k, v in m.state_dict().items()}
    changed = set()
    for unit, net in M.cascading_randomization(m, seed=0):
        now = dict(net.named_parameters())
        changed |= {k for k in before if k in now and not torch.equal(now[k], before[k])}
    assert changed == {k for k, _ in m.named_parameters()}
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_sanity_check_detects_randomization(fmnist_cnn_smoke):
    """The gradient map decorrelates as the weights are randomized; a model-blind 'explanation'
    (the image itself) does not: the metric measures dependence on the model."""
    from xai.data import fashion_mnist

    x = fashion_mnist.load("test")[0][:4]
    t = torch.tensor([0, 1, 2, 3])
    explain = {
        "gradient": lambda net: A.gradient(net, x, t),
        "edge_detector": lambda net: x.clone(),
    }
    result = M.sanity_curves(fmnist_cnn_smoke.model, explain, {"gradient": "sensitivity"}, seed=0)
    grad, blind = result.curves["gradient"], result.curves["edge_detector"]
    assert result.units == [r["unit"] for r in grad] and len(result.first_maps["gradient"]) == len(grad) + 1
    assert [r["unit"] for r in grad][0] == "fc" and [r["unit"] for r in grad][-1] == "conv1"
    # Not rounding bounds: the property itself, with wide margins either side (1.0 for the trained model
    # and for a model-blind map; seen here 0.1-0.3 after the head is randomized).
    # against 1.0 for the trained model itself: randomizing the head alone already scrambles the map
    per_depth = [np.mean(r["spearman_abs"]) for r in grad]
    assert max(per_depth) < 0.5 and per_depth[-1] < 0.2, per_depth
    assert np.mean(grad[-1]["ssim"]) < 0.6
    assert all(np.allclose(r["spearman_abs"], 1) and np.allclose(r["ssim"], 1) for r in blind)  # rule 2, float64


def test_similarities_by_hand():
    a = torch.arange(64.0).view(1, 1, 8, 8) - 20
    s = M.similarities(a, -a, "signed")
    assert np.allclose(s["spearman_signed"], -1) and np.allclose(s["ssim"], 1)
    assert np.allclose(s["spearman_abs"], 1)
    # a gradient is drawn as max |.| over channels: the sign flip is invisible there, not in the sum
    g = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    s = M.similarities(g, -g, "sensitivity")
    assert np.allclose(s["spearman_abs"], 1) and np.allclose(s["spearman_signed"], -1)
    assert np.allclose(M.ssim(a[:, 0], a[:, 0]), 1)
    assert np.isnan(M.spearman(torch.zeros(1, 8, 8), a[:, 0])[0])


# -- rendering rules -----------------------------------------------------------------------------------

def test_aggregations_by_hand():
    a = torch.tensor([[[1.0, -2.0]], [[-3.0, 2.0]], [[0.0, 0.0]]])  # [C=3, H=1, W=2]
    assert torch.equal(R.aggregate(a, "sum"), torch.tensor([[-2.0, 0.0]]))
    assert torch.equal(R.aggregate(a, "max_abs"), torch.tensor([[3.0, 2.0]]))
    assert torch.allclose(R.aggregate(a, "l2"), torch.tensor([[10.0**0.5, 8.0**0.5]]), atol=0,
                          rtol=tol.ulps(2))  # rule 2: a square root of a sum
    assert torch.equal(R.saliency_map(a[None], "sensitivity"), torch.tensor([[[3.0, 2.0]]]))
    with pytest.raises(XaiError):
        R.aggregate(a, "mean")


def test_clipping_rule_is_symmetric_99th_percentile():
    m = np.linspace(-1, 1, 10001).reshape(1, -1) * np.r_[np.ones(5000), 10 * np.ones(5001)]
    lim = R.clip_limit(m, signed=True)
    assert lim == pytest.approx(np.percentile(np.abs(m), 99))
    n = R.normalise(m, signed=True)
    assert n.min() >= -1 and n.max() == 1 and n[0, 5000] == 0
    rgb = R.colorize(np.array([[-5.0, 0.0, 5.0]]), signed=True)
    assert rgb[0, 0, 2] > rgb[0, 0, 0] and rgb[0, 2, 0] > rgb[0, 2, 2]  # blue below zero, red above
    assert np.allclose(rgb[0, 1], rgb[0, 1].mean(), atol=0.05)  # zero is neutral
    sparse = np.zeros((40, 40))  # one hot pixel: the 99th percentile is 0, so the maximum is used
    sparse[0, 0] = 4.0
    assert R.clip_limit(sparse, signed=False) == 4.0


def test_smoothing_is_always_labelled():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    R.draw(ax, np.random.default_rng(0).random((16, 16)), signed=False, title="Gradient", smooth_sigma=2)
    assert "smoothed, σ = 2 px" in ax.get_title()
    ax2 = fig.add_subplot(2, 1, 2)
    R.draw(ax2, np.zeros((4, 4)), signed=True, title="Gradient")
    assert "smoothed" not in ax2.get_title()
    plt.close(fig)


def test_several_maps_at_once_equal_one_at_a_time():
    m = toy_linear()
    x = torch.rand(3, 1, 8, 8)
    stack = torch.stack([M.random_map((3, 8, 8), seed=s) for s in range(4)])
    together = M.perturbation_curves(m, x, 1, stack, mode="insertion", substrate_kind="blur", steps=5,
                                     internal_batch_size=7)
    assert together.shape == (4, 3, 6)
    for r in range(4):
        alone = M.perturbation_curves(m, x, 1, stack[r], mode="insertion", substrate_kind="blur", steps=5)
        assert torch.allclose(together[r], alone, atol=PROB, rtol=0)
