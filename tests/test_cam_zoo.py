"""HiResCAM, XGradCAM, EigenCAM, AblationCAM and FullGrad: hand-computed values, pytorch-grad-cam, properties."""
import copy
from collections import OrderedDict

import numpy as np
import pytest
import tolerance as tol
import torch
import torch.nn.functional as F
from torch import nn

from xai.attribution import cam_zoo as Z
from xai.errors import NotApplicableError


def _frozen(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def two_layer(seed=0, cin=2, k1=4, k2=5, classes=3):
    """conv -> ReLU -> 1x1 conv -> ReLU -> global mean -> linear: at the first ReLU the gradient varies
    by position (the second ReLU's mask), and has a closed form."""
    torch.manual_seed(seed)
    return _frozen(nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(cin, k1, 3, padding=1)), ("relu", nn.ReLU()),
        ("mix", nn.Conv2d(k1, k2, 1)), ("relu2", nn.ReLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(k2, classes)),
    ])))


def test_hires_and_xgrad_cam_by_hand():
    m = two_layer()
    x = torch.rand(2, 2, 5, 5)
    t = torch.tensor([2, 0])
    a = m.relu(m.conv(x))
    z2 = m.mix(a)
    hw = 25
    # d logit_t / d A_k(p) = sum_j W_tj / hw * 1[z2_j(p) > 0] * V_jk
    v = m.mix.weight[:, :, 0, 0]
    g = torch.einsum("bj,bjhw,jk->bkhw", m.fc.weight[t] / hw, (z2 > 0).float(), v)
    hires = F.relu((g * a).sum(1, keepdim=True))
    xw = (g * a).sum((2, 3)) / (a.sum((2, 3)) + 1e-7)
    xgrad = F.relu(torch.einsum("bk,bkhw->bhw", xw, a))[:, None]
    # Rule 2: a 5-term sum per gradient value, then a 4-channel (HiResCAM) or 25-position and 4-channel
    # (XGradCAM) sum; the maps are at the layer's own 5x5 size, so no resampling.
    close = dict(rtol=0, atol=tol.ulps(5 + 25 + 4, float(hires.max())))
    assert torch.allclose(Z.hires_cam(m, x, t, layer="relu"), hires, **close)
    assert torch.allclose(Z.xgrad_cam(m, x, t, layer="relu"), xgrad, **close)
    assert not torch.allclose(hires, xgrad, atol=tol.DIFFERENT * float(hires.max()))  # the test tells them apart


def test_ablation_cam_by_hand():
    m = two_layer()
    x = torch.rand(2, 2, 5, 5)
    t = torch.tensor([1, 2])
    a = m.relu(m.conv(x))
    head = m[2:]
    y = head(a).gather(1, t[:, None])
    drops = []
    for k in range(a.shape[1]):
        ablated = a.clone()
        ablated[:, k] = 0
        drops.append((y - head(ablated).gather(1, t[:, None])) / y)
    w = torch.cat(drops, 1)
    expected = F.relu(torch.einsum("bk,bkhw->bhw", w, a))[:, None]
    got = Z.ablation_cam(m, x, t, layer="relu", internal_batch_size=3)  # 4 channels in passes of 3 and 1
    # Rule 2: each weight is a difference of two logits (sums of 25 x 4 + 5 terms) relative to the logit,
    # so it is off by ulps(105) at most; the map then sums 4 weighted channels.
    bound = tol.ulps(105, float(a.sum(1).max())) + tol.ulps(4, float(torch.einsum("bk,bkhw->bhw", w.abs(), a).max()))
    assert torch.allclose(got, expected, rtol=0, atol=bound)


def test_ablation_cam_batched_pass_equals_one_copy_per_channel():
    """Inside a ResNet block the skip connection crosses the layer: the upstream tensor of batch 1 must
    broadcast against the ablated copies and give what one full pass per copy gives."""
    from xai.models import fmnist

    torch.manual_seed(0)
    net = _frozen(fmnist.resnet18_28px())
    x = torch.rand(1, 1, 28, 28)
    layer = "layer2.0.conv2"
    channels = torch.arange(0, net.get_submodule(layer).out_channels, 9)  # every ninth, whatever the width
    fast = Z._ablated_scores(net, layer, x, channels, 3)

    slow = []
    for c in channels:
        def zero(_m, _a, out, c=c):
            out = out.clone()
            out[:, c] = 0
            return out
        h = net.get_submodule(layer).register_forward_hook(zero)
        with torch.no_grad():
            slow.append(net(x)[0, 3])
        h.remove()
    # Rule 3: the same network on a batch of copies or one at a time (other kernels)
    assert tol.network_close(fast, torch.stack(slow))


