"""Models from timm and torchvision by spec, with everything a study needs read from their own metadata.

* ``timm/<name>[.<tag>]``: input size, mean, std, crop and interpolation from
  ``timm.data.resolve_model_data_config``; classes from the label space timm infers for the head
  (``infer_imagenet_subset``, names from ``ImageNetInfo``); layers of interest from ``feature_info``,
  then the module that gives ``forward_features``' result when it is not the last of them (the head
  convolution of an EfficientNet, a ViT's final norm).
* ``torchvision/<name>[:<WEIGHTS>]``: preprocessing from ``weights.transforms()``, classes from
  ``weights.meta["categories"]``, layers of interest from the stage structure
  (:func:`xai.models.stages.stage_layers`).

Pretrained weights come through timm's and torchvision's own download code. A local file (``weights=``)
is loaded strictly, after the head and the first convolution are sized from the file itself, so a
fine-tuned checkpoint with another number of classes or input channels loads without options.
"""
from __future__ import annotations

import builtins
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingDataError, UnknownNameError, XaiError
from ..layouts import trace
from .stages import stage_layers
from . import weights as W
from .entry import IMAGENET_1K, ModelEntry, attach_normalization, imagenet_class_names, numbered_classes


def _offline(spec: str, e: Exception) -> MissingDataError:
    first = (str(e).splitlines() or [""])[0][:160]
    return MissingDataError(f"{spec}: its pretrained weights are not on this machine and could not be downloaded "
                            f"({type(e).__name__}: {first}); give a local file with --weights PATH")


# -- timm ----------------------------------------------------------------------------------------------------

def check_timm(name: str) -> None:
    """Fail with close matches when ``name`` (``arch`` or ``arch.tag``) is not a timm model."""
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise UnknownNameError("model", f"timm/{arch}", [f"timm/{n}" for n in timm.list_models()],
                               hint="timm.list_models() lists them")
    if tag:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise UnknownNameError(f"pretrained tag of timm/{arch}", tag, tags)


def _timm_create(name: str, pretrained: bool, spec: str, **kwargs) -> nn.Module:
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        # timm would warn and go on with random weights: refuse instead
        raise MissingDataError(f"{spec}: timm has no pretrained weights for it; give a local file with --weights PATH")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # the hub's errors are many (HTTP, offline cache, proxies): one line for all
        raise _offline(spec, e) from e


