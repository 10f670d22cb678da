"""DeepLIFT, DeepLIFT-SHAP and GradientSHAP through captum: the Rescale rule by hand, summation-to-delta,
expectations on a linear model, seeding, and refusals."""
from collections import OrderedDict

import pytest
import tolerance as tol
import torch
import torch.nn.functional as F
from torch import nn

from xai import attribution as A
from xai.attribution import shapley as S
from xai.errors import NotApplicableError


def _frozen(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def relu_pool_net(seed=0):
    """conv -> ReLU -> max-pool -> dense: the ReLU feeds the max-pool directly, the case captum 0.9 gets
    wrong without the decoupling copy (xai.attribution.shapley._decoupled)."""
    torch.manual_seed(seed)
    return _frozen(nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 2, 3, padding=1)), ("relu", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(8, 3)),
    ])))


def reference_deeplift(m, x, r, t):
    """DeepLIFT with the Rescale rule (Shrikumar et al. 2017, sec. 3.3) written out: multipliers go down
    from the logit; a ReLU's is its output change over its input change; a max-pool window's change is
    routed as captum does, the part above the reference's maximum to the image's argmax and the rest to
    the reference's argmax. Returns the attributions and the |terms| rounding acts on."""
    z, zr = m.conv(x), m.conv(r)
    a, ar = F.relu(z), F.relu(zr)
    p, ix = F.max_pool2d(a, 2, return_indices=True)
    pr, ir = F.max_pool2d(ar, 2, return_indices=True)
    mp = m.fc.weight[t].view_as(p)
    hi = torch.max(p, pr)
    size = a.shape[-2:]
    ca = F.max_unpool2d(mp * (hi - pr), ix, 2, output_size=size) + F.max_unpool2d(mp * (p - hi), ir, 2,
                                                                                  output_size=size)
    da, dz = a - ar, z - zr
    ma = torch.where(da != 0, ca / da, torch.zeros_like(ca))  # no change, no contribution to route
    mz = ma * torch.where(dz != 0, da / dz, (z > 0).to(z))
    w = m.conv.weight
    attr = (x - r) * torch.nn.grad.conv2d_input(x.shape, w, mz, padding=1)
    mag = (x - r).abs() * torch.nn.grad.conv2d_input(x.shape, w.abs(), mz.abs(), padding=1)
    return attr, mag


def test_deeplift_matches_the_rescale_rule_by_hand():
    m = relu_pool_net()
    x = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 1, 2])
    attr, delta = S.deeplift_with_delta(m, x, t, baseline_kind="uniform", seed=3)
    r = A.baseline(x[:1], "uniform", seed=3)  # references are drawn one image at a time
    expected, mag = reference_deeplift(m, x, r.expand_as(x), t)
    # Rule 2: a dense multiplier, two divisions and a 9-term transposed convolution per input pixel
    assert ((attr - expected).abs() <= tol.ulps(16) * mag + tol.ulps(1, float(mag.max()))).all()
    with torch.no_grad():
        diff = (m(x) - m(r)).gather(1, t[:, None]).squeeze(1)
    # summation-to-delta: captum's delta is the sum minus f(x) - f(r) (rule 2: 16-pixel and 8-term sums)
    assert torch.allclose(attr.flatten(1).sum(1), diff, rtol=0, atol=tol.ulps(24, float(mag.sum((1, 2, 3)).max())))
    assert delta.abs().max() <= tol.ulps(24, float(mag.sum((1, 2, 3)).max()))


def _deltas_within_rounding(model, x, t, kind):
    attr, delta = S.deeplift_with_delta(model, x, t, baseline_kind=kind)
    net = getattr(model, "model", model)
    ref = torch.cat([A.baseline(x[i:i + 1], kind) for i in range(len(x))])  # drawn one image at a time
    with torch.no_grad():
        fx, fr = net(x).gather(1, t[:, None]).squeeze(1), net(ref).gather(1, t[:, None]).squeeze(1)
    scale = fx.abs() + fr.abs() + attr.flatten(1).abs().sum(1)
    # Rule 3: the Rescale rule keeps every layer's total change; float32 through the network
    assert (delta.abs() <= tol.NETWORK * scale).all(), (kind, delta, scale)
    assert torch.allclose(attr.flatten(1).sum(1), fx - fr, rtol=0, atol=tol.NETWORK * float(scale.max()))


@pytest.fixture(scope="module")
def cleverhans_square():
    from xai.shortcuts import poisoned as P

    return P.trained(P.standard_specs("Shirt", fraction=1.0)["square"], "smoke", device="cpu")


def test_deeplift_sums_to_delta_on_the_fashion_mnist_and_clever_hans_models(fmnist_cnn_smoke, cleverhans_square):
    from xai.data import fashion_mnist
    from xai.models import fmnist

    x = fashion_mnist.load("test")[0][:3]
    t = torch.tensor([0, 4, 8])
    torch.manual_seed(0)
    vgg = _frozen(fmnist.narrow_vgg())  # in-place ReLUs straight into max-pools
    for model in (fmnist_cnn_smoke, cleverhans_square, vgg):
        for kind in ("black", "blur", "uniform"):
            _deltas_within_rounding(model, x, t, kind)


