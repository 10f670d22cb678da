"""The CAM family at any named layer: Grad-CAM, Grad-CAM++, Score-CAM, Layer-CAM, counterfactual Grad-CAM,
and Guided Grad-CAM.

As in pytorch-grad-cam, one base class does the work (capture the layer, differentiate the target's
logit, weight, rectify, upsample) and each variant overrides only :meth:`CAM.weights`. Maps come back
as ``[B, 1, H, W]`` at input resolution (bilinear upsampling), unnormalised: scaling for display is the
renderer's business.

Each layer is read in its traced layout (:mod:`xai.layouts`): a ViT block's tokens go back on their patch
grid, a Swin stage's channels-last map is permuted, so a CAM has the layer's own grid. A layer whose
spatial positions cannot move the prediction (a ViT's last block, read only through its class token),
that has no spatial extent, or whose layout cannot be known makes the method not applicable
(:class:`~xai.errors.NotApplicableError`, with the layer).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NotApplicableError
from ..layers import FLAT, Layout, capture, fast_layout, fast_model, layout_of, resolve, to_spatial, trace
from ._common import Target, check_positive, finish, model_label, prepare, unwrap


class CAM:
    """A class-activation map: ``relu(sum_k w_k A_k)`` at ``layer``, upsampled to the input."""

    name = "grad_cam"
    uses_gradients = True

    def __call__(self, model, inputs: torch.Tensor, target: Target, *, layer: str | None = None,
                 **options) -> torch.Tensor:
        module, x, t = prepare(model, inputs, target)
        layer = layer if layer is not None else default_layer(model, x[:1], method=self.name)
        acts, grads = layer_activations(module, x, t, layer, gradients=self.uses_gradients, method=self.name,
                                        model_name=model_label(model))
        cam = self.combine(acts, grads, tuple(x.shape[-2:]), module=module, inputs=x, targets=t, **options)
        return finish(cam, inputs)

    @torch.no_grad()
    def combine(self, acts: torch.Tensor, grads: torch.Tensor | None, size: tuple[int, int],
                **context) -> torch.Tensor:
        """The map from a layer's activations and gradients: weight, sum over channels, rectify, upsample
        to ``size``. Separate from the pass that gets them, so the formula can be checked on another
        library's activations and gradients."""
        w = self.weights(acts, grads, **context)
        cam = (w * acts).sum(1, keepdim=True) if w.dim() == 4 else torch.einsum("bc,bchw->bhw", w, acts)[:, None]
        return F.interpolate(F.relu(cam), size=size, mode="bilinear", align_corners=False)

    def weights(self, acts: torch.Tensor, grads: torch.Tensor | None, **context) -> torch.Tensor:
        """Channel weights ``[B, C]`` (or per-position ``[B, C, h, w]``). Grad-CAM: the mean gradient."""
        return grads.mean(dim=(2, 3))


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017)."""


class CounterfactualGradCAM(CAM):
    """Counterfactual Grad-CAM (Selvaraju et al. 2017, sec. 3): negated gradients, so the map shows
    regions whose removal would raise the target's score."""

    name = "counterfactual_grad_cam"

    def weights(self, acts, grads, **context):
        return -grads.mean(dim=(2, 3))


