"""Build profiles: what a rebuild computes. ``full`` is the report; ``quick`` a preview; ``smoke`` CI's."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import UnknownNameError

ALL_IMAGENET = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
ALL_FMNIST = ("fmnist_cnn", "fmnist_vgg", "fmnist_resnet18", "fmnist_mobilenetv3", "fmnist_vit")
# The methods the saliency gallery and the faithfulness table compute (their ``methods`` option). The
# methods added since (LRP, the rest of the CAM zoo, DeepLIFT, the SHAP family, LIME, RISE) are in
# xai.attribution.METHODS but join the studies only with options sized for each profile: at their
# defaults (4000 RISE masks, 512 KernelSHAP coalitions, an Ablation-CAM pass per channel) they would
# multiply the build's time.
GALLERY_METHODS = ("gradient", "gradient_x_input", "smoothgrad", "smoothgrad_sq", "vargrad", "integrated_gradients",
                   "guided_backprop", "deconvolution", "occlusion", "grad_cam", "grad_cam_pp", "score_cam", "layer_cam",
                   "guided_grad_cam", "counterfactual_grad_cam")


# The smoke leaderboard: one or two methods of each family, and every metric at its smallest meaningful size.
SMOKE_LEADERBOARD_METHODS = {
    "gradient": {}, "gradient_x_input": {}, "integrated_gradients": {"steps": 4}, "guided_backprop": {},
    "grad_cam": {}, "eigen_cam": {}, "lrp_epsilon_plus_flat": {}, "deeplift": {},
    "occlusion": {"window": 7, "stride": 7}, "rise": {"masks": 64}}
SMOKE_LEADERBOARD_METRICS = {
    "deletion": {"steps": 4}, "insertion": {"steps": 4, "substrate": "blur"}, "road_morf": {"percentages": [0.2, 0.5]},
    "road_lerf": {"percentages": [0.2, 0.5]}, "faithfulness_correlation": {"samples": 8},
    "sensitivity_n": {"samples": 8, "fractions": [0.05, 0.25]}, "infidelity": {"samples": 4},
    "max_sensitivity": {"samples": 2}, "avg_sensitivity": {"samples": 2}, "local_lipschitz": {"samples": 2}}


@dataclass(frozen=True)
class Profile:
    name: str
    imagenet_models: tuple[str, ...] = ALL_IMAGENET
    fmnist_models: tuple[str, ...] = ALL_FMNIST
    fmnist_budget: str = "full"  # training budget of the Fashion-MNIST models (see xai.models.fmnist)
    photos: tuple[str, ...] | None = None  # manifest ids; None: every photo
    fmnist_images: int = 10  # test images shown per Fashion-MNIST model
    seed: int = 0
    # Per-study knobs, so a study can grow options without widening this class: {study: {option: value}}.
    options: dict = field(default_factory=dict)

    def option(self, study: str, key: str, default=None):
        return self.options.get(study, {}).get(key, default)


PROFILES: dict[str, Profile] = {
    "full": Profile("full", options={"saliency": {"methods": list(GALLERY_METHODS)}}),
    "quick": Profile(
        "quick",
        photos=("chelsea", "coffee", "butterfly", "squirrel", "grace_hopper", "starry_night"),
        fmnist_images=6,
        options={
            "saliency": {"methods": list(GALLERY_METHODS), "photos": 3, "smoothgrad_samples": 4, "ig_steps": 8,
                         "score_cam_channels": 16},
            "gradcam": {"segmentation_photos": 4, "counterfactual_photos": 4},
            "faithfulness": {"photos": 4, "fmnist_images": 20, "steps": 6, "sanity_photos": 1,
                             "sanity_fmnist_images": 4},
            "misclassification": {"mean_images": 32},
            "counterfactual": {"fmnist_cases": 6},
            "cleverhans": {"attribution_images": 64, "spray_images": 200, "calibration": "smoke"},
            "leaderboard": {"images": 16, "explain_images": 4},
            "featvis": {"size": 96, "grid_steps": 64, "grid_channels": 8, "grid_layers": 4, "class_steps": 96,
                        "class_samples": 2, "ladder_steps": 96, "progress_steps": [0, 16, 48, 96, 192],
                        "photo_count": 2, "photo_steps": 48, "fmnist_steps": 96, "fmnist_channels": 8,
                        "fmnist_class_samples": 2, "exemplar_images": 2000},
            "concepts": {"photos": 2, "cells": 5, "grid_steps": 16, "dictionary_steps": 16, "group_steps": 24,
                         "concept_views": 8, "concept_steps": 24, "tcav_runs": 10, "random_sets": 6,
                         "dissection_images": 300, "unit_steps": 32},
        },
    ),
    "smoke": Profile(
        "smoke",
        imagenet_models=("efficientnet_lite0",),
        fmnist_models=("fmnist_cnn", "fmnist_vit"),
        fmnist_budget="smoke",
        photos=("chelsea", "coffee", "starry_night"),
        fmnist_images=4,
        options={
            "saliency": {"methods": list(GALLERY_METHODS), "photos": 2, "smoothgrad_samples": 2, "ig_steps": 4,
                         "score_cam_channels": 4, "occlusion_window": 0.25, "occlusion_stride": 0.25},
            "gradcam": {"layer_photos": 2, "segmentation_photos": 2, "counterfactual_photos": 2},
            "faithfulness": {"photos": 2, "fmnist_images": 6, "steps": 4, "fmnist_metrics": ["deletion_zero",
                             "insertion_blur"], "completeness_steps": [8, 32], "completeness_imagenet_steps": [4],
                             "sanity_models": ["fmnist_cnn"], "sanity_fmnist_images": 4,
                             "sanity_methods": ["gradient", "gradient_x_input", "guided_backprop", "grad_cam"]},
            "misclassification": {"top_confusions": 1, "mean_images": 8, "test_images": 1000},
            "counterfactual": {
                "fmnist_cases": 6, "photo_cases": 1, "test_images": 1000,
                "fmnist": {"confidence": 0.5, "distance": "l1", "weight": 0.01, "tv": 0.01, "steps": 60, "lr": 0.02,
                           "patience": 10},
                "fmnist_l2": {"confidence": 0.5, "distance": "l2", "weight": 0.1, "tv": 0.0, "steps": 60, "lr": 0.02,
                              "patience": 10},
                "photos": {"confidence": 0.5, "distance": "l1", "weight": 0.01, "tv": 0.01, "steps": 4, "lr": 0.005,
                           "patience": 2}},
            # A tiny slice learns the square only when every Shirt carries it; SpRAy marks half the test shirts.
            "cleverhans": {"budget": "smoke", "sets": ["clean", "square"], "fraction": 1.0, "test_images": 2000,
                           "attribution_images": 16, "spray_images": 100, "calibration": "smoke",
                           "methods": {"gradient": {}, "integrated_gradients": {"steps": 4}, "grad_cam": {}}},
            "leaderboard": {"images": 12, "explain_images": 4, "resamples": 200,
                            "methods": SMOKE_LEADERBOARD_METHODS, "metric_options": SMOKE_LEADERBOARD_METRICS},
            "featvis": {"size": 32, "grid_steps": 3, "grid_channels": 4, "grid_layers": 2, "class_steps": 3,
                        "class_samples": 2, "max_classes": 2, "ladder_classes": 2, "ladder_steps": 4,
                        "progress_steps": [0, 2, 4], "photo_count": 1, "photo_steps": 4, "fmnist_steps": 3,
                        "fmnist_channels": 4, "fmnist_class_samples": 1, "exemplar_images": 256, "exemplars": 4},
            "concepts": {"size": 32, "photos": 1, "cells": 3, "grid_steps": 2, "dictionary_top": 2,
                         "dictionary_steps": 2, "groups": 4, "group_steps": 2, "concept_views": 4, "concept_k": 3,
                         "concept_shown": 2, "concept_steps": 2, "tcav_runs": 5, "tcav_concept_images": 20,
                         "tcav_class_images": 40, "tcav_random_images": 200, "random_sets": 3,
                         "localisation_images": 40, "localisation_k": 4, "dissection_images": 200,
                         "dissected_units": 2, "unit_steps": 4},
        },
    ),
}


def get(name: str) -> Profile:
    if name not in PROFILES:
        raise UnknownNameError("profile", name, PROFILES)
    return PROFILES[name]


def with_options(profile: Profile, **study_options: dict) -> Profile:
    merged = {**profile.options, **study_options}
    return replace(profile, options=merged)
