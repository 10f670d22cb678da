import copy

import pytest
import tolerance as tol
import torch

from xai import models
from xai.data import images
from xai.errors import UnknownNameError, XaiError
from xai.models.imagenet import remap_state_dict

# Photos every EfficientNet-Lite gets right with a clear margin; the manifest records their labels.
CLEAR = ["coffee", "baboon", "squirrel", "orange", "soccer_ball", "pekinese", "lakeside", "camera"]


def test_registry_lists_both_families():
    assert set(models.list("imagenet")) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert len(models.list("fmnist")) == 5
    with pytest.raises(UnknownNameError, match="did you mean: efficientnet_lite0"):
        models.load("efficientnet_lit0")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_imagenet_top1_matches_manifest(name):
    entry = models.load(name, device="cpu")
    assert not entry.model.training and entry.input_size[1] in (224, 240, 260)
    assert len(entry.layers) >= 4 and entry.num_classes == 1000
    batch = torch.stack([entry.prepare(images.load(pid)) for pid in CLEAR])
    top1 = [p[0][0] for p in entry.predict(batch, k=1)]
    assert top1 == [images.photo(pid).label for pid in CLEAR]


def test_positional_remap_checks_shapes(lite0):
    state = lite0.model.state_dict()
    renamed = {f"x{i}": v for i, v in enumerate(state.values())}
    assert remap_state_dict(renamed, lite0.model).keys() == state.keys()
    broken = dict(renamed)
    broken["x0"] = torch.zeros(3)
    with pytest.raises(XaiError, match="shape mismatch"):
        remap_state_dict(broken, lite0.model)
    with pytest.raises(XaiError, match="tensors"):
        remap_state_dict(dict(list(renamed.items())[:-1]), lite0.model)


def test_model_takes_unit_range_images_and_deepcopies(lite0):
    """Normalisation lives inside the model, and survives the deep copies the sanity checks make."""
    x = lite0.prepare(images.load("coffee"))[None]
    assert 0 <= x.min() and x.max() <= 1
    clone = copy.deepcopy(lite0.model)
    with torch.no_grad():
        assert torch.equal(clone(x), lite0.model(x))  # rule 1: a copy runs the same operations
        manual = lite0.model.forward(x)  # .forward bypasses hooks: the raw network on unnormalised input
        out = lite0.model(x)
        assert not torch.allclose(manual, out, atol=tol.DIFFERENT * float(out.abs().max()))


def test_class_index_and_input_checks(lite0):
    assert lite0.class_index("tabby") == 281 and lite0.class_index(281) == 281
    with pytest.raises(UnknownNameError, match="tabby"):
        lite0.class_index("tabbby")
    with pytest.raises(XaiError, match="out of range"):
        lite0.class_index(1000)
    with pytest.raises(XaiError, match=r"\[B, 3, 224, 224\]"):
        lite0.predict(torch.rand(1, 3, 100, 100))


def test_prepare_matches_channels(fmnist_cnn_smoke, lite0):
    rgb = torch.rand(3, 50, 40)
    assert fmnist_cnn_smoke.prepare(rgb).shape == (1, 28, 28)
    assert lite0.prepare(torch.rand(1, 300, 200)).shape == (3, 224, 224)
