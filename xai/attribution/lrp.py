"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) through zennit.

The target's logit is put in at the top as relevance and propagated down, layer by layer, by a rule
per layer type, to the pixels. Two of zennit's composites (rule assignments) are offered:

* ``epsilon_plus_flat``: LRP-epsilon for dense layers, LRP-z+ for convolutions, the flat rule for the
  first layer (relevance spread evenly over each receptive field);
* ``epsilon_gamma_box``: LRP-epsilon for dense layers, LRP-gamma for convolutions, the z^B (box) rule
  for the first layer, bounded by the normalised images of an all-black and an all-white input.

Activations (ReLU, ReLU6) pass relevance unchanged, average pools and residual sums split it in
proportion to their inputs, max-pools route it to the maximum. The model is canonized first
(:mod:`xai.attribution.canonizers`): batch norms merged into their convolutions, residual adds made
explicit. LRP runs on a copy, so the caller's model is never touched.

**Conservation.** Each rule keeps the relevance it receives, except for what the layer's bias takes
(``b_j R_j / z_j``, its share of the pre-activation) and the stabilisers (``epsilon``, ``1e-6``), which
take all of a unit's relevance where the rule's denominator vanishes (z^B's does over pixels at its
bounds, for a filter of one sign). So
the input relevance sums to the explained logit minus what the biases absorbed. :func:`propagate`
measures that at every rule, and refuses a model on which relevance appears or vanishes anywhere
else. A model whose forward pass has an operation without a rule (an activation other than ReLU /
ReLU6, a residual add no canonizer makes explicit, a gate or attention product, a batch norm that
follows no linear layer) is refused with the reason; it is never explained by something else.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import NotApplicableError, UnknownNameError, XaiError
from . import _audit
from ._common import Target, finish, prepare

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box")
# Activations LRP passes relevance through: rectifiers, whose output is zero or their input (ReLU6 also
# a constant 6, which keeps the relevance the layer above gave it). Smooth and non-monotone ones have no
# rule in the LRP literature.
RULED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
# Relevance appearing or vanishing outside the rules, as a share of the relevance in play, beyond which
# a model is refused. What rounding leaves is of order 1e-6 of it (float32, see tests); what a missed
# add or gate does is of order one.
UNACCOUNTED = 1e-3


@dataclass
class Propagation:
    """One LRP pass: the input relevance and where the rest of the explained logit went."""

    relevance: torch.Tensor  # [B, C, H, W] at the network's input (after its normalisation)
    logit: torch.Tensor  # [B] the relevance put in: the target's logit, or the seeds' sum (propagate_from)
    absorbed: dict[str, torch.Tensor] = field(default_factory=dict)  # per ruled module: in minus out, [B]
    layer_relevance: torch.Tensor | None = None  # [B, ...] at the output of the ``layer`` named, if one was

    @property
    def total_absorbed(self) -> torch.Tensor:
        return sum(self.absorbed.values(), torch.zeros_like(self.logit))

    @property
    def unaccounted(self) -> torch.Tensor:
        """Relevance created (negative) or lost (positive) outside every rule: zero up to rounding."""
        return self.logit - self.relevance.flatten(1).sum(1) - self.total_absorbed


class _Stop(Exception):
    pass


