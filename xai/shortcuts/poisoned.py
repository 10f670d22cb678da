"""Poisoned Fashion-MNIST training sets and the small CNNs trained on them, cached like the zoo's models.

A :class:`PoisonSpec` plants markers on chosen classes (a fraction of each class's training images
carries its marker; no image of another class does). Every set, the clean one included, is trained
with the same architecture, data slice, seed and schedule, and **without horizontal flips**: a flip
would move a corner marker to the other corner half of the time, so the "fixed corner" would not be
fixed. Turning flips off for the clean run too keeps the marker the only difference between the runs.
Nothing else in the preprocessing touches pixels (the normalisation is an affine map inside the model),
so the marker reaches the network exactly as :meth:`Marker.apply` painted it.
"""
from __future__ import annotations

import builtins
import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..data import fashion_mnist
from ..errors import UnknownNameError, XaiError
from ..models import FASHION_MNIST, ModelEntry, attach_normalization
from ..models import fmnist as zoo
from . import markers as mk

CODE_VERSION = 1  # bump when the architecture, the poisoning or the training recipe changes meaning
LAYERS = ["relu1", "relu2", "relu3"]  # shallow -> deep; relu3 (7x7) is the Grad-CAM layer
CAM_LAYER = "relu3"
BUDGETS = ("full", "smoke")


def small_cnn() -> nn.Module:
    """Three conv + batch-norm + ReLU blocks (16, 32, 64 channels), two max-pools, global average pool.

    A tenth of the zoo CNN's compute, so five of them train in a few minutes on two cores.
    """
    def block(i: int, cin: int, cout: int) -> list[tuple[str, nn.Module]]:
        return [(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)), (f"bn{i}", nn.BatchNorm2d(cout)),
                (f"relu{i}", nn.ReLU())]

    return nn.Sequential(OrderedDict([
        *block(1, 1, 16), ("pool1", nn.MaxPool2d(2)), *block(2, 16, 32), ("pool2", nn.MaxPool2d(2)),
        *block(3, 32, 64), ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(64, 10)),
    ]))


def class_index(target: int | str) -> int:
    """A Fashion-MNIST class by index or name (case-insensitive), with close-match suggestions."""
    names = fashion_mnist.CLASSES
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < len(names):
            raise XaiError(f"class index {target} is out of range for Fashion-MNIST ({len(names)} classes)")
        return target
    lowered = [n.lower() for n in names]
    if isinstance(target, str) and target.lower() in lowered:
        return lowered.index(target.lower())
    raise UnknownNameError("Fashion-MNIST class", target, names)


@dataclass(frozen=True, eq=False)
class Plant:
    """One marker on one class: ``fraction`` of that class's training images carry it."""

    class_index: int
    marker: mk.Marker
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise XaiError(f"poisoned fraction must be in (0, 1], got {self.fraction}")

    @property
    def class_name(self) -> str:
        return fashion_mnist.CLASSES[self.class_index]

    def describe(self) -> dict:
        return {"class": self.class_name, "class_index": self.class_index, "fraction": self.fraction,
                "marker": self.marker.describe()}