def test_captum_alone_misses_summation_to_delta_where_a_relu_feeds_a_max_pool(fmnist_cnn_smoke):
    """Why the decoupling copy exists: captum 0.9's DeepLift on the same model and references, without
    it. If a later captum fixes this (issue #1104), this test says the copy can go."""
    import warnings

    from captum.attr import DeepLift

    from xai.data import fashion_mnist

    x = fashion_mnist.load("test")[0][:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr, delta = DeepLift(S._Net(fmnist_cnn_smoke.model)).attribute(
            x, baselines=torch.zeros_like(x), target=1, return_convergence_delta=True)
    ours = S.deeplift(fmnist_cnn_smoke, x, 1)
    assert (delta.abs() > tol.DIFFERENT * ours.flatten(1).abs().sum(1)).any()


def test_deeplift_shap_is_deeplift_averaged_over_the_references(fmnist_cnn_smoke):
    from xai.data import fashion_mnist

    x = fashion_mnist.load("test")[0][:2]
    t = torch.tensor([3, 5])
    shap = S.deeplift_shap(fmnist_cnn_smoke, x, t, baselines=("black", "blur"))
    mean = (S.deeplift(fmnist_cnn_smoke, x, t, baseline_kind="black")
            + S.deeplift(fmnist_cnn_smoke, x, t, baseline_kind="blur")) / 2
    # Rule 3: the same passes, batched with the references (captum) or one reference at a time
    assert tol.network_close(shap, mean)
    images = torch.stack([torch.zeros(1, 28, 28), torch.full((1, 28, 28), 0.5)])  # a shared reference set
    shared = S.deeplift_shap(fmnist_cnn_smoke, x, t, baselines=images)
    assert shared.shape == x.shape and not tol.network_close(shared, shap, tol.DIFFERENT)


def linear_model(seed=0, c=1, h=4, w=4, classes=3):
    torch.manual_seed(seed)
    return _frozen(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes)))


def test_gradient_shap_expectation_is_integrated_gradients_on_a_linear_model():
    m = linear_model()
    x = torch.rand(2, 1, 4, 4)
    t = torch.tensor([2, 0])
    w = m[1].weight[t].view(2, 1, 4, 4)
    # One reference and no noise: every sample is (x - b) * w, which is also Integrated Gradients.
    for kind in ("black", "blur"):
        gs = S.gradient_shap(m, x, t, baselines=(kind,), samples=8)
        ig = A.integrated_gradients(m, x, t, baseline_kind=kind, steps=4)
        # Rule 2: a difference times a weight, averaged over 8 samples (IG: a 4-point quadrature)
        assert torch.allclose(gs, ig, rtol=0, atol=tol.ulps(8, float(ig.abs().max())))
    # With references drawn from a set and noise added to the image, the expectation is still
    # (x - E[b]) * w; each sample deviates by (eps - (b - E[b])) * w.
    n, sigma = 4000, 0.2
    refs = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5), torch.ones(1, 4, 4)])
    gs = S.gradient_shap(m, x, t, baselines=refs, samples=n, noise=sigma, internal_batch_size=500)
    expected = (x - refs.mean(0)) * w
    sd = w.abs() * (sigma ** 2 + refs.var(0, unbiased=False)) ** 0.5  # per-sample standard deviation
    assert ((gs - expected).abs() <= tol.SIGMA * sd / n ** 0.5).all()  # rule 7


def test_seeded_methods_repeat_and_differ_by_seed(fmnist_cnn_smoke):
    from xai.data import fashion_mnist

    x = fashion_mnist.load("test")[0][:2]
    t = torch.tensor([1, 7])
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    runs = {}
    for name, opts in (("gradient_shap", dict(samples=8, noise=0.1)), ("deeplift_shap", {})):
        a = A.attribute(name, fmnist_cnn_smoke, x, t, seed=5, **opts)
        b = A.attribute(name, fmnist_cnn_smoke, x, t, seed=5, **opts)
        c = A.attribute(name, fmnist_cnn_smoke, x, t, seed=6, **opts)
        assert torch.equal(a, b), name  # rule 1
        runs[name] = not torch.allclose(a, c, atol=tol.DIFFERENT * float(a.abs().max()))
    assert all(runs.values()), runs
    assert torch.equal(torch.rand(1), before)  # the caller's generator is left where it was


# -- refusals -----------------------------------------------------------------------------------------------

class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


class _Gated(_Functional):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.relu(self.conv(x))
        return self.fc((h * h.mean((2, 3), keepdim=True)).mean((2, 3)))


def test_deeplift_refuses_what_captum_has_no_rule_for(lite0):
    from xai.data import fashion_mnist
    from xai.models import fmnist

    with pytest.raises(NotApplicableError) as e:
        S.deeplift(lite0, torch.rand(1, 3, 224, 224), 1)
    assert e.value.activation == "ReLU6" and e.value.model == "efficientnet_lite0"
    x = fashion_mnist.load("test")[0][:1]
    torch.manual_seed(0)
    with pytest.raises(NotApplicableError) as e:  # torchvision's BasicBlock calls self.relu twice
        S.deeplift(_frozen(fmnist.resnet18_28px()), x, 1)
    assert "more than once" in e.value.reason and e.value.activation is None
    for net, op in ((_Functional, "relu"), (_Gated, "mul")):
        with pytest.raises(NotApplicableError) as e:
            S.deeplift_shap(_frozen(net()), torch.rand(1, 1, 5, 5), 0)
        assert op in e.value.reason
    with pytest.raises(NotApplicableError) as e:
        S.deeplift(_frozen(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))),
                   torch.rand(1, 1, 2, 2), 0)
    assert e.value.activation == "GELU"
