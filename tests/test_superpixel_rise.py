"""Superpixel ablation, KernelSHAP, LIME and RISE: closed forms on a linear model, exact Shapley values
on a tiny one, seeding."""
import itertools
import math

import pytest
import tolerance as tol
import torch
from torch import nn

from xai.attribution.rise import MaskSampler, rise
from xai.attribution import superpixel as SP


def _frozen(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def dyadic_linear(seed=0, side=8, classes=3):
    """A linear model whose every output is exact in float32: integer weights and bias, inputs in
    quarters, so sums of 64 terms stay small integers over 4 (rule 2 then has nothing to round)."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(side * side, classes))
    with torch.no_grad():
        m[1].weight.copy_(torch.randint(-3, 4, (classes, side * side), generator=g).float())
        m[1].bias.copy_(torch.randint(-3, 4, (classes,), generator=g).float())
    x = torch.randint(0, 5, (2, 1, side, side), generator=g).float() / 4
    return _frozen(m), x


def _blocks(side=8):
    """Two labelings into four superpixels: quadrants of rows, and vertical stripes."""
    i = torch.arange(side * side).view(side, side)
    return torch.stack([i // (side * side // 4), (i % side) // (side // 4)])[:, None]


def _contributions(m, x, t, seg, ref):
    """Each superpixel's exact contribution to a linear model's logit: sum of w (x - ref) over it."""
    w = m[1].weight[t].view_as(x)
    per_pixel = w * (x - ref)
    out = torch.zeros_like(x)
    for i in range(len(x)):
        for k in seg[i].unique():
            sel = seg[i] == k
            out[i][sel] = per_pixel[i][sel].sum()
    return out


@pytest.mark.parametrize("method", ["feature_ablation", "kernel_shap", "lime"])
def test_superpixel_methods_recover_a_linear_models_contributions(method):
    m, x = dyadic_linear()
    t = torch.tensor([0, 2])
    seg = _blocks()
    opts = {} if method == "feature_ablation" else dict(samples=64)
    got = getattr(SP, method)(m, x, t, segments=seg, **opts)
    expected = _contributions(m, x, t, seg, torch.zeros_like(x))
    # Rule 2: the logits are exact (dyadic_linear); ablation takes their difference, the regressions solve
    # a least-squares problem in float64 whose error stays far below one float32 spacing of the result.
    assert got.shape == (2, 1, 8, 8)
    assert torch.allclose(got, expected, rtol=0, atol=tol.ulps(4, float(expected.abs().max())))


def test_kernel_shap_estimates_exact_shapley_values():
    """A tiny nonlinear model on four superpixels: exact Shapley values by enumerating all 16
    coalitions, against KernelSHAP over seeds (rule 7 with the spread over seeds; its finite-sample
    bias is of order 1/samples, far below that)."""
    torch.manual_seed(0)
    m = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 2)))
    x = torch.rand(1, 1, 8, 8)
    seg = _blocks()[:1]
    players = 4

    def value(coalition):
        keep = torch.zeros_like(x)
        for k in coalition:
            keep[seg == k] = 1
        with torch.no_grad():
            return float(m(x * keep)[0, 1])

    v = {c: value(c) for r in range(players + 1) for c in itertools.combinations(range(players), r)}
    exact = []
    for k in range(players):
        phi = 0.0
        for c, vc in v.items():
            if k in c:
                continue
            with_k = tuple(sorted((*c, k)))
            weight = math.factorial(len(c)) * math.factorial(players - len(c) - 1) / math.factorial(players)
            phi += weight * (v[with_k] - vc)
        exact.append(phi)
    exact = torch.tensor(exact)
    runs = []
    for seed in range(12):
        a = SP.kernel_shap(m, x, 1, segments=seg, samples=400, internal_batch_size=100, seed=seed)
        runs.append(torch.stack([a[0, 0][seg[0, 0] == k][0] for k in range(players)]))
    runs = torch.stack(runs)
    # efficiency: each estimate sums to f(x) - f(reference), up to the 1e-6 share captum's finite
    # "infinite" weight leaves (rule 2 on top)
    total = v[tuple(range(players))] - v[()]
    assert torch.allclose(runs.sum(1), torch.full((12,), total), rtol=0, atol=1e-5 * abs(total) + tol.ulps(16, 1))
    sd = runs.std(0)
    assert ((runs.mean(0) - exact).abs() <= tol.SIGMA * sd / len(runs) ** 0.5 + tol.ulps(16, 1)).all()
    assert (sd > 0).all()  # the seeds do sample differently, so the bound is a real one


def test_superpixels_are_contiguous_labels_and_deterministic():
    from xai.data import fashion_mnist, images

    rgb = torch.nn.functional.interpolate(images.load("chelsea")[None], size=(64, 64), mode="bilinear",
                                          antialias=True)
    grey = fashion_mnist.load("test")[0][:2]
    for x, n in ((rgb, 20), (grey, 16)):
        s = SP.superpixels(x, n)
        assert s.shape == (x.shape[0], 1, *x.shape[2:]) and s.dtype == torch.long
        for labels in s:
            k = int(labels.max()) + 1
            assert set(labels.unique().tolist()) == set(range(k)) and 2 <= k <= 3 * n
        assert torch.equal(s, SP.superpixels(x, n))


def test_sampled_methods_repeat_and_differ_by_seed(fmnist_cnn_smoke):
    from xai.data import fashion_mnist

    x = fashion_mnist.load("test")[0][:2]
    t = torch.tensor([0, 9])
    for name, fn, opts in (("kernel_shap", SP.kernel_shap, dict(segments=10, samples=24)),
                           ("lime", SP.lime, dict(segments=10, samples=24)),
                           ("rise", rise, dict(masks=24))):
        a, b, c = (fn(fmnist_cnn_smoke, x, t, seed=s, **opts) for s in (1, 1, 2))
        assert torch.equal(a, b), name  # rule 1
        assert not torch.allclose(a, c, atol=tol.DIFFERENT * float(a.abs().max())), name


# -- RISE ----------------------------------------------------------------------------------------------------

def test_rise_masks_are_smooth_shifted_and_seeded():
    s = MaskSampler(50, (10, 12), grid=4, p=0.3, seed=1)
    m = s.masks(0, 50)
    # rule 8: a bilinear mix of 0s and 1s, four weights summed
    assert m.shape == (50, 1, 10, 12) and m.min() >= 0 and m.max() <= 1 + tol.ulps(4)
    assert torch.equal(m[10:20], s.masks(10, 20))  # chunks are the same masks, whatever the chunking
    assert torch.equal(m, MaskSampler(50, (10, 12), grid=4, p=0.3, seed=1).masks(0, 50))
    assert s.cell == (3, 3) and set(s.dy.tolist()) <= {0, 1, 2} and len(set(s.dx.tolist())) > 1


def test_rise_on_a_linear_model_matches_its_closed_form():
    """For f(z) = w.z + b, E[f(x M) M(p)] / E[M(p)] = (sum_q v_q E[M(q) M(p)] + b p) / p with
    v = w x summed over channels. A mask is sum_k U_k B_k: the cells B_k are Bernoulli(p), U_k the
    bilinear weights of cell k at each pixel for the mask's offset, so
    E[M(q) M(p)] = p^2 + p (1 - p) E_offset[U(q) . U(p)], computed here from the sampler's own
    upsampling of one-hot cells over every offset. Rule 7: within 4 standard errors of the n masks."""
    torch.manual_seed(0)
    side, grid, p, n = 8, 4, 0.5, 3000
    m = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(2 * side * side, 3)))
    t = 1
    with torch.no_grad():  # evidence in one corner, so the expected map has structure to find
        m[1].weight[t].view(2, side, side)[0, :3, :3] += 2
    x = torch.rand(1, 2, side, side)
    w, b = m[1].weight[t].view(2, side, side), float(m[1].bias[t])
    v = (w * x[0]).sum(0).flatten()  # [HW]

    s = MaskSampler(n, (side, side), grid=grid, p=p, seed=4)
    onehot = torch.eye(grid * grid).view(grid * grid, 1, grid, grid)
    up = s.upsample(onehot)  # [K, 1, ., .]
    gram = torch.zeros(side * side, side * side, dtype=torch.float64)
    offsets = list(itertools.product(range(s.cell[0]), range(s.cell[1])))
    for dy, dx in offsets:
        u = up[:, 0, dy:dy + side, dx:dx + side].reshape(grid * grid, -1).double()  # [K, HW]
        gram += u.T @ u
    gram /= len(offsets)
    second = p * p + p * (1 - p) * gram  # E[M(q) M(p)]
    expected = ((v.double() @ second) + b * p) / p

    got = rise(m, x, t, masks=n, grid=grid, p=p, output="logit", internal_batch_size=256, seed=4)
    masks = s.masks(0, n)[:, 0].flatten(1).double()  # the same draws, to measure the spread
    with torch.no_grad():
        scores = m(x * s.masks(0, n)).double()[:, t]
    samples = scores[:, None] * masks / p
    assert torch.allclose(got.flatten().double(), samples.mean(0), rtol=0,
                          atol=tol.ulps(n, float(samples.abs().mean(0).max())))  # rule 2: a sum of n
    se = samples.std(0) / n ** 0.5
    assert ((got.flatten().double() - expected).abs() <= tol.SIGMA * se).all()
    # the closed form varies by more than two bounds: a flat map (one that ignored the model) would fail
    assert expected.max() - expected.min() > 2 * tol.SIGMA * float(se.max())


def test_rise_does_not_depend_on_the_batch_or_the_pass_size(fmnist_cnn_smoke):
    from xai.data import fashion_mnist

    x = fashion_mnist.load("test")[0][:3]
    t = torch.tensor([2, 3, 4])
    together = rise(fmnist_cnn_smoke, x, t, masks=40, internal_batch_size=30)
    alone = rise(fmnist_cnn_smoke, x[1:2], t[1:2], masks=40, internal_batch_size=7)
    # Rule 3: the same masks and passes at other batch sizes (other kernels), summed in another grouping
    assert tol.network_close(together[1:2], alone)
    assert (together >= 0).all()
