"""Fashion-MNIST classifiers built from timm/torchvision architectures, trained here and cached.

Each architecture is sized so that all five together train in about half an hour on two CPU cores
(estimated from the per-step times of ``scripts/profile-training``), leaving room for the studies in an
hour's cold build, while reaching ``Arch.min_accuracy`` on the test set with the ``full`` budget (90 %
for the CNNs, 85 % for the ViT). The ``smoke`` budget trains the
same architectures on a small slice in seconds, for tests and CI builds.

Checkpoints are keyed by architecture + its module structure + training config + data hash + the
architecture's version, stored as safetensors beside a JSON record that holds the weights' sha256: a
corrupt or partial checkpoint fails that check and is retrained, never loaded.
"""
from __future__ import annotations

import builtins
import functools
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..data import fashion_mnist
from ..errors import XaiError
from ..io import atomic_write, atomic_write_json
from ..paths import checkpoint_dir
from . import FASHION_MNIST, ModelEntry, attach_normalization, register

log = logging.getLogger(__name__)
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST training-set statistics


def plain_cnn() -> nn.Module:
    """Four 3x3 conv + batch-norm + ReLU layers, two max-pools, global average pool, linear head.

    Without batch norm this net needed many more epochs to pass 90 % (86 % after 3 epochs here).
    """
    def block(i: int, cin: int, cout: int) -> list[tuple[str, nn.Module]]:
        return [(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)), (f"bn{i}", nn.BatchNorm2d(cout)),
                (f"relu{i}", nn.ReLU())]

    return nn.Sequential(OrderedDict([
        *block(1, 1, 32), *block(2, 32, 32), ("pool1", nn.MaxPool2d(2)),
        *block(3, 32, 64), *block(4, 64, 64), ("pool2", nn.MaxPool2d(2)),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(64, 10)),
    ]))


def narrow_vgg() -> nn.Module:
    """torchvision's VGG with batch norm, widths 32-64-128-128-256-256 and a global-pool head."""
    from torchvision.models.vgg import VGG, make_layers

    cfg = [32, "M", 64, "M", 128, 128, "M", 256, 256]
    features = make_layers(cfg, batch_norm=True)
    features[0] = nn.Conv2d(1, 32, 3, padding=1)
    model = VGG(features, num_classes=10, init_weights=True)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 10))
    return model


