"""A validated report config as the :class:`~xai.profiles.Profile` the studies read.

The studies take a ``Profile`` (model lists by label space, image choices, per-study options). A config
file is the typed, checked way to write one: each study's options are those the file *sets* (pydantic's
``exclude_unset``), so a study's own defaults hold wherever the file is silent, exactly as with the
shipped profiles. A model's spec, weights, class list and layers travel with the profile
(:class:`~xai.profiles.ModelSource`), so every study loads a user's checkpoint the same way.
"""
from __future__ import annotations

from collections.abc import Callable

from ..data.folders import FolderSource
from ..profiles import ModelSource, Profile
from .loader import ConfigError
from .schema import ReportConfig

IMAGENET_1K = "imagenet-1k"
FASHION_MNIST = "fashion-mnist"


# Study options whose schema default (null) means "as the config's top level says".
INHERITED: dict[tuple[str, str], Callable[[ReportConfig], object]] = {
    ("cleverhans", "budget"): lambda c: c.training.budget,
}


def declared_label_space(source: ModelSource) -> str:
    """The label space known without building the model: a registered model's declaration, a class list
    file's, else empty (known only once loaded)."""
    from .. import models
    from ..models.entry import class_list_space

    if source.classes is not None:
        return class_list_space(source.classes)
    return models.declared_label_space(source.spec)


def loaded_label_space(source: ModelSource) -> str:
    """The declared label space, or, for a model that declares none (a hub spec), the loaded entry's."""
    declared = declared_label_space(source)
    if declared:
        return declared
    from ..studies._frame import load_source

    return load_source(source).label_space


def folder_sources(config: ReportConfig, source: str, spaces: dict[str, str]) -> tuple[FolderSource, ...]:
    """The config's image folder sets, each labelled in one label space and checked now (folders exist,
    every folder names a class of that space, images are there): a typo in a class folder is one line
    before any work, not a study failure. A set's label space is its ``labels`` model's, else the one
    whose class names its folders all name: ImageNet-1k's (with an ImageNet-1k model), or a model's own
    class list. Fashion-MNIST models explain their test set, so their classes are not offered."""
    from ..data import folders
    from ..errors import XaiError
    from ..models.entry import read_class_file

    known: dict[str, str] = {}  # model id -> its label space, for models whose class names are known
    names: dict[str, tuple[str, ...] | None] = {}  # label space -> class names (None: ImageNet-1k's)
    for m in config.models:
        space = spaces[m.name]
        if space == IMAGENET_1K:
            known[m.name], names[space] = space, None
        elif m.classes is not None and space != FASHION_MNIST:
            known[m.name] = space
            names.setdefault(space, tuple(read_class_file(m.classes)))
    out = []
    for i, f in enumerate(config.images.folders):
        try:
            if f.labels is not None:
                if f.labels not in known:
                    raise XaiError(f"model {f.labels!r} (label space {spaces[f.labels]}) has no class names the "
                                   "folders could name: give it a class list (models[].classes)")
                fits = [known[f.labels]]
            elif not names:
                raise XaiError("no model of the config has class names its folders could name: an ImageNet-1k "
                               "model, or one with a class list (models[].classes)")
            else:
                misses = {sp: len(folders.unmatched(_labelled(f, sp, names[sp]))) for sp in names}
                fits = [sp for sp, n in misses.items() if n == 0]
                if len(fits) > 1:
                    raise XaiError(f"its folders name classes of {len(fits)} label spaces ({', '.join(fits)}): "
                                   "say which model's classes label it (labels: <model id>)")
                fits = fits or [min(misses, key=misses.get)]  # the space it misses least, for close matches
            src = _labelled(f, fits[0], names[fits[0]])
            folders.match(src)
            folders.files([src])
        except XaiError as e:
            raise ConfigError(source, f"images.folders[{i}]", str(e)) from e
        out.append(src)
    if len({s.name for s in out}) < len(out):
        raise ConfigError(source, "images.folders", "two image folder sets have the same name")
    return tuple(out)


def _labelled(f, space: str, classes: tuple[str, ...] | None) -> FolderSource:
    return FolderSource(f.name, str(f.root), f.per_class, space, classes)


def to_profile(config: ReportConfig, source: str = "config",
               label_space: Callable[[ModelSource], str] | None = None) -> Profile:
    """The profile ``config`` describes. ``label_space`` tells a model's label space (default: what is
    declared; a caller that may load models passes one that loads those declaring none)."""
    label_space = label_space or declared_label_space
    sources = tuple(ModelSource(m.name, m.spec, None if m.weights is None else str(m.weights),
                                None if m.classes is None else str(m.classes),
                                None if m.layers is None else tuple(m.layers)) for m in config.models)
    spaces = {s.id: label_space(s) for s in sources}
    folder_sets = folder_sources(config, source, spaces) if config.images.folders else ()
    options: dict[str, dict] = {}
    disabled, restricted = [], {}
    for study, sc in config.studies:
        set_keys = sc.model_dump(mode="python", exclude_unset=True)
        for (s_name, key), inherit in INHERITED.items():
            if s_name == study and key not in set_keys:
                set_keys[key] = inherit(config)
        if not set_keys.pop("enabled", True):
            disabled.append(study)
        models = set_keys.pop("models", None)
        if models is not None:
            restricted[study] = tuple(models)
        if set_keys:
            options[study] = set_keys
    return Profile(
        config.name,
        imagenet_models=tuple(s.id for s in sources if spaces[s.id] == IMAGENET_1K),
        fmnist_models=tuple(s.id for s in sources if spaces[s.id] == FASHION_MNIST),
        other_models=tuple(s.id for s in sources if spaces[s.id] not in (IMAGENET_1K, FASHION_MNIST)),
        fmnist_budget=config.training.budget,
        photos=None if config.images.photos.ids is None else tuple(config.images.photos.ids),
        fmnist_images=config.images.fashion_mnist.images,
        folders=folder_sets,
        label_spaces=spaces,
        seed=config.seed,
        options=options,
        sources=sources,
        disabled=tuple(disabled),
        study_models=restricted,
        published=config.published,
    )
