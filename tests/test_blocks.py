"""Building Blocks (activation grid, semantic dictionary, neuron groups), receptive fields and the
Microscope's exemplars. Numerical bounds name their rule in tests/tolerance.py."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tolerance import DIFFERENT, NETWORK, OPTIMIZED, network_close, ulps
from xai import featvis
from xai.errors import XaiError
from xai.featvis import blocks as B
from xai.featvis import microscope as M
from xai.featvis import objectives as O
from xai.featvis import param as P
from xai.featvis.receptive import crop, measured_support, receptive_field, receptive_fields


@pytest.fixture(scope="module")
def cnn():
    from xai.shortcuts import poisoned

    return poisoned.trained(poisoned.standard_specs("Shirt", fraction=1.0)["square"], "smoke", device="cpu")


@pytest.fixture(scope="module")
def test_images():
    from xai.data import fashion_mnist

    return fashion_mnist.load("test")[0][:300]


@pytest.fixture(scope="module")
def chelsea(lite0):
    from xai.data import images

    return lite0.prepare(images.load("chelsea"))


# -- receptive fields ---------------------------------------------------------------------------------------
def test_receptive_field_closed_form():
    model = nn.Sequential(OrderedDict([
        ("a", nn.Conv2d(1, 2, 3, padding=1)), ("pool", nn.MaxPool2d(2)),
        ("b", nn.Conv2d(2, 2, 3, stride=2, dilation=2)), ("act", nn.ReLU())]))
    rf = receptive_fields(model, ["a", "pool", "b", "act:in"], (1, 32, 32))
    # By hand: conv 3 pad 1 -> size 3, jump 1, start 0; pool 2 -> 4, 2, 0.5; conv 3 stride 2 dilation 2
    # (span 5) -> 4 + 4 * 2 = 12, 4, 0.5 + 2 * 2 = 4.5.
    assert (rf["a"].rows.size, rf["a"].rows.jump, rf["a"].rows.start) == (3, 1, 0)
    assert (rf["pool"].rows.size, rf["pool"].rows.jump, rf["pool"].rows.start) == (4, 2, 0.5)
    assert (rf["b"].rows.size, rf["b"].rows.jump, rf["b"].rows.start) == (12, 4, 4.5)
    assert (rf["act:in"].rows, rf["act:in"].cols, rf["act:in"].shape) == (rf["b"].rows, rf["b"].cols, (6, 6))
    assert rf["b"].box(0, 0, clip=False) == (-1, -1, 10, 10) and rf["b"].box(0, 0) == (0, 0, 10, 10)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.1)  # positive weights: no unit on the path is ever inactive
    assert measured_support(model, "b", (1, 32, 32), (3, 3)) == rf["b"].box(3, 3)


def test_receptive_field_matches_the_gradient_on_lite0(lite0):
    """TF "same" padding (timm's Conv2dSame), strides, depthwise and residual blocks, read off the pass."""
    fields = receptive_fields(lite0.model, ["bn1", "blocks.1", "blocks.3"], (3, 224, 224))
    assert fields["blocks.3"].shape == (14, 14) and fields["blocks.3"].jump == (16, 16)
    for layer, pos in (("bn1", (0, 0)), ("blocks.1", (28, 28)), ("blocks.3", (7, 7))):
        assert measured_support(lite0.model, layer, (3, 224, 224), pos, samples=2) == fields[layer].box(*pos), layer


def test_receptive_field_global_and_unknown():
    class Gate(nn.Module):  # squeeze-and-excitation: every position sees the whole image
        def forward(self, x):
            return x * torch.sigmoid(x.mean((2, 3), keepdim=True))

    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 2, 3, padding=1)), ("gate", Gate())]))
    assert receptive_field(model, "gate", (1, 16, 16)).box(0, 0) == (0, 0, 15, 15)

    class Up(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2.0)

    up = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 2, 3)), ("up", Up()), ("after", nn.Identity())]))
    with pytest.raises(XaiError, match="by a rule the tracer does not know"):
        receptive_field(up, "after", (1, 16, 16))


def test_crop_cuts_boxes_and_fills_beyond_the_image():
    img = torch.rand(1, 3, 10, 10)
    same = crop(img, torch.tensor([[2, 3, 5, 6]]), 4)
    assert torch.allclose(same[0], img[0, :, 2:6, 3:7], atol=ulps(4))  # rule 8: resampling at the same size
    out = crop(img, torch.tensor([[-2, -2, 1, 1]]), 4, fill=0.5)
    assert torch.equal(out[0, :, :2, :2], torch.full((3, 2, 2), 0.5))
    assert torch.allclose(out[0, :, 2:, 2:], img[0, :, :2, :2], atol=ulps(4))  # rule 8


