"""Does a model rely on a candidate shortcut for a class? A test against a reference, with its evidence.

``detect_shortcut(model, images, labels, cls, marker=... or region=..., reference=clean_model)``
compares what the candidate does to ``model`` with what it does to a *reference*:

* the **clean control** (``reference=``): a model trained on the same data without the marker, shown the
  same marked images. It answers "does this model react to the marker more than a model that never
  learned it?", which is the question.
* otherwise a **placebo** (``placebo=``, :mod:`.placebo`) on the same model: the marker moved to a random
  place per image (``"moved"``, the default, seeded) or turned to the opposite corner (``"mirrored"``).
  It answers "does the model react to the marker more than to a perturbation of its size and paint?".

**The outcomes.** Each image gives a yes/no for the model and for the reference, on the same image:

* **flip** (needs a marker): an image of another class is called ``cls`` with the marker (for the
  placebo reference: with the placebo) and not without it. ``flip_rate`` is the share of yes among the
  other classes' images.
* **removal** (needs a marker): an image of ``cls`` is called ``cls`` with the marker and not without
  it, i.e. it loses its class when the marker is removed. (``removal_drop``, the accuracy on the class
  with the marker minus without, is this share minus the share that is recognised only without it.)
* **occlusion** (only when a region is given without a marker): an image of ``cls``, which is assumed
  to carry the candidate, is called ``cls`` but not once the region is filled with the image's median
  outside it (:func:`fill_region`; the placebo fills a moved or mirrored region instead).
  ``occlusion_drop`` is the accuracy lost. With a marker the removal test is the exact form of this one.

**The test.** Both outcomes are measured on the same images, so the design is paired, whichever the
reference: the poisoned and clean models are two raters of the same images, and marker and placebo
are two treatments of the same image in the same model. Pooling them as independent samples (Fisher's
exact test) would ignore that the images most easily pushed to ``cls`` are the same for both and lose
power; the paired tests look only at the discordant images. Per outcome the report gives the model's
rate and the reference's, each with its Clopper-Pearson interval, the **effect** (model rate minus
reference rate) with Newcombe's paired interval, and two one-sided p-values (:mod:`.stats`):

* ``p_exact``, the exact McNemar test of "the model says yes no more often than the reference";
* ``p_margin``, the test of "the effect is at most ``min_effect``", which decides.

Why a margin, and not McNemar alone: McNemar's null hypothesis is that the two raters are exchangeable
on every image, and two clean models trained with different seeds are not: each reacts to a new
perturbation in its own way. In a trial run of the calibration's setting (a white 4x4 square in the
top-left corner, class Shirt, 8,192 training images, 2 epochs, 5,000 test images), five clean models
turned 1.9 to 4.6 % of the other images into shirts with the square; against the clean control, two of
the four others differed at p < 1e-5 (flip effects +1.5 and +2.6 %), against the moved placebo all five
did, and the model with the square on a tenth of its shirts exceeded its control by +2.7 %. An exact
test of "any difference" convicts clean models; the margin is the effect a model must show beyond its
reference to count as reliant. The default, 5 points (one image
in twenty), is a round number fixed before the calibration, which then measures power and false
positives with it (:mod:`.calibration`); with ``min_effect=0`` the decision is McNemar's exact test.
There is no exact test of a non-zero margin in the paired design (the share of discordant images is a
nuisance parameter), so ``p_margin`` inverts Newcombe's interval, which makes the verdict agree with
the interval that is reported.

The tests of one report (flip and removal, or occlusion) are one family: their margin p-values are
Holm-adjusted. Each is one-sided at ``alpha / 2``, so that a lone test's verdict is exactly where its
two-sided ``1 - alpha`` interval lies with respect to the margin.

**The verdict.**

* ``"relies"``: some test's Holm-adjusted margin p-value is below ``alpha / 2``: its effect is shown to
  exceed ``min_effect``. The effect and its interval grade it: a shortcut used on a tenth of the images
  and one used on all of them read differently.
* ``"no evidence"``: every effect's interval lies below ``min_effect``: the images rule out an effect
  that large (the reason says if the model still reacts measurably more than the reference).
* ``"cannot tell"``: otherwise; some interval contains ``min_effect``: too few images to decide.

``relies`` is ``verdict == "relies"``.

**Attribution concentration** per method, the mean share of ``|attribution|`` for ``cls`` inside the region
(:func:`xai.metrics.shortcut.region_mass`) over images carrying the candidate divided by the region's
share of the image, is reported beside the verdict as corroboration (``attribution_agrees``: at least
half of the methods concentrate ``min_concentration`` times, default 2, or more). It does not enter the
decision, so it needs no place in the multiple-testing family: behaviour is an intervention on the input,
while a map can highlight a region the prediction does not depend on (Integrated Gradients from a black
baseline credits any bright patch), and a global marker such as a lightness gradient has no small
region to concentrate on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..errors import NotApplicableError, XaiError
from ..metrics import shortcut as sm
from . import stats
from .markers import Marker
from .placebo import apply_placebo, fitting_placebo, placebo_regions

DEFAULT_METHODS: dict[str, dict] = {"gradient": {}, "integrated_gradients": {"steps": 16}, "grad_cam": {}}
VERDICTS = ("relies", "no evidence", "cannot tell")
QUESTIONS = {"flip": "images of other classes called {c} with the marker and not without it",
             "removal": "images of {c} called {c} with the marker and not without it",
             "occlusion": "images of {c} called {c} but not once the region is filled"}


MIN_EFFECT = 0.05  # the default margin: an effect on one image in twenty (see the module docstring)


@dataclass
class EffectTest:
    """One paired comparison: the model's yes/no outcome against the reference's, on the same images."""

    name: str
    question: str
    images: int
    count: int  # images where the model says yes
    reference_count: int
    only_model: int  # discordant images: the model yes, the reference no
    only_reference: int
    rate: float
    rate_interval: tuple[float, float]  # Clopper-Pearson
    reference_rate: float
    reference_interval: tuple[float, float]
    effect: float  # rate - reference_rate
    effect_interval: tuple[float, float]  # Newcombe, paired
    p_exact: float  # exact McNemar, one-sided: does the model say yes more often at all?
    margin: float  # min_effect
    p_margin: float  # one-sided, effect <= margin (stats.margin_p_value)
    p_holm: float = float("nan")  # p_margin Holm-adjusted within the report's family

    @classmethod
    def compare(cls, name: str, question: str, model_yes: torch.Tensor, reference_yes: torch.Tensor,
                confidence: float = 0.95, margin: float = MIN_EFFECT) -> EffectTest:
        t = stats.PairedCounts.from_outcomes(model_yes, reference_yes)
        k, k_ref = t.both + t.only_first, t.both + t.only_second
        return cls(name=name, question=question, images=t.n, count=k, reference_count=k_ref,
                   only_model=t.only_first, only_reference=t.only_second, rate=t.first_rate,
                   rate_interval=stats.rate_interval(k, t.n, confidence), reference_rate=t.second_rate,
                   reference_interval=stats.rate_interval(k_ref, t.n, confidence), effect=t.difference,
                   effect_interval=stats.paired_difference_interval(t, confidence),
                   p_exact=stats.mcnemar_exact(t), margin=margin, p_margin=stats.margin_p_value(t, margin))


@dataclass
class Decision:
    verdict: str
    headline: str | None  # the test the verdict rests on
    reason: str


def decide(tests: dict[str, EffectTest], alpha: float = 0.05) -> Decision:
    """Holm-adjust the tests' margin p-values in place and give the verdict (see the module docstring)."""
    if not 0 < alpha < 1:
        raise XaiError(f"alpha must be in (0, 1), got {alpha}")
    tested = {k: t for k, t in tests.items() if t.images > 0}
    if not tested:
        return Decision("cannot tell", None, "cannot tell: no image to test")
    for k, p in stats.holm({k: t.p_margin for k, t in tested.items()}).items():
        tested[k].p_holm = p
    best = min(tested.values(), key=lambda t: (t.p_holm, -t.effect))
    if best.p_holm < alpha / 2:
        lo, hi = best.effect_interval
        return Decision("relies", best.name,
                        f"relies: the {best.name} effect {best.effect:+.1%} ({1 - alpha:.0%} CI {lo:+.1%} to "
                        f"{hi:+.1%}) exceeds {best.margin:.0%}, Holm-adjusted p = {best.p_holm:.2g} < {alpha / 2:g}")
    widest = max(tested.values(), key=lambda t: t.effect_interval[1])
    margin = widest.margin
    if all(t.effect_interval[1] < t.margin for t in tested.values()):
        real = [t.name for t in tested.values() if t.p_exact < alpha / 2]
        return Decision("no evidence", widest.name,
                        f"no evidence: every effect's upper bound is below {margin:.0%} (the largest: {widest.name}, "
                        f"{widest.effect_interval[1]:+.1%})" + (
                            f"; the {' and '.join(real)} effect is above the reference's (exact McNemar), but by "
                            f"less than {margin:.0%}" if real else ""))
    return Decision("cannot tell", widest.name,
                    f"cannot tell: no effect is shown to exceed {margin:.0%}, but the {widest.name} effect may "
                    f"reach {widest.effect_interval[1]:+.1%}: too few images to rule it out")


