"""Attribution methods with one calling convention: ``method(model, inputs, target, **options) -> Tensor``.

``model`` is an ``nn.Module`` taking [0, 1] images, or a :class:`xai.models.ModelEntry` (then the input
size is checked too); ``inputs`` is ``[B, C, H, W]``; ``target`` is a class index or one per image. The
result has the batch order of ``inputs`` and is signed where the method is signed; gradient-type
methods return ``[B, C, H, W]``, the CAM family ``[B, 1, H, W]``. Visual choices (absolute value,
clipping, colormap, smoothing) belong to :mod:`xai.render.maps`, never here.

``METHODS`` maps names to :class:`Method` records so that studies, benchmarks and the book iterate by
name: ``attribute("grad_cam", entry, x, 281, layer="blocks.4")``. ``Method.per_channel`` says which shape a
method returns: one value per input channel ``[B, C, H, W]``, or one map ``[B, 1, H, W]`` (the CAMs,
FullGrad, RISE and the superpixel methods). A method that does not apply to a model (or to the layer it was
given) raises :class:`xai.errors.NotApplicableError`, whose fields say why.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UnknownNameError
from ._common import OUTPUTS, Target
from .cam import (CAM, CounterfactualGradCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, counterfactual_grad_cam,
                  default_layer, grad_cam, grad_cam_pp, guided_grad_cam, layer_activations, layer_cam, score_cam)
from .cam_zoo import (AblationCAM, EigenCAM, HiResCAM, XGradCAM, ablation_cam, eigen_cam, full_gradient, fullgrad,
                      hires_cam, xgrad_cam)
from .gradient import (BASELINES, RefinedIG, baseline, gaussian_blur, gradient, gradient_x_input, integrated_gradients,
                       integrated_gradients_refined, noise_gradient_moments, smoothgrad, smoothgrad_sq, vargrad)
from .guided import deconvolution, guided_backprop, modified_gradient
from .lrp import lrp, lrp_epsilon_gamma_box, lrp_epsilon_plus_flat, propagate
from .occlusion import occlusion
from .rise import rise
from .shapley import deeplift, deeplift_shap, deeplift_with_delta, gradient_shap
from .superpixel import feature_ablation, kernel_shap, lime, superpixels

# How a method's values read, which fixes its 2-D map (xai.render.maps.saliency_map), hence how it is
# ranked by the metrics and coloured by the renderer:
#   signed:      positive supports the target, negative opposes it. Map: sum over channels, diverging colours.
#   sensitivity: a gradient whose sign is only a direction of change. Map: max |.| over channels
#                (Simonyan et al. 2014), sequential colours.
#   positive:    non-negative by construction (CAMs, squared gradients). Map: sum over channels, sequential.
KINDS = ("signed", "sensitivity", "positive")


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., torch.Tensor]
    label: str  # display name
    kind: str  # see KINDS
    family: str  # "gradient", "propagation" (rules replace the backward pass), "perturbation" or "cam"
    cite: str  # BibTeX key in book/references.bib
    version: int = 1  # bump when the method's output changes meaning (cache keys include it)
    per_channel: bool = True  # [B, C, H, W] per input channel; False: one map [B, 1, H, W]

    @property
    def signed(self) -> bool:
        """Whether the raw attributions can be negative."""
        return self.kind != "positive"

    @property
    def needs_layer(self) -> bool:
        return self.family == "cam"

    def __call__(self, model, inputs: torch.Tensor, target: Target, **options) -> torch.Tensor:
        return self.fn(model, inputs, target, **options)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("gradient", gradient, "Gradient", "sensitivity", "gradient", "simonyan2014deep"),
    Method("gradient_x_input", gradient_x_input, "Gradient × input", "signed", "gradient", "shrikumar2016not"),
    Method("smoothgrad", smoothgrad, "SmoothGrad", "sensitivity", "gradient", "smilkov2017smoothgrad"),
    Method("smoothgrad_sq", smoothgrad_sq, "SmoothGrad²", "positive", "gradient", "hooker2019benchmark"),
    Method("vargrad", vargrad, "VarGrad", "positive", "gradient", "adebayo2018sanity"),
    Method("integrated_gradients", integrated_gradients, "Integrated Gradients", "signed", "gradient",
           "sundararajan2017axiomatic"),
    Method("guided_backprop", guided_backprop, "Guided Backprop", "sensitivity", "gradient",
           "springenberg2015striving"),
    Method("deconvolution", deconvolution, "Deconvolution", "sensitivity", "gradient", "zeiler2014visualizing"),
    Method("occlusion", occlusion, "Occlusion", "signed", "perturbation", "zeiler2014visualizing"),
    Method("grad_cam", grad_cam, "Grad-CAM", "positive", "cam", "selvaraju2017gradcam", per_channel=False),
    Method("grad_cam_pp", grad_cam_pp, "Grad-CAM++", "positive", "cam", "chattopadhay2018gradcampp",
           per_channel=False),
    Method("score_cam", score_cam, "Score-CAM", "positive", "cam", "wang2020scorecam", per_channel=False),
    Method("layer_cam", layer_cam, "Layer-CAM", "positive", "cam", "jiang2021layercam", per_channel=False),
    Method("guided_grad_cam", guided_grad_cam, "Guided Grad-CAM", "sensitivity", "cam", "selvaraju2017gradcam"),
    Method("counterfactual_grad_cam", counterfactual_grad_cam, "Counterfactual Grad-CAM", "positive", "cam",
           "selvaraju2017gradcam", per_channel=False),
    Method("hires_cam", hires_cam, "HiResCAM", "positive", "cam", "draelos2020hirescam", per_channel=False),
    Method("xgrad_cam", xgrad_cam, "XGrad-CAM", "positive", "cam", "fu2020axiom", per_channel=False),
    Method("eigen_cam", eigen_cam, "Eigen-CAM", "positive", "cam", "muhammad2020eigencam", per_channel=False),
    Method("ablation_cam", ablation_cam, "Ablation-CAM", "positive", "cam", "desai2020ablationcam",
           per_channel=False),
    Method("fullgrad", fullgrad, "FullGrad", "positive", "gradient", "srinivas2019fullgrad", per_channel=False),
    Method("lrp_epsilon_plus_flat", lrp_epsilon_plus_flat, "LRP (ε, z⁺, flat)", "signed", "propagation",
           "bach2015pixel"),
    Method("lrp_epsilon_gamma_box", lrp_epsilon_gamma_box, "LRP (ε, γ, box)", "signed", "propagation",
           "montavon2019layer"),
    Method("deeplift", deeplift, "DeepLIFT", "signed", "propagation", "shrikumar2017learning"),
    Method("deeplift_shap", deeplift_shap, "DeepLIFT-SHAP", "signed", "propagation", "lundberg2017unified"),
    Method("gradient_shap", gradient_shap, "GradientSHAP", "signed", "gradient", "lundberg2017unified"),
    Method("feature_ablation", feature_ablation, "Superpixel ablation", "signed", "perturbation",
           "zeiler2014visualizing", per_channel=False),
    Method("kernel_shap", kernel_shap, "KernelSHAP", "signed", "perturbation", "lundberg2017unified",
           per_channel=False),
    Method("lime", lime, "LIME", "signed", "perturbation", "ribeiro2016why", per_channel=False),
    Method("rise", rise, "RISE", "positive", "perturbation", "petsiuk2018rise", per_channel=False),
]}


def get(name: str) -> Method:
    if name not in METHODS:
        raise UnknownNameError("attribution method", name, METHODS)
    return METHODS[name]


def attribute(name: str, model, inputs: torch.Tensor, target: Target, **options) -> torch.Tensor:
    """Run the method called ``name``; unknown names get close-match suggestions."""
    return get(name)(model, inputs, target, **options)


__all__ = [
    "METHODS", "KINDS", "OUTPUTS", "BASELINES", "Method", "attribute", "get",
    "gradient", "gradient_x_input", "smoothgrad", "smoothgrad_sq", "vargrad", "noise_gradient_moments",
    "integrated_gradients", "integrated_gradients_refined", "RefinedIG", "baseline", "gaussian_blur", "guided_backprop", "deconvolution", "modified_gradient",
    "occlusion", "CAM", "GradCAM", "GradCAMPlusPlus", "ScoreCAM", "LayerCAM", "CounterfactualGradCAM",
    "grad_cam", "grad_cam_pp", "score_cam", "layer_cam", "counterfactual_grad_cam", "guided_grad_cam",
    "default_layer", "layer_activations",
    "HiResCAM", "XGradCAM", "EigenCAM", "AblationCAM", "hires_cam", "xgrad_cam", "eigen_cam", "ablation_cam",
    "fullgrad", "full_gradient", "lrp", "propagate", "lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box",
    "deeplift", "deeplift_with_delta", "deeplift_shap", "gradient_shap", "superpixels", "feature_ablation",
    "kernel_shap", "lime", "rise",
]
