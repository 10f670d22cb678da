"""Build profiles: what a rebuild computes. ``full`` is the report; ``quick`` a preview; ``smoke`` CI's."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import UnknownNameError

ALL_IMAGENET = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
ALL_FMNIST = ("fmnist_cnn", "fmnist_vgg", "fmnist_resnet18", "fmnist_mobilenetv3", "fmnist_vit")


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
    "full": Profile("full"),
    "quick": Profile(
        "quick",
        photos=("chelsea", "coffee", "butterfly", "squirrel", "grace_hopper", "starry_night"),
        fmnist_images=6,
    ),
    "smoke": Profile(
        "smoke",
        imagenet_models=("efficientnet_lite0",),
        fmnist_models=("fmnist_cnn", "fmnist_vit"),
        fmnist_budget="smoke",
        photos=("chelsea", "coffee", "starry_night"),
        fmnist_images=4,
    ),
}


def get(name: str) -> Profile:
    if name not in PROFILES:
        raise UnknownNameError("profile", name, PROFILES)
    return PROFILES[name]


def with_options(profile: Profile, **study_options: dict) -> Profile:
    merged = {**profile.options, **study_options}
    return replace(profile, options=merged)
