"""Score-CAM's skipped passes: the maps they give are the maps of every pass; its approximations are options."""
from collections import OrderedDict

import pytest
import tolerance as tol
import torch
from torch import nn

from xai import attribution as A
from xai.attribution.cam import ScoreCAM
from xai.errors import XaiError


def redundant_cnn() -> nn.Module:
    """A conv layer of 8 channels with known redundancy: channel 1 is 3 x channel 0 + 0.7 and channel 5
    is 0.25 x channel 2 - 1 (each the same mask as its original), channel 3 is a constant."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 8, 3, padding=1, stride=2)), ("act", nn.SiLU()),
        ("conv2", nn.Conv2d(8, 6, 3, padding=1)), ("act2", nn.SiLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(6, 5)),
    ]))
    with torch.no_grad():
        w, b = net.conv.weight, net.conv.bias
        w[1], b[1] = 3 * w[0], 3 * b[0] + 0.7
        w[5], b[5] = 0.25 * w[2], 0.25 * b[2] - 1.0
        w[3], b[3] = 0.0, 0.2
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class PassCounter:
    """Counts the images and records the input sizes of every forward pass of a model."""

    def __init__(self, model: nn.Module):
        self.images, self.sizes = 0, set()
        model.register_forward_pre_hook(self)

    def __call__(self, _module, args):
        self.images += args[0].shape[0]
        self.sizes.add(tuple(args[0].shape[-2:]))


def test_plan_finds_the_constant_and_the_duplicate_channels():
    net = redundant_cnn()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    acts = net.conv(x)[0]
    keep, source, masks = ScoreCAM.plan(acts, (16, 16))
    assert sorted(keep.tolist()) == [0, 1, 2, 4, 5, 6, 7]  # channel 3 is constant
    group = dict(zip(keep.tolist(), source.tolist()))
    assert group[0] == group[1] and group[2] == group[5]
    assert len(set(group.values())) == 5 and masks.shape == (5, 16, 16)
    _, every, all_masks = ScoreCAM.plan(acts, (16, 16), share_masks=False)
    assert len(all_masks) == 7 and sorted(every.tolist()) == list(range(7))


def test_shared_passes_give_the_map_of_every_pass():
    """Rule 3: a shared pass stands for masks within SAME_MASK of its own, so each weight moves by what
    the network's rounding of an input that close moves it."""
    net = redundant_cnn()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    A.score_cam(net, x[:1], 0, layer="conv")  # one-time checks of the model's layout, before counting
    counter = PassCounter(net)
    every = A.score_cam(net, x, [0, 3, 4], layer="conv", share_masks=False, internal_batch_size=4)
    all_passes, counter.images = counter.images, 0
    shared = A.score_cam(net, x, [0, 3, 4], layer="conv", internal_batch_size=4)
    assert tol.network_close(shared, every)
    assert shared.abs().max() > 0
    # Both make the same capture and probe passes; the masked ones are 7 channels per image, then 5.
    assert all_passes - counter.images == 3 * (7 - 5)


def test_different_masks_are_never_shared():
    """Masks apart by more than SAME_MASK somewhere get their own passes, however close their sums."""
    base = torch.rand(1, 64, generator=torch.Generator().manual_seed(3))
    near = base.clone()
    near[0, 7] += 2 * ScoreCAM.SAME_MASK
    swapped = base.clone()
    swapped[0, [3, 9]] = swapped[0, [9, 3]]  # the same sum, another mask
    same = base + 0.5 * ScoreCAM.SAME_MASK
    group, first = ScoreCAM._same_masks(torch.cat([base, near, swapped, same]))
    assert group.tolist() == [group[0], group[1], group[2], group[0]]
    assert len(set(group[:3].tolist())) == 3 and len(first) == 3


def test_mask_size_passes_smaller_images_and_full_size_is_exact():
    net = redundant_cnn()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    exact = A.score_cam(net, x, [1, 2], layer="conv")
    assert torch.equal(A.score_cam(net, x, [1, 2], layer="conv", mask_size=32), exact)  # rule 1: nothing changes
    counter = PassCounter(net)
    small = A.score_cam(net, x, [1, 2], layer="conv", mask_size=16)
    assert small.shape == exact.shape
    assert counter.sizes == {(32, 32), (16, 16)}  # the capture pass at full size, the masked ones at 16
    with pytest.raises(XaiError, match="mask_size"):
        A.score_cam(net, x, [1, 2], layer="conv", mask_size=0)