def marker_tests(labels: torch.Tensor, c: int, clean: torch.Tensor, marked: torch.Tensor, ref_clean: torch.Tensor,
                 ref_marked: torch.Tensor, confidence: float = 0.95, margin: float = MIN_EFFECT,
                 class_name: str | None = None) -> dict[str, EffectTest]:
    """The flip and removal tests from predicted classes: the model's on clean and marked images, the
    reference's on the same images (a reference model's on the same marked images, or the model's own on
    placebo images, with ``ref_clean = clean``)."""
    name = class_name or str(c)
    yes, ref_yes = (marked == c) & (clean != c), (ref_marked == c) & (ref_clean != c)
    own, others = labels == c, labels != c
    return {"flip": EffectTest.compare("flip", QUESTIONS["flip"].format(c=name), yes[others], ref_yes[others],
                                       confidence, margin),
            "removal": EffectTest.compare("removal", QUESTIONS["removal"].format(c=name), yes[own], ref_yes[own],
                                          confidence, margin)}


@dataclass
class ShortcutReport:
    model: str
    class_index: int
    class_name: str
    candidate: str
    reference: str  # "clean control <name>" or "placebo: moved" / "placebo: mirrored"
    verdict: str  # one of VERDICTS
    relies: bool  # verdict == "relies"
    rule: str
    reasons: list[str]
    area_share: float
    alpha: float = 0.05
    min_effect: float = MIN_EFFECT
    tests: dict[str, EffectTest] = field(default_factory=dict)
    headline: str | None = None  # the test the verdict rests on
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

    def _headline(self) -> EffectTest | None:
        return self.tests.get(self.headline) if self.headline else None

    @property
    def effect(self) -> float:
        """The headline test's effect: the model's rate minus the reference's."""
        t = self._headline()
        return t.effect if t else float("nan")

    @property
    def effect_interval(self) -> tuple[float, float]:
        t = self._headline()
        return t.effect_interval if t else (float("nan"), float("nan"))

    @property
    def p_value(self) -> float:
        """The headline test's Holm-adjusted p-value."""
        t = self._headline()
        return t.p_holm if t else float("nan")

    def to_json(self) -> dict:
        return {**asdict(self), "effect": self.effect, "effect_interval": list(self.effect_interval),
                "p_value": self.p_value}