def _network_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the network's first layer receives for ``x``: the input after the model's own forward
    pre-hooks (our models normalise there)."""
    seen = []

    def hook(_m, args):
        seen.append(args[0])
        raise _Stop

    h = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            module(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return seen[0].detach()


def _first_layer(module: nn.Module, x: torch.Tensor) -> str | None:
    """The first linear layer (convolution or dense) the forward pass runs: the one the first-layer
    rule belongs to. zennit picks the first in definition order, which need not be the one run first."""
    from zennit.types import Linear as LinearType

    names = {m: n for n, m in module.named_modules() if isinstance(m, LinearType)}
    seen = []

    def hook(m, _args):
        seen.append(names[m])
        raise _Stop

    handles = [m.register_forward_pre_hook(hook) for m in names]
    try:
        with torch.no_grad():
            module(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen[0] if seen else None


def _composite(kind: str, module: nn.Module, x: torch.Tensor, epsilon: float, gamma: float, stabilizer: float,
               canonizers, ruled: dict[str, nn.Module]):
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite

    if kind == "epsilon_plus_flat":
        comp = EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    elif kind == "epsilon_gamma_box":
        low, high = _network_input(module, torch.zeros_like(x[:1])), _network_input(module, torch.ones_like(x[:1]))
        comp = EpsilonGammaBox(low=low, high=high, epsilon=epsilon, gamma=gamma, stabilizer=stabilizer,
                               canonizers=canonizers)
    else:
        raise UnknownNameError("LRP composite", kind, COMPOSITES)
    first = _first_layer(module, x[:1])

    def module_map(ctx, name, child):
        hook = None
        if name == first:
            hook = next((h for types, h in comp.first_map if isinstance(child, types)), None)
        if hook is None:
            hook = LayerMapComposite.mapping(comp, ctx, name, child)
        if hook is not None:
            ruled[name] = child
        return hook

    comp.module_map = module_map
    return comp


def _check_activations(module: nn.Module, method: str, label: str) -> None:
    from zennit.types import Activation

    for name, m in module.named_modules():
        if isinstance(m, Activation) and type(m) not in RULED_ACTIVATIONS:
            act = type(m).__name__
            raise NotApplicableError(method, label, f"it uses {act} activations ({name}), and LRP has rules for "
                                     f"rectifiers (ReLU, ReLU6) only", activation=act)


def _check_merged(module: nn.Module, method: str, label: str) -> None:
    """Every batch norm must have been merged into a linear layer (zennit makes a merged norm the
    identity: zero mean, unit variance and weight, zero bias and epsilon)."""
    from zennit.types import BatchNorm

    for name, m in module.named_modules():
        if isinstance(m, BatchNorm):
            identity = (float(m.eps) == 0 and bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())
                        and (m.weight is None or bool((m.weight == 1).all()))
                        and (m.bias is None or bool((m.bias == 0).all())))
            if not identity:
                raise NotApplicableError(method, label, f"its batch norm {name!r} does not directly follow a "
                                         f"convolution or dense layer it could be merged into, and LRP has no "
                                         f"rule for a batch norm on its own")


def _instrument(hooks, absorbed: dict[int, torch.Tensor]) -> None:
    """Record, at every rule, the relevance it received minus the relevance it passed on."""
    for hook in list(hooks):
        inner = hook.backward

        def backward(module, grad_input, grad_output, inner=inner):
            out = inner(module, grad_input, grad_output)
            got = grad_output[0].flatten(1).sum(1)
            gave = sum(r.flatten(1).sum(1) for r in out if r is not None)
            absorbed[id(module)] = absorbed.get(id(module), 0) + (got - gave).detach()
            return out

        hook.backward = backward


def propagate(model, inputs: torch.Tensor, target: Target, *, composite: str = "epsilon_plus_flat",
              epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
              canonizers: str | Sequence = "auto", check: bool = True, layer: str | None = None) -> Propagation:
    """LRP with the relevance accounted for at every rule. ``epsilon`` is LRP-epsilon's (dense layers),
    ``gamma`` LRP-gamma's, ``stabilizer`` the small number the other rules add to their denominators
    (zennit's defaults). ``canonizers``: ``"auto"`` (chosen by the model's block types), names from
    :data:`xai.attribution.canonizers.CANONIZERS` or zennit canonizer instances, or ``()`` for none.
    With ``check`` (the default) a model with an operation outside the rules, on which relevance is
    created or lost outside them, or whose canonized copy computes other logits, is refused; without it
    the pass runs anyway, to measure what a missing rule does (``unaccounted``). With ``layer`` (a
    module name) the relevance arriving at that module's output is kept too (``layer_relevance``)."""
    module, x, t = prepare(model, inputs, target)
    return _run(model, module, x, t, None, composite, epsilon, gamma, stabilizer, canonizers, check, layer)


