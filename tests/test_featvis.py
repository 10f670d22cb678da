"""The feature-visualization engine on tiny fixed-weight models: properties that must hold."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import tolerance as tol
import torch
from torch import nn

from xai.errors import UnknownNameError, XaiError
from xai.featvis import Penalties, activations, evaluate, forward, objectives as O, param as P, render, transforms as T
from xai.layers import NCHW, Layout, capture


def nchw(t: torch.Tensor) -> Layout:
    return Layout(NCHW, tuple(t.shape[1:]), tuple(t.shape[2:]))


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("bn1", nn.BatchNorm2d(8)), ("act1", nn.SiLU()),
        ("conv2", nn.Conv2d(8, 12, 3, padding=1, stride=2)), ("act2", nn.SiLU()),
        ("conv3", nn.Conv2d(12, 16, 3, padding=1, stride=2)), ("act3", nn.SiLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(16, 5)),
    ]))
    with torch.no_grad():
        for m in net.modules():  # activations of order 1, as in a trained network
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        # non-trivial running statistics, so eval-mode batch norm matters
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 1.5)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return tiny_cnn()


def fake_acts(batch: int = 4) -> O.Activations:
    g = torch.Generator().manual_seed(1)
    acts = {"a": torch.randn(batch, 6, 5, 5, generator=g), "b": torch.randn(batch, 3, 4, 4, generator=g)}
    return O.Activations(acts, torch.randn(batch, 10, generator=g), {k: nchw(v) for k, v in acts.items()})


# -- objectives ------------------------------------------------------------------------------------
def test_objective_arithmetic():
    acts = fake_acts()
    a, b = O.channel("a", [0, 1, 2, 3]), O.neuron("b", 2)
    va, vb = a(acts), b(acts)
    assert torch.equal((a + b)(acts), va + vb)
    assert torch.equal((a - b)(acts), va - vb)
    assert torch.equal((2 * a - 0.5 * b)(acts), 2 * va - 0.5 * vb)
    assert torch.equal((a * b)(acts), va * vb)
    assert torch.equal((-a)(acts), -va)
    assert torch.equal((1 - a)(acts), 1 - va)
    assert torch.equal((a + 3)(acts), va + 3)
    w = torch.tensor([1.0, 0.0, 2.0, -1.0])
    assert torch.equal((w * a)(acts), w * va)
    assert set((a + b).layers) == {"a", "b"}


def test_objectives_read_the_right_units():
    acts = fake_acts()
    x, out = acts.acts["a"], acts.output()
    # Rule 2: means over at most 5 x 5 positions, a 10-class softmax, a 6-channel cosine, of values of order 1
    # (the objectives may reduce in another order or layout than these expressions).
    READ = dict(atol=tol.ulps(25, 4), rtol=0)
    assert torch.allclose(O.channel("a", [5, 4, 3, 2])(acts), x[torch.arange(4), [5, 4, 3, 2]].mean((1, 2)), **READ)
    assert torch.allclose(O.neuron("a", 1)(acts), x[:, 1, 2, 2], **READ)
    assert torch.allclose(O.class_logit([0, 9, 3, 3])(acts), out[torch.arange(4), [0, 9, 3, 3]], **READ)
    assert torch.allclose(O.class_prob(7)(acts), out.softmax(-1)[:, 7], **READ)
    assert torch.allclose(O.deepdream("b")(acts), acts.acts["b"].pow(2).mean((1, 2, 3)), **READ)
    d = torch.zeros(6)
    d[2] = 1
    expected = torch.nn.functional.cosine_similarity(x, d[None, :, None, None], dim=1).mean((1, 2))
    assert torch.allclose(O.direction("a", d)(acts), expected, **READ)


def test_diversity_compares_only_within_groups():
    f = torch.randn(4, 3, 5, 5)
    f[1] = f[0] * 2  # same Gram direction as image 0
    acts = O.Activations({"a": f}, None, {"a": nchw(f)})
    v = O.diversity("a", groups=[0, 0, 1, 2])(acts)
    # Rule 2: a cosine of two 9-entry Gram matrices, each a sum of 25 products of values of order 1.
    assert torch.allclose(v[:2], torch.tensor([-1.0, -1.0]), atol=tol.ulps(9 * 25), rtol=0)
    assert torch.equal(v[2:], torch.zeros(2))  # alone in their group


def test_bad_units_get_clear_errors():
    acts = fake_acts()
    with pytest.raises(XaiError, match="channel of a 6 is out of range"):
        O.channel("a", 6)(acts)
    with pytest.raises(XaiError, match="class 10 is out of range"):
        O.class_logit(10)(acts)
    with pytest.raises(XaiError, match="3 channel of a indices for a batch of 4"):
        O.channel("a", [0, 1, 2])(acts)
    with pytest.raises(XaiError, match="per-image weights"):
        (torch.ones(3) * O.channel("a", 0))(acts)


# -- parameterizations and transforms --------------------------------------------------------------
@pytest.mark.parametrize("size", [32, (24, 31)])
def test_fft_param_gives_valid_images(size):
    p = P.FFTParam(3, 3, size, seed=4)
    x = p()
    h, w = (size, size) if isinstance(size, int) else size
    assert x.shape == (3, 3, h, w)
    assert x.min() >= 0 and x.max() <= 1
    # Large spectra still give valid images (the sigmoid), and the images differ per seed.
    with torch.no_grad():
        p.spectrum.mul_(1000)
    big = p()
    assert big.min() >= 0 and big.max() <= 1 and not torch.allclose(big[0], big[1], atol=tol.DIFFERENT)
    grey = P.FFTParam(2, 1, size, seed=4)()
    assert grey.shape == (2, 1, h, w)


def test_fft_param_starts_from_an_image():
    img = torch.rand(2, 3, 20, 20) * 0.9 + 0.05
    p = P.FFTParam(2, 3, 20, init=img)
    # Rule 2: logit, a 3x3 colour map and its inverse, a forward and an inverse FFT of 20 x 20 points
    # (2 log2(400) rounding stages each way) on logits up to |3|, then the sigmoid (slope <= 1/4).
    assert torch.allclose(p(), img, atol=tol.ulps(4 * math.log2(400), 3), rtol=0)
    pix = P.PixelParam(2, 3, 20, valid="sigmoid", init=img)
    assert torch.allclose(pix(), img, atol=tol.ulps(4), rtol=0)  # rule 2: sigmoid(logit(x))


def test_pixel_clip_and_maco_stay_valid():
    p = P.PixelParam(2, 3, 16, valid="clip")
    with torch.no_grad():
        p.pixels.add_(5)
    p.project()
    assert p().max() <= 1 and p.pixels.max() <= 1
    mag = P.natural_magnitude([torch.rand(3, 40, 50) * 0.6 + 0.2], 16)
    m = P.FFTParam(2, 3, 16, magnitude=mag, seed=1)
    x = m()
    assert x.shape == (2, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert [n for n, _ in m.named_parameters()] == ["phase"]  # the magnitude is not optimized
    # Whatever the phase, each image keeps the given magnitude (undo the sigmoid and the colour map).
    z = torch.einsum("nchw,dc->ndhw", torch.logit(x.detach().double()), torch.linalg.inv(m.color.double()))
    kept = torch.fft.rfft2(z, norm="ortho").abs()
    inner = (slice(None), slice(None), slice(None), slice(1, -1))  # rfft2 edge columns are not free
    # Rule 2: the image is float32 (undone in float64), so each pixel carries the sigmoid's rounding, an
    # ulp, magnified by logit's slope 1/(x(1-x)) and by the inverse colour map; the 16 x 16 orthonormal
    # FFT adds up to 256 such errors in one coefficient.
    slope = float((1 / (x * (1 - x))).max())
    kappa = float(torch.linalg.inv(m.color.double()).abs().sum(1).max())
    assert torch.allclose(kept[inner], mag.double()[None].expand_as(kept)[inner], rtol=0,
                          atol=tol.ulps(256, slope * kappa))
    assert not torch.allclose(x[0], x[1], atol=tol.DIFFERENT)


def test_transforms_draw_independently_per_image():
    """Rule 1 (exact). The cause of the 3.2e-6 once seen on an AMD EPYC was vectorised rounding, not a
    leak between draws: the affine parameters were equal, but a batched einsum computed image 0's
    sampling coordinates with another kernel than the one-image call, an ULP apart. Coordinates are
    now computed elementwise, so a batch gives the same bits as one image, at any batch size."""
    for n, size in ((3, 32), (40, 48)):  # 40 images: past every vector width's scalar tail
        x = torch.rand(n, 3, size, size)
        t = T.standard(size)
        seeds = range(5, 5 + n)
        together = t(x, [torch.Generator().manual_seed(s) for s in seeds])
        for i, s in enumerate(seeds):
            alone = t(x[i:i + 1], [torch.Generator().manual_seed(s)])
            assert torch.equal(together[i], alone[0]), (n, i)
    same = t(torch.stack([x[0]] * 2), [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert not torch.allclose(same[0], same[1])  # two images, two draws
    assert T.standard(28, out_size=28)(torch.rand(2, 1, 28, 28), [torch.Generator()] * 2).shape[-2:] == (28, 28)


# Rule 8: sampling on pixel centres, through grid_sample's [-1, 1] coordinates and back: an ulp of the
# coordinate (at most 40 px here) times a step of at most 1 between pixels, plus the 4-pixel weighted sum.
RESAMPLED = tol.ulps(4) + tol.ulps(2, 64)


def test_pad_and_jitter_are_exact_crops():
    x = torch.rand(2, 3, 10, 12)
    out = T.Compose([T.Pad(3), T.Jitter(4)])(x, [torch.Generator().manual_seed(s) for s in (1, 2)])
    padded = torch.nn.functional.pad(x, [3] * 4, value=T.FILL)
    for i, s in enumerate((1, 2)):
        dx, dy = (int(v) for v in torch.randint(5, (2,), generator=torch.Generator().manual_seed(s)))
        assert torch.allclose(out[i], padded[i, :, dy:dy + 12, dx:dx + 14], atol=RESAMPLED, rtol=0)


def test_composed_transforms_resample_once_like_the_chain():
    yy, xx = torch.meshgrid(torch.linspace(0, 6, 40), torch.linspace(0, 6, 40), indexing="ij")
    x = torch.stack([torch.sin(xx + k) * torch.cos(0.7 * yy - k) for k in range(3)])[None].expand(3, -1, -1, -1)
    x = 0.5 + 0.4 * x  # smooth, so that interpolating it once or five times gives about the same image
    ts = T.standard(40, out_size=40).transforms

    def chain(seeds):
        gens, out = [torch.Generator().manual_seed(s) for s in seeds], x
        for t in ts:  # one resampling per transform
            out = t(out, gens)
        return out

    fused = T.Compose(ts)(x, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    assert fused.shape == (3, 3, 40, 40)
    inner = (..., slice(6, -6), slice(6, -6))
    # Not rounding: each extra bilinear resampling of a smooth image errs by at most h^2/8 |f''| per axis
    # (h = 1 px). Here |f''| <= 0.4 (0.15^2 + 0.105^2) = 0.013 (the pattern's frequencies are 6/40 and 0.7 x
    # 6/40 rad/px), so 0.0034 per resampling and 0.017 for the chain's five against the fused one.
    assert (fused - chain((1, 2, 3)))[inner].abs().max() < 0.02
    assert (fused - chain((4, 5, 6)))[inner].abs().max() > 0.1  # other draws: another geometry
    # A quarter turn is exact: pixels land on pixels.
    turn = T.RandomRotate([90])(x[:1], [torch.Generator()])
    assert torch.allclose(turn[0], torch.rot90(x[0], 1, dims=(1, 2)), atol=RESAMPLED, rtol=0)


# -- forward and render ----------------------------------------------------------------------------
def test_truncated_forward_equals_full_forward(cnn):
    x = torch.rand(2, 3, 16, 16)
    obj = O.channel("conv2", [0, 1])
    seen = []
    handle = cnn.fc.register_forward_hook(lambda *a: seen.append(1))
    try:
        acts = forward(cnn, x, obj)
    finally:
        handle.remove()
    assert not seen and acts._output is None  # stopped before the head
    full, out = capture(cnn, x, ["conv2"], truncate=False)
    assert out is not None
    assert torch.equal(acts.layer("conv2"), full["conv2"])
    both = forward(cnn, x, obj + O.class_logit(1))  # reads the output: no truncation
    assert torch.equal(both.output(), cnn(x))


def test_pre_activation_reads_the_input_of_an_in_place_activation():
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3)), ("relu", nn.ReLU(inplace=True)),
                                     ("head", nn.Sequential(nn.BatchNorm2d(4), nn.ReLU6()))])).eval()
    assert O.pre_activation(net, "relu") == "relu:in"
    assert O.pre_activation(net, "head") == "head.1:in"  # a block that ends with an activation
    assert O.pre_activation(net, "conv") == "conv"
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    a = activations(net, x, ["relu:in", "relu"])
    pre = net.conv(x)
    # rule 1: the same convolution of the same tensor; negatives survive the in-place ReLU
    assert torch.equal(a.layer("relu:in"), pre) and (pre < 0).any()
    assert torch.equal(a.layer("relu"), pre.clamp(min=0))
    O.channel("relu:in", 1)(a).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(UnknownNameError):
        activations(net, x, ["rleu:in"])


def _render_units(model, units, seed, steps=30, transforms=T.standard(32), **kw):
    p = P.FFTParam(len(units), 3, 32, seed=seed)
    return render(model, O.channel("conv3", units), p, transforms, steps=steps, seed=seed,
                  penalties=Penalties(l2=0.01, tv=0.005, blur=0.01), **kw)


def test_batched_rendering_matches_separate_renderings(cnn):
    """Rule 6. Same math per image (the transforms are exact per image, rule 1); only the network's
    float summation order differs between a batch of 3 and a batch of 1, and Adam turns those rule-3
    differences into more over 30 steps. A per-image RNG mix-up would differ by ~0.1."""
    units = [3, 7, 11]
    batched = _render_units(cnn, units, seed=10)
    for i, u in enumerate(units):
        alone = _render_units(cnn, [u], seed=10 + i)
        assert torch.allclose(batched.images[i], alone.images[0], atol=tol.OPTIMIZED, rtol=0), i  # images in [0, 1]
        scale = float(alone.values.abs().max())
        assert torch.allclose(batched.values[i], alone.values[0], atol=tol.OPTIMIZED * scale, rtol=0)
    shuffled = _render_units(cnn, units, seed=11)  # every image with its neighbour's seed
    assert not torch.allclose(shuffled.images[0], batched.images[0], atol=tol.DIFFERENT)


def test_activation_rises_over_steps(cnn):
    r = _render_units(cnn, [1, 2, 9], seed=3, transforms=(), snapshots=(0, 10, 30))
    unit = O.channel("conv3", [1, 2, 9])
    start, middle = evaluate(cnn, unit, r.snapshots[0]), evaluate(cnn, unit, r.snapshots[10])
    assert (middle > start).all() and (r.values > middle).all() and (r.values > start + 0.1).all()
    assert torch.equal(r.snapshots[30], r.images)


def test_same_seed_reproduces_the_same_image(cnn):
    r = _render_units(cnn, [1, 2], seed=3)
    again = _render_units(cnn, [1, 2], seed=3)
    assert torch.equal(again.images, r.images)
    other = _render_units(cnn, [1, 2], seed=4)
    assert not torch.allclose(other.images, r.images, atol=tol.DIFFERENT)


def test_stack_and_per_image_penalties_batch_different_priors(cnn):
    seeds = [2, 2]
    stacked = P.Stack([P.PixelParam(1, 3, 24, seed=2), P.FFTParam(1, 3, 24, seed=2)])
    r = render(cnn, O.channel("conv2", 4), stacked, (), steps=8, seed=seeds,
               penalties=Penalties(tv=torch.tensor([0.0, 0.3])))
    alone = render(cnn, O.channel("conv2", 4), P.FFTParam(1, 3, 24, seed=2), (), steps=8, seed=2,
                   penalties=Penalties(tv=0.3))
    assert torch.allclose(r.images[1], alone.images[0], atol=tol.OPTIMIZED, rtol=0)  # rule 6


def test_render_bad_input_errors(cnn):
    p = P.FFTParam(2, 3, 16)
    with pytest.raises(UnknownNameError, match="conv3"):
        render(cnn, O.channel("conv9", 0), p, steps=1)
    with pytest.raises(XaiError, match="channel of conv2 12 is out of range"):
        render(cnn, O.channel("conv2", [0, 12]), p, steps=1)
    with pytest.raises(XaiError, match="class 5 is out of range"):
        render(cnn, O.class_logit(5), p, steps=1)
    with pytest.raises(XaiError, match="snapshot"):
        render(cnn, O.class_logit(0), p, steps=4, snapshots=(8,))
    with pytest.raises(XaiError, match="seeds for 2 images"):
        render(cnn, O.class_logit(0), p, steps=1, seed=[1, 2, 3])
    cnn.train()
    try:
        with pytest.raises(XaiError, match="eval mode"):
            render(cnn, O.class_logit(0), p, steps=1)
    finally:
        cnn.eval()


def test_renders_vit_blocks_with_tokens_as_maps():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=12, depth=2,
                            num_heads=2, mlp_ratio=2.0).eval()
    for q in vit.parameters():
        q.requires_grad_(False)
    acts = forward(vit, torch.rand(2, 1, 16, 16), O.channel("blocks.0", 0))
    assert acts.layer("blocks.0").shape == (2, 12, 4, 4)  # 16 patch tokens on a 4x4 grid, class token dropped
    r = render(vit, O.channel("blocks.1", [0, 5]), P.FFTParam(2, 1, 16, seed=0),
               T.standard(16, out_size=16), steps=25, snapshots=(0,))
    start = evaluate(vit, O.channel("blocks.1", [0, 5]), r.snapshots[0])
    assert r.images.shape == (2, 1, 16, 16) and (r.values > start).all()
