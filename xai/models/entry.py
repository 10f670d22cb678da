"""A model entry: the module and everything a study needs to use it, none of it special-cased by name.

Every entry's module takes images in ``[0, 1]``: the model's own normalisation runs inside it (a forward
pre-hook), so pixel-space baselines, valid-range constraints and feature-visualization
parameterizations never need to know a model's mean and std, and layer names stay exactly those of
the underlying timm/torchvision model.

What the classes are is the entry's *label space*: ImageNet-1k, Fashion-MNIST, another ImageNet
subset, or a user's own list. Studies pick their images by it, never by a model's name.
"""
from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingDataError, UnknownNameError, XaiError
from ..layouts import Layout, layout_of

IMAGENET_1K = "imagenet-1k"
FASHION_MNIST = "fashion-mnist"


class InputNormalization:
    """Forward pre-hook that maps [0, 1] images to the network's normalised input.

    A hook rather than a child module: a child would be run as a layer by ``nn.Sequential`` models.
    It is a plain object, so ``copy.deepcopy(model)`` (used by the sanity checks) copies it along.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, _module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        return ((x - mean) / std,) + tuple(args[1:])


def attach_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Make ``model`` take ``[0, 1]`` images."""
    model.register_forward_pre_hook(InputNormalization(mean, std))
    return model


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, as torchvision ships them (offline). timm's ``ImageNetInfo``
    lists the same classes in the same order, but its first lemmas repeat two names ("crane",
    "maillot"), which torchvision's list tells apart; one list serves every ImageNet-1k model."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return builtins.list(_IMAGENET_CATEGORIES)


def numbered_classes(n: int) -> list[str]:
    return [f"class {i}" for i in range(n)]


def read_class_file(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines at the end ignored)."""
    p = Path(path)
    if not p.is_file():
        raise MissingDataError(f"no such class file: {p}")
    try:
        names = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise XaiError(f"cannot read class file {p}: {e}") from e
    while names and not names[-1].strip():
        names.pop()
    names = [n.strip() for n in names]
    if not names or not all(names):
        raise XaiError(f"class file {p} must give one non-empty class name per line")
    return names


def class_list_space(path: str | Path) -> str:
    """The label space of a user's class file: ImageNet-1k's when it lists exactly those classes in their
    order (then the photos' labels apply), else its own."""
    if read_class_file(path) == imagenet_class_names():
        return IMAGENET_1K
    return f"classes of {Path(path).name}"


@dataclass
class ModelEntry:
    """A model with everything a study needs; studies never special-case a model by name."""

    name: str
    model: nn.Module  # eval mode, takes [0, 1] images
    input_size: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    layers: list[str]  # layers of interest, shallow -> deep
    label_space: str = ""  # IMAGENET_1K, FASHION_MNIST, "classes of FILE", ...; default "<n> classes"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.input_size = tuple(int(s) for s in self.input_size)
        if not self.label_space:
            self.label_space = f"{len(self.class_names)} classes"

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> "ModelEntry":
        self.model.to(device)
        return self

    def layout(self, layer: str) -> Layout:
        """The layout (NCHW, NHWC, tokens...) of ``layer``'s output at this model's input size."""
        return layout_of(self.model, layer, self.input_size)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """A ``[C, H, W]`` image in [0, 1] resized (shorter side to size / crop_pct) and centre-cropped
        to this model's input, with its channel count (grey <-> RGB) matched."""
        c, h, w = self.input_size
        x = image
        if x.dim() != 3:
            raise XaiError(f"expected an image of shape [C, H, W], got {tuple(x.shape)}")
        if x.shape[0] != c:
            if c == 1:
                x = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)).sum(0, keepdim=True)
            elif x.shape[0] == 1:
                x = x.expand(c, -1, -1)
            else:
                raise XaiError(f"cannot turn a {x.shape[0]}-channel image into {c} channels")
        if tuple(x.shape[1:]) != (h, w):
            scale = max(h, w) / self.crop_pct / min(x.shape[1:])
            size = (max(h, round(x.shape[1] * scale)), max(w, round(x.shape[2] * scale)))
            mode = "bicubic" if self.interpolation == "bicubic" else "bilinear"
            x = F.interpolate(x[None], size=size, mode=mode, align_corners=False, antialias=True)[0]
            top, left = (size[0] - h) // 2, (size[1] - w) // 2
            x = x[:, top:top + h, left:left + w]
        return x.clamp(0, 1).contiguous()

    def class_index(self, target: int | str) -> int:
        """A class given by index or name (case-insensitive); a bad one gets close-match suggestions."""
        if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
            i = int(target)
            if not 0 <= i < self.num_classes:
                raise XaiError(f"class index {i} is out of range for {self.name} ({self.num_classes} classes)")
            return i
        lowered = [c.lower() for c in self.class_names]
        if target.lower() in lowered:
            return lowered.index(target.lower())
        raise UnknownNameError(f"class of {self.name}", target, self.class_names)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.input_size):
            raise XaiError(
                f"{self.name} takes a batch of shape [B, {', '.join(map(str, self.input_size))}], got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def predict(self, x: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """Top-k ``(index, name, probability)`` for each image of a batch."""
        self.check_input(x)
        probs = self.model(x.to(self.device)).softmax(-1)
        p, i = probs.topk(min(k, self.num_classes), dim=-1)
        return [[(int(j), self.class_names[int(j)], float(q)) for q, j in zip(pr, ix)] for pr, ix in zip(p, i)]


@torch.no_grad()
def count_outputs(module: nn.Module, input_size: Sequence[int]) -> int:
    """The number of classes a module scores, from one forward pass."""
    p = next(module.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    try:
        out = module(torch.zeros(1, *input_size, device=device))
    except RuntimeError as e:
        raise XaiError(f"the model rejected an input of size {'x'.join(map(str, input_size))}: {e}") from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise XaiError(f"expected the model to return class scores [B, classes], got {getattr(out, 'shape', out)}")
    return int(out.shape[1])


def from_module(name: str, module: nn.Module, *, input_size: Sequence[int], mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, class_names: Sequence[str] | None = None,
                label_space: str = "", layers: Sequence[str] | None = None, crop_pct: float = 1.0,
                interpolation: str = "bilinear", info: dict | None = None) -> ModelEntry:
    """An entry for any classifier module: its normalisation attached (none when ``mean`` and ``std``
    are not given, for a module that normalises itself), classes numbered when no names are given, and
    layers of interest from its stage structure (:func:`xai.models.stages.stage_layers`) unless named."""
    from .stages import stage_layers

    c = int(input_size[0])
    mean = tuple(mean) if mean is not None else (0.0,) * c
    std = tuple(std) if std is not None else (1.0,) * c
    if mean != (0.0,) * c or std != (1.0,) * c:
        attach_normalization(module, mean, std)
    module.eval()
    n = count_outputs(module, input_size)
    names = builtins.list(class_names) if class_names is not None else numbered_classes(n)
    if len(names) != n:
        raise XaiError(f"{name} scores {n} classes, but {len(names)} class names were given")
    return ModelEntry(name=name, model=module, input_size=tuple(input_size), mean=mean, std=std, class_names=names,
                      layers=builtins.list(layers) if layers is not None else stage_layers(module, input_size),
                      label_space=label_space, crop_pct=crop_pct, interpolation=interpolation, info=dict(info or {}))