# -- against pytorch-grad-cam --------------------------------------------------------------------------

def _minmax(a):
    a = a - a.amin((-2, -1), keepdim=True)
    return a / a.amax((-2, -1), keepdim=True).clamp_min(1e-7)


def _theirs(cls, model, layer_modules, x, t, **kw):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with cls(model=model, target_layers=layer_modules, **kw) as cam:
        # the model's parameters are frozen: the graph has to start at the input
        return torch.from_numpy(cam(input_tensor=x.clone().requires_grad_(True),
                                    targets=[ClassifierOutputTarget(int(c)) for c in t]))


@pytest.fixture(scope="module")
def fmnist_batch():
    from xai.data import fashion_mnist

    return fashion_mnist.load("test")[0][:4], torch.tensor([1, 2, 7, 9])


def test_cam_zoo_agrees_with_pytorch_grad_cam(fmnist_cnn_smoke, fmnist_batch, capsys):
    """Rule 5 (well-conditioned: linear in the gradients and activations of rectified layers), compared
    after the same min-max scaling as Grad-CAM (see test_attribution.py: pytorch-grad-cam scales before
    resizing, and resizing is linear)."""
    from pytorch_grad_cam import AblationCAM, HiResCAM, XGradCAM

    m = fmnist_cnn_smoke.model
    x, t = fmnist_batch
    for ours, cls in ((Z.hires_cam, HiResCAM), (Z.xgrad_cam, XGradCAM), (Z.ablation_cam, AblationCAM)):
        for layer in ("relu3", "relu4"):
            mine = _minmax(ours(fmnist_cnn_smoke, x, t, layer=layer)[:, 0])
            ref = _minmax(_theirs(cls, m, [m.get_submodule(layer)], x, t))
            assert tol.network_close(mine, ref, tol.CROSS_LIBRARY), (cls.__name__, layer)
    capsys.readouterr()  # AblationCAM's progress bars


def test_eigen_cam_agrees_with_pytorch_grad_cam_up_to_the_aligned_sign(fmnist_cnn_smoke, fmnist_batch):
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from xai.attribution.cam import layer_activations

    m = fmnist_cnn_smoke.model
    x, t = fmnist_batch
    for layer in ("relu3", "relu4"):
        acts, _ = layer_activations(m, x, t, layer, gradients=False)
        ours = Z.EigenCAM.projection(acts)
        theirs = torch.from_numpy(get_2d_projection(acts.double().numpy())).double()
        sign = torch.sign((ours * theirs).flatten(1).sum(1))
        # The formula on the same float64 activations: the same projection up to sign, to the rounding of
        # pytorch-grad-cam's final cast to float32 (rule 2, one rounding at the map's magnitude).
        assert torch.allclose(ours, sign[:, None, None] * theirs, rtol=0, atol=tol.ulps(2, float(ours.abs().max())))
        # The aligned sign: the projection correlates positively with the summed activations.
        energy = acts.sum(1).double()
        energy = energy - energy.mean((1, 2), keepdim=True)
        assert ((ours * energy).flatten(1).sum(1) > 0).all()
        # End to end, where pytorch-grad-cam's LAPACK sign agrees with ours, the maps agree; where it is
        # the other one, theirs is our map of the opposite sign. Rule 5 on rectified activations.
        mine = Z.eigen_cam(fmnist_cnn_smoke, x, t, layer=layer)[:, 0]
        opposite = F.interpolate(F.relu(-ours)[:, None].float(), size=(28, 28), mode="bilinear")[:, 0]
        ref = _minmax(_theirs(EigenCAM, m, [m.get_submodule(layer)], x, t))
        for i in range(len(x)):
            expected = mine[i] if sign[i] > 0 else opposite[i]
            assert tol.network_close(_minmax(expected), ref[i], tol.CROSS_LIBRARY), (layer, i)