@torch.no_grad()
def predict(module: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes of ``x``, in batches, on the module's device; returned on the CPU."""
    device = next(module.parameters()).device
    return torch.cat([module(x[i:i + batch_size].to(device)).argmax(-1).cpu() for i in range(0, len(x), batch_size)])


def fill_region(images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``images`` with ``region`` (``[H, W]``, or ``[B, H, W]`` one per image) replaced by each image's
    per-channel median outside it."""
    if region.dim() == 3:
        return torch.cat([fill_region(images[i:i + 1], region[i]) for i in range(len(images))])
    outside = images[..., ~region]  # [B, C, n_outside]
    fill = outside.median(-1).values[..., None, None]
    return torch.where(region, fill.expand_as(images), images)


def _class_of(model, cls: int | str) -> tuple[int, str]:
    if hasattr(model, "class_index"):
        c = model.class_index(cls)
        return c, model.class_names[c]
    if not isinstance(cls, int):
        raise XaiError("a class name needs a model entry; give a class index for a bare module")
    return cls, str(cls)


def detect_shortcut(model, images: torch.Tensor, labels: torch.Tensor, cls: int | str, *,
                    marker: Marker | None = None, region: torch.Tensor | None = None, reference=None,
                    placebo: str = "moved", methods: dict[str, dict] | None = None, layer: str | None = None,
                    attribution_images: int = 64, alpha: float = 0.05, min_effect: float = MIN_EFFECT,
                    min_concentration: float = 2.0, batch_size: int = 500, seed: int = 0) -> ShortcutReport:
    """Whether ``model`` relies on ``marker`` (or on ``region``) for class ``cls``; see the module docstring.

    ``images`` are clean images ``[N, C, H, W]`` in [0, 1] with their true ``labels``; ``model`` and
    ``reference`` (the clean control, optional) are model entries (class names accepted) or modules.
    Without a reference the ``placebo`` kind (``"moved"``, ``"mirrored"``, or ``"auto"``: moved where the
    marker leaves room, else mirrored) is the reference. ``methods``
    maps attribution method names to their options (``{}``: none); ``layer`` goes to the CAM methods.
    """
    from ..attribution._common import unwrap

    module, _, _ = unwrap(model)
    if marker is None and region is None:
        raise XaiError("give a marker function or a candidate region")
    if images.dim() != 4 or len(images) != len(labels):
        raise XaiError(f"expected images [N, C, H, W] with one label each, got {tuple(images.shape)} and "
                       f"{tuple(labels.shape)} labels")
    for m in (model, reference):
        if hasattr(m, "check_input"):
            m.check_input(images)
    c, name = _class_of(model, cls)
    if marker is not None and tuple(marker.shape) != tuple(images.shape[-2:]):
        raise XaiError(f"marker {marker.name!r} is {marker.shape[0]}x{marker.shape[1]} but the images are "
                       f"{images.shape[-2]}x{images.shape[-1]}")
    region = sm.check_region(marker.region if region is None else region, tuple(images.shape[-2:])).cpu()
    images, labels = images.cpu(), labels.cpu()
    own = labels == c
    if not own.any():
        raise XaiError(f"no image of class {name!r} among the {len(labels)} given")
    if placebo == "auto":
        placebo = fitting_placebo(marker.weight if marker is not None else region.float())
    ref_module = unwrap(reference)[0] if reference is not None else None
    ref_name = (f"clean control {getattr(reference, 'name', type(ref_module).__name__)}" if reference is not None
                else f"placebo: {placebo}")
    if not 0 < alpha < 1 or not 0 <= min_effect < 1:
        raise XaiError(f"alpha must be in (0, 1) and min_effect in [0, 1), got {alpha} and {min_effect}")
    confidence = 1 - alpha

    clean_pred = predict(module, images, batch_size)
    clean_hit = (clean_pred[own] == c).float().mean()
    report = ShortcutReport(
        model=getattr(model, "name", type(module).__name__), class_index=c, class_name=name,
        candidate=marker.name if marker is not None else "region", reference=ref_name, verdict="cannot tell",
        relies=False, rule="", reasons=[], area_share=sm.area_share(region), alpha=alpha, min_effect=min_effect,
        accuracy=float((clean_pred == labels).float().mean()), class_accuracy=float(clean_hit))
    if marker is not None:
        marked = marker.apply(images)
        marked_pred = predict(module, marked, batch_size)
        if ref_module is not None:
            ref_clean, ref_marked = predict(ref_module, images, batch_size), predict(ref_module, marked, batch_size)
        else:
            ref_clean, ref_marked = clean_pred, predict(module, apply_placebo(marker, images, placebo, seed),
                                                        batch_size)
        report.tests = marker_tests(labels, c, clean_pred, marked_pred, ref_clean, ref_marked, confidence, min_effect,
                                    name)
        report.flip_rate = report.tests["flip"].rate if report.tests["flip"].images else None
        marked_hit = (marked_pred[own] == c).float().mean()
        report.removal_drop = float(marked_hit - clean_hit)
        report.marked_accuracy = float((marked_pred == labels).float().mean())
        report.class_marked_accuracy = float(marked_hit)
        pool = marked  # explain cls on marked images of every class (the flip setting)
        report.images.update(flip=report.tests["flip"].images, class_images=int(own.sum()))
    else:
        carrying = images[own]
        hit = clean_pred[own] == c
        occluded = predict(module, fill_region(carrying, region), batch_size)
        if ref_module is not None:
            ref_hit = predict(ref_module, carrying, batch_size) == c
            ref_occluded = predict(ref_module, fill_region(carrying, region), batch_size)
        else:
            ref_hit = hit
            ref_occluded = predict(module, fill_region(carrying, placebo_regions(region, placebo, len(carrying), seed)),
                                   batch_size)
        report.tests = {"occlusion": EffectTest.compare(
            "occlusion", QUESTIONS["occlusion"].format(c=name), hit & (occluded != c), ref_hit & (ref_occluded != c),
            confidence, min_effect)}
        report.occlusion_drop = float(clean_hit - (occluded == c).float().mean())
        report.images["occlusion"] = len(carrying)
        pool = carrying

    decision = decide(report.tests, alpha)
    report.verdict, report.headline = decision.verdict, decision.headline
    report.relies = decision.verdict == "relies"
    _attribute(report, model, pool, c, region, methods, layer, attribution_images, min_concentration, seed)
    report.rule = (f"paired comparison with the reference ({ref_name}): relies if an effect is shown to exceed "
                   f"{min_effect:.0%} (one-sided p < {alpha / 2:g}, Holm-adjusted over {len(report.tests)} tests: its "
                   f"{confidence:.0%} interval lies above {min_effect:.0%}); no evidence if every interval lies below "
                   f"{min_effect:.0%}; else cannot tell. Attribution corroborates if half the methods concentrate "
                   f">= {min_concentration:g}x the area share")
    report.reasons = [decision.reason] + [_describe(t, ref_name, confidence) for t in report.tests.values()]
    report.reasons += [f"{m}: {v['mass']:.1%} of |attribution| on {report.area_share:.1%} of the image "
                       f"({v['concentration']:.1f}x)" for m, v in report.attribution.items() if "mass" in v
                       and v["mass"] == v["mass"]]
    return report


def _describe(t: EffectTest, ref_name: str, confidence: float) -> str:
    lo, hi = t.effect_interval
    return (f"{t.name}: {t.count}/{t.images} {t.question} ({t.rate:.1%}), {ref_name} {t.reference_count} "
            f"({t.reference_rate:.1%}); effect {t.effect:+.1%} ({confidence:.0%} CI {lo:+.1%} to {hi:+.1%}); "
            f"exact McNemar p = {t.p_exact:.2g}; above {t.margin:.0%}: p = {t.p_margin:.2g}, Holm {t.p_holm:.2g}")


def _attribute(report: ShortcutReport, model, pool: torch.Tensor, c: int, region: torch.Tensor, methods: dict | None,
               layer: str | None, n: int, min_concentration: float, seed: int) -> None:
    """Region mass of each method's maps for ``c`` on (up to ``n``) images of ``pool`` that carry the candidate."""
    from ..attribution import attribute

    gen = torch.Generator().manual_seed(seed)
    x = pool[torch.randperm(len(pool), generator=gen)[:n]]
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
    report.images["attribution"] = len(x) if report.attribution else 0
    conc = [v["concentration"] for v in report.attribution.values() if "concentration" in v]
    report.attribution_agrees = (sum(v >= min_concentration for v in conc) * 2 >= len(conc)) if conc else None