def _sized_from(state: dict, name: str, options: dict) -> dict:
    """Head size (``num_classes``) and input channels (``in_chans``) of the checkpoint, read at the
    tensors that timm's pretrained config names (``classifier``, ``first_conv``), where the caller did
    not set them: a fine-tuned checkpoint loads without options."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return {}
    heads = cfg.classifier
    head = (heads[0] if isinstance(heads, (tuple, list)) else heads) or ""
    fixes = {}
    key = f"{head}.weight"
    if "num_classes" not in options and key in state and state[key].dim() >= 2:
        fixes["num_classes"] = int(state[key].shape[0])
    key = f"{cfg.first_conv or ''}.weight"
    if "in_chans" not in options and key in state and state[key].dim() == 4:
        fixes["in_chans"] = int(state[key].shape[1])
    return fixes


def _timm_input_size(model: nn.Module, options: dict) -> tuple[tuple[int, int, int], dict]:
    """The data config, with the input size the model was built for (``img_size``, ``in_chans``)."""
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    c, h, w = cfg["input_size"]
    if options.get("img_size") is not None:
        size = options["img_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
    c = int(options.get("in_chans") or c)
    return (c, int(h), int(w)), cfg


def _per_channel(values, c: int) -> tuple[float, ...]:
    # A model built for other input channels than its pretrained config (grey images): timm adapts the
    # first convolution by summing over RGB, so one statistic, the mean over RGB, serves each channel.
    values = tuple(float(v) for v in values)
    return values if len(values) == c else (sum(values) / len(values),) * c


def _timm_classes(model: nn.Module) -> tuple[list[str], str]:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    n = int(getattr(model, "num_classes", 0) or 0)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    subset = infer_imagenet_subset(model)
    if subset == IMAGENET_1K:
        return imagenet_class_names(), IMAGENET_1K
    if subset is not None:  # another ImageNet subset: each class by its first lemma, told apart by synset
        info = ImageNetInfo(subset)
        names = [d.split(",")[0] for d in info.label_descriptions()]
        count = Counter(names)
        return [nm if count[nm] == 1 else f"{nm} ({s})" for nm, s in zip(names, info.label_names())], subset
    labels = cfg.get("label_names")
    if labels and len(labels) == n:
        return builtins.list(labels), f"labels of {cfg.get('architecture', 'the model')}"
    return numbered_classes(n), ""


def _final_features(model: nn.Module, input_size: tuple[int, int, int]) -> str | None:
    """The module whose output is ``forward_features``' result, if that is not also the output of the
    last ``feature_info`` stage (timm's EfficientNet: ``bn2`` after its head convolution)."""
    forward_features = getattr(model, "forward_features", None)
    info = getattr(model, "feature_info", None)
    if forward_features is None or not isinstance(info, list) or not info:
        return None
    outs: dict[str, object] = {}  # the outputs themselves, not their ids: a freed id can be reused
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: outs.setdefault(n, o))
               for n, m in model.named_modules() if n]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            result = forward_features(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    if not isinstance(result, torch.Tensor) or outs.get(info[-1]["module"]) is result:
        return None
    producers = [n for n, o in outs.items() if o is result]  # in the order the hooks fired
    return producers[-1] if producers else None


def timm_layers(model: nn.Module, input_size: tuple[int, int, int]) -> list[str]:
    """Layers of interest of a timm model: its ``feature_info`` stages and its final feature map, each
    kept where its layout has positions (a 1x1 map after a global pool draws nothing)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info:
        return stage_layers(model, input_size)
    names = [f["module"] for f in info]
    final = _final_features(model, input_size)
    if final is not None and final not in names:
        names.append(final)
    layouts = trace(model, input_size).layouts
    return [n for n in names if n in layouts and layouts[n].spatial and layouts[n].grid[0] * layouts[n].grid[1] > 1]


def timm_entry(name: str, *, display: str | None = None, weights: str | Path | None = None, remap: bool = False,
               weights_label: str | None = None, **options) -> ModelEntry:
    """A timm model as an entry. ``weights``: a local file (``remap``: its tensors renamed positionally;
    ``weights_label``: how the entry names its source); without it, the pretrained weights of ``name``
    from the hub. ``options`` go to ``timm.create_model`` (``num_classes``, ``img_size``, ``in_chans``...)."""
    spec = f"timm/{name}"
    check_timm(name)
    state = W.read_state_dict(weights) if weights is not None else None
    if state is not None and not remap:
        options = {**options, **_sized_from(state, name, options)}
    try:
        model = _timm_create(name, state is None, spec, **options)
    except TypeError as e:  # an option this architecture's constructor does not take
        raise XaiError(f"{spec}: {e}") from e
    if state is not None:
        W.load_into(model, W.remap_state_dict(state, model) if remap else state, str(weights))
    input_size, cfg = _timm_input_size(model, options)
    mean, std = _per_channel(cfg["mean"], input_size[0]), _per_channel(cfg["std"], input_size[0])
    attach_normalization(model, mean, std)
    model.eval()
    class_names, label_space = _timm_classes(model)
    if weights_label is not None:
        source = weights_label
    elif weights is not None:
        source = _file_label(weights)
    else:
        source = f"timm hub ({model.pretrained_cfg.get('tag') or 'default'} tag)"
    return ModelEntry(
        name=display or spec, model=model, input_size=input_size, mean=mean, std=std, class_names=class_names,
        layers=timm_layers(model, input_size), label_space=label_space, crop_pct=float(cfg["crop_pct"]),
        interpolation=cfg["interpolation"],
        info={"arch": f"timm {model.pretrained_cfg.get('architecture', name)}", "weights": source, "spec": spec})


def _file_label(path: str | Path) -> str:
    return f"{path} (sha256 {W.file_sha256(path)[:16]})"


def timm_module_entry(name: str, model: nn.Module) -> ModelEntry:
    """An entry for a timm model that a user's function built (and loaded) itself."""
    input_size, cfg = _timm_input_size(model, {})
    mean, std = _per_channel(cfg["mean"], input_size[0]), _per_channel(cfg["std"], input_size[0])
    attach_normalization(model, mean, std)
    model.eval()
    class_names, label_space = _timm_classes(model)
    return ModelEntry(name=name, model=model, input_size=input_size, mean=mean, std=std, class_names=class_names,
                      layers=timm_layers(model, input_size), label_space=label_space,
                      crop_pct=float(cfg["crop_pct"]), interpolation=cfg["interpolation"],
                      info={"arch": f"timm {model.pretrained_cfg.get('architecture', '?')}", "weights": name})


# -- torchvision ---------------------------------------------------------------------------------------------

def check_torchvision(name: str, weights_name: str | None = None):
    """The weights enum member of ``torchvision/<name>[:<WEIGHTS>]`` (the default one without
    ``WEIGHTS``); close matches for a bad model or weights name."""
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if name not in names:
        raise UnknownNameError("model", f"torchvision/{name}", [f"torchvision/{n}" for n in names],
                               hint="torchvision.models.list_models() lists them")
    enum = tvm.get_model_weights(name)
    if weights_name is None:
        return enum.DEFAULT
    if weights_name not in enum.__members__:
        raise UnknownNameError(f"weights of torchvision/{name}", weights_name, builtins.list(enum.__members__))
    return enum[weights_name]


def _torchvision_pretrained(name: str, meta, spec: str, options: dict) -> nn.Module:
    import torchvision.models as tvm

    try:  # into torchvision's cache first, so that a failed download is told apart from a bad option
        meta.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # download errors: URLError, HTTPError, hash mismatch, ...
        raise _offline(spec, e) from e
    # the builder with the weights, which also sets what they need (Inception's transform_input)
    return tvm.get_model(name, weights=meta, **options)


def _last_linear(model: nn.Module) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def torchvision_entry(name: str, weights_name: str | None = None, *, weights: str | Path | None = None,
                      **options) -> ModelEntry:
    """A torchvision classifier as an entry: pretrained ``weights_name`` (default: the default weights) from
    torchvision's download, or a local ``weights`` file with the preprocessing of those weights."""
    import torchvision.models as tvm

    spec = f"torchvision/{name}" + (f":{weights_name}" if weights_name else "")
    meta = check_torchvision(name, weights_name)
    try:
        if weights is None:
            model = _torchvision_pretrained(name, meta, spec, options)
        else:
            state = W.read_state_dict(weights)
            model = tvm.get_model(name, weights=None, **options)
            head = _last_linear(model)
            key = f"{head}.weight"
            own = model.state_dict()
            if "num_classes" not in options and head and key in state and state[key].shape[0] != own[key].shape[0]:
                model = tvm.get_model(name, weights=None, **{**options, "num_classes": int(state[key].shape[0])})
            W.load_into(model, state, str(weights))
    except (TypeError, ValueError) as e:  # options the builder refuses
        raise XaiError(f"{spec}: {e}") from e
    t = meta.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    input_size = (3, crop, crop)
    mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    attach_normalization(model, mean, std)
    model.eval()
    categories = builtins.list(meta.meta.get("categories") or [])
    head = _last_linear(model)
    n = model.get_submodule(head).out_features if head else len(categories)
    if categories and len(categories) == n:
        class_names = categories
        label_space = IMAGENET_1K if categories == imagenet_class_names() else f"categories of {meta}"
    else:
        class_names, label_space = numbered_classes(n), ""
    return ModelEntry(
        name=spec, model=model, input_size=input_size, mean=mean, std=std, class_names=class_names,
        layers=stage_layers(model, input_size), label_space=label_space, crop_pct=crop / resize,
        interpolation=str(getattr(t.interpolation, "value", t.interpolation)),
        info={"arch": f"torchvision {name}", "spec": spec,
              "weights": _file_label(weights) if weights is not None else f"torchvision {meta}"})
