"""Incremental occlusion (xai.attribution.incremental) gives full occlusion's map, on real networks and
on small ones built to hit every rule, and falls back to full recomputation where it cannot follow.

Both sides run on the same batch-norm-folded copy; they differ only in which positions of each map are
computed, and from which crops: rule 3 of tests/tolerance.py (two passes computed differently).
"""
import importlib

import pytest
import tolerance as tol
import torch
import torch.nn.functional as F
from torch import nn

from xai.attribution import incremental as inc
from xai.attribution._rects import Rects, Window, crop
from xai.attribution.incremental import IncrementalUnsupported, Network
from xai.attribution.occlusion import _window_batches, occlusion, occlusion_plan
from xai.bench.measure import count_flops

occ_module = importlib.import_module("xai.attribution.occlusion")  # the package exports the function


def both(model, x, t, **options):
    inc_map = occlusion(model, x, t, incremental=True, **options)
    full_map = occlusion(model, x, t, incremental=False, **options)
    return inc_map, full_map


class Tiny(nn.Module):
    """Every rule in one network: stride 2, TF "same" padding (asymmetric), torch "same" padding,
    depthwise, dilation, residual add, concatenation, max and average pooling, a scalar constant."""

    def __init__(self):
        from timm.layers import Conv2dSame

        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.same = Conv2dSame(8, 8, 3, stride=2)
        self.dw = nn.Conv2d(8, 8, 5, padding="same", groups=8)
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.pw = nn.Conv2d(16, 8, 1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.avg = nn.AvgPool2d(3, 1, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.same(x)
        y = y + F.relu6(self.dw(y))
        y = torch.cat([y, torch.relu(self.dil(y))], 1)
        y = self.avg(self.pool(self.pw(y) * 0.5))
        return self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Tiny().eval()


@pytest.mark.parametrize("switch", [1.0, inc.SWITCH])
def test_tiny_network_matches_full_occlusion(tiny, monkeypatch, switch):
    monkeypatch.setattr(occ_module, "SWITCH", switch)
    x = torch.rand(2, 3, 44, 38)  # the stem gives 22 x 19: TF "same" pads 0 + 1 rows, 1 + 1 columns
    opts = dict(window=7, stride=5, internal_batch_size=6)  # the last windows are clipped at the edges
    a, b = both(tiny, x, [1, 3], **opts)
    assert tol.network_close(a, b)  # rule 3
    plan = occlusion_plan(tiny, x, switch=switch, **opts)
    assert plan["incremental"] and plan["flops_saved"] > 0
    if switch == 1.0:  # every rule ran on rectangles: only the global mean ends them
        assert set(plan["switches_at"]) == {"mean"}


def test_blur_fill_and_softmax_output(tiny):
    x = torch.rand(1, 3, 40, 40)
    a, b = both(tiny, x, 2, window=10, stride=6, fill="blur", output="softmax", internal_batch_size=5)
    assert tol.network_close(a, b)  # rule 3


def test_efficientnet_lite0_matches_full_occlusion(lite0):
    from xai.bench.attribution import bench_inputs

    x, t, _ = bench_inputs(lite0, 96, 1)  # a real photo, small: the module is fully convolutional
    opts = dict(window=16, stride=11, internal_batch_size=16)  # 9 x 9 windows, the last ones clipped
    a, b = both(lite0.model, x, t, **opts)
    assert tol.network_close(a, b)  # rule 3
    assert float(a.abs().max()) > 0
    plan = occlusion_plan(lite0.model, x, **opts)
    assert plan["incremental"] and plan["flops_saved"] > 0.1
    # Conv2dSame (stride 2, TF padding), depthwise and residual blocks all ran on rectangles before
    # the first switch to full recomputation.
    assert all(node.startswith(("blocks.2", "blocks.3", "blocks.4")) for node in plan["switches_at"])


def test_resnet18_matches_full_occlusion():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()  # random weights: no download; in-place ReLUs, max-pool
    with torch.no_grad():  # running statistics other than (0, 1), so that folding them changes the weights
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 3, 64, 64)
    opts = dict(window=12, stride=8, internal_batch_size=16)
    a, b = both(model, x, 4, **opts)
    assert tol.network_close(a, b)  # rule 3
    plan = occlusion_plan(model, x, **opts)
    assert plan["incremental"] and plan["flops_saved"] > 0.1
    assert all(node.startswith(("layer1", "layer2", "layer3")) for node in plan["switches_at"])


def test_few_windows_run_in_full_unless_asked(tiny):
    """Windows of most of the image change most of every map: nothing to save for the clean pass."""
    x = torch.rand(1, 3, 40, 40)
    opts = dict(window=30, stride=10)
    plan = occlusion_plan(tiny, x, **opts)
    assert not plan["incremental"] and "less than the clean pass" in plan["reason"]
    a, b = both(tiny, x, 0, **opts)  # asked for, it still runs, and agrees
    assert tol.network_close(a, b)  # rule 3
    assert torch.equal(occlusion(tiny, x, 0, **opts), b)  # rule 1: the default took the full path


def test_planned_flops_are_the_counted_ones(tiny):
    x = torch.rand(1, 3, 40, 40)
    net = Network.trace(tiny, x)
    clean = inc.Clean(net.clean(x)[0])
    batches = [(net.plan(r), r) for r, _ in _window_batches(x.shape, 8, 8, 4)]
    patches = [torch.rand(r.n, 3, r.h, r.w) for _, r in batches]

    def run_all():
        with torch.no_grad():
            for (plan, _), p in zip(batches, patches):
                net.run(plan, clean, p)

    _, counted = count_flops(run_all)
    assert counted == sum(plan.flops for plan, _ in batches)
    assert counted < sum(plan.full_flops for plan, _ in batches)


# -- fallbacks: never a silently wrong map ---------------------------------------------------------

class Branchy(nn.Module):
    """Control flow on a value: a symbolic trace cannot follow it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            y = y * 2
        return self.head(y.mean((2, 3)))


class Upsampled(nn.Module):
    """A module with no rule in the middle of the convolutions."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.b(self.up(torch.relu(self.a(x)))).mean((2, 3)))


def test_untraceable_network_runs_in_full_with_the_reason():
    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.rand(1, 3, 16, 16)
    net = Network.trace(model, x)
    assert net.reason and "trace" in net.reason
    assert occlusion_plan(model, x, window=4, stride=4) == {"incremental": False, "reason": net.reason}
    with pytest.raises(IncrementalUnsupported) as err:
        occlusion(model, x, 0, window=4, stride=4, incremental=True)
    assert err.value.reason == net.reason
    assert torch.equal(occlusion(model, x, 0, window=4, stride=4),
                       occlusion(model, x, 0, window=4, stride=4, incremental=False))  # rule 1: the same path


def test_module_without_a_rule_ends_the_incremental_region():
    torch.manual_seed(0)
    model = Upsampled().eval()
    x = torch.rand(1, 3, 24, 24)
    opts = dict(window=4, stride=4, internal_batch_size=8)
    plan = occlusion_plan(model, x, switch=1.0, **opts)
    assert set(plan["switches_at"]) == {"up"} and "Upsample has no rule" in plan["switches_at"]["up"]["why"]
    assert 0 < plan["flops_saved"] < 1  # the first convolution ran on rectangles, the rest in full
    a, b = both(model, x, 1, **opts)
    assert tol.network_close(a, b)  # rule 3


def test_squeeze_excite_ends_the_incremental_region():
    """A gate from the global mean makes every position depend on the whole map."""
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.gate = nn.Conv2d(4, 4, 1)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    model = SE().eval()
    x = torch.rand(1, 3, 24, 24)
    plan = occlusion_plan(model, x, window=4, stride=4, switch=1.0)
    assert set(plan["switches_at"]) == {"mean"}  # the squeeze: it has no rule
    a, b = both(model, x, 1, window=4, stride=4)
    assert tol.network_close(a, b)  # rule 3


def test_hooked_convolution_is_run_whole_so_its_hook_applies():
    torch.manual_seed(0)
    model = Upsampled().eval()
    model.a.register_forward_hook(lambda _m, _i, out: out + 1.0)
    x = torch.rand(1, 3, 24, 24)
    plan = occlusion_plan(model, x, window=4, stride=4)
    assert set(plan["switches_at"]) == {"a"} and "hooks" in plan["switches_at"]["a"]["why"]
    a, b = both(model, x, 1, window=4, stride=4)
    assert tol.network_close(a, b)  # rule 3


class Aliased(nn.Module):
    """An in-place ReLU on a value the residual add reads too: in eager mode the add sees it rectified."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.a(x)
        skip = y
        y = self.b(self.relu(y))
        y += skip
        return self.head(self.relu(y).mean((2, 3)))


def test_in_place_operation_on_a_shared_value_runs_in_full():
    """Out of place, the add would read the unrectified value: a different network. So it is not traced."""
    torch.manual_seed(0)
    model = Aliased().eval()
    x = torch.rand(1, 3, 20, 20)
    net = Network.trace(model, x)
    assert net.reason and "in place" in net.reason
    opts = dict(window=5, stride=3)
    assert torch.equal(occlusion(model, x, 2, **opts), occlusion(model, x, 2, incremental=False, **opts))  # rule 1
    assert model.relu.inplace  # left as built


def test_in_place_operations_on_values_read_once_run_out_of_place():
    """torchvision's pattern (ReLU(inplace=True) after a norm, ``out += identity``): nothing else reads the
    overwritten value, so running it out of place computes the same, and the cache stays clean."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            skip = self.a(x)
            y = self.b(self.relu(self.a(x)))
            y += skip
            return self.head(self.relu(y).mean((2, 3)))

    torch.manual_seed(0)
    model = Block().eval()
    x = torch.rand(1, 3, 20, 20)
    assert Network.trace(model, x).reason is None
    a, b = both(model, x, 2, window=5, stride=3)
    assert tol.network_close(a, b)  # rule 3
    assert model.relu.inplace  # put back after the call


# -- the geometry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,s,d,pad", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 1, 2), (3, 1, 2, 2), (1, 2, 1, 0),
                                       (4, 3, 1, 0), (3, 2, 1, "tf")])