def resnet18_28px() -> nn.Module:
    """torchvision's ResNet-18 (BasicBlocks, two per stage) at half width, 32-64-128-256 channels, with a 3x3
    stride-2 stem and no max-pool: 28 px -> 14, 7, 4, 2.

    At full width (64-512) a training step cost four times the FLOPs (93 against 23 GFLOP a batch of 128)
    and took 41 min of a cold build on a 2-core AMD EPYC; 28 px images do not need 512 channels.
    """
    from torchvision.models.resnet import BasicBlock, ResNet, conv1x1

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        # torchvision's own _make_layer, from its public parts: a projection shortcut where the shape changes.
        down = None if stride == 1 and cin == cout else nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        return nn.Sequential(BasicBlock(cin, cout, stride, down), BasicBlock(cout, cout))

    widths = (32, 64, 128, 256)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)  # the module tree and names; stages replaced below
    model.conv1 = nn.Conv2d(1, widths[0], 3, stride=2, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(widths[0])
    model.maxpool = nn.Identity()
    for i, (cin, cout) in enumerate(zip((widths[0], *widths[:-1]), widths)):
        setattr(model, f"layer{i + 1}", stage(cin, cout, 1 if i == 0 else 2))
    model.fc = nn.Linear(widths[-1], 10)
    for m in model.modules():  # torchvision's initialisation, for the replaced convolutions too
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def mobilenetv3() -> nn.Module:
    """timm's MobileNetV3-Small, one input channel, stem stride 1 so 28 px keeps a 2x2 final map."""
    import timm

    model = timm.create_model("mobilenetv3_small_100", pretrained=False, in_chans=1, num_classes=10)
    model.conv_stem.stride = (1, 1)
    return model


def small_vit() -> nn.Module:
    """timm's VisionTransformer: 4 px patches on 28 px (7x7 tokens + class token), width 96, depth 4."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96,
                             depth=4, num_heads=3, mlp_ratio=3.0, global_pool="token")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    train_size: int | None  # None: all 60,000
    test_size: int | None  # None: all 10,000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    seed: int = 0
    # NHWC memory layout while training. CPU ms per step (one thread, batch 128, NCHW -> NHWC) on a 2-core
    # AMD EPYC (Zen 4, AVX-512): plain CNN 244 -> 180, VGG 240 -> 209, half-width ResNet-18 356 -> 309,
    # MobileNetV3 438 -> 241, ViT 352 -> 338 (its only convolution is the patch embedding). On the Intel
    # Xeon before it, MobileNetV3 gained as much (629 -> 1099 img/s) but the full-width ResNet-18 lost
    # (317 -> 256 img/s). Capping oneDNN at AVX2 was slower for every model; flushing denormals changed nothing.
    channels_last: bool = False


@dataclass(frozen=True)
class Arch:
    build: Callable[[], nn.Module]
    layers: list[str]  # shallow -> deep
    description: str
    epochs: int  # full budget
    lr: float = 3e-3  # one-cycle peak learning rate
    channels_last: bool = False  # see TrainConfig
    # Test accuracy the full budget must reach: the book compares attributions of models that all work.
    min_accuracy: float = 0.90
    version: int = 1  # bump when the architecture or its training changes meaning: old checkpoints retrain


ARCHS: dict[str, Arch] = {
    "fmnist_cnn": Arch(plain_cnn, ["relu1", "relu2", "relu3", "relu4"], "plain CNN, 4 conv layers", 4,
                       channels_last=True, version=2),
    "fmnist_vgg": Arch(narrow_vgg, ["features.2", "features.6", "features.13", "features.17", "features.20"],
                       "torchvision VGG-BN, narrowed", 2, channels_last=True),
    # At half width, 2 epochs in NHWC: 90.8 % test accuracy (train loss 0.38 at the end, so it underfits a
    # little). The full-width net was never measured at the full budget; at the smoke budget (4,096 images,
    # 1,000 test) it reached 82.3 %, the half-width one 81.8 %.
    "fmnist_resnet18": Arch(resnet18_28px, ["relu", "layer1", "layer2", "layer3", "layer4"],
                            "torchvision ResNet-18, half width, 28 px stem", 2, channels_last=True, version=2),
    # 3 epochs at lr 3e-3 gave 88.8 %, at 1e-2 89.8 %: it underfits (train loss 0.35), so a fourth epoch,
    # paid for by the NHWC layout.
    "fmnist_mobilenetv3": Arch(mobilenetv3, ["bn1", "blocks.1", "blocks.3", "blocks.5", "conv_head"],
                               "timm MobileNetV3-Small", 4, lr=1e-2, channels_last=True),
    "fmnist_vit": Arch(small_vit, ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
                       "timm ViT, patch 4, width 96, depth 4", 5, min_accuracy=0.85),
}

BUDGETS = ("full", "smoke")


def train_config(name: str, budget: str) -> TrainConfig:
    arch = ARCHS[name]
    if budget == "full":
        return TrainConfig(epochs=arch.epochs, train_size=None, test_size=None, lr=arch.lr,
                           channels_last=arch.channels_last)
    if budget == "smoke":
        return TrainConfig(epochs=2, train_size=4096, test_size=1000, lr=arch.lr, channels_last=arch.channels_last)
    raise XaiError(f"unknown training budget {budget!r}; choose from {', '.join(BUDGETS)}")


def structure(name: str) -> str:
    """A hash of the built network's module tree and of every parameter's and buffer's name and shape.

    Part of the checkpoint key, so a changed architecture (a width, a stride, a block) retrains even where
    nobody bumped ``version``; weights of the same shapes would otherwise load into the new net silently.
    """
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG alone
        net = ARCHS[name].build()
    shapes = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    return hashlib.sha256(json.dumps([repr(net), shapes]).encode()).hexdigest()[:16]


def checkpoint_key(name: str, cfg: TrainConfig) -> str:
    blob = json.dumps({"arch": name, "cfg": asdict(cfg), "data": fashion_mnist.data_hash(),
                       "code": ARCHS[name].version, "structure": structure(name)},
                      sort_keys=True)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=generator) < 0.5
    x = x.clone()
    x[mask] = x[mask].flip(-1)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        out = model(images[i:i + batch_size].to(device))
        correct += int((out.argmax(-1).cpu() == labels[i:i + batch_size]).sum())
    return correct / len(images)


def train(model: nn.Module, cfg: TrainConfig, *, progress: bool = True, desc: str = "",
          data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
          hflip: bool = True) -> dict:
    """Seeded AdamW + one-cycle training with horizontal flips. Returns accuracy and timings.

    ``data = (x_train, y_train, x_test, y_test)`` trains on other images than Fashion-MNIST's own (the
    Clever Hans sets); ``hflip=False`` turns the flips off for data whose left and right differ on purpose.
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if data is None:
        x_train, y_train = fashion_mnist.load("train")
        x_test, y_test = fashion_mnist.load("test")
    else:
        x_train, y_train, x_test, y_test = data
    if cfg.train_size:
        idx = torch.randperm(len(x_train), generator=gen)[: cfg.train_size]
        x_train, y_train = x_train[idx], y_train[idx]
    if cfg.test_size:
        x_test, y_test = x_test[: cfg.test_size], y_test[: cfg.test_size]
    device = next(model.parameters()).device
    steps_per_epoch = (len(x_train) + cfg.batch_size - 1) // cfg.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    start = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc or "train", disable=not progress, unit="batch")
    for _epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb = (_flip(x_train[idx], gen) if hflip else x_train[idx]).to(device).contiguous(memory_format=layout)
            loss = loss_fn(model(xb), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    train_seconds = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format)  # hooks and readers downstream expect NCHW
    acc = evaluate(model, x_test, y_test)
    model.eval()
    return {"test_accuracy": acc, "test_images": len(x_test), "train_images": len(x_train),
            "train_seconds": round(train_seconds, 1), "final_loss": float(loss.item())}


