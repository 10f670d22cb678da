"""LRP through zennit: a hand-computed reference, conservation on toy and real networks, the canonizers,
and refusals.

Conservation: the input relevance sums to the explained logit minus what the rules absorb. In these
composites only two things absorb: the biases (each rule's share ``b_j R_j / z_j``; batch norms merged
into convolutions make biases of their own) and the stabilisers (``epsilon`` and ``1e-6`` added to each
denominator). Flat, z^B, ReLU/ReLU6 passing, sums and pooling keep the total. So:

* with zero biases and vanishing stabilisers, the input relevance *is* the logit, to float32 rounding;
* with biases, ``propagate`` measures what each rule absorbed, and everything else must add up: the
  relevance unaccounted for is rounding, and every layer that absorbs more than rounding has a bias.
"""
import copy
from collections import OrderedDict

import pytest
import tolerance as tol
import torch
import torch.nn.functional as F
from torch import nn

from xai.attribution.lrp import COMPOSITES, _first_layer, lrp_epsilon_gamma_box, lrp_epsilon_plus_flat, propagate
from xai.errors import NotApplicableError


def _frozen(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _randomise_norms(m: nn.Module, seed: int = 0, zero_shift: bool = False) -> nn.Module:
    """Batch norms with statistics a trained model could have (a fresh norm is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            if zero_shift:
                mod.running_mean.zero_()
                mod.bias.data.zero_()
            else:
                mod.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
                mod.bias.data.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return m


def toy_cnn(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return _frozen(nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(2, 4, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(4, 3, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(3, 5)),
    ])))


def _stab(z, e):
    return z + e * ((z == 0).to(z) + torch.sign(z))  # zennit's stabiliser: away from zero, 0 counts as +


def reference_epsilon_plus_flat(m, x, t, eps=1e-6, absolute=False):
    """EpsilonPlusFlat by hand on :func:`toy_cnn`, written from the rules' definitions (Montavon et al.
    2019, eqs. 3-5 and the flat rule) with transposed convolutions, not zennit's gradient trick.
    Returns the input relevance and each layer's bias share. With ``absolute`` the relevance below the
    dense layer is replaced by its magnitude: every later coefficient is non-negative, so that gives the
    sum of |terms| that rounding acts on."""
    a1 = F.relu(m.conv1(x))
    a2 = F.relu(m.conv2(a1))
    p = a2.mean((2, 3))
    z3 = m.fc(p)
    b = torch.arange(len(t))
    r3 = torch.zeros_like(z3)
    r3[b, t] = z3[b, t]
    # dense, LRP-epsilon: R_k = p_k sum_j W_jk R_j / (z_j + eps)
    s3 = r3 / _stab(z3, eps)
    rp = p * (s3 @ m.fc.weight)
    shares = {"fc": (s3 * m.fc.bias).sum(1)}
    if absolute:
        rp = rp.abs()
    # average pool: relevance in proportion to each position's share of the mean
    hw = a2.shape[2] * a2.shape[3]
    r_a2 = a2 / hw * (rp / _stab(p, 1e-6))[:, :, None, None]
    # conv2, LRP-z+ (a1 >= 0 after the ReLU, so only the positive weights and the positive bias count)
    wp, bp = m.conv2.weight.clamp(min=0), m.conv2.bias.clamp(min=0)
    zp = F.conv2d(a1, wp, bp, padding=1)
    s2 = r_a2 / _stab(zp, 1e-6)
    r_a1 = a1 * torch.nn.grad.conv2d_input(a1.shape, wp, s2, padding=1)
    shares["conv2"] = (s2 * bp[None, :, None, None]).sum((1, 2, 3))
    # conv1, flat: each output's relevance spread evenly over the inputs of its receptive field
    ones = torch.ones_like(m.conv1.weight)
    count = F.conv2d(torch.ones_like(x), ones, padding=1)
    s1 = r_a1 / _stab(count, 1e-6)
    r_x = torch.nn.grad.conv2d_input(x.shape, ones, s1, padding=1)
    return r_x, shares, z3[b, t]


def test_epsilon_plus_flat_matches_a_hand_computed_reference():
    m = toy_cnn()
    x = torch.rand(3, 2, 6, 6)
    t = torch.tensor([0, 3, 4])
    got = propagate(m, x, t, composite="epsilon_plus_flat")
    ref, shares, logit = reference_epsilon_plus_flat(m, x, t)
    mag, _, _ = reference_epsilon_plus_flat(m, x, t, absolute=True)
    # Rule 2: every input relevance is a chain of sums (dense 3 terms, pool 36, conv2 27, conv1 36), each
    # rounded at the magnitude of its |terms|, which `mag` carries to the input.
    n = 3 + 36 + 27 + 36
    assert ((got.relevance - ref).abs() <= tol.ulps(n) * mag + tol.ulps(1, float(mag.max()))).all()
    for layer in ("fc", "conv2"):
        assert torch.allclose(got.absorbed[layer], shares[layer], rtol=0, atol=tol.ulps(n, float(logit.abs().max())))
    # the flat rule has no bias (zennit zeroes it) and pooling none: they absorb only their stabiliser,
    # 1e-6 of a count >= 4 or of a mean, far below rounding of the logit
    scale = float(logit.abs().max())
    assert got.absorbed["conv1"].abs().max() <= tol.ulps(n, scale) + 1e-6 * scale
    # conservation, accounted: input + what the biases took = the logit
    assert torch.allclose(got.relevance.flatten(1).sum(1) + shares["fc"] + shares["conv2"], logit, rtol=0,
                          atol=tol.ulps(n + 72, scale) + 1e-6 * scale)  # + the 72-pixel input sum


def no_bias_cnn(seed=0) -> nn.Module:
    """Convolutions without bias, batch norms with zero mean and shift (so merging makes no bias), a
    max-pool and an average pool, a dense head without bias."""
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(6)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 8, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(8)), ("relu2", nn.ReLU6()),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(8, 4, bias=False)),
    ]))
    return _frozen(_randomise_norms(net, seed, zero_shift=True))


@pytest.mark.parametrize("composite", COMPOSITES)
def test_conservation_is_exact_without_biases(composite):
    m = no_bias_cnn()
    x = torch.rand(4, 3, 8, 8)
    t = torch.tensor([0, 1, 2, 3])
    p = propagate(m, x, t, composite=composite, epsilon=1e-12, stabilizer=1e-12)
    total = p.relevance.flatten(1).sum(1)
    in_play = float(p.logit.abs().max() + p.relevance.flatten(1).abs().sum(1).max())
    # Rule 2: each layer redistributes exactly in real arithmetic; rounding of its sums (fan-ins 27, 54,
    # 64 positions, 8) and of the 192-pixel input sum. The stabilisers (1e-12) are below one float32 spacing.
    assert torch.allclose(total, p.logit, rtol=0, atol=tol.ulps(27 + 54 + 64 + 8 + 192, in_play))
    assert p.logit.abs().min() > tol.DIFFERENT * in_play  # a logit far from zero: the test is not 0 == 0


# -- real networks ---------------------------------------------------------------------------------

def _fmnist_resnet():
    from xai.models import fmnist

    torch.manual_seed(0)
    return _frozen(_randomise_norms(fmnist.resnet18_28px(), 1))


def _fmnist_vgg():
    from xai.models import fmnist

    torch.manual_seed(0)
    return _frozen(_randomise_norms(fmnist.narrow_vgg(), 2))


@pytest.fixture(scope="module")
def cleverhans_square():
    from xai.shortcuts import poisoned as P

    return P.trained(P.standard_specs("Shirt", fraction=1.0)["square"], "smoke", device="cpu")


def _fmnist_images(n=3):
    from xai.data import fashion_mnist

    return fashion_mnist.load("test")[0][:n]


def _check_accounts(model, x, t, composite):
    """The accounts of one LRP pass: nothing unaccounted, and only biased layers absorb."""
    p = propagate(model, x, t, composite=composite)
    in_play = p.logit.abs() + p.relevance.flatten(1).abs().sum(1) + sum(a.abs() for a in p.absorbed.values())
    # Rule 3: float32 through a deep network, relative to the relevance in play.
    assert (p.unaccounted.abs() <= tol.NETWORK * in_play).all(), p.unaccounted
    module = getattr(model, "model", model)
    canonized = copy.deepcopy(module)
    biased = set()
    from xai.attribution.canonizers import canonizers_for

    for c in canonizers_for(canonized):
        c.apply(canonized)  # the merge is what gives convolutions their biases
    for name, m in canonized.named_modules():
        if getattr(m, "bias", None) is not None and not isinstance(m, nn.BatchNorm2d) and m.bias.abs().max() > 0:
            biased.add(name)
    leaking = {n for n, a in p.absorbed.items() if (a.abs() > tol.NETWORK * in_play).any()}
    assert leaking <= biased, leaking - biased  # activations, norms, pools and sums keep the relevance
    if composite == "epsilon_plus_flat":  # the flat rule zeroes the first layer's bias: it keeps the total
        assert _first_layer(module, x[:1]) not in leaking
    assert leaking, "a real network's biases absorb relevance: the accounting would not be tested"
    return p


@pytest.mark.parametrize("composite", COMPOSITES)
def test_conservation_on_fashion_mnist_and_clever_hans_models(composite, fmnist_cnn_smoke, cleverhans_square):
    x = _fmnist_images()
    t = torch.tensor([0, 4, 8])
    for model in (fmnist_cnn_smoke, cleverhans_square, _fmnist_vgg()):
        p = _check_accounts(model, x, t, composite)
        head = getattr(model, "model", model)
        head = head.fc if hasattr(head, "fc") else head.classifier[-1]
        # LRP-epsilon at the head, given R = z: it passes on (z - b) z / (z + e) and so absorbs
        # (b + e) z / (z + e), e = eps with the sign of z (rule 2: a few operations on the logit)
        e = _stab(p.logit, 1e-6) - p.logit
        expected = (head.bias[t] + e) * p.logit / (p.logit + e)
        name = "fc" if "fc" in p.absorbed else "classifier.2"
        assert torch.allclose(p.absorbed[name], expected, rtol=0, atol=tol.ulps(4, float(p.logit.abs().max())))


def test_conservation_on_a_resnet_needs_its_canonizer():
    m = _fmnist_resnet()
    x = _fmnist_images(2)
    t = torch.tensor([3, 7])
    p = [_check_accounts(m, x, t, composite) for composite in COMPOSITES][0]
    # Without explicit sums, autograd copies the relevance at every residual add into both branches.
    bare = propagate(m, x, t, canonizers="batch_norm", check=False)
    assert (bare.unaccounted.abs() > tol.DIFFERENT * p.logit.abs()).all()
    with pytest.raises(NotApplicableError) as e:
        propagate(m, x, t, canonizers="batch_norm")
    assert "add" in e.value.reason


def test_the_box_rule_loses_relevance_only_where_pixels_sit_on_its_bounds():
    """z^B's bias terms cancel, but its denominator sum_i (x_i - l_i) w_ij^+ + (x_i - h_i) w_ij^- vanishes
    for a filter without negative weights over pixels at the lower bound, and Fashion-MNIST's black
    background *is* the lower bound: such a unit's relevance goes to the stabiliser. Squeezed inside the
    box, the same images lose nothing at the first layer."""
    m = _fmnist_resnet()
    # The premise made by construction, not left to the initialisation: one stem filter without
    # negative weights (a random 3x3 filter has one with probability 2^-9).
    m.conv1.weight[0].abs_()
    x = _fmnist_images(2)
    t = torch.tensor([3, 7])

    def first_layer_share(images):
        p = propagate(m, images, t, composite="epsilon_gamma_box")
        in_play = p.logit.abs() + p.relevance.flatten(1).abs().sum(1) + sum(a.abs() for a in p.absorbed.values())
        return (p.absorbed["conv1"].abs() / in_play).max()

    assert first_layer_share(x) > tol.NETWORK  # beyond rule 3: a real loss
    assert first_layer_share(x.clamp(0.05, 0.95)) <= tol.NETWORK  # rule 3: rounding only


@pytest.mark.slow
def test_conservation_on_efficientnet_lite0_with_its_canonizer(lite0):
    from xai.attribution.canonizers import TimmResidualSum
    from xai.data import images
    from xai.layers import fold_batchnorm

    # The bare module at 128 px: conservation is a property of the layers, not of the resolution, and a
    # quarter of the pixels keeps the test fast.
    x = F.interpolate(lite0.prepare(images.load("chelsea"))[None], size=(128, 128), mode="bilinear",
                      antialias=True)
    net = lite0.model
    ours = {composite: _check_accounts(net, x, 281, composite) for composite in COMPOSITES}
    p = ours["epsilon_plus_flat"]
    for q in ours.values():
        # The merged norms give the depthwise and pointwise convolutions large biases, which absorb a
        # large share of the logit: reported, not a defect of the accounting.
        assert (q.total_absorbed.abs() > tol.DIFFERENT * q.logit.abs()).all()
    # Without the residual sums the 9 adds double relevance, and the model is refused.
    bare = propagate(net, x, 281, canonizers="batch_norm", check=False)
    assert bare.unaccounted.abs().item() > tol.DIFFERENT * p.logit.abs().item()
    with pytest.raises(NotApplicableError):
        propagate(net, x, 281, canonizers="batch_norm")
    # The canonizer's BatchNormAct2d merge against the project's own fold (xai.layers.fold_batchnorm,
    # written independently): the same relevance. Rule 5 (well-conditioned): both fold the norm in
    # float32 in another order (rule 3), and LRP is continuous in the weights (ReLU6 only passes relevance).
    folded = fold_batchnorm(net, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    theirs = propagate(folded, x, 281, canonizers=[TimmResidualSum()], check=False)
    assert tol.network_close(p.relevance, theirs.relevance, tol.CROSS_LIBRARY)


def test_lrp_leaves_the_model_alone_and_keeps_batch_order(fmnist_cnn_smoke):
    before = {k: v.clone() for k, v in fmnist_cnn_smoke.model.state_dict().items()}
    hooks = len(fmnist_cnn_smoke.model._forward_pre_hooks)
    x = _fmnist_images(3)
    t = torch.tensor([1, 2, 3])
    together = lrp_epsilon_gamma_box(fmnist_cnn_smoke, x, t)
    alone = lrp_epsilon_gamma_box(fmnist_cnn_smoke, x[1:2], t[1:2])
    after = fmnist_cnn_smoke.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert len(fmnist_cnn_smoke.model._forward_pre_hooks) == hooks
    assert together.shape == x.shape
    # Rule 3: a batch of 3 and of 1 may take other kernels
    assert tol.network_close(together[1:2], alone)


# -- refusals -------------------------------------------------------------------------------------------

class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc((x + self.relu(self.conv(x))).mean((2, 3)))


class _Gated(_Residual):
    def forward(self, x):
        h = self.relu(self.conv(x))
        return self.fc(self.relu(h * h.mean((2, 3), keepdim=True)).flatten(2).amax(2))


class _Functional(_Residual):
    def forward(self, x):
        return self.fc(F.silu(self.conv(x)).amax((2, 3)))


@pytest.mark.parametrize("net,kind", [(_Residual, "add"), (_Gated, "mul"), (_Functional, "silu")])
def test_lrp_refuses_operations_without_a_rule(net, kind):
    m = _frozen(net())
    with pytest.raises(NotApplicableError) as e:
        lrp_epsilon_plus_flat(m, torch.rand(1, 3, 5, 5), 0)
    assert kind in e.value.reason and e.value.model == type(m).__name__


def test_lrp_refuses_activations_without_a_rule():
    from xai import models

    vit = models.load("fmnist_vit", budget="smoke", device="cpu", progress=False)
    with pytest.raises(NotApplicableError) as e:
        lrp_epsilon_plus_flat(vit, _fmnist_images(1), 0)
    assert e.value.activation == "GELU" and e.value.model == "fmnist_vit"
    mlp = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Hardswish(), nn.Linear(3, 2)))
    with pytest.raises(NotApplicableError) as e:
        lrp_epsilon_gamma_box(mlp, torch.rand(1, 1, 2, 2), 0)
    assert e.value.activation == "Hardswish"


def test_lrp_refuses_a_batch_norm_it_cannot_merge():
    torch.manual_seed(0)
    pre_activation = _frozen(_randomise_norms(nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))))
    with pytest.raises(NotApplicableError) as e:
        lrp_epsilon_plus_flat(pre_activation, torch.rand(1, 3, 6, 6), 1)
    assert "batch norm" in e.value.reason
