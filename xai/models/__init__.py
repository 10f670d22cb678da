"""Models from anywhere: ``xai.models.load(spec)`` gives everything a study needs.

A spec is one of

* a registered name: ``efficientnet_lite0``, ``fmnist_vgg``, ... (``xai models`` lists them), or a name
  that an installed package declares in the ``xai.models`` entry-point group;
* ``timm/<name>[.<tag>]``: any timm architecture, e.g. ``timm/resnet50.a1_in1k``;
* ``torchvision/<name>[:<WEIGHTS>]``: any torchvision classifier, e.g. ``torchvision/vgg16:IMAGENET1K_V1``.

``weights=PATH`` (the CLI's ``--weights``) loads a local checkpoint into any of them, a safetensors file
or a state dict (read with ``weights_only=True``); ``classes=FILE`` names the classes, one per line.
Without a file, pretrained weights come from timm's or torchvision's own download code.

A package makes its models known to every ``xai`` command by declaring a function that returns a
:class:`ModelEntry` (or a timm model) in its ``pyproject.toml``::

    [project.entry-points."xai.models"]
    my_resnet = "my_package.models:my_resnet"
"""
from __future__ import annotations

import builtins
import functools
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from ..errors import UnknownNameError, XaiError
from .entry import (FASHION_MNIST, IMAGENET_1K, InputNormalization, ModelEntry, attach_normalization,
                    class_list_space, from_module, imagenet_class_names, numbered_classes, read_class_file)

ENTRY_POINT_GROUP = "xai.models"

__all__ = ["ENTRY_POINT_GROUP", "FASHION_MNIST", "IMAGENET_1K", "InputNormalization", "ModelEntry",
           "attach_normalization", "check", "declared_label_space", "default_device", "definition_files", "describe", "from_module", "import_model_module",
           "imagenet_class_names", "list", "load", "loader_options", "numbered_classes", "register"]


@dataclass(frozen=True)
class _Registered:
    make: Callable[..., ModelEntry | nn.Module] | None
    label_space: str  # as declared at registration; "" when only loading tells
    source: str  # "registered", or where the entry point points
    entry_point: metadata.EntryPoint | None = None

    def function(self) -> Callable[..., ModelEntry | nn.Module]:
        if self.make is not None:
            return self.make
        try:
            return self.entry_point.load()
        except Exception as e:  # the package's own import error, whatever it is: one line, with its origin
            raise XaiError(f"cannot load model {self.entry_point.name!r} from {self.entry_point.value}: "
                           f"{type(e).__name__}: {e}") from e


_REGISTRY: dict[str, _Registered] = {}


def register(name: str, label_space: str = ""):
    """Register a function returning a :class:`ModelEntry` (or a timm model) under ``name``. Options given
    to :func:`load` are passed to it; it takes ``weights=`` if it declares that parameter."""
    def deco(fn: Callable[..., ModelEntry | nn.Module]):
        _REGISTRY[name] = _Registered(fn, label_space, "registered")
        return fn
    return deco


