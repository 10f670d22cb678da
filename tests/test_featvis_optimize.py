"""The renderer's optimizers and schedules: the textbook loop, the normalised step, and batched = one by one."""
from __future__ import annotations

import pytest
import tolerance as tol
import torch

from xai.layers import NCHW, Layout
from test_featvis import tiny_cnn

from xai.errors import UnknownNameError, XaiError
from xai.featvis import (OPTIMIZERS, SCHEDULES, Penalties, Schedule, Stage, evaluate, objectives as O, param as P,
                         render, transforms as T)
from xai.featvis.schedule import DEFAULT_SCHEDULE
from xai.featvis.optimize import Optimizer

# Learning rates that move each parameterization visibly in a few steps on the tiny CNN. Plain SGD's
# step is lr x the gradient, whose scale depends on the objective: its lr is the odd one out.
LR = {"adam": 0.05, "sgd": 0.5, "normalized_sgd": 0.05}


@pytest.fixture(scope="module")
def cnn():
    return tiny_cnn()


def _units(model, units, seed, optimizer, steps=12, param="fft", valid="sigmoid", transforms=T.standard(32),
           penalties=Penalties(l2=0.01, tv=0.005), lr=None, **kw):
    n = len(units)
    p = P.FFTParam(n, 3, 32, seed=seed) if param == "fft" else P.PixelParam(n, 3, 32, seed=seed, valid=valid)
    return render(model, O.channel("conv3", units), p, transforms, steps=steps, seed=seed,
                  optimizer=optimizer, lr=lr or LR[optimizer], penalties=penalties, **kw)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_renders_a_batch_as_one_by_one(cnn, optimizer):
    """Rule 6, as for Adam: each optimizer works per image (the normalised step divides each image's
    gradient by its own norm), so only the network's summation order differs between batch sizes."""
    units = [3, 7, 11]
    batched = _units(cnn, units, 10, optimizer)
    for i, u in enumerate(units):
        alone = _units(cnn, [u], 10 + i, optimizer)
        assert torch.allclose(batched.images[i], alone.images[0], atol=tol.OPTIMIZED, rtol=0), (optimizer, i)
    shuffled = _units(cnn, units, 11, optimizer)
    assert not torch.allclose(shuffled.images[0], batched.images[0], atol=tol.DIFFERENT)


def test_sgd_is_the_textbook_loop(cnn):
    """One step of ``sgd`` on clipped pixels is x + lr * grad, clipped: the assignments' loop."""
    start = P.PixelParam(2, 3, 16, seed=4, valid="clip", std=0.1)
    x0 = start().detach().clone()
    objective = O.channel("conv2", [1, 5])
    xr = x0.clone().requires_grad_(True)
    a = cnn[:4](xr)
    (g,) = torch.autograd.grad(objective(O.Activations({"conv2": a}, None, {"conv2": Layout(NCHW, tuple(a.shape[1:]), tuple(a.shape[2:]))})).sum(), xr)
    r = render(cnn, objective, start, (), steps=1, optimizer="sgd", lr=3.0)
    # Rule 3: the renderer differentiates a copy with the batch norm folded in; then one add (rule 2).
    bound = tol.NETWORK * 3.0 * float(g.abs().max()) + tol.ulps(4)
    assert torch.allclose(r.images, (x0 + 3.0 * g).clamp(0, 1), atol=bound, rtol=0)
    assert not torch.allclose(r.images, x0, atol=tol.DIFFERENT)


def test_normalized_step_moves_every_image_by_lr_whatever_its_gradient():
    param = P.Stack([P.PixelParam(2, 3, 8, seed=0, valid="clip"), P.FFTParam(1, 3, 8, seed=1)])
    groups = param.image_groups()
    assert [len(g) for g in groups] == [1, 1] and groups[0][0].shape[0] == 2 and groups[1][0].shape[0] == 1
    before = [p.detach().clone() for p in param.parameters()]
    scales = [[1.0, 1e4], [1e-3]]  # gradients of very different sizes per image
    for p, s in zip(param.parameters(), scales):
        g = torch.randn(p.shape, generator=torch.Generator().manual_seed(7))
        p.grad = g * torch.tensor(s).view(-1, *[1] * (p.dim() - 1))
    grads = [p.grad.clone() for p in param.parameters()]
    Optimizer(param, "normalized_sgd", 0.02).step()
    for p, b, g in zip(param.parameters(), before, grads):
        moved = (b - p.detach()).flatten(1)
        rms = moved.pow(2).mean(1).sqrt()
        assert torch.allclose(rms, torch.full_like(rms, 0.02), rtol=tol.ulps(64), atol=0)  # rule 2: a norm of <= 400 terms
        cos = torch.nn.functional.cosine_similarity(moved, g.flatten(1), dim=1)  # along its own gradient (descent)
        assert torch.allclose(cos, torch.ones_like(cos), atol=tol.ulps(64))


def test_normalized_step_of_one_image_ignores_the_others():
    """Rule 1: image 0's step is computed from image 0's gradient alone, bit for bit."""
    def step(other_scale: float) -> torch.Tensor:
        param = P.PixelParam(2, 3, 8, seed=0, valid="clip")
        g = torch.randn(param.pixels.shape, generator=torch.Generator().manual_seed(3))
        g[1] *= other_scale
        param.pixels.grad = g
        Optimizer(param, "normalized_sgd", 0.05).step()
        return param.pixels.detach()[0].clone()

    assert torch.equal(step(1.0), step(1e6))


