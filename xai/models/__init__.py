"""Model registry: ``xai.models.load("efficientnet_lite0")`` gives everything a study needs.

Every registered module takes images in ``[0, 1]``: the model's own normalisation runs inside it (a
forward pre-hook), so pixel-space baselines, valid-range
constraints and feature-visualization parameterizations never need to know a model's mean and std,
and layer names stay exactly those of the underlying timm/torchvision model.
"""
from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnknownNameError, XaiError


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


@dataclass
class ModelEntry:
    """A model with everything a study needs; studies never special-case a model by name."""

    name: str
    family: str  # "imagenet" or "fmnist"
    model: nn.Module  # eval mode, takes [0, 1] images
    input_size: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    layers: list[str]  # layers of interest, shallow -> deep
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> "ModelEntry":
        self.model.to(device)
        return self

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
                x = x.expand(3, -1, -1)
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


_REGISTRY: dict[str, tuple[str, Callable[..., ModelEntry]]] = {}


def register(name: str, family: str):
    def deco(fn: Callable[..., ModelEntry]):
        _REGISTRY[name] = (family, fn)
        return fn
    return deco


def list(family: str | None = None) -> builtins.list[str]:  # noqa: A001 - timm-like API
    """Registered model names, optionally of one family ("imagenet" or "fmnist")."""
    return [n for n, (fam, _) in _REGISTRY.items() if family is None or fam == family]


def family(name: str) -> str:
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, _REGISTRY, hint="`xai models` lists them")
    return _REGISTRY[name][0]


def load(name: str, *, device: torch.device | str | None = None, **options) -> ModelEntry:
    """Create a registered model by name, in eval mode, on ``device`` (CUDA when present by default).

    Fashion-MNIST models take ``budget=`` ("full" or "smoke"): they are trained on first use and cached.
    """
    family(name)
    entry = _REGISTRY[name][1](**options)
    entry.model.eval()
    for p in entry.model.parameters():
        p.requires_grad_(False)
    return entry.to(device or default_device())


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _imagenet_entry(name: str) -> ModelEntry:
    from . import imagenet

    module, cfg = imagenet.build(name)
    attach_normalization(module, cfg["mean"], cfg["std"])
    return ModelEntry(
        name=name, family="imagenet", model=module, input_size=cfg["input_size"], mean=cfg["mean"],
        std=cfg["std"], class_names=imagenet.imagenet_class_names(), layers=builtins.list(imagenet.LAYERS),
        crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"],
        info={"arch": cfg["arch"], "weights": cfg["weights"]},
    )


for _name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    register(_name, "imagenet")(lambda _n=_name, **_: _imagenet_entry(_n))

from . import fmnist as _fmnist  # noqa: E402,F401  (registers the Fashion-MNIST models)
