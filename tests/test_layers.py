import pytest
import tolerance as tol
import torch

from xai import layers
from xai.errors import LayoutError, UnknownNameError
from xai.models import fmnist


def test_capture_matches_full_forward_and_truncates(lite0):
    x = torch.rand(2, *lite0.input_size)
    names = ["blocks.1", "blocks.3"]
    full, out = layers.capture(lite0.model, x, names, truncate=False)
    assert out is not None and out.shape == (2, 1000)
    ran = []
    handle = lite0.model.blocks[5].register_forward_hook(lambda *a: ran.append(1))
    try:
        trunc, out2 = layers.capture(lite0.model, x, names, truncate=True)
    finally:
        handle.remove()
    assert out2 is None and not ran  # nothing after blocks.3 ran
    for n in names:
        assert torch.equal(full[n], trunc[n])
    # the reference: hooks-free forward of the stem and first blocks
    with torch.no_grad():
        m = lite0.model
        h = m.bn1(m.conv_stem(lite0.model._forward_pre_hooks[next(iter(m._forward_pre_hooks))](m, (x,))[0]))
        for i in range(4):
            h = m.blocks[i](h)
            if i == 1:
                assert torch.equal(h, full["blocks.1"])  # rule 1: the same modules on the same tensor
        assert torch.equal(h, full["blocks.3"])


def test_capture_keeps_graph_for_gradients(lite0):
    x = torch.rand(1, *lite0.input_size, requires_grad=True)
    acts, _ = layers.capture(lite0.model, x, ["blocks.2"])
    acts["blocks.2"][:, 0].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_layer_suggests_close_matches(lite0):
    with pytest.raises(UnknownNameError, match="did you mean: .*blocks.3"):
        layers.resolve(lite0.model, "block.3")


def test_vit_tokens_become_spatial_maps():
    vit = fmnist.small_vit().eval()
    acts, _ = layers.capture(vit, torch.rand(2, 1, 28, 28), ["blocks.1"], spatial=True)
    assert acts["blocks.1"].shape == (2, 96, 7, 7)
    raw, _ = layers.capture(vit, torch.rand(2, 1, 28, 28), ["blocks.1"])
    lay = layers.layout_of(vit, "blocks.1", (1, 28, 28))
    assert raw["blocks.1"].shape == (2, 50, 96) and (lay.kind, lay.prefix, lay.grid) == ("tokens", 1, (7, 7))
    # patch token (row 1, col 2) lands at grid position [1, 2]
    t = torch.arange(2 * 50 * 3, dtype=torch.float).view(2, 50, 3)
    grid = layers.to_spatial(t, lay)
    assert torch.equal(grid[:, :, 1, 2], t[:, 1 + 1 * 7 + 2, :])
    head = layers.layout_of(vit, "head", (1, 28, 28))
    with pytest.raises(LayoutError, match="'head'.*no spatial"):
        layers.to_spatial(torch.rand(2, 10), head, "head")


def test_layer_shapes(lite0):
    shapes = dict(layers.layer_shapes(lite0.model, lite0.input_size))
    assert shapes["blocks.3"] == (80, 14, 14) and shapes["classifier"] == (1000,)


def test_fold_batchnorm_keeps_outputs_gradients_and_the_original(lite0):
    m = lite0.model
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.rand(2, *lite0.input_size, generator=torch.Generator().manual_seed(0))
    folded = layers.fold_batchnorm(m, x[:1])
    assert folded is not None
    kinds = {type(mod).__name__ for _, mod in folded.named_modules()}
    assert "BatchNormAct2d" not in kinds and "_FoldedNorm" in kinds
    # the same names: every layer a caller reads still resolves
    assert {n for n, _ in m.named_modules()} == {n for n, _ in folded.named_modules()}
    with torch.no_grad():
        a, b = m(x), folded(x)
    assert tol.network_close(a, b)  # rule 3: folded norms round differently
    grads = []
    for net in (m, folded):
        xi = x.clone().requires_grad_(True)
        net(xi)[:, 3].sum().backward()
        grads.append(xi.grad)
    # Rule 4: ReLU6 gates flip where a pre-activation sits within rounding of 0 or 6: a few pixels move
    assert tol.ranks_agree(grads[0], grads[1])
    assert torch.corrcoef(torch.stack([grads[0].flatten(), grads[1].flatten()]))[0, 1] > tol.RANK
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the model is not touched
    # a block's output reads the same; a convolution that is read keeps its own output
    acts_m, _ = layers.capture(m, x, ["blocks.2", "blocks.2.0.conv_pw"])
    kept = layers.fold_batchnorm(m, x[:1], keep=["blocks.2.0.conv_pw"])
    acts_k, _ = layers.capture(kept, x, ["blocks.2", "blocks.2.0.conv_pw"])
    for n in acts_m:
        assert tol.network_close(acts_m[n], acts_k[n]), n  # rule 3
    acts_f, _ = layers.capture(folded, x, ["blocks.2.0.conv_pw"])
    scale = float(acts_m["blocks.2.0.conv_pw"].abs().max())
    assert not torch.allclose(acts_f["blocks.2.0.conv_pw"], acts_m["blocks.2.0.conv_pw"], atol=tol.DIFFERENT * scale)


class _ConvBN(torch.nn.Module):
    def __init__(self, reuse: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.reuse = reuse

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y if self.reuse else self.bn(y)


def _trained_stats(net):
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 2)
    return net.eval()


def test_fold_batchnorm_refuses_a_convolution_output_used_elsewhere():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8)
    plain = _trained_stats(_ConvBN(reuse=False))
    assert layers.fold_batchnorm(plain, x) is not None
    # the pairing cannot see a functional second use; the check of outputs must catch it
    reused = _trained_stats(_ConvBN(reuse=True))
    assert layers._conv_norm_pairs(reused, x) == [("conv", "bn")]
    assert layers.fold_batchnorm(reused, x) is None
    train = _ConvBN(reuse=False).train()
    assert layers.fold_batchnorm(train, x) is None  # batch statistics cannot be folded
    no_stats = _ConvBN(reuse=False)
    no_stats.bn = torch.nn.BatchNorm2d(4, track_running_stats=False)
    assert layers.fold_batchnorm(no_stats.eval(), x) is None
    with layers.fast_model(reused, x) as fast:
        assert fast is reused