def test_zero_gradient_leaves_the_image_in_place():
    param = P.PixelParam(1, 3, 8, seed=0, valid="clip")
    before = param.pixels.detach().clone()
    param.pixels.grad = torch.zeros_like(param.pixels)
    Optimizer(param, "normalized_sgd", 0.05).step()
    assert torch.equal(param.pixels.detach(), before)


@pytest.mark.parametrize("valid", ["clip", "sigmoid"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_clip_and_sigmoid_pixels_work_under_every_optimizer(cnn, optimizer, valid):
    """Without transforms or penalties the loop ascends the very value it is scored on: every unit rises,
    and the images stay valid (clipping projects after each step; the sigmoid cannot leave [0, 1])."""
    # A spatial mean's gradient is spread over 3072 pixels, each ~1e-3: plain SGD needs a larger lr
    # on pixels than on the 1/f-scaled spectrum (the scale problem the other two optimizers remove).
    lr = 10.0 if optimizer == "sgd" else None
    r = _units(cnn, [1, 2, 9], 3, optimizer, param="pixels", valid=valid, transforms=(), penalties=None,
               snapshots=(0,), lr=lr)
    assert r.images.min() >= 0 and r.images.max() <= 1
    start = evaluate(cnn, O.channel("conv3", [1, 2, 9]), r.snapshots[0])
    assert (r.values > start + tol.DIFFERENT).all(), (optimizer, valid, r.values, start)


def test_optimizer_and_schedule_errors(cnn):
    p = P.FFTParam(1, 3, 16)
    with pytest.raises(UnknownNameError, match="normalized_sgd"):
        render(cnn, O.class_logit(0), p, steps=1, optimizer="normalised_sgd")
    with pytest.raises(XaiError, match="explicit lr"):
        render(cnn, O.class_logit(0), p, steps=1, optimizer="sgd")
    with pytest.raises(XaiError, match="lr must be positive"):
        render(cnn, O.class_logit(0), p, steps=1, lr=0.0)
    with pytest.raises(UnknownNameError, match="constant"):
        render(cnn, O.class_logit(0), p, steps=1, schedule="constnt")
    with pytest.raises(XaiError, match="stage"):
        Schedule((Stage(0.5, scale=1.5),))


class InputSizes:
    def __init__(self, model):
        self.sizes = []
        # Optimization steps only: tracing a layer's layout at a new input size is one more forward pass,
        # without gradients.
        self.handle = model.register_forward_pre_hook(
            lambda _m, args: self.sizes.append(tuple(args[0].shape[-2:])) if torch.is_grad_enabled() else None)


@pytest.mark.parametrize("view", ["resize", "crop"])
def test_a_coarse_stage_shows_the_model_a_smaller_input_and_batches_as_one_by_one(view):
    net = tiny_cnn()
    sizes = InputSizes(net)
    schedule = Schedule((Stage(0.25, lr=2.0, scale=0.5, view=view), Stage(0.75)))
    kw = dict(steps=8, schedule=schedule, penalties=Penalties(tv=0.01))
    units = [2, 5]
    batched = render(net, O.channel("conv3", units), P.FFTParam(2, 3, 32, seed=5), T.standard(32), seed=5, **kw)
    full = T.standard(32)(torch.zeros(1, 3, 32, 32), [torch.Generator()]).shape[-1]
    half = round(full * 0.5)
    assert sizes.sizes.count((half, half)) == 2 and (full, full) in sizes.sizes  # 2 of 8 steps at half size
    for i, u in enumerate(units):  # rule 6
        alone = render(net, O.channel("conv3", [u]), P.FFTParam(1, 3, 32, seed=5 + i), T.standard(32), seed=5 + i, **kw)
        assert torch.allclose(batched.images[i], alone.images[0], atol=tol.OPTIMIZED, rtol=0), i
    sizes.handle.remove()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_named_schedule_renders_a_batch_as_one_by_one(cnn, name):
    """Rule 6 for each schedule users can name, the default among them: a schedule depends on the step
    only, and Adam with other betas is still elementwise."""
    units = [3, 7, 11]
    batched = _units(cnn, units, 10, "adam", schedule=name)
    for i, u in enumerate(units):
        alone = _units(cnn, [u], 10 + i, "adam", schedule=name)
        assert torch.allclose(batched.images[i], alone.images[0], atol=tol.OPTIMIZED, rtol=0), (name, i)


def test_the_default_schedule_is_named_and_sets_adams_betas(cnn):
    fast = SCHEDULES[DEFAULT_SCHEDULE]
    p = P.FFTParam(1, 3, 32, seed=0)
    assert Optimizer(p, "adam", 0.05, fast.betas).opt.param_groups[0]["betas"] == fast.betas
    # The default is what render uses when given no schedule: the same image as naming it.
    default = _units(cnn, [3], 10, "adam").images
    assert torch.equal(default, _units(cnn, [3], 10, "adam", schedule=DEFAULT_SCHEDULE).images)
    assert not torch.allclose(default, _units(cnn, [3], 10, "adam", schedule="constant").images, atol=tol.DIFFERENT)
