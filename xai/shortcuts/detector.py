"""Does a model rely on a candidate shortcut for a class? One check, with its evidence.

``detect_shortcut(model, images, labels, cls, marker=... or region=...)`` measures:

* **flip rate** (needs a marker function): of the images of other classes that the model does not
  already call ``cls``, the fraction it calls ``cls`` once the marker is added. A model indifferent to
  the marker keeps its answers.
* **removal drop** (needs a marker): on images of ``cls``, the accuracy with the marker minus the
  accuracy without it: what the marker buys the class.
* **occlusion drop** (only when a region is given without a marker): on images of ``cls``, which are
  assumed to carry the candidate, the accuracy minus the accuracy after the region is filled with each
  image's median outside it (the background it would plausibly have). With a marker function the
  removal drop is the exact form of this test (it restores the true pixels instead of guessing them),
  and occluding a large region such as a gradient's half of the image would hide the object too.
* **attribution concentration** per method: the mean share of ``|attribution|`` for ``cls`` inside the
  region (:func:`xai.metrics.shortcut.region_mass`) over images carrying the candidate, divided by the
  region's share of the image.

**Decision rule.** The model *relies* on the candidate when the largest behavioural effect (flip rate,
removal drop, occlusion drop) reaches ``min_effect`` (default 0.2, i.e. the candidate alone changes at
least one answer in five). Behaviour decides because it is an intervention on the input; attribution
maps are reported beside it as corroboration (``attribution_agrees``: at least half of the methods give
a concentration of ``min_concentration``, default 2, or more) but never decide alone: a map can
highlight a region the prediction does not depend on (Integrated Gradients from a black baseline credits
any bright patch), and a global marker such as a lightness gradient has no small region to concentrate
on. The Clever Hans study runs a clean control model through the same check beside every poisoned one,
so the margin between the two against ``min_effect`` can be read off its ``results.json``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..errors import NotApplicableError, XaiError
from ..metrics import shortcut as sm
from .markers import Marker

DEFAULT_METHODS: dict[str, dict] = {"gradient": {}, "integrated_gradients": {"steps": 16}, "grad_cam": {}}


@dataclass
class ShortcutReport:
    model: str
    class_index: int
    class_name: str
    candidate: str
    relies: bool
    rule: str
    reasons: list[str]
    area_share: float
    flip_rate: float | None = None
    removal_drop: float | None = None
    occlusion_drop: float | None = None
    accuracy: float | None = None  # on the images as given
    marked_accuracy: float | None = None  # with the marker added to every image
    class_accuracy: float | None = None  # on the class's images as given
    class_marked_accuracy: float | None = None  # on the class's images with the marker added
    attribution: dict[str, dict] = field(default_factory=dict)  # method -> region_mass summary
    attribution_agrees: bool | None = None
    images: dict[str, int] = field(default_factory=dict)

    @property
    def effect(self) -> float:
        vals = [v for v in (self.flip_rate, self.removal_drop, self.occlusion_drop) if v is not None]
        return max(vals) if vals else float("nan")

    def to_json(self) -> dict:
        return {**asdict(self), "effect": self.effect}


@torch.no_grad()
def _predict(module: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(module.parameters()).device
    return torch.cat([module(x[i:i + batch_size].to(device)).argmax(-1).cpu() for i in range(0, len(x), batch_size)])


def fill_region(images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``images`` with ``region`` replaced by each image's per-channel median outside it."""
    outside = images[..., ~region]  # [B, C, n_outside]
    fill = outside.median(-1).values[..., None, None]
    return torch.where(region, fill.expand_as(images), images)