def propagate_from(model, inputs: torch.Tensor, layer: str, relevance: torch.Tensor, *,
                   composite: str = "epsilon_plus_flat", epsilon: float = 1e-6, gamma: float = 0.25,
                   stabilizer: float = 1e-6, canonizers: str | Sequence = "auto", check: bool = True) -> Propagation:
    """LRP started at the output of ``layer`` with the given ``relevance`` (shaped like that output)
    instead of at the logit, and carried to the input by the same rules: how CRP (Achtibat et al. 2023)
    conditions a heatmap on a part of a layer. The rules are linear in the relevance they receive, so
    the passes from the parts of a layer's relevance sum to the pass from the whole, which for a layer
    every path from the input to the output runs through is the LRP of the logit. ``logit`` is then
    the relevance put in, ``relevance.sum()`` per image."""
    if not isinstance(relevance, torch.Tensor) or relevance.shape[:1] != inputs.shape[:1]:
        raise XaiError(f"relevance must be a tensor with one entry per image ({inputs.shape[0]}), got "
                       f"{tuple(relevance.shape) if isinstance(relevance, torch.Tensor) else type(relevance).__name__}")
    module, x, t = prepare(model, inputs, 0)
    return _run(model, module, x, t, relevance, composite, epsilon, gamma, stabilizer, canonizers, check, layer)


def _run(model, module: nn.Module, x: torch.Tensor, t: torch.Tensor, seeds: torch.Tensor | None, composite: str,
         epsilon: float, gamma: float, stabilizer: float, canonizers, check: bool, layer: str | None) -> Propagation:
    from ..layers import resolve
    from .canonizers import canonizers_for  # zennit is imported when LRP is used, not with the package

    method = f"lrp_{composite}"
    label = _audit.model_label(model)
    if composite not in COMPOSITES:
        raise UnknownNameError("LRP composite", composite, COMPOSITES)
    _check_activations(module, method, label)
    net = copy.deepcopy(module)
    ruled: dict[str, nn.Module] = {}
    comp = _composite(composite, net, x, epsilon, gamma, stabilizer, canonizers_for(net, canonizers), ruled)
    leaf: list[torch.Tensor] = []

    def start(_m, args):  # registered last: runs after the model's own pre-hooks (its normalisation)
        z = args[0].detach().requires_grad_(True)
        leaf.append(z)
        return (z, *args[1:])

    absorbed: dict[int, torch.Tensor] = {}
    try:
        comp.register(net)
    except RuntimeError as e:
        # zennit merges each batch norm into the linear layer registered before it; where that layer is
        # not the one feeding the norm (DenseNet's norms follow a concatenation), the shapes clash.
        comp.remove()
        raise NotApplicableError(method, label, f"its batch norms cannot be merged into the layers registered "
                                 f"before them ({e}), and LRP has no rule for a batch norm on its own") from None
    handles = [net.register_forward_pre_hook(start)]
    at: list[torch.Tensor] = []  # the layer's output, and the relevance that reaches it
    if layer is not None:
        # Registered after the composite's hooks: the output read is the one zennit's rule for the
        # layer wraps, so relevance given to it (or read from it) is what that rule receives.
        def read(_m, _args, output):
            if not isinstance(output, torch.Tensor):
                raise XaiError(f"layer {layer} returns {type(output).__name__}, not one tensor")
            if not at:
                at.append(output)
                if seeds is None and output.requires_grad:
                    output.register_hook(lambda g: at.append(g.detach()))

        handles.append(resolve(net, layer).register_forward_hook(read))
    try:
        if check:
            _check_merged(net, method, label)
        outer = [m for n, m in ruled.items() if not any(n.startswith(o + ".") for o in ruled if o and o != n)]
        _instrument(comp.hook_refs, absorbed)
        with torch.enable_grad(), _audit.audited(outer, _LRP_FLAGS) as audit:
            out = net(x)
        if check and audit.found:
            raise NotApplicableError(method, label, f"its forward pass computes {audit.summary()} outside any "
                                     f"module LRP has a rule for (a residual add or product no canonizer makes "
                                     f"explicit, or a functional activation)")
        if layer is not None and not at:
            raise XaiError(f"layer {layer} does not run in the model's forward pass")
        if seeds is None:
            logit = out.gather(1, t[:, None]).squeeze(1)
            seed = torch.zeros_like(out).scatter_(1, t[:, None], logit.detach()[:, None])
            (relevance,) = torch.autograd.grad(out, leaf[0], grad_outputs=seed)
        else:
            if tuple(seeds.shape) != tuple(at[0].shape):
                raise XaiError(f"relevance for {layer} must be shaped like its output {tuple(at[0].shape)}, "
                               f"got {tuple(seeds.shape)}")
            seed = seeds.detach().to(at[0].device, at[0].dtype)
            logit = seed.flatten(1).sum(1)
            (relevance,) = torch.autograd.grad(at[0], leaf[0], grad_outputs=seed)
    finally:
        for h in handles:
            h.remove()
        comp.remove()
    names = {id(m): n for n, m in ruled.items()}
    outer_ids = {id(m) for m in outer}
    # A layer no path to the target runs through gets no relevance: zero, as LRP gives it.
    layer_relevance = (at[1] if len(at) > 1 else torch.zeros_like(at[0]).detach()) if at and seeds is None else None
    result = Propagation(relevance.detach(), logit.detach(),
                         {names[k]: v for k, v in absorbed.items() if k in outer_ids}, layer_relevance)
    if check:
        _check_accounts(module, x, out.detach(), result, method, label)
    return result


