import dataclasses
import json

import pytest
import torch

from xai import models
from xai.data import fashion_mnist
from xai.models import fmnist


def test_dataset_shapes_and_ranges():
    x, y = fashion_mnist.load("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert x.min() == 0 and x.max() == 1 and set(y.unique().tolist()) == set(range(10))
    assert len(fashion_mnist.CLASSES) == 10


def test_smoke_training_converges(fmnist_cnn_smoke):
    info = fmnist_cnn_smoke.info
    # 4,096 images, two epochs: far from the full model, but far above chance (10 %). Not a rounding bound:
    # training on another CPU takes another trajectory, so only the effect is asserted, with a wide margin.
    assert info["test_accuracy"] > 0.6, info
    assert info["train_images"] == 4096 and info["budget"] == "smoke"


def test_training_is_seeded(tmp_path):
    cfg = fmnist.TrainConfig(epochs=1, train_size=256, test_size=200, batch_size=64)
    results = []
    for _ in range(2):
        torch.manual_seed(123)  # the model's init must not depend on this: train() reseeds
        net = fmnist.plain_cnn()
        torch.manual_seed(cfg.seed)
        net = fmnist.plain_cnn()
        results.append(fmnist.train(net, cfg, progress=False)["final_loss"])
    assert results[0] == results[1]


def test_corrupt_checkpoint_is_retrained(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(fmnist, "checkpoint_dir", lambda: tmp_path)
    monkeypatch.setattr(fmnist, "train_config",
                        lambda name, budget: fmnist.TrainConfig(epochs=1, train_size=128, test_size=100, batch_size=64))
    calls = []
    real_train = fmnist.train
    monkeypatch.setattr(fmnist, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))

    fmnist.trained("fmnist_cnn", "smoke", progress=False)
    fmnist.trained("fmnist_cnn", "smoke", progress=False)
    assert len(calls) == 1  # the second call loaded the intact checkpoint

    weights = next(tmp_path.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the last tensor: still a loadable file, wrong numbers
    weights.write_bytes(bytes(data))
    fmnist.trained("fmnist_cnn", "smoke", progress=False)
    assert len(calls) == 2 and "corrupt or partial" in caplog.text

    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted write
    fmnist.trained("fmnist_cnn", "smoke", progress=False)
    assert len(calls) == 3

    next(tmp_path.glob("*.json")).unlink()  # weights without their record are not trusted either
    fmnist.trained("fmnist_cnn", "smoke", progress=False)
    assert len(calls) == 4


@pytest.mark.parametrize("name", ["fmnist_vgg", "fmnist_resnet18", "fmnist_mobilenetv3", "fmnist_vit"])
def test_architectures_forward(name):
    net = fmnist.ARCHS[name].build().eval()
    out = net(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10)
    names = dict(net.named_modules())
    assert all(layer in names for layer in fmnist.ARCHS[name].layers)


def test_resnet_is_resnet18_at_half_width_with_a_28px_plan():
    from torchvision.models.resnet import BasicBlock

    net = fmnist.ARCHS["fmnist_resnet18"].build().eval()
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8  # 16 convolutions in blocks + stem + fc: the 18 of ResNet-18
    shapes = {}
    hooks = [dict(net.named_modules())[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape))
             for n in fmnist.ARCHS["fmnist_resnet18"].layers]
    net(torch.rand(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert [tuple(shapes[n][1:]) for n in fmnist.ARCHS["fmnist_resnet18"].layers] == [
        (32, 14, 14), (32, 14, 14), (64, 7, 7), (128, 4, 4), (256, 2, 2)]


def test_nhwc_training_hands_back_an_nchw_model():
    cfg = fmnist.TrainConfig(epochs=1, train_size=128, test_size=100, batch_size=64, channels_last=True)
    net = fmnist.plain_cnn()
    fmnist.train(net, cfg, progress=False)
    # Hooks, CAMs and the safetensors copy read weights and activations as plain NCHW tensors.
    assert all(p.is_contiguous() for p in net.parameters())
    seen = []
    net.relu2.register_forward_hook(lambda m, i, o: seen.append(o))
    net(torch.rand(2, 1, 28, 28))
    assert seen[0].is_contiguous() and not seen[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", list(fmnist.ARCHS))
def test_full_budget_checkpoint_meets_its_accuracy_floor(name):
    from xai.paths import checkpoint_dir

    key = fmnist.checkpoint_key(name, fmnist.train_config(name, "full"))
    path = checkpoint_dir() / f"{key}.json"
    if not path.exists():
        pytest.skip(f"no full-budget checkpoint of the current {name} in the cache (a full build makes one)")
    record = json.loads(path.read_text())
    assert record["test_images"] == 10000
    assert record["test_accuracy"] >= fmnist.ARCHS[name].min_accuracy, record


def test_a_changed_architecture_gets_a_new_checkpoint_key(monkeypatch):
    cfg = fmnist.train_config("fmnist_cnn", "full")
    before = fmnist.checkpoint_key("fmnist_cnn", cfg)
    state = torch.random.get_rng_state()
    assert fmnist.checkpoint_key("fmnist_cnn", cfg) == before  # stable: the same net hashes the same
    assert torch.equal(torch.random.get_rng_state(), state)  # building it for the hash drew no numbers

    def gelu() -> torch.nn.Module:  # the same parameters by name and shape: old weights would load strictly
        net = fmnist.plain_cnn()
        net.relu4 = torch.nn.GELU()
        return net

    arch = fmnist.ARCHS["fmnist_cnn"]
    monkeypatch.setitem(fmnist.ARCHS, "fmnist_cnn", dataclasses.replace(arch, build=gelu))
    assert fmnist.checkpoint_key("fmnist_cnn", cfg) != before
    monkeypatch.setitem(fmnist.ARCHS, "fmnist_cnn", dataclasses.replace(arch, version=arch.version + 1))
    assert fmnist.checkpoint_key("fmnist_cnn", cfg) != before
