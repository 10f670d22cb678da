import pytest
import torch

from xai import layers
from xai.errors import UnknownNameError, XaiError
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
                assert torch.allclose(h, full["blocks.1"])
        assert torch.allclose(h, full["blocks.3"])


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
    assert raw["blocks.1"].shape == (2, 50, 96) and layers.num_prefix_tokens(vit) == 1
    # patch token (row 1, col 2) lands at grid position [1, 2]
    t = torch.arange(2 * 50 * 3, dtype=torch.float).view(2, 50, 3)
    grid = layers.to_spatial(t, prefix_tokens=1)
    assert torch.equal(grid[:, :, 1, 2], t[:, 1 + 1 * 7 + 2, :])
    with pytest.raises(XaiError, match="no spatial"):
        layers.to_spatial(torch.rand(2, 10))


def test_layer_shapes(lite0):
    shapes = dict(layers.layer_shapes(lite0.model, lite0.input_size))
    assert shapes["blocks.3"] == (80, 14, 14) and shapes["classifier"] == (1000,)