# -- activation grid ----------------------------------------------------------------------------------------
def test_activation_grid_renders_every_position(cnn, test_images):
    x = test_images[0]
    grid = B.activation_grid(cnn.model, x, "relu3", size=28, steps=12, seed=3)
    assert grid.objective_layer == "relu3:in" and grid.shape == (7, 7)
    acts = featvis.activations(cnn.model, x[None], ["relu3:in"]).layer("relu3:in")[0]
    assert torch.equal(grid.vectors, acts.flatten(1).T)  # rule 1: the same pass
    assert grid.rendering.images.shape == (49, 1, 28, 28) and grid.tiles().shape == (7, 7, 1, 28, 28)
    objective = O.direction("relu3:in", grid.vectors)
    start = featvis.evaluate(cnn.model, objective, P.FFTParam(49, 1, 28, seed=[3 + i for i in range(49)])())
    # Each image is optimized for its own position's vector: far above where it started.
    assert float((grid.rendering.values - start).mean()) > DIFFERENT
    assert torch.allclose(grid.rendering.values, featvis.evaluate(cnn.model, objective, grid.rendering.images),
                          atol=OPTIMIZED)  # rule 6: the values are the final images' own


def test_activation_grid_on_lite0_in_one_batch_or_in_chunks(lite0, chelsea):
    small = F.interpolate(chelsea[None], size=(64, 64), mode="bilinear", antialias=True)[0]
    whole = B.activation_grid(lite0.model, small, "blocks.3", size=32, steps=2)
    parts = B.activation_grid(lite0.model, small, "blocks.3", size=32, steps=2, batch=5)
    assert whole.shape == (4, 4) and whole.rendering.images.shape == (16, 3, 32, 32)
    # Rule 6: per-image seeds make the chunking invisible up to the optimizer's rounding.
    assert torch.allclose(whole.rendering.images, parts.rendering.images, atol=OPTIMIZED)


def test_grid_and_dictionary_pool_the_map_to_the_same_cells(cnn, test_images):
    x = test_images[0]
    acts = featvis.activations(cnn.model, x[None], ["relu3:in"]).layer("relu3:in")
    pooled = F.adaptive_avg_pool2d(acts, (3, 3))[0]
    grid = B.activation_grid(cnn.model, x, "relu3", size=28, steps=1, cells=3)
    d = B.semantic_dictionary(cnn.model, x, "relu3", top=2, cells=3)
    assert grid.shape == d.shape == (3, 3) and grid.rendering.images.shape[0] == 9
    assert torch.equal(grid.vectors, pooled.flatten(1).T)  # rule 1: the same pooling of the same pass
    vals, chans = pooled.permute(1, 2, 0).topk(2, dim=-1)
    assert torch.equal(d.channels, chans) and torch.equal(d.values, vals)
    # A map no larger than the cells is left as it is, never enlarged.
    assert B.semantic_dictionary(cnn.model, x, "relu3", top=2, cells=9).shape == (7, 7)
    with pytest.raises(XaiError):
        B.semantic_dictionary(cnn.model, x, "relu3", top=2, cells=0)


# -- semantic dictionary and neuron groups ----------------------------------------------------------------------
def test_semantic_dictionary_lists_each_positions_top_channels(lite0, chelsea):
    d = B.semantic_dictionary(lite0.model, chelsea, "blocks.3", top=4)
    acts = featvis.activations(lite0.model, chelsea[None], ["blocks.3"]).layer("blocks.3")[0]
    vals, chans = acts.permute(1, 2, 0).topk(4, dim=-1)
    assert torch.equal(d.channels, chans) and torch.equal(d.values, vals)  # rule 1: the same pass
    e = d.entry(7, 7)
    assert e["anchors"] == [f"blocks.3-c{c}" for c in chans[7, 7].tolist()]
    assert e["values"] == sorted(e["values"], reverse=True)
    assert len(d.to_json()["entries"]) == 14 * 14
    with pytest.raises(XaiError, match="top must be between"):
        B.semantic_dictionary(lite0.model, chelsea, "blocks.3", top=0)


def test_neuron_group_attributions_add_up_to_the_layers(lite0, chelsea):
    from captum.attr import LayerGradientXActivation

    g = B.neuron_groups(lite0.model, chelsea, "blocks.3", groups=6, seed=0)
    assert g.directions.shape == (6, 80) and g.maps.shape == (6, 14, 14) and bool((g.maps >= 0).all())
    assert torch.allclose(g.directions.norm(dim=1), torch.ones(6), atol=ulps(80))  # rule 2: normalised rows
    # Rule 2: each entry's shares sum to one, so the groups' sums differ from the total by the rounding of
    # 6 x 14 x 14 float32 terms.
    scale = float(g.spatial_attribution.abs().sum())
    assert abs(float(g.attribution.double().sum()) - g.total) <= ulps(6 * 196, scale)
    with torch.no_grad():
        target = int(lite0.model(chelsea[None]).argmax())
    assert g.target == target
    ref = LayerGradientXActivation(lite0.model, lite0.model.blocks[3]).attribute(chelsea[None], target=target).detach()
    # Rule 3: captum's pass through the whole network and ours cut at the layer.
    # Rule 3 per entry (captum's pass through the whole network against ours cut at the layer), carried
    # through the sum of the 80 x 14 x 14 entries: at most NETWORK of the sum of their magnitudes.
    assert abs(g.total - float(ref.sum())) <= NETWORK * float(ref.abs().sum())
    r = B.render_groups(lite0.model, g, size=32, steps=2)
    assert r.images.shape == (6, 3, 32, 32)