@functools.cache
def _entry_points() -> dict[str, _Registered]:
    """Models that installed packages declare in the ``xai.models`` entry-point group (loaded lazily;
    the installed packages are read once per process)."""
    return {ep.name: _Registered(None, "", f"entry point {ep.value}", ep)
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _known() -> dict[str, _Registered]:
    return {**_entry_points(), **_REGISTRY}  # a name registered in code wins over an entry point


def list(label_space: str | None = None) -> builtins.list[str]:  # noqa: A001 - timm-like API
    """Registered and entry-point model names; with ``label_space``, those declared with that label space."""
    return [n for n, r in _known().items() if label_space is None or r.label_space == label_space]


def declared_label_space(spec: str) -> str:
    """The label space a registered (or entry-point) model declares; "" for hub specs and undeclared
    ones, whose label space is known once they are loaded."""
    r = _known().get(spec)
    return r.label_space if r is not None else ""


def describe(name: str) -> str:
    """What ``xai models`` prints beside a name: its label space, or where it comes from."""
    r = _known()[name]
    return r.label_space or r.source


def _split(spec: str) -> tuple[str, str, str | None]:
    """``(source, name, weights enum member)`` of a spec; source is "name", "timm" or "torchvision"."""
    if not isinstance(spec, str) or not spec:
        raise XaiError(f"a model spec is a non-empty string, got {spec!r}")
    source, sep, rest = spec.partition("/")
    if not sep:
        return "name", spec, None
    if source == "timm" and rest:
        return "timm", rest, None
    if source == "torchvision" and rest:
        name, _, member = rest.partition(":")
        return "torchvision", name, member or None
    raise UnknownNameError("model source", source, ["timm", "torchvision"],
                           hint="a spec is a registered name, timm/<name>[.<tag>] or torchvision/<name>[:<WEIGHTS>]")


def check(spec: str) -> str:
    """Fail fast, before anything heavy loads, on a spec that names no model; returns its source."""
    source, name, member = _split(spec)
    if source == "timm":
        from .hub import check_timm

        check_timm(name)
    elif source == "torchvision":
        from .hub import check_torchvision

        check_torchvision(name, member)
    elif name not in _known():
        raise UnknownNameError("model", name, [*_known(), *_hub_names(name)],
                               hint="`xai models` lists them; any timm or torchvision model is "
                                    "timm/<name> or torchvision/<name>")
    return source


def _hub_names(name: str) -> builtins.list[str]:
    """``timm/<name>`` and ``torchvision/<name>`` when a bare name is one of theirs (for suggestions)."""
    import timm
    import torchvision.models as tvm

    out = [f"timm/{name}"] if timm.is_model(name) else []
    return out + ([f"torchvision/{name}"] if name in tvm.list_models(module=tvm) else [])


def definition_files(spec: str) -> builtins.list[Path]:
    """The source files outside this package that define a registered or entry-point model (a user's
    ``--model-module``, an installed plugin): what a cache of results computed with it depends on
    besides its weights. Empty for this package's own models and for timm and torchvision specs."""
    source, name, _ = _split(spec)
    r = _known().get(name) if source == "name" else None
    if r is None:
        return []
    module = r.make.__module__ if r.make is not None else r.entry_point.module
    top = importlib.util.find_spec(module.split(".")[0]) if module and module != "__main__" else None
    if top is None or not top.origin or top.origin in ("built-in", "frozen"):
        if r.make is None:
            return []
        try:
            found = inspect.getsourcefile(r.make)  # a function defined in a script
        except TypeError:
            return []
        files = [Path(found).resolve()] if found else []
    elif top.submodule_search_locations:  # a package: its helper modules count as much as the one named
        files = sorted({f.resolve() for d in top.submodule_search_locations for f in Path(d).rglob("*.py")})
    else:
        files = [Path(top.origin).resolve()]
    own = Path(__file__).resolve().parent.parent
    return [f for f in files if own not in f.parents]


def loader_options(spec: str) -> frozenset[str]:
    """The keyword options a registered model's function takes (``budget``, ``progress``...), so that
    callers pass each model only what it understands; empty for timm and torchvision specs."""
    source, name, _ = _split(spec)
    if source != "name" or name not in _known():
        return frozenset()
    fn = _known()[name].function()
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def load(spec: str, *, weights: str | Path | None = None, classes: str | Path | None = None,
         device: torch.device | str | None = None, **options) -> ModelEntry:
    """The model of ``spec``, in eval mode with frozen parameters, on ``device`` (CUDA when present by
    default). ``options`` go to the registered function, or to ``timm.create_model`` / the torchvision
    builder (``num_classes``, ``img_size``, ...). Fashion-MNIST models take ``budget=`` ("full" or
    "smoke"): they are trained on first use and cached."""
    source = check(spec)
    _, name, member = _split(spec)
    if source == "timm":
        from .hub import timm_entry

        entry = timm_entry(name, weights=weights, **options)
    elif source == "torchvision":
        from .hub import torchvision_entry

        entry = torchvision_entry(name, member, weights=weights, **options)
    else:
        registered = _known()[name]
        if weights is not None:
            if "weights" not in loader_options(spec):
                raise XaiError(f"{name} does not take a weights file")
            options = {**options, "weights": weights}
        entry = _as_entry(name, registered.function()(**options))
    if classes is not None:
        names = read_class_file(classes)
        if len(names) != entry.num_classes:
            raise XaiError(f"{classes} names {len(names)} classes, but {entry.name} scores {entry.num_classes}")
        entry.class_names, entry.label_space = names, class_list_space(classes)
    entry.model.eval()
    for p in entry.model.parameters():
        p.requires_grad_(False)
    return entry.to(device or default_device())


def _as_entry(name: str, made) -> ModelEntry:
    if isinstance(made, ModelEntry):
        return made
    if isinstance(made, nn.Module) and isinstance(getattr(made, "pretrained_cfg", None), dict):
        from .hub import timm_module_entry

        return timm_module_entry(name, made)
    raise XaiError(f"model {name!r} gave a {type(made).__name__}; its function must return an "
                   f"xai.models.ModelEntry (see xai.models.from_module) or a timm model")


def import_model_module(target: str) -> str | None:
    """``--model-module pkg.mod[:fn]``: import ``pkg.mod`` (its ``@register`` calls run) and, with
    ``:fn``, register ``fn`` under the name ``fn``. Returns that name, or None."""
    module_name, _, fn_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise XaiError(f"cannot import model module {module_name!r}: {e}") from e
    if not fn_name:
        return None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UnknownNameError(f"function of {module_name}", fn_name,
                               [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")])
    register(fn_name)(fn)
    return fn_name


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _lite(_name: str):
    def make(weights: str | None = None) -> ModelEntry:
        from . import imagenet

        return imagenet.entry(_name, weights)
    return make


for _name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    register(_name, IMAGENET_1K)(_lite(_name))

from . import fmnist as _fmnist  # noqa: E402,F401  (registers the Fashion-MNIST models)