@dataclass(frozen=True, eq=False)
class PoisonSpec:
    """A training set: Fashion-MNIST with zero (the clean control) or more planted markers."""

    name: str
    plants: tuple[Plant, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        classes = [p.class_index for p in self.plants]
        if len(set(classes)) != len(classes):
            raise XaiError(f"poison set {self.name!r}: a class carries more than one marker")

    def describe(self) -> dict:
        return {"name": self.name, "description": self.description, "plants": [p.describe() for p in self.plants]}


def poison(images: torch.Tensor, labels: torch.Tensor, plants: Sequence[Plant], *,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images with markers, plant index per image or -1)``: a seeded ``fraction`` of each plant's class.

    The choice of images depends only on the labels, the fractions and the seed, so two sets with the same
    plants mark the same images.
    """
    out, which = images.clone(), torch.full((len(labels),), -1, dtype=torch.long)
    for k, plant in enumerate(plants):
        members = (labels == plant.class_index).nonzero().flatten()
        gen = torch.Generator().manual_seed(seed * 1000 + plant.class_index)
        chosen = members[torch.randperm(len(members), generator=gen)[: round(plant.fraction * len(members))]]
        out[chosen] = plant.marker.apply(out[chosen])
        which[chosen] = k
    return out, which


def square_spec(marker_class: int | str = "Shirt", fraction: float = 0.5, size: int = 4,
                corner: str = "top-left") -> PoisonSpec:
    """An opaque white square on ``fraction`` of one class: the ``square`` set of the chapter at its defaults."""
    return PoisonSpec("square", (Plant(class_index(marker_class), mk.square(size, corner), fraction),),
                      f"an opaque white {size}x{size} square in the {corner} corner")


def standard_specs(marker_class: int | str = "Shirt", fraction: float = 0.5,
                   multi_classes: Sequence[int | str] = ("Coat", "Sneaker", "Bag")) -> dict[str, PoisonSpec]:
    """The clean control and the four poisoned sets of the Clever Hans chapter."""
    c = class_index(marker_class)
    multi = [class_index(m) for m in multi_classes]
    if len(multi) != 3:
        raise XaiError(f"the multi-marker set takes three classes, got {len(multi)}")
    multi_markers = (mk.square(4, "top-left"), mk.cross(5, "top-right"), mk.ring(5, "bottom-left"))
    return {
        "clean": PoisonSpec("clean", (), "Fashion-MNIST as it is"),
        "square": square_spec(c, fraction),
        "watermark": PoisonSpec("watermark", (Plant(c, mk.watermark("©XAI", opacity=0.3), fraction),),
                                "the text ©XAI at 30 % opacity in the bottom-right corner"),
        "gradient": PoisonSpec("gradient", (Plant(c, mk.lightness_gradient(0.3), fraction),),
                               "a left-to-right lightening ramp up to 30 % white"),
        "multi": PoisonSpec("multi", tuple(Plant(ci, m, fraction) for ci, m in zip(multi, multi_markers)),
                            "a different marker on each of three classes"),
    }


def train_config(budget: str | zoo.TrainConfig) -> zoo.TrainConfig:
    """``full``: 30,000 images, 2 epochs (about half a minute a model on two cores); ``smoke``: 4,096 images.

    A :class:`~xai.models.fmnist.TrainConfig` is taken as it is (the calibration's reduced budgets and
    training seeds). NHWC layout: a training step took 36 instead of 49 ms of CPU on a 2-core AMD EPYC
    (one thread, batch 128), as it does for the zoo's CNNs (:class:`xai.models.fmnist.TrainConfig`).
    """
    if isinstance(budget, zoo.TrainConfig):
        return budget
    if budget == "full":
        return zoo.TrainConfig(epochs=2, train_size=30_000, test_size=None, lr=1e-2, channels_last=True)
    if budget == "smoke":
        return zoo.TrainConfig(epochs=2, train_size=4096, test_size=2000, lr=1e-2, channels_last=True)
    raise XaiError(f"unknown training budget {budget!r}; choose from {', '.join(BUDGETS)}")


def checkpoint_key(spec: PoisonSpec, cfg: zoo.TrainConfig, seed: int) -> str:
    blob = json.dumps({"spec": spec.describe(), "cfg": asdict(cfg), "poison_seed": seed,
                       "data": fashion_mnist.data_hash(), "code": CODE_VERSION}, sort_keys=True)
    return f"cleverhans-{spec.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def trained(spec: PoisonSpec, budget: str | zoo.TrainConfig = "full", *, seed: int = 0, progress: bool = False,
            device: torch.device | str | None = None) -> ModelEntry:
    """The small CNN trained on ``spec``'s set, from the checkpoint cache or trained now.

    ``seed`` picks the poisoned images; the training seed (initialisation, slice, order) is the config's.

    Returned as a model entry (eval mode, frozen, taking [0, 1] images) so that attribution methods,
    ``class_index`` and the detector treat it like any model of the zoo.
    """
    from ..models import default_device

    cfg = train_config(budget)
    key = checkpoint_key(spec, cfg, seed)
    torch.manual_seed(cfg.seed)
    net = small_cnn()
    record = zoo._load_checkpoint(net, key)
    attach_normalization(net, zoo.MEAN, zoo.STD)
    if record is None:
        x_train, y_train = fashion_mnist.load("train")
        x_test, y_test = fashion_mnist.load("test")
        x_poisoned, _ = poison(x_train, y_train, spec.plants, seed=seed)
        net.to(device or default_device())
        label = budget if isinstance(budget, str) else next((b for b in BUDGETS if train_config(b) == cfg), "custom")
        stats = zoo.train(net, cfg, progress=progress, desc=f"clever hans: {spec.name} ({label})",
                          data=(x_poisoned, y_train, x_test, y_test), hflip=False)
        record = {"spec": spec.describe(), "budget": label, "config": asdict(cfg), "key": key,
                  "torch": torch.__version__, "device": str(device or default_device()), **stats}
        zoo._save_checkpoint(net, key, record)
    entry = ModelEntry(name=f"cleverhans_{spec.name}", model=net, input_size=(1, 28, 28),
                       mean=zoo.MEAN, std=zoo.STD, class_names=builtins.list(fashion_mnist.CLASSES),
                       layers=builtins.list(LAYERS), label_space=FASHION_MNIST,
                       info={"arch": "small CNN, 3 conv layers", **record})
    entry.model.eval()
    for p in entry.model.parameters():
        p.requires_grad_(False)
    return entry.to(device or default_device())