class GradCAMPlusPlus(CAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), eq. 19 with the exponential-output simplification as in
    the paper's and pytorch-grad-cam's implementations."""

    name = "grad_cam_pp"

    def weights(self, acts, grads, **context):
        g2 = grads.pow(2)
        g3 = g2 * grads
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(grads != 0, g2 / (denom + 1e-6), torch.zeros_like(g2))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


class LayerCAM(CAM):
    """Layer-CAM (Jiang et al. 2021): each position weighted by its own positive gradient."""

    name = "layer_cam"

    def weights(self, acts, grads, **context):
        return F.relu(grads)


class ScoreCAM(CAM):
    """Score-CAM (Wang et al. 2020): each channel's upsampled, min-max normalised activation masks the
    input, and its weight is the target's softmax probability on the masked image (as in the authors'
    code; pytorch-grad-cam instead takes a softmax of logits across channels).

    Passes that need not be made, skipped always because the map stays the same:

    - a channel whose upsampled map is constant masks nothing and gets weight 0 (the authors' rule);
    - channels whose normalised masks agree to within :attr:`SAME_MASK` share one masked pass: a positive
      multiple of another channel (``a_k = s a_j + t``, ``s > 0``) has the same mask up to rounding, and
      in a sparse layer many channels are active at one same position only. Sharing moves each weight by
      what the passes' rounding moves it (rule 3 of tests/tolerance.py); ``share_masks=False`` makes
      every pass.

    Approximations, each a named option (their agreement with the exact map is measured by the bench):

    - ``max_channels``: only the channels whose upsampled maps vary most (the "Faster Score-CAM" rule);
    - ``mask_size``: masks and masked images with ``mask_size`` px on their longer side instead of the
      input's size, so each pass costs about ``(mask_size / H)**2`` of a full one (for models that take
      any input size).

    ``internal_batch_size`` bounds the masked images per forward pass.
    """

    name = "score_cam"
    uses_gradients = False
    # Masks lie in [0, 1]; two masks of one channel computed in two roundings differ by a few float32
    # spacings (bilinear weights, subtraction, division): 16 spacings is a share no pass can tell apart
    # from its own rounding, and far below any mask that differs in substance.
    SAME_MASK = 16 * float(torch.finfo(torch.float32).eps)

    def weights(self, acts, grads, *, module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                max_channels: int | None = None, mask_size: int | None = None, share_masks: bool = True,
                internal_batch_size: int = 32, **context):
        check_positive("internal_batch_size", internal_batch_size)
        if max_channels is not None:
            check_positive("max_channels", max_channels)
        x = inputs
        if mask_size is not None:
            check_positive("mask_size", mask_size)
            ih, iw = inputs.shape[-2:]
            small = tuple(max(1, round(d * mask_size / max(ih, iw))) for d in (ih, iw))
            if small != (ih, iw):
                x = F.interpolate(inputs, size=small, mode="bilinear", antialias=True, align_corners=False)
        b, c = acts.shape[:2]
        w = torch.zeros(b, c, device=acts.device)
        with fast_model(module, x) as fast:
            for i in range(b):
                keep, source, masks = self.plan(acts[i], tuple(inputs.shape[-2:]), tuple(x.shape[-2:]),
                                                max_channels, share_masks)
                if not len(keep):
                    continue
                scores = torch.cat([fast(x[i:i + 1] * masks[j:j + internal_batch_size, None]).softmax(-1)[:, targets[i]]
                                    for j in range(0, len(masks), internal_batch_size)])
                w[i, keep] = scores[source]
        return w

    @classmethod
    @torch.no_grad()
    def plan(cls, acts: torch.Tensor, size: tuple[int, int], mask_size: tuple[int, int] | None = None,
             max_channels: int | None = None, share_masks: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image's passes from its activations ``[C, h, w]``: ``(channels [K], source [K], masks [U, H', W'])``,
        the channels that get a weight, and for each the index of the mask whose pass gives it. The
        channels are ranked (``max_channels``) and tested for constancy on maps upsampled to ``size``,
        the input's; the masks are made at ``mask_size`` (default ``size``)."""
        mask_size = mask_size or size
        up = F.interpolate(acts[None], size=size, mode="bilinear", align_corners=False)[0].flatten(1)
        lo, hi = up.amin(1), up.amax(1)
        keep = torch.arange(acts.shape[0], device=acts.device)
        if max_channels is not None:
            keep = up.var(1).topk(min(max_channels, len(keep))).indices
        keep = keep[(hi[keep] - lo[keep]) > 0]  # a constant map masks nothing
        if mask_size != size:
            up = F.interpolate(acts[None], size=mask_size, mode="bilinear", align_corners=False)[0].flatten(1)
            lo, hi = up.amin(1), up.amax(1)
        masks = (up[keep] - lo[keep, None]) / (hi[keep] - lo[keep]).clamp_min(1e-8)[:, None]
        if share_masks:
            source, first = cls._same_masks(masks)
            masks = masks[first]
        else:
            source = torch.arange(len(keep), device=acts.device)
        return keep, source, masks.view(-1, *mask_size)

    @classmethod
    def _same_masks(cls, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Groups of masks within :attr:`SAME_MASK` of their group's first: ``(group of each [K], first
        member of each group [U])``. Candidates are found by their sums (masks that close have sums within
        ``n * SAME_MASK`` plus the sums' rounding), then compared pixel by pixel."""
        k, n = masks.shape
        sums = masks.double().sum(1)
        slack = n * cls.SAME_MASK + 1e-9 * n
        order = sums.argsort().tolist()
        group = [-1] * k
        firsts: list[int] = []
        open_: list[int] = []  # groups whose first's sum is still within reach, in sorted order
        for j in order:
            open_ = [g for g in open_ if sums[j] - sums[firsts[g]] <= slack]
            for g in open_:
                if float((masks[j] - masks[firsts[g]]).abs().max()) <= cls.SAME_MASK:
                    group[j] = g
                    break
            else:
                group[j] = len(firsts)
                open_.append(len(firsts))
                firsts.append(j)
        dev = masks.device
        return torch.tensor(group, device=dev, dtype=torch.long), torch.tensor(firsts, device=dev, dtype=torch.long)


def spatial_layout(module: nn.Module, layer: str, input_shape, method: str, model_name: str) -> Layout:
    """The layer's layout, when it has positions to draw; else the method does not apply there."""
    lay = layout_of(module, layer, input_shape)
    if lay.kind == FLAT:
        raise NotApplicableError(method, model_name, f"its output {list(lay.shape)} has no spatial positions",
                                 layer=layer)
    if not lay.spatial:
        raise NotApplicableError(method, model_name, f"its output {list(lay.shape)} cannot be read as a map: "
                                                     f"{lay.reason}", layer=layer)
    return lay


class _GraphFromLayer:
    """A forward hook that starts the backward graph at a layer's output: the first output that has no
    graph (frozen parameters, an input without gradients) is replaced by a leaf that requires one.
    The network continues with a copy, so an in-place op after the layer (timm's ``act(inplace=True)``)
    changes the copy, and ``leaf`` keeps the layer's own values, to read and to differentiate."""

    def __init__(self):
        self.leaf: torch.Tensor | None = None
        self.ran = False

    def __call__(self, _module, _inputs, output):
        if self.ran:
            return None
        self.ran = True
        if isinstance(output, torch.Tensor) and not output.requires_grad:
            self.leaf = output.detach().requires_grad_(True)
            return self.leaf.clone()
        return None


def layer_activations(module: nn.Module, x: torch.Tensor, t: torch.Tensor, layer: str, *,
                      gradients: bool = True, method: str = "CAM",
                      model_name: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's activations ``[B, C, h, w]`` (read in the layer's layout) and the gradients of the target
    logits with respect to them."""
    target = resolve(module, layer)
    model_name = model_name or type(module).__name__
    lay = spatial_layout(module, layer, x.shape[1:], method, model_name)
    if not gradients:
        with torch.no_grad():
            acts, _ = capture(module, x, [layer], truncate=True)
        return to_spatial(acts[layer], lay, layer).detach(), None
    with torch.enable_grad():
        # Only the network after the layer needs a graph (as in captum's LayerGradCam): with frozen
        # parameters nothing before it records one, and the layer's output becomes a leaf.
        start = _GraphFromLayer()
        handle = target.register_forward_hook(start)
        try:
            with fast_layout(module):
                acts, out = capture(module, x, [layer], truncate=False)
        finally:
            handle.remove()
        raw = start.leaf if start.leaf is not None else acts[layer]
        if not raw.requires_grad:  # a layer whose output is not one tensor: graph from the input
            acts, out = capture(module, x.clone().requires_grad_(True), [layer], truncate=False)
            raw = acts[layer]
        spatial = to_spatial(raw, lay, layer)
        if not raw.requires_grad:
            raise NotApplicableError(method, model_name, "its output does not depend on the input", layer=layer)
        score = out.gather(1, t[:, None]).sum()
        (g,) = torch.autograd.grad(score, raw, allow_unused=True)
    if g is None or not bool(to_spatial(g, lay, layer).ne(0).any()):
        raise NotApplicableError(method, model_name,
                                 "the prediction does not depend on its spatial positions (e.g. a ViT's last "
                                 "block, which reaches the head only through its class token); choose an "
                                 "earlier layer", layer=layer)
    return spatial.detach(), to_spatial(g, lay, layer).detach()


def default_layer(model, x: torch.Tensor, candidates: Sequence[str] | None = None, *,
                  method: str = "grad_cam") -> str:
    """The deepest layer (of ``candidates``; default: the entry's layers of interest, else every module)
    whose spatial positions move the top prediction: the usual Grad-CAM choice, found by measuring.
    Layers without positions, or whose layout cannot be known, are passed over."""
    module, _, _ = unwrap(model)
    if candidates is None:
        candidates = getattr(model, "layers", None) or [n for n, _ in module.named_modules() if n]
    x = x.detach().to(next(module.parameters()).device)
    layouts = trace(module, x.shape[1:]).layouts
    order: list[str] = []
    outs: dict[str, torch.Tensor] = {}
    handles = []
    for name in candidates:
        def hook(_m, _i, out, name=name):
            out = out[0] if isinstance(out, (tuple, list)) else out
            if name not in outs and isinstance(out, torch.Tensor) and out.requires_grad and \
                    name in layouts and layouts[name].spatial:
                outs[name] = out
                order.append(name)
        handles.append(resolve(module, name).register_forward_hook(hook))
    try:
        with torch.enable_grad():
            xr = x.clone().requires_grad_(True)
            logits = module(xr)
            score = logits.max(1).values.sum()
            grads = torch.autograd.grad(score, [outs[n] for n in order], allow_unused=True) if order else []
    finally:
        for h in handles:
            h.remove()
    moving = []
    for name, g in reversed(list(zip(order, grads))):
        if g is None:
            continue
        g = to_spatial(g, layouts[name], name)
        if g.ne(0).any():
            moving.append((name, g.shape[-2] * g.shape[-1]))
    # A 1x1 layer (e.g. timm MobileNetV3's conv_head, after its global pool) moves the prediction but
    # draws one uniform cell: the deepest layer with a real grid is the useful choice.
    for name, positions in moving:
        if positions > 1:
            return name
    if moving:
        return moving[0][0]
    raise NotApplicableError(method, model_label(model), "no layer of this model has spatial positions that move "
                                                         "its prediction")


grad_cam = GradCAM()
grad_cam_pp = GradCAMPlusPlus()
score_cam = ScoreCAM()
layer_cam = LayerCAM()
counterfactual_grad_cam = CounterfactualGradCAM()


def guided_grad_cam(model, inputs: torch.Tensor, target: Target, *, layer: str | None = None) -> torch.Tensor:
    """Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map (Selvaraju et al. 2017)."""
    from .guided import guided_backprop

    try:
        guided = guided_backprop(model, inputs, target)
        cam = grad_cam(model, inputs, target, layer=layer)
    except NotApplicableError as e:  # refused by one of its two parts: say so under this method's name
        raise NotApplicableError("guided_grad_cam", e.model, f"its {e.method} part does not apply: {e.reason}",
                                 activation=e.activation, layer=e.layer) from e
    return guided * cam