def test_window_rule_covers_every_changed_output(k, s, d, pad):
    """Perturb a rectangle of the input; every output that changes must lie in the predicted output
    rectangle, and the convolution of the predicted input crop must give those outputs."""
    from xai.attribution._rules import _same_total

    torch.manual_seed(k * 100 + s * 10 + d)
    size = 24  # even: TF "same" padding of a stride-2 window is asymmetric
    if pad == "tf":
        total = _same_total(size, k, s, d)
        top, after = total // 2, total - total // 2
    else:
        top = after = pad
    out_size = (size + top + after - d * (k - 1) - 1) // s + 1
    w = torch.randn(2, 2, k, k)
    x = torch.randn(1, 2, size, size)
    win = Window((k, k), (s, s), (d, d), (top, top), (out_size, out_size))
    conv = lambda z: F.conv2d(F.pad(z, (top, after, top, after)), w, stride=s, dilation=d)  # noqa: E731
    for y0, x0, h, ww in [(0, 0, 3, 4), (10, 5, 5, 2), (20, 19, 3, 4), (7, 0, 1, 1)]:
        r = Rects(torch.tensor([y0]), torch.tensor([x0]), h, ww, size, size)
        bumped = x.clone()
        bumped[..., y0:y0 + h, x0:x0 + ww] += torch.randn(2, h, ww)
        changed = (conv(bumped) != conv(x)).any(1)[0].nonzero()
        out, reads = win.through(r)
        oy, ox = int(out.y), int(out.x)
        if changed.numel():
            assert changed[:, 0].min() >= oy and changed[:, 0].max() < oy + out.h
            assert changed[:, 1].min() >= ox and changed[:, 1].max() < ox + out.w
        c = crop(r, reads)  # cached rows only (the patch is the bumped rectangle)
        rows = torch.cat([bumped[0].permute(1, 2, 0).reshape(-1, 2), torch.zeros(1, 2)])
        part = rows[c.cached_rows].view(1, reads.h, reads.w, 2).permute(0, 3, 1, 2)
        expected = conv(bumped)[..., oy:oy + out.h, ox:ox + out.w]
        # rule 2: the same k*k*2-term sums, over a crop instead of the whole map
        assert torch.allclose(F.conv2d(part, w, stride=s, dilation=d), expected, rtol=0,
                              atol=tol.ulps(2 * k * k, float(expected.abs().max())))