def _load_checkpoint(model: nn.Module, key: str) -> dict | None:
    """The checkpoint's record if it exists and is intact, else None (and the broken files are removed)."""
    from safetensors.torch import load_file

    from ..data.sources import sha256

    weights, record_path = checkpoint_dir() / f"{key}.safetensors", checkpoint_dir() / f"{key}.json"
    if not weights.exists() and not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        if sha256(weights) != record["weights_sha256"]:
            raise ValueError("sha256 mismatch")
        model.load_state_dict(load_file(str(weights)), strict=True)
        return record
    except Exception as e:  # any damage at all: retrain rather than trust it
        log.warning("checkpoint %s is corrupt or partial (%s); retraining", key, e)
        weights.unlink(missing_ok=True)
        record_path.unlink(missing_ok=True)
        return None


def _save_checkpoint(model: nn.Module, key: str, record: dict) -> None:
    from safetensors.torch import save_file

    from ..data.sources import sha256

    weights = checkpoint_dir() / f"{key}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda p: save_file(state, str(p)))
    atomic_write_json(checkpoint_dir() / f"{key}.json", {**record, "weights_sha256": sha256(weights)})


def trained(name: str, budget: str = "full", *, progress: bool = True) -> tuple[nn.Module, dict]:
    """The trained network (without normalisation), from the cache or trained now."""
    if name not in ARCHS:
        raise XaiError(f"{name} is not a Fashion-MNIST architecture")
    cfg = train_config(name, budget)
    key = checkpoint_key(name, cfg)
    torch.manual_seed(cfg.seed)
    net = ARCHS[name].build()
    record = _load_checkpoint(net, key)
    if record is None:
        # Train inside the normalising wrapper so the weights expect [0, 1] inputs like every entry.
        attach_normalization(net, MEAN, STD)
        from . import default_device

        net.to(default_device())
        record = {"arch": name, "budget": budget, "config": asdict(cfg), "key": key,
                  "torch": torch.__version__, "device": str(default_device()),
                  **train(net, cfg, progress=progress, desc=f"{name} ({budget})")}
        if budget == "full" and record["test_accuracy"] < ARCHS[name].min_accuracy:
            log.warning("%s reached %.2f %% test accuracy, short of its %.0f %% floor", name,
                        100 * record["test_accuracy"], 100 * ARCHS[name].min_accuracy)
        _save_checkpoint(net, key, record)
        net.cpu()
        return net, record
    attach_normalization(net, MEAN, STD)
    return net, record


def _entry(name: str, budget: str = "full", progress: bool = True, weights: str | None = None) -> ModelEntry:
    """The trained model (``weights``: a user's own file for the same architecture instead)."""
    if weights is None:
        net, record = trained(name, budget, progress=progress)
        source = f"trained here ({budget} budget)"
    else:
        from .weights import file_sha256, load_into, read_state_dict

        net, record = ARCHS[name].build(), {}
        load_into(net, read_state_dict(weights), str(weights))
        attach_normalization(net, MEAN, STD)
        source = f"{weights} (sha256 {file_sha256(weights)[:16]})"
    return ModelEntry(
        name=name, model=net, input_size=(1, 28, 28), mean=MEAN, std=STD,
        class_names=builtins.list(fashion_mnist.CLASSES), layers=builtins.list(ARCHS[name].layers),
        label_space=FASHION_MNIST, interpolation="bilinear",
        info={"arch": ARCHS[name].description, "weights": source, **record},
    )


for _name in ARCHS:
    register(_name, FASHION_MNIST)(functools.partial(_entry, _name))
