"""Contrastive maps and the counterfactual-input optimizer, on tiny models with known answers."""
import pytest
import tolerance as tol
import torch
from torch import nn

from xai.contrastive import contrastive_map
from xai.counterfactual import counterfactual, total_variation
from xai.errors import UnknownNameError, XaiError


class TinyCNN(nn.Module):
    """Conv -> ReLU -> global pool -> linear, fixed seed; ``tie`` makes classes 0 and 1 identical functions."""

    def __init__(self, tie: bool = False, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, classes)
        if tie:
            with torch.no_grad():
                self.fc.weight[1] = self.fc.weight[0]
                self.fc.bias[1] = self.fc.bias[0]

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


# Rule 2 for TinyCNN's backward passes: its longest sums are the 24 head weights and the 9 x 6 conv taps.
GRAD = dict(atol=tol.ulps(24 + 54), rtol=0)


def _x(n=3):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method,options", [("gradient", {}), ("gradient_x_input", {}),
                                            ("integrated_gradients", {"steps": 8}),
                                            ("smoothgrad", {"samples": 4}), ("grad_cam", {"layer": "relu"})])
def test_contrastive_map_is_zero_when_the_two_logits_are_identical(method, options):
    model = TinyCNN(tie=True).eval()
    x = _x()
    with torch.no_grad():
        z = model(x)
    assert torch.equal(z[:, 0], z[:, 1])
    out = contrastive_map(model, x, 0, 1, method, **options)
    assert out.shape[0] == 3 and torch.count_nonzero(out) == 0
    assert torch.count_nonzero(contrastive_map(model, x, 0, 2, method, **options)) > 0  # not trivially zero


def test_contrastive_gradient_is_the_difference_of_class_gradients():
    from xai.attribution import gradient

    model = TinyCNN().eval()
    x = _x()
    expected = gradient(model, x, 2) - gradient(model, x, 3)
    assert torch.allclose(contrastive_map(model, x, 2, 3), expected, **GRAD)
    per_image = contrastive_map(model, x, [2, 3, 2], [3, 2, 0])  # one pair per image
    assert torch.allclose(per_image[1], -expected[1], **GRAD)
    assert torch.allclose(per_image[2], (gradient(model, x, 2) - gradient(model, x, 0))[2], **GRAD)


@pytest.mark.parametrize("method,options", [("gradient_x_input", {}), ("integrated_gradients", {"steps": 8}),
                                            ("smoothgrad", {"samples": 4, "seed": 3})])
def test_linear_methods_contrast_by_difference(method, options):
    """The misclassification study relies on this for its LINEAR methods (one image at a time, fixed seed)."""
    from xai.attribution import attribute
    from xai.studies.misclassification import LINEAR

    assert method in LINEAR
    model = TinyCNN().eval()
    x = _x(1)
    diff = attribute(method, model, x, 2, **options) - attribute(method, model, x, 0, **options)
    # Rule 2 per gradient, summed over the method's points (8 path steps, 4 samples) at the input's scale.
    steps = options.get("steps", options.get("samples", 1))
    assert torch.allclose(contrastive_map(model, x, 2, 0, method, **options), diff, atol=steps * GRAD["atol"], rtol=0)


def test_contrastive_map_errors(fmnist_cnn_smoke):
    model = TinyCNN().eval()
    with pytest.raises(XaiError, match="out of range"):
        contrastive_map(model, _x(), 0, 7)
    with pytest.raises(XaiError, match="logit"):
        contrastive_map(model, _x(), 0, 1, output="softmax")
    with pytest.raises(UnknownNameError, match="Shirt"):
        contrastive_map(fmnist_cnn_smoke, torch.zeros(1, 1, 28, 28), "Shrt", "Coat")


def linear_model() -> nn.Module:
    """A linear classifier strong enough that every class is reachable inside [0, 1]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_counterfactual_stays_in_range_lowers_the_loss_and_flips_the_class():
    model = linear_model()
    x = _x(4)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    target = (pred + 1) % 4
    res = counterfactual(model, x, target, confidence=0.6, distance="l1", weight=1e-3, tv=1e-3, steps=150, lr=0.05,
                         patience=20)
    assert res.counterfactuals.min() >= 0 and res.counterfactuals.max() <= 1
    assert res.loss_history[-1] < res.loss_history[0]
    assert bool(res.success.all())
    with torch.no_grad():
        probs = model(res.counterfactuals).softmax(-1)
    # Rule 2: probabilities of 64-term logits, recomputed here in another batch; the norms of 64 values.
    assert torch.allclose(probs.gather(1, target[:, None]).squeeze(1), res.confidence, atol=tol.ulps(64), rtol=0)
    assert bool((res.confidence >= 0.6 - tol.ulps(64)).all()) and torch.equal(res.prediction, target)
    assert torch.allclose(res.l2, (res.counterfactuals - x).flatten(1).norm(dim=1), atol=0, rtol=tol.ulps(64))
    assert torch.equal(res.linf, (res.counterfactuals - x).flatten(1).abs().amax(1))  # rule 1
    assert bool((res.steps <= res.steps_run).all())


def test_counterfactual_penalty_trades_distance_for_sparsity():
    model = linear_model()
    x = _x(2)
    with torch.no_grad():
        target = (model(x).argmax(-1) + 1) % 4
    loose = counterfactual(model, x, target, distance="l1", weight=0.0, steps=100, lr=0.05, patience=20)
    tight = counterfactual(model, x, target, distance="l1", weight=0.005, steps=100, lr=0.05, patience=20)
    assert bool(loose.success.all()) and bool(tight.success.all())
    assert float(tight.l1.sum()) < float(loose.l1.sum())


def test_counterfactual_errors():
    model = TinyCNN().eval()
    with pytest.raises(XaiError, match="distance"):
        counterfactual(model, _x(), 0, distance="l3")
    with pytest.raises(XaiError, match="confidence"):
        counterfactual(model, _x(), 0, confidence=1.5)
    with pytest.raises(XaiError, match="valid range"):
        counterfactual(model, _x() + 2, 0)
    with pytest.raises(XaiError, match="out of range"):
        counterfactual(model, _x(), 9)


def test_total_variation():
    d = torch.zeros(1, 1, 3, 3)
    d[0, 0, 1, 1] = 1.0
    assert total_variation(d).item() == 4.0  # rule 1: sums of small integers
