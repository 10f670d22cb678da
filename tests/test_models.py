import copy

import pytest
import tolerance as tol
import torch

from xai import models
from xai.data import images
from xai.errors import MissingDataError, UnknownNameError, XaiError
from xai.models.imagenet import remap_state_dict

# Photos every EfficientNet-Lite gets right with a clear margin; the manifest records their labels.
CLEAR = ["coffee", "baboon", "squirrel", "orange", "soccer_ball", "pekinese", "lakeside", "camera"]


def test_registry_lists_both_label_spaces():
    assert set(models.list(models.IMAGENET_1K)) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert len(models.list(models.FASHION_MNIST)) == 5
    with pytest.raises(UnknownNameError, match="did you mean: efficientnet_lite0"):
        models.load("efficientnet_lit0")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_imagenet_top1_matches_manifest(name):
    entry = models.load(name, device="cpu")
    # sizes from timm's own data config of tf_efficientnet_lite{0,1,2}, not typed here
    assert not entry.model.training and entry.input_size[1] == {"efficientnet_lite0": 224, "efficientnet_lite1": 240,
                                                                "efficientnet_lite2": 260}[name]
    assert len(entry.layers) >= 4 and entry.num_classes == 1000 and entry.label_space == models.IMAGENET_1K
    assert all(entry.layout(layer).kind == "NCHW" for layer in entry.layers)
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


# -- any model: specs, weights files, metadata -------------------------------------------------------------

def _random_timm(name: str, path, **kw):
    import timm

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, **kw).eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net


def test_a_timm_checkpoint_loads_with_its_head_and_channels_from_the_file(tmp_path):
    net = _random_timm("resnet10t", tmp_path / "grey.safetensors", num_classes=7, in_chans=1)
    entry = models.load("timm/resnet10t", weights=tmp_path / "grey.safetensors", device="cpu")
    assert entry.num_classes == 7 and entry.input_size == (1, 176, 176)  # timm's data config: 176 px
    assert entry.class_names[3] == "class 3" and entry.label_space == "7 classes"
    # one channel: the RGB statistics averaged
    assert entry.mean == pytest.approx((sum(net.pretrained_cfg["mean"]) / 3,))
    x = torch.rand(2, *entry.input_size)
    models.attach_normalization(net, entry.mean, entry.std)
    with torch.no_grad():
        assert torch.equal(entry.model(x), net(x))
    assert entry.layers == ["act1", "layer1", "layer2", "layer3", "layer4"]  # timm's feature_info


def test_imagenet_head_gets_the_imagenet_label_space(tmp_path):
    _random_timm("resnet10t", tmp_path / "w.safetensors")
    entry = models.load("timm/resnet10t", weights=tmp_path / "w.safetensors", device="cpu")
    assert entry.label_space == models.IMAGENET_1K and entry.class_names == models.imagenet_class_names()
    assert entry.class_index("tabby") == 281
    # resnet10t's default pretrained config (c3_in1k), as timm resolves it
    assert (entry.input_size, entry.crop_pct, entry.interpolation) == ((3, 176, 176), 0.875, "bicubic")


def test_nested_and_prefixed_state_dicts_load(tmp_path):
    net = _random_timm("resnet10t", tmp_path / "w.safetensors", num_classes=3)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               tmp_path / "ckpt.pth")
    entry = models.load("timm/resnet10t", weights=tmp_path / "ckpt.pth", device="cpu")
    assert entry.num_classes == 3