def _check_accounts(module: nn.Module, x: torch.Tensor, out: torch.Tensor, result: Propagation, method: str,
                    label: str) -> None:
    with torch.no_grad():
        reference = module(x)
    scale = float(reference.abs().max())
    # Canonizing computes the same function up to float32 rounding through the network (tests/tolerance.py,
    # rule 3); a wrong merge or a mis-wired sum changes logits by a large share of their range.
    if not torch.allclose(out, reference, rtol=0, atol=1e-3 * scale + 1e-6):
        raise NotApplicableError(method, label, "its canonized copy computes other logits than the model (a batch "
                                 "norm merged into the wrong layer, or a block this canonizer does not know)")
    in_play = (result.logit.abs() + result.relevance.flatten(1).abs().sum(1)
               + sum((a.abs() for a in result.absorbed.values()), torch.zeros_like(result.logit)))
    bad = result.unaccounted.abs() > UNACCOUNTED * in_play
    if bool(bad.any()):
        share = float((result.unaccounted.abs() / in_play)[bad].max())
        raise NotApplicableError(method, label, f"relevance is created or lost outside the LRP rules ({share:.1%} "
                                 f"of the relevance in play): some operation of its forward pass has no rule")


_LRP_FLAGS = (_audit.ACTIVATION, _audit.PRODUCT, _audit.SUM, _audit.LINEAR, _audit.REDUCTION)


def lrp(model, inputs: torch.Tensor, target: Target, **options) -> torch.Tensor:
    """LRP relevance at the input ``[B, C, H, W]``, signed, summing to the target's logit minus what the
    biases absorbed. Options as :func:`propagate`."""
    return finish(propagate(model, inputs, target, **options).relevance, inputs)


def lrp_epsilon_plus_flat(model, inputs: torch.Tensor, target: Target, *, epsilon: float = 1e-6,
                          canonizers: str | Sequence[str] = "auto") -> torch.Tensor:
    """LRP with the EpsilonPlusFlat composite: epsilon (dense), z+ (convolutions), flat (first layer)."""
    return lrp(model, inputs, target, composite="epsilon_plus_flat", epsilon=epsilon, canonizers=canonizers)


def lrp_epsilon_gamma_box(model, inputs: torch.Tensor, target: Target, *, epsilon: float = 1e-6,
                          gamma: float = 0.25, canonizers: str | Sequence[str] = "auto") -> torch.Tensor:
    """LRP with the EpsilonGammaBox composite: epsilon (dense), gamma (convolutions), z^B (first layer,
    bounded by the normalised black and white images)."""
    return lrp(model, inputs, target, composite="epsilon_gamma_box", epsilon=epsilon, gamma=gamma,
               canonizers=canonizers)
