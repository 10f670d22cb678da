"""What every method shares: checking its inputs and targets, and the scalar it explains.

A method may be given a bare ``nn.Module`` or a :class:`xai.models.ModelEntry`; with an entry the input
shape is checked against the model's own size (a fully convolutional network would otherwise accept a
wrong size silently and explain a different computation).
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import XaiError

OUTPUTS = ("logit", "softmax", "log_softmax")

# Class counts of bare modules, found once by a one-image forward pass and remembered per module.
_NUM_CLASSES: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()

Target = int | Sequence[int] | torch.Tensor


def unwrap(model) -> tuple[nn.Module, tuple[int, ...] | None, int | None]:
    """``(module, expected input size or None, number of classes or None)`` of a module or an entry."""
    if isinstance(model, nn.Module):
        return model, None, _NUM_CLASSES.get(model)
    module = getattr(model, "model", None)
    if isinstance(module, nn.Module) and hasattr(model, "input_size"):
        return module, tuple(model.input_size), len(model.class_names)
    raise XaiError(f"expected a torch module or a model entry, got {type(model).__name__}")


def model_label(model) -> str:
    """How a refusal names the model: the entry's name, or the module's class."""
    name = getattr(model, "name", None)
    return name if isinstance(name, str) else type(unwrap(model)[0]).__name__


def device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def prepare(model, inputs: torch.Tensor, target: Target) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Validate a call and return ``(module, inputs on the module's device, targets [B] long)``."""
    module, size, num_classes = unwrap(model)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise XaiError(f"attribution methods take a batch of images [B, C, H, W], got {shape}")
    if size is not None and tuple(inputs.shape[1:]) != size:
        raise XaiError(f"{getattr(model, 'name', 'the model')} takes images of size {'x'.join(map(str, size))}, "
                       f"got {'x'.join(map(str, inputs.shape[1:]))} (use entry.prepare(image) to resize)")
    if not inputs.is_floating_point():
        raise XaiError(f"images must be floating point in [0, 1], got dtype {inputs.dtype}")
    x = inputs.detach().to(device_of(module), torch.float32)
    if num_classes is None:
        num_classes = _probe_classes(module, x)
    return module, x, targets(target, x.shape[0], num_classes).to(x.device)


def targets(target: Target, batch: int, num_classes: int) -> torch.Tensor:
    """One class index per batch item, range-checked."""
    if isinstance(target, bool) or target is None:
        raise XaiError(f"target must be a class index or one index per image, got {target!r}")
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.is_complex():
        raise XaiError(f"target must hold integer class indices, got dtype {t.dtype}")
    t = t.long().flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise XaiError(f"got {t.numel()} targets for a batch of {batch} images")
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise XaiError(f"target class {int(bad[0])} is out of range: the model has {num_classes} classes "
                       f"(valid: 0..{num_classes - 1})")
    return t.clone()


@torch.no_grad()
def _probe_classes(module: nn.Module, x: torch.Tensor) -> int:
    try:
        out = module(x[:1])
    except RuntimeError as e:
        raise XaiError(f"the model rejected inputs of shape {tuple(x.shape[1:])}: {e}") from e
    if out.dim() != 2:
        raise XaiError(f"expected the model to return class scores [B, classes], got {tuple(out.shape)}")
    _NUM_CLASSES[module] = out.shape[1]
    return out.shape[1]


def select(logits: torch.Tensor, t: torch.Tensor, output: str = "logit") -> torch.Tensor:
    """The explained scalar per image: the target's logit, softmax probability or log-probability."""
    if output == "logit":
        scores = logits
    elif output == "softmax":
        scores = logits.softmax(-1)
    elif output == "log_softmax":
        scores = logits.log_softmax(-1)
    else:
        raise XaiError(f"unknown output {output!r}; choose from {', '.join(OUTPUTS)}")
    return scores.gather(1, t[:, None]).squeeze(1)


def scorer(module: nn.Module, output: str):
    """``f(x) -> scores [B, classes]`` in the chosen output space, for captum's ``forward_func``."""
    if output not in OUTPUTS:
        raise XaiError(f"unknown output {output!r}; choose from {', '.join(OUTPUTS)}")
    if output == "logit":
        return module
    if output == "softmax":
        return lambda z: module(z).softmax(-1)
    return lambda z: module(z).log_softmax(-1)


def check_positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise XaiError(f"{name} must be a positive integer, got {value!r}")
    return value


def finish(attr: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Detached, contiguous float32 attributions on the caller's device."""
    return attr.detach().to(like.device, torch.float32).contiguous()