def test_fullgrad_agrees_with_pytorch_grad_cam(fmnist_cnn_smoke, fmnist_batch):
    """pytorch-grad-cam's FullGrad scales each channel on its own (``scaling="channel"``) and takes the
    input term at the tensor it is given: both get the network without its normalisation hook, fed
    normalised images, so both take it at the network's input. Rule 5, after min-max scaling."""
    from pytorch_grad_cam import FullGrad

    x, t = fmnist_batch
    bare = copy.deepcopy(fmnist_cnn_smoke.model)
    norm = next(iter(bare._forward_pre_hooks.values()))
    bare._forward_pre_hooks.clear()
    xn = norm(bare, (x,))[0]
    mine = _minmax(Z.fullgrad(bare, xn, t, scaling="channel")[:, 0])
    ref = _minmax(_theirs(FullGrad, bare, [], xn, t))
    assert tol.network_close(mine, ref, tol.CROSS_LIBRARY)
    authors = _minmax(Z.fullgrad(bare, xn, t)[:, 0])  # the authors' scaling weighs layers otherwise
    assert not tol.network_close(authors, ref, tol.DIFFERENT)


# -- FullGrad's completeness -----------------------------------------------------------------------------

def _complete(model, x, t):
    """Input-gradient plus all bias-gradients, against the logit. Rule 3: float32 through the network
    (the sum of the terms is a reduction as long as the network is deep)."""
    net = getattr(model, "model", model)
    ig, terms = Z.full_gradient(model, x, t, check=False)  # the test does the check itself
    with torch.no_grad():
        logit = net(x).gather(1, t[:, None]).squeeze(1)
    parts = [ig.flatten(1).sum(1), *(v.flatten(1).sum(1) for v in terms.values())]
    scale = float(sum(p.abs() for p in parts).max())
    assert torch.allclose(sum(parts), logit, rtol=0, atol=tol.NETWORK * scale), (sum(parts), logit)
    return terms


def test_fullgrad_decomposition_is_complete(fmnist_cnn_smoke, fmnist_batch):
    from xai.models import fmnist

    x, t = fmnist_batch
    assert set(_complete(fmnist_cnn_smoke, x, t)) == {"bn1", "bn2", "bn3", "bn4", "fc"}
    torch.manual_seed(0)
    resnet = _frozen(fmnist.resnet18_28px())
    for mod in resnet.modules():  # batch norms with a shift, so their biases are not zero
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.bias.data.uniform_(-0.2, 0.2)
    _complete(resnet, x[:2], t[:2])


@pytest.mark.slow
def test_fullgrad_is_complete_on_efficientnet_lite0_with_relu6_implicit_biases(lite0):
    """ReLU6 outputs 6 where it saturates: a constant, hence a bias (the paper's implicit bias), read at
    each ReLU6. Without those terms the decomposition misses the saturated units' share."""
    from xai.data import images

    x = F.interpolate(lite0.prepare(images.load("chelsea"))[None], size=(128, 128), mode="bilinear",
                      antialias=True)  # the bare module at 128 px: completeness holds at any size
    terms = _complete(lite0.model, x, torch.tensor([281]))
    implicit = [n for n in terms if n.endswith("(implicit)")]
    assert len(implicit) == sum(isinstance(m, nn.ReLU6) for m in lite0.model.modules())
    assert sum(float(terms[n].abs().sum()) for n in implicit) > 0  # some units do saturate
    assert Z.fullgrad(lite0.model, x, 281).shape == (1, 1, 128, 128)


def test_fullgrad_refuses_networks_that_are_not_piecewise_linear():
    from xai import models
    from xai.data import fashion_mnist

    x = fashion_mnist.load("test")[0][:2]
    for name in ("fmnist_vit", "fmnist_mobilenetv3"):  # GELU and LayerNorm; Hardswish
        entry = models.load(name, budget="smoke", device="cpu", progress=False)
        with pytest.raises(NotApplicableError) as e:
            Z.fullgrad(entry, x, 1)
        assert e.value.model == name and e.value.method == "fullgrad"


def test_fullgrad_reads_a_fused_norm_before_its_activation():
    """timm's BatchNormAct2d adds its bias and then applies its (in-place) activation: the bias-gradient
    must be taken before it, or the decomposition is not complete."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), BatchNormAct2d(4, act_layer=nn.ReLU, inplace=True),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].bias.data.uniform_(-0.5, 0.5)
    terms = _complete(_frozen(net), torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 2]))
    assert set(terms) == {"1", "4"}


def test_cam_zoo_refusals():
    from xai.errors import XaiError

    mlp = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False)))
    with pytest.raises(NotApplicableError):
        Z.fullgrad(mlp, torch.rand(1, 1, 2, 2), 0)
    with pytest.raises(XaiError):
        Z.fullgrad(two_layer(), torch.rand(1, 2, 5, 5), 0, scaling="pixel")
    assert np.isfinite(Z.fullgrad(two_layer(), torch.rand(1, 2, 5, 5), 0).numpy()).all()