# -- the Microscope -------------------------------------------------------------------------------------------------
def test_exemplars_are_the_top_images_of_every_channel(cnn, test_images):
    ex = M.top_exemplars(cnn.model, test_images, ["relu1", "relu3"], k=5, reduce="mean", batch=64)["relu3"]
    assert ex.indices.shape == (64, 5) and ex.objective_layer == "relu3:in" and ex.boxes is None
    full = featvis.activations(cnn.model, test_images, ["relu3:in"]).layer("relu3:in").mean((2, 3))  # [N, C]
    kth = full.topk(5, dim=0).values[-1]  # [C]
    picked = full.gather(0, ex.indices.T)  # [5, C], by our own indices
    # Rule 3: a pass of 300 against passes of 64 images; every pick is among the top 5 within it.
    assert network_close(picked, ex.values.T)
    assert bool((picked >= kth - 1e-4 * float(full.abs().max())).all())
    tiles = M.exemplar_crops(test_images, ex, 28, channels=[0, 5])
    assert tiles.shape == (2, 5, 1, 28, 28) and torch.equal(tiles[1, 0], test_images[ex.indices[5, 0]])


def test_exemplar_boxes_are_the_receptive_fields_of_the_maxima(lite0):
    from xai.data import images

    photos = torch.stack([lite0.prepare(images.load(p)) for p in ("chelsea", "coffee", "baboon")])
    ex = M.top_exemplars(lite0.model, photos, ["blocks.3"], k=2)["blocks.3"]
    assert ex.indices.shape == (80, 2) and ex.positions.shape == (80, 2, 2)
    acts = featvis.activations(lite0.model, photos, ["blocks.3"]).layer("blocks.3")
    c = 17
    for j in range(2):
        i, (r, q) = int(ex.indices[c, j]), ex.positions[c, j].tolist()
        assert network_close(acts[i, c, r, q][None], ex.values[c, j][None])  # rule 3: another batch
        assert float(acts[i, c].max()) <= float(ex.values[c, j]) + 1e-4 * float(acts.abs().max())
        assert tuple(ex.boxes[c, j].tolist()) == ex.field.box(r, q, clip=False)
    assert M.exemplar_crops(photos, ex, 48, channels=[c]).shape == (1, 2, 3, 48, 48)
    assert M.unit_anchor("blocks.3", 17) == "blocks.3-c17"
    with pytest.raises(XaiError, match="k must be between"):
        M.top_exemplars(lite0.model, photos, ["blocks.3"], k=4)


def test_fields_larger_than_the_photo_become_the_photo_with_the_cell_marked(lite0):
    from xai.data import images

    # A box reaching past the image keeps its side (capped at the image) and slides inside it.
    assert M.inside((-10, -10, 20, 20), 224, 224) == (0, 0, 30, 30)
    assert M.inside((200, 100, 260, 160), 224, 224) == (163, 100, 223, 160)
    assert M.inside((-300, -300, 550, 550), 224, 224) == (0, 0, 223, 223)
    photos = torch.stack([lite0.prepare(images.load(p)) for p in ("chelsea", "coffee")])
    ex = M.top_exemplars(lite0.model, photos, ["blocks.6"], k=1)["blocks.6"]
    assert ex.field.size[0] > 224  # the deep layer's field is larger than the input
    c = 3
    plain = M.exemplar_crops(photos, ex, 224, channels=[c], within=True)[0, 0]
    assert torch.allclose(plain, photos[ex.indices[c, 0]], atol=1e-5)  # the whole photo, no grey frame
    marked = M.exemplar_crops(photos, ex, 224, channels=[c], within=True, mark=True)[0, 0]
    yellow = (marked[0] == 1) & (marked[2] == 0) & ((marked[1] - 0.85).abs() < 1e-6)
    rows, cols = yellow.nonzero(as_tuple=True)
    cy, cx = ex.field.centre(*ex.positions[c, 0].tolist())
    # The outline is one stride of the layer (32 px) around the position's centre.
    assert abs((int(rows.min()) + int(rows.max())) / 2 - min(max(cy, 16), 208)) <= 2
    assert abs((int(cols.min()) + int(cols.max())) / 2 - min(max(cx, 16), 208)) <= 2
    assert 28 <= int(rows.max()) - int(rows.min()) <= 34
    assert torch.equal(marked[:, ~yellow], plain[:, ~yellow])  # nothing else changed


def test_render_channels_in_chunks_is_one_rendering(cnn):
    whole = M.render_channels(cnn.model, "relu1", size=28, steps=3, channels_in=1, batch=None)
    parts = M.render_channels(cnn.model, "relu1", size=28, steps=3, channels_in=1, batch=5)
    assert whole.images.shape == (16, 1, 28, 28)
    assert torch.allclose(whole.images, parts.images, atol=OPTIMIZED)  # rule 6
