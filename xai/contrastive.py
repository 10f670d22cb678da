"""Contrastive explanations: why class ``a`` rather than class ``b``.

The explained score is the margin ``logit_a - logit_b``: any registered attribution method is run on a
wrapper whose only output is that margin, so no method is reimplemented here. For methods linear in
the explained score (gradient, gradient x input, Integrated Gradients) the result equals the
difference of the two single-class maps; for the CAM family it does not (the ReLU acts on the combined
weights), which is what makes a contrastive Grad-CAM informative. Where the two logits are identical
functions of the input the margin is constant and every map is exactly zero.

Only logits are contrasted: a softmax or log-softmax of a single margin would be a constant.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attribution import get as get_method
from .attribution._common import unwrap
from .errors import NotApplicableError, XaiError
from .layouts import share_trace, trace


class Margin(nn.Module):
    """``model`` with one output per image: ``logit_a - logit_b``."""

    def __init__(self, model: nn.Module, a: int, b: int):
        super().__init__()
        self.model, self.a, self.b = model, int(a), int(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return (z[:, self.a] - z[:, self.b])[:, None]


def _classes(model, cls: int | str | Sequence[int | str] | torch.Tensor, batch: int, what: str) -> list[int]:
    if isinstance(cls, torch.Tensor):
        cls = cls.flatten().tolist()
    items = [cls] if isinstance(cls, (int, str)) else list(cls)
    if len(items) == 1:
        items = items * batch
    if len(items) != batch:
        raise XaiError(f"got {len(items)} {what} classes for a batch of {batch} images")
    if hasattr(model, "class_index"):
        return [model.class_index(c) for c in items]
    if any(isinstance(c, str) for c in items):
        raise XaiError("class names need a model entry (a bare module has no class names); give indices")
    return [int(c) for c in items]


def contrastive_map(model, inputs: torch.Tensor, a: int | str | Sequence | torch.Tensor,
                    b: int | str | Sequence | torch.Tensor, method: str = "gradient",
                    **options) -> torch.Tensor:
    """Attributions of ``logit_a - logit_b`` by ``method`` (any name in ``xai.attribution.METHODS``).

    ``model`` is a module or a model entry (then class names are accepted and the input size is
    checked); ``a`` and ``b`` are one class or one per image. CAM methods take ``layer=`` as for the
    model itself.
    """
    m = get_method(method)
    if options.get("output", "logit") != "logit":
        raise XaiError("contrastive maps explain the logit margin; output must be 'logit'")
    options.pop("output", None)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise XaiError(f"expected a batch of images [B, C, H, W], got {getattr(inputs, 'shape', type(inputs))}")
    if hasattr(model, "check_input"):
        model.check_input(inputs)
    module, _, _ = unwrap(model)
    ca, cb = _classes(model, a, len(inputs), "first"), _classes(model, b, len(inputs), "second")
    if hasattr(model, "class_names"):
        num_classes = len(model.class_names)
    else:
        with torch.no_grad():
            num_classes = module(inputs[:1].to(next(module.parameters()).device)).shape[1]
    for c in ca + cb:
        if not 0 <= c < num_classes:
            raise XaiError(f"class {c} is out of range for a model of {num_classes} classes")
    if m.needs_layer:
        from .attribution import default_layer

        trace(module, inputs.shape[1:])

        layer = options.pop("layer", None) or default_layer(model, inputs[:1])
        options["layer"] = f"model.{layer}"
    out: torch.Tensor | None = None
    for pair in dict.fromkeys(zip(ca, cb)):  # one pass per distinct (a, b), in first-seen order
        idx = [i for i, p in enumerate(zip(ca, cb)) if p == pair]
        margin = Margin(module, *pair)
        share_trace(module, margin, "model.")  # layouts of model.<layer> are those of <layer>: no new probe
        try:
            attr = m(margin, inputs[idx], 0, **options)
        except NotApplicableError:
            # A CAM refuses a layer whose gradient is zero everywhere. If the margin's input gradient is
            # zero too, the margin is locally constant and its map is zero by definition; otherwise the
            # layer really cannot explain this model (e.g. a ViT's last block) and the error stands.
            if not m.needs_layer:
                raise
            from .attribution import gradient

            if torch.count_nonzero(gradient(margin, inputs[idx], 0)):
                raise
            attr = torch.zeros(len(idx), 1, *inputs.shape[-2:], device=inputs.device)
        if out is None:
            out = attr.new_zeros((len(inputs), *attr.shape[1:]))
        out[idx] = attr
    return out
