"""The one base every metric shares (after Quantus's ``quantus/metrics/base.py``), with a fixed life cycle:

1. **construct** with the metric's parameters, declared on its ``Params`` dataclass and checked there,
   once (an unknown name gets close-match suggestions, a bad value one clear line);
2. **call** ``metric(model, inputs, targets, attributions, explain=..., region=...)``: the base checks the
   model, images, targets and whatever else the metric declares it ``requires``, and moves them to the
   model's device (:meth:`Metric.preprocess`); the metric scores the batch (:meth:`Metric.evaluate_batch`)
   and returns one value per image, a CPU float tensor ``[B]`` (NaN where the score is undefined for
   that image, e.g. an all-zero map);
3. **aggregate** the per-image scores (:meth:`Metric.aggregate`): mean over defined images, its
   standard error, and how many were undefined.

Metrics that need explanations of other inputs, classes or models (robustness, randomisation) take an
*explanation function* ``explain(model, inputs, targets) -> attributions``; :func:`explainer` makes one
from a method of :data:`xai.attribution.METHODS`. Random metrics take a ``seed`` and draw from their own
generator, so a call repeated gives the same scores.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UnknownNameError, XaiError

FAMILIES = ("faithfulness", "robustness", "randomisation", "complexity", "localisation")
REQUIREMENTS = ("attributions", "explain", "region")

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class MetricParameterError(XaiError):
    """A metric parameter with a value the metric cannot use."""

    def __init__(self, metric: str, name: str, value: object, expected: str):
        self.metric, self.name, self.value, self.expected = metric, name, value, expected
        super().__init__(f"{metric}: {name} must be {expected}, got {value!r}")


class MissingInputError(XaiError):
    """A metric called without something it requires (attributions, an explanation function, a region)."""

    def __init__(self, metric: str, what: str):
        self.metric, self.what = metric, what
        hint = {"explain": " (e.g. explain=xai.metrics.explainer('gradient'))",
                "region": " (a boolean [H, W] or [B, H, W] mask of the known evidence)"}.get(what, "")
        super().__init__(f"{metric} needs {what}{hint}")


# -- declared parameters -----------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # None when the value is fine, else what was expected


def param(default: Any, check: Check | None = None) -> Any:
    """A ``Params`` field with its check (immutable defaults only: tuples, not lists)."""
    return field(default=default, metadata={"check": check})


def positive_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "a positive integer"


def non_negative_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "a non-negative integer"


def positive(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "a positive number"


def non_negative(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return None if ok else "a non-negative number"


def flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else "one of " + ", ".join(choices)
    return check


def fraction_tuple(v: Any) -> str | None:
    """A non-empty increasing tuple of numbers in (0, 1)."""
    ok = (isinstance(v, tuple) and len(v) > 0 and all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                                      and 0 < f < 1 for f in v)
          and all(a < b for a, b in zip(v, v[1:])))
    return None if ok else "a non-empty increasing tuple of fractions in (0, 1)"


def fraction(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1
    return None if ok else "a fraction in (0, 1)"


# -- what a metric evaluates ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    """A checked call: everything on the model's device, targets ``[B]`` long, regions ``[B, H, W]`` bool."""

    module: nn.Module | None
    x: torch.Tensor | None
    t: torch.Tensor | None
    attributions: torch.Tensor | None
    explain: Explain | None
    region: torch.Tensor | None

    @property
    def size(self) -> int:
        ref = self.x if self.x is not None else self.attributions
        return int(ref.shape[0])


