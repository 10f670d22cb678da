"""The rest of pytorch-grad-cam's CAM family: HiResCAM, XGradCAM, EigenCAM, AblationCAM, and FullGrad.

The first four are :class:`~xai.attribution.cam.CAM` subclasses that change only how a layer's
activations are weighted (``weights``) or combined (``combine``), as in pytorch-grad-cam; hooks, the
default layer, rectifying and upsampling stay in the base. FullGrad reads every layer's bias, not one
layer, so it is a function beside them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NotApplicableError, XaiError
from ..layers import NCHW, NHWC, TOKENS, layout_of, resolve
from ._audit import model_label
from ._common import Target, check_positive, finish, prepare
from .cam import CAM, default_layer


class HiResCAM(CAM):
    """HiResCAM (Draelos & Carin 2020): each position's activations weighted by their own gradient,
    ``relu(sum_k g_k A_k)``, so the map is exactly the layer's first-order contribution to the score at
    each position (Grad-CAM averages the gradient over positions first)."""

    name = "hires_cam"

    def weights(self, acts, grads, **context):
        return grads


class XGradCAM(CAM):
    """XGradCAM (Fu et al. 2020): channel weights ``sum_ij g_kij A_kij / sum_ij A_kij``, the
    activation-weighted mean gradient (the 1e-7 in the denominator is the authors' and pytorch-grad-cam's)."""

    name = "xgrad_cam"

    def weights(self, acts, grads, **context):
        return (grads * acts).sum((2, 3)) / (acts.sum((2, 3)) + 1e-7)


class EigenCAM(CAM):
    """EigenCAM (Muhammad & Yeasin 2020): the layer's activations projected on their first principal
    component. Class-agnostic: it does not read the target.

    Positions are the samples and channels the features; activations are centred per channel before
    the SVD (as in pytorch-grad-cam). An SVD's singular vectors are defined up to sign, so the sign is
    fixed here: the projection is made to correlate positively with the activations summed over channels
    (the component points where the layer is active, not where it is quiet). pytorch-grad-cam keeps
    whichever sign its LAPACK returns, so some of its maps come out inverted; with the sign aligned the
    two agree (tests/test_cam_zoo.py). The SVD runs in float64: the first component is only as well
    defined as the gap to the second singular value, which float32 would blur sooner.
    """

    name = "eigen_cam"
    uses_gradients = False

    @staticmethod
    def projection(acts: torch.Tensor) -> torch.Tensor:
        """The signed first-component projection ``[B, h, w]`` (float64), before rectifying."""
        b, c, h, w = acts.shape
        flat = acts.detach().double().flatten(2).transpose(1, 2)  # [B, hw, C]
        centred = flat - flat.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        proj = (centred @ vh[:, 0, :, None]).squeeze(-1)  # [B, hw]
        energy = flat.sum(2)
        agree = (proj * (energy - energy.mean(1, keepdim=True))).sum(1)
        sign = torch.where(agree < 0, -1.0, 1.0).to(proj)
        return (proj * sign[:, None]).view(b, h, w)

    @torch.no_grad()
    def combine(self, acts, grads, size, **context):
        cam = self.projection(acts)[:, None].to(acts.dtype)
        return F.interpolate(F.relu(cam), size=size, mode="bilinear", align_corners=False)


class AblationCAM(CAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): channel ``k``'s weight is the relative drop of the target's
    logit when channel ``k`` of the layer is set to zero, ``(y - y_k) / y``.

    Batched: for each image, ``internal_batch_size`` ablated copies of the layer's output go through the
    rest of the network in one pass. The network before the layer runs once per pass, on the one image:
    the layer's forward hook hands the ablated batch downstream (an input of batch 1 broadcasts against
    it wherever a skip connection crosses the layer). pytorch-grad-cam runs the whole network for every
    copy; on a model where the broadcast does not hold, this falls back to the same.

    pytorch-grad-cam ablates with a very negative value instead of zero at layers whose activations can
    be negative; here it is always zero, as in the paper. Only layers with ``[B, C, h, w]`` outputs.
    """

    name = "ablation_cam"
    uses_gradients = False

    def __call__(self, model, inputs: torch.Tensor, target: Target, *, layer: str | None = None,
                 internal_batch_size: int = 64, **options) -> torch.Tensor:
        check_positive("internal_batch_size", internal_batch_size)
        if layer is None:
            _, x, _ = prepare(model, inputs, target)
            layer = default_layer(model, x[:1])
        return super().__call__(model, inputs, target, layer=layer, ablated=layer,
                                internal_batch_size=internal_batch_size, **options)

    @torch.no_grad()
    def weights(self, acts, grads, *, module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                ablated: str, internal_batch_size: int = 64, **context):
        b, c = acts.shape[:2]
        y = module(inputs).gather(1, targets[:, None]).squeeze(1)
        w = torch.empty(b, c, device=acts.device)
        for i in range(b):
            for j in range(0, c, internal_batch_size):
                ks = torch.arange(j, min(c, j + internal_batch_size), device=acts.device)
                w[i, ks] = _ablated_scores(module, ablated, inputs[i:i + 1], ks, int(targets[i]))
        return (y[:, None] - w) / y[:, None]


