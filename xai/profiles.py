"""Build profiles: what a rebuild computes. ``full`` is the report; ``quick`` a preview; ``smoke`` CI's.

A profile is what the studies read. The shipped ones are YAML report configs (``xai/config/profiles``),
validated by :mod:`xai.config` and turned into a :class:`Profile` by :mod:`xai.config.adapter`; a user's
config file (``xai precompute --config FILE``) becomes one the same way."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from .data.folders import FolderSource
from .errors import UnknownNameError

ALL_IMAGENET = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
ALL_FMNIST = ("fmnist_cnn", "fmnist_vgg", "fmnist_resnet18", "fmnist_mobilenetv3", "fmnist_vit")
# The methods the saliency gallery and the faithfulness table compute (their ``methods`` option): every
# method of xai.attribution.METHODS, grouped by family so that a gallery row reads as one. The costly
# ones (RISE's masks, KernelSHAP's and LIME's coalitions, Ablation-CAM's passes) run at the sizes of the
# saliency study's options, which each profile sets.
GALLERY_METHODS = ("gradient", "gradient_x_input", "smoothgrad", "smoothgrad_sq", "vargrad", "integrated_gradients",
                   "gradient_shap", "fullgrad",
                   "guided_backprop", "deconvolution", "lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box", "deeplift",
                   "deeplift_shap",
                   "occlusion", "feature_ablation", "kernel_shap", "lime", "rise",
                   "grad_cam", "grad_cam_pp", "hires_cam", "xgrad_cam", "layer_cam", "score_cam", "ablation_cam",
                   "eigen_cam", "guided_grad_cam", "counterfactual_grad_cam")


@dataclass(frozen=True)
class ModelSource:
    """Where a profile's model comes from: its id in the artifacts, its spec (``xai.models.load``), and a
    user's weights file, class list and layers of interest (None: the model's own)."""

    id: str
    spec: str
    weights: str | None = None
    classes: str | None = None
    layers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    imagenet_models: tuple[str, ...] = ALL_IMAGENET
    fmnist_models: tuple[str, ...] = ALL_FMNIST
    # Models of another label space (a user's classes): explained on the image folder sets labelled in
    # their space (see ``photo_models``); a space without such a set is listed by the overview and skipped,
    # with the reason, by the studies that explain photos.
    other_models: tuple[str, ...] = ()
    fmnist_budget: str = "full"  # training budget of the Fashion-MNIST models (see xai.models.fmnist)
    photos: tuple[str, ...] | None = None  # manifest ids; None: every photo
    folders: tuple[FolderSource, ...] = ()  # a config's image folder sets, each in one label space
    fmnist_images: int = 10  # test images shown per Fashion-MNIST model
    seed: int = 0
    # Per-study knobs, so a study can grow options without widening this class: {study: {option: value}}.
    options: dict = field(default_factory=dict)
    sources: tuple[ModelSource, ...] = ()  # a config's models; a model not listed is its own spec
    disabled: tuple[str, ...] = ()  # studies the config turns off
    study_models: dict = field(default_factory=dict)  # {study: model ids}: a study restricted to these
    published: bool = True  # False: a build that must never be published (its pages say so)
    label_spaces: dict = field(default_factory=dict)  # {model id: label space}, as the config resolved them

    def option(self, study: str, key: str, default=None):
        return self.options.get(study, {}).get(key, default)

    @property
    def photo_spaces(self) -> tuple[str, ...]:
        """The label spaces that have photos: ImageNet-1k's (the manifest, unless the config names no
        photo of it) with an ImageNet-1k model, and each folder set's."""
        manifest = self.imagenet_models and (self.photos is None or len(self.photos) > 0)
        return tuple(dict.fromkeys((["imagenet-1k"] if manifest else []) + [f.label_space for f in self.folders]))

    @property
    def photo_models(self) -> tuple[str, ...]:
        """The models the studies explain photos with: the ImageNet-1k models, then the models of the other
        label spaces that have a folder set."""
        spaces = self.photo_spaces
        inet = self.imagenet_models if "imagenet-1k" in spaces else ()
        return inet + tuple(m for m in self.other_models if self.label_spaces.get(m) in spaces)

    def source(self, model_id: str) -> ModelSource:
        return next((s for s in self.sources if s.id == model_id), ModelSource(model_id, model_id))

    def for_study(self, study: str) -> "Profile":
        """The profile as ``study`` sees it: only the models the config gives it."""
        keep = self.study_models.get(study)
        if keep is None:
            return self
        return replace(self, imagenet_models=tuple(m for m in self.imagenet_models if m in keep),
                       fmnist_models=tuple(m for m in self.fmnist_models if m in keep),
                       other_models=tuple(m for m in self.other_models if m in keep))


class _Shipped(Mapping):
    """The shipped profiles (``xai/config/profiles/*.yaml``), read and validated on first use: the YAML
    files are their one definition."""

    def __init__(self) -> None:
        self._cache: dict[str, Profile] = {}

    def _names(self) -> list[str]:
        from .config import loader

        return loader.shipped()

    def __getitem__(self, name: str) -> Profile:
        if name not in self._cache:
            if name not in self._names():
                raise KeyError(name)
            from .config import adapter, loader

            self._cache[name] = adapter.to_profile(loader.load(name, check_names=False), f"{name}.yaml")
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        # The report first, then previews: the order the book's table reads them in.
        order = {"full": 0, "quick": 1, "smoke": 2}
        return iter(sorted(self._names(), key=lambda n: (order.get(n, 3), n)))

    def __len__(self) -> int:
        return len(self._names())


PROFILES: Mapping[str, Profile] = _Shipped()


def get(name: str) -> Profile:
    """A shipped profile by name, or a report config file by path (``.yaml``/``.yml``, or any existing
    file): validated, its names checked, its models' label spaces read (a hub model that declares none
    is built to find out)."""
    if name in PROFILES:
        return PROFILES[name]
    from .config import adapter, loader

    path = loader.resolve(name)  # an unknown name that is not a file: close matches among the shipped
    return adapter.to_profile(loader.load(path), str(path), label_space=adapter.loaded_label_space)


def with_options(profile: Profile, **study_options: dict) -> Profile:
    merged = {**profile.options, **study_options}
    return replace(profile, options=merged)


def table() -> list[dict]:
    """Every profile as the book lists it; the precompute writes this into the manifest, since the book's
    extension reads only the generated folder."""
    return [{"name": p.name, "imagenet_models": list(p.imagenet_models), "fmnist_models": list(p.fmnist_models),
             "fmnist_budget": p.fmnist_budget, "photos": None if p.photos is None else list(p.photos),
             "seed": p.seed} for p in PROFILES.values()]