def detect_shortcut(model, images: torch.Tensor, labels: torch.Tensor, cls: int | str, *,
                    marker: Marker | None = None, region: torch.Tensor | None = None,
                    methods: dict[str, dict] | None = None, layer: str | None = None,
                    attribution_images: int = 64, min_effect: float = 0.2, min_concentration: float = 2.0,
                    batch_size: int = 500, seed: int = 0) -> ShortcutReport:
    """Whether ``model`` relies on ``marker`` (or on ``region``) for class ``cls``; see the module docstring.

    ``images`` are clean images ``[N, C, H, W]`` in [0, 1] with their true ``labels``; ``model`` is a
    model entry (class names accepted) or a module. ``methods`` maps attribution method names to their
    options; ``layer`` goes to the CAM methods. ``attribution_images`` bounds the images explained.
    """
    from ..attribution import attribute
    from ..attribution._common import unwrap

    module, _, _ = unwrap(model)
    if marker is None and region is None:
        raise XaiError("give a marker function or a candidate region")
    if images.dim() != 4 or len(images) != len(labels):
        raise XaiError(f"expected images [N, C, H, W] with one label each, got {tuple(images.shape)} and "
                       f"{tuple(labels.shape)} labels")
    if hasattr(model, "check_input"):
        model.check_input(images)
    if hasattr(model, "class_index"):
        c = model.class_index(cls)
        name = model.class_names[c]
    else:
        if not isinstance(cls, int):
            raise XaiError("a class name needs a model entry; give a class index for a bare module")
        c, name = cls, str(cls)
    if marker is not None and tuple(marker.shape) != tuple(images.shape[-2:]):
        raise XaiError(f"marker {marker.name!r} is {marker.shape[0]}x{marker.shape[1]} but the images are "
                       f"{images.shape[-2]}x{images.shape[-1]}")
    region = sm.check_region(marker.region if region is None else region, tuple(images.shape[-2:])).cpu()
    images, labels = images.cpu(), labels.cpu()
    own, others = labels == c, labels != c
    if not own.any():
        raise XaiError(f"no image of class {name!r} among the {len(labels)} given")

    clean_pred = _predict(module, images, batch_size)
    clean_hit = (clean_pred[own] == c).float().mean()
    report = ShortcutReport(
        model=getattr(model, "name", type(module).__name__), class_index=c, class_name=name,
        candidate=marker.name if marker is not None else "region", relies=False, rule="", reasons=[],
        area_share=sm.area_share(region), accuracy=float((clean_pred == labels).float().mean()),
        class_accuracy=float(clean_hit))
    carrying = images[own]
    if marker is not None:
        marked = marker.apply(images)
        marked_pred = _predict(module, marked, batch_size)
        eligible = others & (clean_pred != c)
        report.flip_rate = float((marked_pred[eligible] == c).float().mean()) if eligible.any() else None
        marked_hit = (marked_pred[own] == c).float().mean()
        report.removal_drop = float(marked_hit - clean_hit)
        report.marked_accuracy = float((marked_pred == labels).float().mean())
        report.class_marked_accuracy = float(marked_hit)
        carrying = marked[own]
        report.images.update(flip=int(eligible.sum()), class_images=int(own.sum()))
    else:
        occluded = _predict(module, fill_region(carrying, region), batch_size)
        report.occlusion_drop = float(clean_hit - (occluded == c).float().mean())
        report.images["occlusion"] = len(carrying)

    # Explain cls on images that carry the candidate: marked images of every class (the flip setting),
    # or the class's own images when only a region is given.
    pool = marked if marker is not None else carrying
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(pool), generator=gen)[:attribution_images]
    x = pool[pick]
    for method, options in (DEFAULT_METHODS if methods is None else methods).items():
        opts = dict(options)
        if layer is not None and method in ("grad_cam", "grad_cam_pp", "layer_cam", "score_cam"):
            opts.setdefault("layer", layer)
        try:
            attr = attribute(method, model, x, c, **opts)
        except NotApplicableError as e:  # a method not applicable to this model is reported, not fatal
            report.attribution[method] = {"error": str(e)}
            continue
        report.attribution[method] = sm.summarize(sm.region_mass(attr, region), region)
    report.images["attribution"] = len(x)

    conc = [v["concentration"] for v in report.attribution.values() if "concentration" in v]
    report.attribution_agrees = (sum(v >= min_concentration for v in conc) * 2 >= len(conc)) if conc else None
    effects = {"flip rate": report.flip_rate, "removal drop": report.removal_drop,
               "occlusion drop": report.occlusion_drop}
    report.relies = bool(report.effect >= min_effect)
    report.rule = (f"relies if max(flip rate, removal drop, occlusion drop) >= {min_effect:g}; attribution "
                   f"corroborates if half the methods concentrate >= {min_concentration:g}x the area share")
    report.reasons = [f"{k} {v:.2f} {'>=' if v >= min_effect else '<'} {min_effect:g}"
                      for k, v in effects.items() if v is not None]
    report.reasons += [f"{m}: {v['mass']:.1%} of |attribution| on {report.area_share:.1%} of the image "
                       f"({v['concentration']:.1f}x)" for m, v in report.attribution.items() if "mass" in v
                       and v["mass"] == v["mass"]]
    return report
