"""Canonizers: rewrite a model into an equivalent one whose every operation has an LRP rule.

zennit's rules attach to modules. Two things in common networks escape them:

* **Batch norms.** A norm after a convolution is an affine map that LRP should see as part of that
  convolution (Montavon et al. 2019, sec. 10.3): merged, the rule of the convolution weighs each input
  by its contribution to the *normalised* pre-activation. Left alone, zennit passes relevance through
  the norm unchanged, as if it were not there.
* **Residual adds.** ``x + shortcut`` inside a block's ``forward`` is no module, so autograd's gradient
  (1 for each operand) would copy the relevance into both branches and double it. Made explicit as a
  zennit ``Sum`` module, it gets the ``Norm`` rule: each branch receives relevance in proportion to its
  contribution to the sum, and the total is kept.

zennit ships canonizers for torchvision's VGG (batch norms) and ResNet (batch norms and the adds of
``BasicBlock`` / ``Bottleneck``). :class:`EfficientNetCanonizer` is the same for timm's EfficientNet
family (EfficientNet-Lite): its norms are ``BatchNormAct2d`` (norm and ReLU6 in one module, which
zennit's sequential merge does not see, since it looks at leaf modules only) and its adds live in
``DepthwiseSeparableConv`` and ``InvertedResidual``. Depthwise convolutions and ReLU6 need nothing:
a depthwise convolution is a convolution (its rules hold per group), and ReLU6 passes relevance like
ReLU. Convolutions with TF "same" padding (``Conv2dSame``) pad inside their own ``forward``, so the
rule's modified forward pads too.

Canonizers are chosen by the block types a model contains (:func:`canonizers_for`), never by its name.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import BatchNorm
from zennit.types import Linear as LinearType

from ..errors import UnknownNameError


def _units(module: nn.Module) -> Iterator[nn.Module]:
    """Leaf modules in definition order, except that a batch norm is one unit even when it has children
    (timm's ``BatchNormAct2d`` holds its activation)."""
    for child in module.children():
        if isinstance(child, BatchNorm) or next(child.children(), None) is None:
            yield child
        else:
            yield from _units(child)


class MergeBatchNormAct(SequentialMergeBatchNorm):
    """zennit's sequential merge, with norm+activation modules merged too: each batch norm that comes
    right after a linear layer in definition order is folded into it and becomes the identity (its
    activation, if it holds one, stays). Definition order is the order timm and torchvision run these
    pairs in; :func:`xai.attribution.lrp.propagate` checks that the canonized model computes the same
    logits, so a model that defines them otherwise is refused, not explained wrongly."""

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        instances, last = [], None
        for unit in _units(root_module):
            if isinstance(last, LinearType) and isinstance(unit, BatchNorm):
                instance = self.copy()
                instance.register((last,), unit)
                instances.append(instance)
            last = unit
        return instances


def _timm_residual_blocks() -> tuple[type, ...]:
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    return DepthwiseSeparableConv, InvertedResidual


class TimmResidualSum(Canonizer):
    """Make the residual add of timm's ``DepthwiseSeparableConv`` and ``InvertedResidual`` an explicit
    zennit ``Sum``: the block runs its own ``forward`` with the skip turned off, and the canonized
    forward adds the block's input through the ``Sum`` module. Only blocks with a skip are changed."""

    def __init__(self):
        self.module: nn.Module | None = None

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        instances = []
        for module in root_module.modules():
            if isinstance(module, _timm_residual_blocks()) and getattr(module, "has_skip", False):
                instance = self.copy()
                instance.register(module)
                instances.append(instance)
        return instances

    def register(self, module: nn.Module) -> None:
        self.module = module
        module.has_skip = False
        module.canonizer_sum = Sum()
        module.forward = self._forward.__get__(module)

    def remove(self) -> None:
        module = self.module
        del module.forward, module.canonizer_sum
        module.has_skip = True

    @staticmethod
    def _forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = type(self).forward(self, x)  # the block without its skip (drop_path is the identity in eval)
        return self.canonizer_sum(torch.stack([x, out], dim=-1))


class EfficientNetCanonizer(Canonizer):
    """Batch norms (plain and ``BatchNormAct2d``) merged into their convolutions, and the residual adds
    of timm's EfficientNet blocks made explicit."""

    def __init__(self):
        self.parts = (MergeBatchNormAct(), TimmResidualSum())

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        return [instance for part in self.parts for instance in part.apply(root_module)]

    def register(self) -> None:
        """Nothing to do: the parts register themselves in :meth:`apply`."""

    def remove(self) -> None:
        """Nothing to do: the instances :meth:`apply` returned are removed one by one."""


CANONIZERS: dict[str, type[Canonizer]] = {
    "batch_norm": MergeBatchNormAct,
    "vgg": VGGCanonizer,
    "resnet": ResNetCanonizer,
    "efficientnet": EfficientNetCanonizer,
}


def canonizers_for(module: nn.Module, names: str | Sequence = "auto") -> list[Canonizer]:
    """Fresh canonizer instances: those named (zennit ``Canonizer`` instances are taken as they are), or
    with ``"auto"`` the one the model's blocks call for: timm's EfficientNet blocks, torchvision's ResNet
    blocks, torchvision's VGG (zennit's, which merges batch norms), or else batch norms merged, plain
    and fused with their activation."""
    if names == "auto":
        from torchvision.models import VGG
        from torchvision.models.resnet import BasicBlock, Bottleneck

        kinds = {type(m) for m in module.modules()}
        if any(issubclass(k, _timm_residual_blocks()) for k in kinds):
            names = ["efficientnet"]
        elif any(issubclass(k, (BasicBlock, Bottleneck)) for k in kinds):
            names = ["resnet"]
        elif any(issubclass(k, VGG) for k in kinds):
            names = ["vgg"]
        else:
            names = ["batch_norm"]
    elif isinstance(names, str):
        names = [names]
    for n in names:
        if not isinstance(n, Canonizer) and n not in CANONIZERS:
            raise UnknownNameError("canonizer", n, [*CANONIZERS, "auto"])
    return [n if isinstance(n, Canonizer) else CANONIZERS[n]() for n in names]