class Metric(ABC):
    """Subclasses set the class attributes, declare ``Params`` and implement :meth:`evaluate_batch`."""

    name: ClassVar[str]
    label: ClassVar[str]  # display name
    family: ClassVar[str]  # see FAMILIES
    cite: ClassVar[str]  # BibTeX key in book/references.bib
    higher_is_better: ClassVar[bool]
    requires: ClassVar[tuple[str, ...]] = ("attributions",)  # of REQUIREMENTS
    needs_model: ClassVar[bool] = True  # False: a function of the attributions alone (model may be None)
    # Explains ``inputs`` with ``explain`` when no attributions are given (so "attributions" is then not
    # required): robustness and randomisation compare explanations of changed inputs with these.
    computes_attributions: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False  # draws random perturbations (from ``seed``)

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **params: Any):
        declared = {f.name: f for f in fields(self.Params)}
        for name in params:
            if name not in declared:
                raise UnknownNameError(f"parameter of {self.name}", name, declared)
        self.params = self.Params(**params)
        for f in declared.values():
            check = f.metadata.get("check")
            problem = check(getattr(self.params, f.name)) if check else None
            if problem:
                raise MetricParameterError(self.name, f.name, getattr(self.params, f.name), problem)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls.Params) if f.default is not MISSING}

    def __repr__(self) -> str:
        changed = {k: v for k, v in vars(self.params).items() if self.defaults().get(k) != v}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def __call__(self, model, inputs: torch.Tensor | None, targets, attributions: torch.Tensor | None = None, *,
                 explain: Explain | None = None, region: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image scores ``[B]`` (CPU, float32)."""
        batch = self.preprocess(model, inputs, targets, attributions, explain, region)
        scores = self.evaluate_batch(batch)
        return scores.detach().float().cpu()

    def preprocess(self, model, inputs, targets, attributions, explain, region) -> Batch:
        from ..attribution._common import prepare

        module = x = t = None
        if self.needs_model:
            if model is None:
                raise MissingInputError(self.name, "a model")
            if inputs is None or targets is None:
                raise MissingInputError(self.name, "inputs and targets")
            module, x, t = prepare(model, inputs, targets)
        elif inputs is not None:
            if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
                got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
                raise XaiError(f"{self.name}: inputs must be a batch of images [B, C, H, W], got {got}")
            x = inputs
        if "explain" in self.requires or (self.computes_attributions and attributions is None):
            if explain is None:
                raise MissingInputError(self.name, "explain")
            if not callable(explain):
                raise XaiError(f"{self.name}: explain must be a function (model, inputs, targets) -> attributions, "
                               f"got {type(explain).__name__}")
        if attributions is None and self.computes_attributions and module is not None:
            attributions = explain(module, x, t)
        a = None
        if attributions is not None:
            a = check_attributions(self.name, attributions, x)
            if module is not None:
                a = a.to(x.device)
        elif "attributions" in self.requires:
            raise MissingInputError(self.name, "attributions")
        r = None
        if "region" in self.requires:
            if region is None:
                raise MissingInputError(self.name, "region")
            from .shortcut import check_region

            ref = a if a is not None else x
            r = check_region(region, tuple(ref.shape[-2:]))
            if r.dim() == 2:
                r = r.expand(ref.shape[0], -1, -1)
            elif r.shape[0] != ref.shape[0]:
                raise XaiError(f"{self.name}: got {r.shape[0]} regions for a batch of {ref.shape[0]} images")
            r = r.to(ref.device)
        return Batch(module, x, t, a, explain, r)

    @abstractmethod
    def evaluate_batch(self, batch: Batch) -> torch.Tensor:
        """Scores ``[B]`` of one checked batch."""

    def curve(self, model, inputs: torch.Tensor | None, targets, attributions: torch.Tensor | None = None, *,
              explain: Explain | None = None, region: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image curves ``[B, K]`` (CPU, float32) for metrics whose score summarises one (ROAD over
        removal levels, sensitivity-n over subset sizes, randomisation over units)."""
        batch = self.preprocess(model, inputs, targets, attributions, explain, region)
        return self.evaluate_curve(batch).detach().float().cpu()

    def evaluate_curve(self, batch: Batch) -> torch.Tensor:
        raise XaiError(f"{self.name} has one score per image, not a curve")

    def aggregate(self, scores: torch.Tensor) -> dict:
        """Mean over images with a defined score, its standard error, and the count of undefined ones."""
        s = torch.as_tensor(scores).double().flatten()
        ok = s[~s.isnan()]
        n = int(ok.numel())
        return {"metric": self.name, "mean": float(ok.mean()) if n else math.nan,
                "sem": float(ok.std(unbiased=True) / n ** 0.5) if n > 1 else math.nan,
                "images": n, "undefined": int(s.isnan().sum()), "higher_is_better": self.higher_is_better}


def check_attributions(metric: str, attributions: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
    """Attributions ``[B, C, H, W]`` (``C`` = 1 or the images' channels) or maps ``[B, H, W]``, detached float32."""
    if not isinstance(attributions, torch.Tensor) or attributions.dim() not in (3, 4):
        got = tuple(attributions.shape) if isinstance(attributions, torch.Tensor) else type(attributions).__name__
        raise XaiError(f"{metric}: attributions must be [B, C, H, W] or maps [B, H, W], got {got}")
    a = attributions.detach().float()
    if x is not None:
        b, c, h, w = x.shape
        ok = a.shape[0] == b and tuple(a.shape[-2:]) == (h, w) and (a.dim() == 3 or a.shape[1] in (1, c))
        if not ok:
            raise XaiError(f"{metric}: attributions of shape {tuple(a.shape)} do not match images of shape "
                           f"{tuple(x.shape)}")
    if not torch.isfinite(a).all():
        raise XaiError(f"{metric}: attributions contain NaN or infinite values")
    return a


def pixel_maps(attributions: torch.Tensor) -> torch.Tensor:
    """One value per pixel ``[B, H, W]``: maps as given, attributions summed over channels (a pixel's
    signed total, what removing the pixel changes the score by to first order). Pass a 2-D map, e.g.
    :func:`xai.render.maps.saliency_map`, to reduce the channels another way."""
    return attributions if attributions.dim() == 3 else attributions.sum(1)


def full_attributions(attributions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Attributions broadcast to the images' shape (a map or a CAM counts for every channel of its pixel)."""
    a = attributions if attributions.dim() == 4 else attributions[:, None]
    return a.expand_as(x)


def explain_in_chunks(explain: Explain, module: nn.Module, x: torch.Tensor, t: torch.Tensor,
                      batch_size: int) -> torch.Tensor:
    """``explain`` over a long batch, ``batch_size`` images per call, as float32 on ``x``'s device."""
    parts = [explain(module, x[i:i + batch_size], t[i:i + batch_size]).detach().float().to(x.device)
             for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts)


@dataclass(frozen=True)
class Explainer:
    """``explain(model, inputs, targets)`` by a method of :data:`xai.attribution.METHODS` with fixed options."""

    method: str
    options: tuple[tuple[str, Any], ...] = ()

    def __call__(self, model, inputs: torch.Tensor, targets) -> torch.Tensor:
        from ..attribution import attribute

        return attribute(self.method, model, inputs, targets, **dict(self.options))

    @property
    def kind(self) -> str:
        from ..attribution import get

        return get(self.method).kind


def explainer(method: str, **options: Any) -> Explainer:
    """An explanation function for robustness and randomisation metrics; unknown methods are refused here."""
    from ..attribution import get

    get(method)
    return Explainer(method, tuple(sorted(options.items())))


def generator(seed: int) -> torch.Generator:
    """The CPU generator a metric draws from: draws are made on the CPU in a fixed order and then moved,
    so scores do not depend on the device or on ``internal_batch_size``."""
    return torch.Generator().manual_seed(seed)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis, in float64; NaN where either side is constant."""
    a, b = a.double(), b.double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp_min(torch.finfo(torch.float64).tiny),
                       torch.full_like(den, math.nan))