def _ablated_scores(module: nn.Module, layer: str, x: torch.Tensor, channels: torch.Tensor, target: int):
    """The target's logit with each of ``channels`` of ``layer`` zeroed, one copy per channel."""
    k = len(channels)
    rows = torch.arange(k, device=x.device)
    lay = layout_of(module, layer, x.shape[1:])  # the CAM read the layer's map in this layout

    def ablate(_m, _args, out):
        if not isinstance(out, torch.Tensor) or lay.kind not in (NCHW, NHWC, TOKENS) or out.dim() != len(lay.shape) + 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise NotApplicableError("ablation_cam", model_label(module),
                                     f"its output {shape} is not a map in a known layout", layer=layer)
        copies = out.expand(k, *out.shape[1:]).clone() if out.shape[0] == 1 else out.clone()
        # A view of the copies with the channels on axis 1 (and, for tokens, only the patch tokens: the
        # positions the CAM draws), so that zeroing it zeroes the channel in the layer's own layout.
        view = copies if lay.kind == NCHW else copies.movedim(-1, 1) if lay.kind == NHWC else \
            copies[:, lay.prefix:].movedim(-1, 1)
        view[rows, channels] = 0
        return copies

    handle = resolve(module, layer).register_forward_hook(ablate)
    try:
        try:
            out = module(x)
            if out.shape[0] != k:
                raise RuntimeError("the ablated copies did not reach the output")
        except RuntimeError:  # the network before the layer does not broadcast: run every copy
            out = module(x.expand(k, *x.shape[1:]))
    finally:
        handle.remove()
    return out[:, target]


hires_cam = HiResCAM()
xgrad_cam = XGradCAM()
eigen_cam = EigenCAM()
ablation_cam = AblationCAM()


# -- FullGrad ------------------------------------------------------------------------------------------

# What the decomposition may miss of the logit, as a share of the sum of its terms' magnitudes, before
# FullGrad is refused: float32 leaves of order 1e-6 of it (tests: rule 3), an activation with an implicit
# bias FullGrad does not see (GELU, SiLU, Hardswish) leaves a large share.
INCOMPLETE = 1e-3


def _bias_sites(module: nn.Module) -> list[tuple[str, nn.Module, str, torch.Tensor | None]]:
    """``(name, module, where, bias)`` for every layer that adds a bias, ``where`` being the tensor whose
    gradient is read: ``"output"``, or ``"input"`` for a norm that holds its activation (timm's
    ``BatchNormAct2d`` adds its bias before it). Convolutions and dense layers with a bias; batch norms,
    with their effective bias ``beta - mean gamma / sqrt(var + eps)`` (as in the authors' code); and
    clamping activations (ReLU6, Hardtanh), whose saturated outputs are constants: an *implicit* bias
    (Srinivas & Fleuret 2019, sec. 3.2), read at their ``"clamped"`` output (``bias`` None)."""
    sites = []
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            sites.append((name, m, "output", m.bias.detach()))
        elif isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight
            bias = -m.running_mean * scale + (m.bias if m.bias is not None else 0)
            act = getattr(m, "act", None)
            fused = isinstance(act, nn.Module)
            sites.append((name, act if fused else m, "input" if fused else "output", bias.detach()))
        elif isinstance(m, nn.Hardtanh):
            sites.append((f"{name} (implicit)", m, "clamped", None))
    return sites