def test_a_checkpoint_of_another_network_is_one_clear_line(tmp_path):
    _random_timm("resnet10t", tmp_path / "w.safetensors")
    with pytest.raises(XaiError, match=r"do not fit this model: tensors \d+ missing") as e:
        models.load("timm/mobilenetv3_small_050", weights=tmp_path / "w.safetensors", device="cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(XaiError, match="no such weights file"):
        models.load("timm/resnet10t", weights=tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(XaiError, match="cannot read weights file"):
        models.load("timm/resnet10t", weights=tmp_path / "junk.pt")


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(XaiError, match="cannot read weights file"):
        models.load("timm/resnet10t", weights=tmp_path / "evil.pt")


def test_class_file_names_the_classes(tmp_path):
    _random_timm("resnet10t", tmp_path / "w.safetensors", num_classes=3)
    (tmp_path / "names.txt").write_text("cat\ndog\nfox\n\n")
    entry = models.load("timm/resnet10t", weights=tmp_path / "w.safetensors", classes=tmp_path / "names.txt")
    assert entry.class_names == ["cat", "dog", "fox"] and entry.label_space == "classes of names.txt"
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    with pytest.raises(XaiError, match="names 2 classes, but timm/resnet10t scores 3"):
        models.load("timm/resnet10t", weights=tmp_path / "w.safetensors", classes=tmp_path / "two.txt")


def test_torchvision_metadata_comes_from_its_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    entry = models.load("torchvision/resnet18:IMAGENET1K_V1", weights=tmp_path / "r18.pth", device="cpu")
    t = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert entry.input_size == (3, 224, 224) and entry.crop_pct == 224 / 256 and entry.interpolation == "bilinear"
    assert entry.mean == tuple(t.mean) and entry.label_space == models.IMAGENET_1K
    assert entry.layers == ["relu", "layer1", "layer2", "layer3", "layer4"]  # its stage structure


def test_offline_download_failure_is_one_line_naming_the_spec(monkeypatch):
    from torchvision.models._api import WeightsEnum

    def offline(*_a, **_k):
        import urllib.error

        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(MissingDataError, match=r"torchvision/resnet18: .*--weights PATH") as e:
        models.load("torchvision/resnet18")
    assert "\n" not in str(e.value)


def test_bad_specs_suggest_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean: timm/resnet50"):
        models.load("timm/resnet5O")
    with pytest.raises(UnknownNameError, match="pretrained tag of timm/resnet18.*did you mean: a1_in1k"):
        models.check("timm/resnet18.a1_in1")
    with pytest.raises(UnknownNameError, match="did you mean: IMAGENET1K_V1"):
        models.check("torchvision/vgg16:IMAGENET1K_V9")
    with pytest.raises(UnknownNameError, match="did you mean: timm/resnet50, torchvision/resnet50"):
        models.check("resnet50")
    with pytest.raises(UnknownNameError, match="model source 'hf'"):
        models.check("hf/resnet50")


def test_a_registered_model_takes_a_weights_file_instead_of_training(tmp_path, fmnist_cnn_smoke):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in fmnist_cnn_smoke.model.state_dict().items()}, str(tmp_path / "cnn.st"))
    entry = models.load("fmnist_cnn", weights=str(tmp_path / "cnn.st"), device="cpu")
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(entry.model(x), fmnist_cnn_smoke.model(x))
    assert entry.label_space == models.FASHION_MNIST and "sha256" in entry.info["weights"]
    assert models.loader_options("fmnist_cnn") == {"budget", "progress", "weights"}
    assert models.loader_options("timm/resnet10t") == frozenset()


def test_studies_take_images_only_for_a_label_space_they_have(tmp_path):
    from xai import profiles
    from xai.studies import _frame

    _random_timm("resnet10t", tmp_path / "w.safetensors", num_classes=3)
    entry = models.load("timm/resnet10t", weights=tmp_path / "w.safetensors", device="cpu")
    with pytest.raises(XaiError, match="no photos labelled in its label space \\(3 classes\\)"):
        _frame.batch_for(entry, profiles.get("smoke"), 1, 1)
    with pytest.raises(XaiError, match="no photos labelled in its label space"):
        _frame.photos_of(profiles.get("smoke"), entry)
    with pytest.raises(XaiError, match="explains fashion-mnist images"):
        _frame.require_label_space(entry, models.FASHION_MNIST)
