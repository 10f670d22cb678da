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
