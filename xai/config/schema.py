"""The report config: one typed schema for the shipped profiles (full, quick, smoke) and a user's own file.

Every key is declared here with its type and default; an unknown key or a wrong type is an error at
load time (:mod:`xai.config.loader` turns it into one line naming the file, the key path and close
matches). Nothing deeper re-reads a dict with a default.

Models are given by spec (:func:`xai.models.load`), each with an id that names it in the artifacts.
Image sets say where images come from; a study takes the images of a model's label space (the photo
manifest for ImageNet-1k, the test set for Fashion-MNIST, a folder whose class names are the model's
for a user's own classes), never images chosen by the model's name.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator, model_validator

Budget = Literal["full", "smoke"]
Size = PositiveInt | PositiveFloat  # pixels (int) or a fraction of the shorter side (float)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- models and images -----------------------------------------------------------------------------
class ModelConfig(Strict):
    """One model of the report: a spec (``efficientnet_lite0``, ``timm/resnet50.a1_in1k``,
    ``torchvision/vgg16:IMAGENET1K_V1``), optional local weights and class list, optional layers of
    interest (shallow to deep; default: the model's own)."""

    spec: str
    id: str | None = Field(None, description="name in the artifacts; default: the spec, made file-safe")
    weights: Path | None = None
    classes: Path | None = None
    layers: list[str] | None = None

    @property
    def name(self) -> str:
        return self.id or re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec)

    @field_validator("id")
    @classmethod
    def _file_safe(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError(f"a model id may hold letters, digits, '_', '.' and '-' only, got {v!r}")
        return v


class PhotoSet(Strict):
    """The photo manifest (xai/data/images.yaml), for models of the ImageNet-1k label space."""

    ids: list[str] | None = Field(None, description="manifest ids, in this order; null: every photo")


class FashionMNISTSet(Strict):
    images: PositiveInt = Field(10, description="test images shown per model")


class FolderSet(Strict):
    """A user's labelled images in the ImageFolder layout ``root/<class>/<file>``. The folder names are
    matched to a model's class names (case and ``_``/space insensitive): ImageNet-1k's, or a model's own
    class list (``models[].classes``)."""

    name: str
    root: Path
    per_class: PositiveInt | None = Field(None, description="first N files of each class; null: all")
    labels: str | None = Field(None, description="id of the model whose class names label the set; null: "
                                                 "the one label space whose classes its folders all name")


class ImageSets(Strict):
    photos: PhotoSet = PhotoSet()
    fashion_mnist: FashionMNISTSet = FashionMNISTSet()
    folders: list[FolderSet] = []


class Training(Strict):
    budget: Budget = Field("full", description="training budget of the models trained here (Fashion-MNIST)")


# -- studies ---------------------------------------------------------------------------------------
class StudyConfig(Strict):
    enabled: bool = True
    models: list[str] | None = Field(None, description="model ids; null: every model the study applies to")


class OverviewConfig(StudyConfig):
    pass


class SaliencyConfig(StudyConfig):
    photos: PositiveInt | None = 8
    methods: list[str] | None = Field(None, description="null: the gallery's methods (xai.profiles.GALLERY_METHODS)")
    smoothgrad_samples: PositiveInt = 8
    noise: PositiveFloat = 0.15
    ig_steps: PositiveInt = 32
    ig_baseline: str = "black"
    occlusion_window: Size | None = 1 / 7
    occlusion_stride: Size | None = 1 / 7
    score_cam_channels: PositiveInt | None = 32
    gradient_shap_samples: PositiveInt = 16
    superpixels: PositiveInt = 50
    shap_samples: PositiveInt = 128
    rise_masks: PositiveInt = 256
    ablation_cam_batch: PositiveInt = 256
    sensitivity_noise: list[PositiveFloat] = [0.05, 0.15, 0.3]
    internal_batch_size: PositiveInt = 8
    fmnist_internal_batch_size: PositiveInt = 256


class GradCAMConfig(StudyConfig):
    layer_photos: PositiveInt = 2
    segmentation_photos: PositiveInt | None = 8
    thresholds: list[float] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    counterfactual_photos: PositiveInt = 4
    counterfactual_layers: list[str] | None = None


class FaithfulnessConfig(StudyConfig):
    photos: PositiveInt = 8
    photo_models: list[str] | None = Field(None, description="null: the profile's first model with photos")
    fmnist_images: PositiveInt = 50
    steps: PositiveInt = 10
    photo_metrics: list[str] = ["deletion_zero", "insertion_blur"]
    fmnist_metrics: list[str] = ["deletion_zero", "deletion_blur", "insertion_zero", "insertion_blur"]
    internal_batch_size: PositiveInt = 8
    fmnist_internal_batch_size: PositiveInt = 256
    completeness_steps: list[PositiveInt] = [8, 16, 32, 64, 128, 256]
    completeness_photo_steps: list[PositiveInt] = [16, 32, 64, 128]
    completeness_target: PositiveFloat = Field(0.01, lt=1, description="relative gap steps='auto' must reach")
    completeness_max_steps: PositiveInt = 512
    completeness_auto_photos: PositiveInt = 8
    sanity_models: list[str] | None = None
    sanity_photos: PositiveInt = 2
    sanity_fmnist_images: PositiveInt = 8
    sanity_methods: list[str] = ["gradient", "gradient_x_input", "smoothgrad", "integrated_gradients",
                                 "guided_backprop", "grad_cam", "guided_grad_cam"]
    sanity_smoothgrad_samples: PositiveInt = 4
    sanity_ig_steps: PositiveInt = 8


class MisclassificationConfig(StudyConfig):
    methods: list[str] = ["gradient", "integrated_gradients", "smoothgrad"]
    top_confusions: PositiveInt = 3
    examples: PositiveInt = 6
    mean_images: PositiveInt = 64
    test_images: PositiveInt | None = None


class CounterfactualSearch(Strict):
    confidence: float = Field(0.9, gt=0, lt=1)
    distance: Literal["l1", "l2"] = "l1"
    weight: float = Field(0.01, ge=0)
    tv: float = Field(0.01, ge=0)
    steps: PositiveInt = 400
    lr: PositiveFloat = 0.01
    patience: PositiveInt = 50


class CounterfactualConfig(StudyConfig):
    fmnist_model: str | None = None
    fmnist_cases: PositiveInt = 8
    test_images: PositiveInt | None = None
    photo_cases: int = Field(3, ge=0)
    compare_methods: list[str] = ["gradient", "integrated_gradients"]
    fmnist: CounterfactualSearch = CounterfactualSearch()
    fmnist_l2: CounterfactualSearch = CounterfactualSearch(distance="l2", weight=0.1, tv=0.0)
    photos: CounterfactualSearch = CounterfactualSearch(confidence=0.5, steps=60, lr=0.005, patience=20)


class CleverHansConfig(StudyConfig):
    budget: Budget | None = Field(None, description="training budget of the poisoned models; null: training.budget")
    sets: list[Literal["clean", "square", "watermark", "gradient", "multi"]] = [
        "clean", "square", "watermark", "gradient", "multi"]
    marker_class: str = "Shirt"
    fraction: float = Field(0.5, gt=0, le=1)
    multi_classes: list[str] = ["Coat", "Sneaker", "Bag"]
    test_images: PositiveInt | None = None
    attribution_images: PositiveInt = 128
    methods: dict[str, dict] = {"gradient": {}, "integrated_gradients": {"steps": 16}, "grad_cam": {}}
    spray_method: str = "integrated_gradients"
    spray_images: PositiveInt | None = 500
    alpha: float = Field(0.05, gt=0, lt=1, description="the detector's error rate (xai.shortcuts.detector)")
    min_effect: float = Field(0.05, ge=0, lt=1, description="the detector's margin: the effect beyond the reference "
                              "that counts as reliance")
    min_concentration: PositiveFloat = 2.0
    calibration: Literal["full", "smoke"] | None = Field(
        "full", description="budget of the detector's calibration on planted shortcuts "
                            "(xai.shortcuts.calibration.BUDGETS); null: not run")


class LeaderboardConfig(StudyConfig):
    """Every method ranked by localisation on the Clever Hans models' flipped images, every other metric
    checked against that ranking (xai.studies.leaderboard). Models, budget and test images are the
    cleverhans study's."""

    sets: list[Literal["square", "watermark", "gradient", "multi"]] = ["square", "watermark", "gradient"]
    images: PositiveInt = Field(24, description="images flipped by the marker, per marker")
    explain_images: PositiveInt = Field(6, description="of those, for metrics that explain perturbed inputs or models")
    methods: dict[str, dict] | None = Field(None, description="name -> options; null: every method, sized by the study")
    metrics: list[str] | None = Field(None, description="null: every metric outside the localisation family")
    metric_options: dict[str, dict] = {
        "deletion": {"steps": 8}, "insertion": {"steps": 8, "substrate": "blur"},
        "road_morf": {"percentages": [0.2, 0.5, 0.8]}, "road_lerf": {"percentages": [0.2, 0.5, 0.8]},
        "faithfulness_correlation": {"samples": 16}, "sensitivity_n": {"samples": 8, "fractions": [0.05, 0.25, 0.5]}, "infidelity": {"samples": 8},
        "max_sensitivity": {"samples": 4}, "avg_sensitivity": {"samples": 4}, "local_lipschitz": {"samples": 4}}
    resamples: PositiveInt = Field(1000, description="bootstrap resamples of the images")
    level: float = Field(0.95, gt=0, lt=1)
    max_area: float = Field(0.25, gt=0, le=1, description="a marker region above this share of the image is "
                            "global: localisation is not defined there")


class FeatvisConfig(StudyConfig):
    size: PositiveInt = 128
    batch: PositiveInt = 64
    grid_steps: PositiveInt = 128
    grid_channels: PositiveInt = 16
    grid_layers: PositiveInt | None = None
    class_steps: PositiveInt = 128
    class_samples: PositiveInt = 3
    max_classes: PositiveInt | None = 12
    class_models: list[str] | None = None
    diversity: float = Field(10.0, ge=0)
    fmnist_diversity: float = Field(1.0, ge=0)
    unregularized: bool = True
    ladder_classes: PositiveInt = 3
    ladder_steps: PositiveInt = 128
    optimizer_runs: list[tuple[str, PositiveFloat]] = [("adam", 0.05), ("normalized_sgd", 0.05), ("sgd", 10.0),
                                                        ("sgd", 100.0)]

    @field_validator("optimizer_runs")
    @classmethod
    def _known_optimizers(cls, runs):
        from ..errors import UnknownNameError
        from ..featvis.optimize import OPTIMIZERS

        for name, _ in runs:
            if name not in OPTIMIZERS:
                raise ValueError(str(UnknownNameError("optimizer", name, OPTIMIZERS)).strip('"'))
        return runs
    progress_steps: list[int] = [0, 16, 64, 256, 512]
    photo_count: PositiveInt = 3
    photo_steps: PositiveInt = 128
    dream_layers: list[int] = [2, 3]
    dream_depth_steps: PositiveInt = 96
    fmnist_steps: PositiveInt = 128
    fmnist_channels: PositiveInt = 16
    fmnist_class_samples: PositiveInt = 3
    exemplar_images: PositiveInt | None = None
    exemplars: PositiveInt = 9


class ConceptsConfig(StudyConfig):
    """What the units mean together (xai.studies.concepts): Building Blocks, discovered concepts and the
    Clever Hans marker as a concept (TCAV, random concepts, localisation, dissection)."""

    model: str | None = Field(None, description="ImageNet model id; null: the first")
    size: PositiveInt = Field(48, description="render size (px)")
    photos: PositiveInt = 4
    layers: list[int] = Field([3, 4], description="positions in the model's layers of interest")
    cells: PositiveInt = Field(7, description="grid positions per side at most (average-pooled)")
    grid_steps: PositiveInt = 64
    dictionary_top: PositiveInt = 3
    dictionary_steps: PositiveInt = 64
    groups: int = Field(6, ge=1, le=64)
    group_steps: PositiveInt = 64
    concept_photo: str | None = Field(None, description="manifest id; null: the first grid photo")
    concept_views: PositiveInt = 16
    concept_layer: int = Field(4, ge=0)
    concept_k: PositiveInt = 5
    concept_shown: PositiveInt = 4
    concept_steps: PositiveInt = 64
    tcav_runs: int = Field(20, ge=2)
    tcav_concept_images: int = Field(50, ge=2)
    tcav_class_images: PositiveInt = 100
    tcav_random_images: int = Field(500, ge=2)
    random_sets: PositiveInt = 10
    naive_margin: float = Field(0.2, gt=0, lt=0.5)
    alpha: float = Field(0.05, gt=0, lt=1)
    localisation_images: PositiveInt = 100
    localisation_k: PositiveInt = 6
    dissection_images: PositiveInt = 500
    dissected_units: PositiveInt = 4
    unit_steps: PositiveInt = 64
    imagenet_tcav_classes: PositiveInt = Field(6, description="labelled photos whose classes TCAV tests")
    imagenet_tcav_layers: list[int] = Field([2, 3, 4], description="positions in the model's layers of interest")
    imagenet_tcav_concept_images: int = Field(30, ge=2)
    imagenet_tcav_random_images: int = Field(200, ge=2)
    imagenet_tcav_class_images: PositiveInt = 24
    crp_layer: int = Field(3, ge=0, description="position in the model's layers of interest")
    crp_top: PositiveInt = Field(4, description="channels conditioned on, most relevant first")
    crp_composite: Literal["epsilon_plus_flat", "epsilon_gamma_box"] = "epsilon_plus_flat"
    crp_unit_size: PositiveInt = 64
    crp_unit_steps: PositiveInt = 128
    crp_marker_images: PositiveInt = 50


class MicroscopeConfig(StudyConfig):
    """Every channel of a few layers with its visualization and top exemplars (xai.studies.microscope)."""

    model: str | None = Field(None, description="ImageNet model id; null: the first")
    layers: list[int] | None = Field(None, description="positions in the model's layers of interest; null: "
                                     "the three before the last")
    size: PositiveInt = Field(64, description="render size (px)")
    steps: PositiveInt = 128
    fmnist_model: str | None = Field(None, description="Fashion-MNIST model id; null: the first")
    fmnist_layers: list[int] | None = Field(None, description="positions; null: every layer of interest")
    fmnist_steps: PositiveInt = 128
    fmnist_images: PositiveInt | None = Field(None, description="test images scanned; null: all")
    batch: PositiveInt = Field(64, description="units in one optimization")
    exemplars: PositiveInt = 6
    exemplar_size: PositiveInt = Field(64, description="px of an ImageNet exemplar crop")
    sheet_units: PositiveInt = Field(32, description="units per sprite sheet")
    columns: PositiveInt = 8


class SpeedConfig(StudyConfig):
    pass


class Studies(Strict):
    """Per study, whether it runs, on which models, and its knobs (in the order the book reads them)."""

    overview: OverviewConfig = OverviewConfig()
    saliency: SaliencyConfig = SaliencyConfig()
    gradcam: GradCAMConfig = GradCAMConfig()
    faithfulness: FaithfulnessConfig = FaithfulnessConfig()
    misclassification: MisclassificationConfig = MisclassificationConfig()
    counterfactual: CounterfactualConfig = CounterfactualConfig()
    cleverhans: CleverHansConfig = CleverHansConfig()
    leaderboard: LeaderboardConfig = LeaderboardConfig()
    featvis: FeatvisConfig = FeatvisConfig()
    concepts: ConceptsConfig = ConceptsConfig()
    microscope: MicroscopeConfig = MicroscopeConfig()
    speed: SpeedConfig = SpeedConfig()


class ReportConfig(Strict):
    """A whole report: what ``xai precompute --config FILE`` computes and the book shows."""

    name: str = Field(..., description="the profile's name, shown in the book (full, quick, smoke or yours)")
    seed: int = 0
    models: list[ModelConfig]
    training: Training = Training()
    images: ImageSets = ImageSets()
    studies: Studies = Studies()
    published: bool = Field(True, description="false marks a build that must never be published "
                                              "(e.g. hub models swapped for random weights in a test)")

    @field_validator("models", mode="before")
    @classmethod
    def _specs(cls, v):
        # A bare string is a spec: `models: [efficientnet_lite0, timm/resnet50]`.
        return [{"spec": m} if isinstance(m, str) else m for m in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _unique_ids(self) -> "ReportConfig":
        seen: dict[str, str] = {}
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"two models share the id {m.name!r} ({seen[m.name]} and {m.spec}): give one an id")
            seen[m.name] = m.spec
        return self

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        from ..errors import UnknownNameError

        raise UnknownNameError("model id", name, [m.name for m in self.models])

    @property
    def model_ids(self) -> list[str]:
        return [m.name for m in self.models]