def full_gradient(model, inputs: torch.Tensor, target: Target, *,
                  check: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full-gradient decomposition (Srinivas & Fleuret 2019): the input-gradient ``x * df/dx`` (at
    the network's input, after the model's own normalisation) and, per bias, the bias-gradient
    ``b * df/dz`` (``[B, C, h, w]`` for convolutional layers and clamping activations, ``[B, C]`` for
    dense ones). For a network of ReLUs, ReLU6s, max-pools and affine layers they sum exactly to the
    target's logit. With ``check``, a model on which they do not (an activation whose implicit bias is
    not seen: GELU, SiLU, Hardswish) is refused."""
    module, x, t = prepare(model, inputs, target)
    sites = _bias_sites(module)
    if not sites:
        raise NotApplicableError("fullgrad", model_label(model), "it has no layer with a bias")
    outs: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, z: torch.Tensor) -> torch.Tensor:
        # The network goes on with a copy, so an in-place activation after the layer (timm's, VGG's)
        # overwrites the copy and the kept tensor stays the one whose gradient is wanted.
        if name in outs or not isinstance(z, torch.Tensor):
            return z
        outs[name] = z
        return z.clone()

    for name, at, where, _ in sites:
        if where == "input":
            handles.append(at.register_forward_pre_hook(lambda _m, a, name=name: (keep(name, a[0]), *a[1:])))
        else:
            handles.append(at.register_forward_hook(lambda _m, _a, o, name=name: keep(name, o)))
    start: list[torch.Tensor] = []

    def network_input(_m, args):
        start.append(args[0].detach().requires_grad_(True))
        return (start[0], *args[1:])

    # Registered last, so it runs after the model's own pre-hooks: the input term is taken at what the
    # network receives (our models normalise inside), as in the authors' code, whose models take
    # normalised images. Taken at the [0, 1] image instead, the normalisation's shift would be a bias
    # the decomposition misses.
    handles.append(module.register_forward_pre_hook(network_input))
    try:
        with torch.enable_grad():
            logits = module(x)
            score = logits.gather(1, t[:, None]).sum()
            names = [n for n, *_ in sites if n in outs and outs[n].requires_grad]
            grads = torch.autograd.grad(score, [start[0], *(outs[n] for n in names)], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    info = {n: (m, where, b) for n, m, where, b in sites}
    terms = {}
    for n, g in zip(names, grads[1:]):
        if g is None:
            continue
        m, where, b = info[n]
        if where == "clamped":  # the constant a saturated unit outputs, where it is saturated
            z = outs[n].detach()
            constant = torch.where((z <= m.min_val) | (z >= m.max_val), z, torch.zeros_like(z))
            terms[n] = (g * constant).detach()
        elif isinstance(m, nn.Linear):  # its bias runs along the last axis, whatever comes before
            # Kept flat: like the authors' code, the map shows convolutional and norm terms only, and a
            # dense layer applied to channels-last positions would be misread as an NCHW map.
            terms[n] = (g * b).detach().flatten(1)
        else:
            terms[n] = (g * b.view((1, -1) + (1,) * (g.dim() - 2))).detach()
    input_term = (grads[0] * start[0]).detach()
    if check:
        _check_complete(model, input_term, terms, logits.detach().gather(1, t[:, None]).squeeze(1))
    return input_term, terms


def _check_complete(model, input_term: torch.Tensor, terms: dict[str, torch.Tensor], logit: torch.Tensor) -> None:
    b = input_term.shape[0]
    # A layer that folds windows into the batch axis (MaxViT, Swin) has more rows than images; they are
    # the images' windows in order (a reshape of the batch), so each image's share is its block of rows.
    parts = [input_term.flatten(1).sum(1), *(v.reshape(b, -1).sum(1) for v in terms.values())]
    scale = sum(p.abs() for p in parts)
    gap = (sum(parts) - logit).abs()
    missed = gap / scale.clamp_min(1e-12)
    if bool((missed > INCOMPLETE).any()):
        i = int(missed.argmax())
        raise NotApplicableError("fullgrad", model_label(model), f"its input- and bias-gradients add up to the logit "
                                 f"{float(logit[i]):.4g} only within {float(gap[i]):.3g}: an operation that is not "
                                 f"piecewise linear (GELU, SiLU, Hardswish, a normalisation over features) has an "
                                 f"implicit bias FullGrad does not see")


def _minmax(a: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    a = a - a.amin(dims, keepdim=True)
    return a / (a.amax(dims, keepdim=True) + eps)


SCALINGS = ("image", "channel")


def fullgrad(model, inputs: torch.Tensor, target: Target, *, scaling: str = "image") -> torch.Tensor:
    """FullGrad saliency ``[B, 1, H, W]``: the absolute input-gradient and every convolutional layer's
    absolute bias-gradient, each rescaled to [0, 1], upsampled and summed over channels and layers.

    ``scaling="image"`` is the authors' post-processing (each term scaled over all its channels at once,
    upsampled with aligned corners); ``"channel"`` is pytorch-grad-cam's (each channel of each term
    scaled on its own, half-pixel upsampling), which weighs a layer by its channel count.
    """
    if scaling not in SCALINGS:
        raise XaiError(f"unknown FullGrad scaling {scaling!r}; choose from {', '.join(SCALINGS)}")
    size = tuple(inputs.shape[-2:])
    input_term, bias_terms = full_gradient(model, inputs, target)
    per_channel = scaling == "channel"
    dims = (2, 3) if per_channel else (1, 2, 3)
    eps = 1e-7 if per_channel else 1e-6  # each library's own
    cam = _minmax(input_term.abs(), dims, eps).sum(1, keepdim=True)
    for name, term in bias_terms.items():
        if term.dim() != 4:  # a dense layer's bias-gradient has no positions to show
            continue
        if term.shape[0] != inputs.shape[0]:
            raise NotApplicableError("fullgrad", model_label(model), f"its layer {name!r} folds positions into the "
                                     f"batch axis ({term.shape[0]} rows for {inputs.shape[0]} images), so its "
                                     f"bias-gradient cannot be laid back on the image")
        # Summed over channels before upsampling: bilinear upsampling is linear and the same for every
        # channel, so this is the same map, without upsampling each of a layer's channels (lite0: 30x faster).
        scaled = _minmax(term.abs(), dims, eps).sum(1, keepdim=True)
        cam = cam + F.interpolate(scaled, size=size, mode="bilinear", align_corners=not per_channel)
    return finish(cam, inputs)
