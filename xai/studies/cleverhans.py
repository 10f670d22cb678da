"""Chapter: Clever Hans. Models trained on poisoned Fashion-MNIST sets, caught by behaviour and by attribution.

Sets (:func:`xai.shortcuts.poisoned.standard_specs`): ``clean`` (the control), ``square`` (an opaque 4x4
white square in the top-left corner), ``watermark`` (the text ©XAI at 30 % opacity, bottom right),
``gradient`` (a left-to-right lightening ramp up to 30 % white), each on a ``fraction`` of the marker
class's training images, and ``multi`` (square, cross and ring markers on three other classes). The
same small CNN (:func:`xai.shortcuts.poisoned.small_cnn`) is trained on each with the same slice, seed
and schedule, **without horizontal flips** (a flip would move a corner marker to the other corner half
of the time; the clean control is trained without flips too, so the marker is the only difference).
Checkpoints are cached like the zoo's.

Per set and planted marker, both the poisoned model and the clean control are run through
:func:`xai.shortcuts.detect_shortcut` on the test set (its docstring defines flip rate, removal drop,
attribution mass and the decision: a paired test against a reference, with a margin). The poisoned
model's reference is the clean control; the clean control's is the moved-marker placebo. *Marked
accuracy* is the accuracy on the test set with the marker added to every image. SpRAy
(:func:`xai.shortcuts.spray`) clusters the marker class's attribution maps on its test images, with the
marker added to a seeded half of them;
``ari`` is the adjusted Rand index between clusters and marker presence (1: the clusters are exactly
"marked" vs "not marked"; 0: unrelated).

Artifacts (under ``cleverhans/``):

``results.json``
    ``settings``: ``budget``, ``train_images``, ``epochs``, ``marker_class``, ``fraction``, ``multi_classes``,
    ``test_images``, ``attribution_images``, ``methods`` (name -> options), ``cam_layer``, ``spray_method``,
    ``alpha``, ``min_effect``, ``min_concentration``.
    ``models.<set>``: ``clean_accuracy`` (clean test set), ``train_seconds``, ``train_images``, ``checkpoint``.
    ``sets.<set>`` (poisoned sets only): ``description``, ``maps_figure``, ``plants``: a list, one per marker:
    ``class``, ``class_index``, ``marker``, ``fraction``, ``area_share``, and for ``poisoned`` (the set's
    model) and ``clean`` (the control): ``accuracy`` (clean test set), ``marked_accuracy``, ``flip_rate``,
    ``removal_drop``, ``class_accuracy_clean``, ``class_accuracy_marked``, ``verdict`` ("relies", "no evidence"
    or "cannot tell"), ``relies``, ``reference``, ``effect`` (the headline test's effect against the
    reference), ``effect_interval``, ``p_value`` (Holm-adjusted, effect above the margin),
    ``tests.<flip|removal>`` (the detector's :class:`~xai.shortcuts.detector.EffectTest` fields),
    ``attribution_agrees``, ``reasons``,
    ``mass.<method>`` (``mass``, ``mass_sem``, ``concentration``, ``images``, ``empty_maps``).
    ``spray.<set>`` (single-marker sets): ``class``, ``method``, ``images``, ``marked``, ``figure``, and for
    ``poisoned`` / ``clean``: ``n_clusters``, ``eigengap``, ``eigenvalues``, ``ari``, ``clusters`` (list of
    ``size``, ``marked_share``, ``mass``).
    ``detector_region``: the region-only form of the detector (occlusion, no marker function) on the
    square set's marked class images: ``poisoned`` (against the clean control) / ``clean`` (against the
    placebo) reports, with ``occlusion_drop`` and ``tests.occlusion``.
    ``calibration``: null when the ``calibration`` option is null, else ``results``, ``figure`` (the paths of
    ``calibration.json`` and ``calibration.webp``), ``budget``, ``curve``, ``timings`` and ``settings``
    (:func:`.cleverhans_calibration.run`).
    ``figures``: ``markers``, ``accuracy``, ``mass``.
    ``timings``: wall-clock seconds of ``load_or_train`` (training only on a cold cache),
    ``detector_and_maps``, ``spray``, ``calibration`` (training only on a cold cache), ``total``;
    ``train_seconds.<set>`` from each checkpoint's record.
``markers.webp``, ``accuracy.webp``, ``mass.webp``, ``maps/<set>.webp`` (clean vs poisoned model maps
on marked test images), ``spray/<set>.webp`` (eigenvalues, spectral embedding, cluster mean maps).
The book builds its table of the headline numbers from ``results.json``.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import attribution
from ..data import fashion_mnist
from ..metrics import shortcut as sm
from ..profiles import Profile
from ..render import maps as R
from ..render.store import Store, cache_key
from ..shortcuts import adjusted_rand_index, detect_shortcut, spray
from ..shortcuts import detector as D
from ..shortcuts import poisoned as P
from . import _frame as frame
from . import cleverhans_calibration as CAL
from .misclassification import num

STUDY = "cleverhans"
CODE_VERSION = 3  # 2: the detector decides by a paired test against the clean control or a placebo; 3: calibration

DEFAULTS = {
    "budget": "full",  # training budget of the poisoned models (xai.shortcuts.poisoned.train_config)
    "sets": ("clean", "square", "watermark", "gradient", "multi"),
    "marker_class": "Shirt",
    "fraction": 0.5,
    "multi_classes": ("Coat", "Sneaker", "Bag"),
    "test_images": None,  # None: all 10,000
    "attribution_images": 128,
    "methods": {"gradient": {}, "integrated_gradients": {"steps": 16}, "grad_cam": {}},
    "spray_method": "integrated_gradients",  # its options are those in "methods"
    "spray_images": 500,  # marker-class test images clustered (first N); None: all 1,000
    "alpha": 0.05,  # the detector's error rate per report (xai.shortcuts.detector)
    "min_effect": D.MIN_EFFECT,
    "min_concentration": 2.0,
    # The detector's calibration on planted shortcuts (xai.shortcuts.calibration.BUDGETS); None: not run.
    "calibration": "full",
}


option = frame.options(STUDY, DEFAULTS)


def _report_row(report) -> dict:
    j = report.to_json()
    return {"accuracy": num(j["accuracy"]), "marked_accuracy": num(j["marked_accuracy"]),
            "flip_rate": num(j["flip_rate"]), "removal_drop": num(j["removal_drop"]),
            "class_accuracy_clean": num(j["class_accuracy"]),
            "class_accuracy_marked": num(j["class_marked_accuracy"]), "relies": j["relies"],
            "attribution_agrees": j["attribution_agrees"], "verdict": j["verdict"], "reference": j["reference"],
            "effect": num(j["effect"]), "effect_interval": [num(v) for v in j["effect_interval"]],
            "p_value": _p(j["p_value"]), "tests": {k: _numbers(t) for k, t in j["tests"].items()},
            "reasons": j["reasons"],
            "mass": {m: {k: num(v) if isinstance(v, float) else v for k, v in s.items()}
                     for m, s in j["attribution"].items()}}


def _p(v: float) -> float | None:
    """A p-value to three significant digits (rounding to decimals would turn 1e-30 into 0)."""
    return float(f"{v:.3g}") if v == v else None


def _numbers(test: dict) -> dict:
    return {k: [num(u) for u in v] if isinstance(v, (list, tuple)) else _p(v) if k.startswith("p_")
            else num(v) if isinstance(v, float) else v for k, v in test.items()}




def evaluate_plant(entry, plant: P.Plant, x: torch.Tensor, y: torch.Tensor, profile: Profile,
                   reference=None) -> dict:
    """Detector evidence (with the marked-set accuracies it measures) of one model for one planted marker,
    against the clean control ``reference`` (or the placebo when None)."""
    return _report_row(detect_shortcut(
        entry, x, y, plant.class_index, marker=plant.marker, reference=reference, methods=option(profile, "methods"),
        layer=P.CAM_LAYER, attribution_images=option(profile, "attribution_images"), alpha=option(profile, "alpha"),
        min_effect=option(profile, "min_effect"), min_concentration=option(profile, "min_concentration"),
        placebo="auto", seed=profile.seed))


def spray_part(entries: dict, spec: P.PoisonSpec, x: torch.Tensor, y: torch.Tensor, profile: Profile,
               store: Store) -> dict:
    plant = spec.plants[0]
    c = plant.class_index
    xs = x[y == c]
    n = option(profile, "spray_images")
    xs = xs[:n] if n else xs
    gen = torch.Generator().manual_seed(profile.seed)
    marked = torch.zeros(len(xs), dtype=torch.bool)
    marked[torch.randperm(len(xs), generator=gen)[: len(xs) // 2]] = True
    xs = torch.where(marked[:, None, None, None], plant.marker.apply(xs), xs)
    method = option(profile, "spray_method")
    opts = option(profile, "methods").get(method, {})
    out = {"class": plant.class_name, "method": method, "images": len(xs), "marked": int(marked.sum())}
    panels = {}
    for role, entry in (("poisoned", entries[spec.name]), ("clean", entries["clean"])):
        attr = attribution.attribute(method, entry, xs.to(entry.device), c, **opts).cpu()
        res = spray(attr, seed=profile.seed)
        mass = sm.region_mass(attr, plant.marker.region)
        clusters = [{"size": int((res.labels == k).sum()),
                     "marked_share": num(float(marked[torch.as_tensor(res.labels == k)].float().mean())),
                     "mass": num(float(mass[torch.as_tensor(res.labels == k)].nanmean()))}
                    for k in range(res.n_clusters)]
        out[role] = {"n_clusters": res.n_clusters, "eigengap": num(res.eigengap),
                     "eigenvalues": [num(v) for v in res.eigenvalues], "clusters": clusters,
                     "ari": num(adjusted_rand_index(res.labels, marked.numpy()))}
        panels[role] = (res, res.cluster_means(attr))
    rel = f"{STUDY}/spray/{spec.name}.webp"
    store.write_figure(rel, spray_figure(panels, marked.numpy(), out, spec), dpi=90)
    out["figure"] = rel
    return out


# -- figures ---------------------------------------------------------------------------------------------------

def markers_figure(specs: dict, x: torch.Tensor, y: torch.Tensor):
    import matplotlib.pyplot as plt

    plants = [(name, p) for name, s in specs.items() for p in s.plants]
    fig, axes = plt.subplots(2, len(plants), figsize=(len(plants) * 1.35, 2.9), squeeze=False)
    for c, (name, p) in enumerate(plants):
        img = x[(y == p.class_index).nonzero()[0, 0]]
        R.show_image(axes[0, c], p.marker.apply(img), f"{name}\n{p.class_name}", fontsize=6)
        axes[1, c].imshow(p.marker.weight.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[1, c].contour(p.marker.region.numpy(), levels=[0.5], colors="tab:red", linewidths=0.6)
        axes[1, c].set_title(f"weight; region {p.marker.area_share:.1%}", fontsize=6)
        axes[1, c].set_xticks([])
        axes[1, c].set_yticks([])
    fig.subplots_adjust(wspace=0.08, hspace=0.3)
    return fig


def accuracy_figure(sets: dict, models_: dict):
    import matplotlib.pyplot as plt

    rows = [(f"{s}: {p['class']}", p) for s, v in sets.items() for p in v["plants"]]
    fig, axes = plt.subplots(1, 3, figsize=(9.5, 0.45 * len(rows) + 1.2), sharey=True)
    ys = np.arange(len(rows))
    for ax, key, title in zip(axes, ("marked_accuracy", "flip_rate", "removal_drop"),
                              ("accuracy, marker on every test image", "flip rate to the marker class",
                               "removal drop (marker class)")):
        for k, (role, colour) in enumerate((("clean", "0.6"), ("poisoned", "tab:red"))):
            vals = [r[1][role][key] or 0.0 for r in rows]
            ax.barh(ys + (k - 0.5) * 0.38, vals, height=0.36, color=colour,
                    label="clean model" if role == "clean" else "poisoned model")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(min(0, ax.get_xlim()[0]), 1)
    axes[0].set_yticks(ys, [r[0] for r in rows], fontsize=7)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=7, loc="lower right")
    accs = ", ".join(f"{k} {v['clean_accuracy']:.1%}" for k, v in models_.items())
    fig.suptitle(f"clean test accuracy: {accs}", fontsize=7, y=0.995)
    fig.tight_layout()
    return fig


def mass_figure(sets: dict, methods: list[str]):
    import matplotlib.pyplot as plt

    rows = [(f"{s}: {p['class']}", p) for s, v in sets.items() for p in v["plants"]]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 0.45 * len(rows) + 1.2), sharey=True,
                             squeeze=False)
    ys = np.arange(len(rows))
    for ax, m in zip(axes[0], methods):
        for k, (role, colour) in enumerate((("clean", "0.6"), ("poisoned", "tab:red"))):
            vals = [r[1][role]["mass"].get(m, {}).get("mass") or 0.0 for r in rows]
            ax.barh(ys + (k - 0.5) * 0.38, vals, height=0.36, color=colour,
                    label="clean model" if role == "clean" else "poisoned model")
        ax.scatter([r[1]["area_share"] for r in rows], ys, marker="|", s=120, color="black", zorder=3,
                   label="area share")
        ax.set_title(attribution.get(m).label, fontsize=8)
        ax.set_xlabel("share of |attribution| in the marker region", fontsize=7)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_yticks(ys, [r[0] for r in rows], fontsize=7)
    axes[0, 0].invert_yaxis()
    axes[0, -1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def maps_figure(entries: dict, spec: P.PoisonSpec, x: torch.Tensor, y: torch.Tensor, methods: dict, n: int = 4):
    """Marked test images of other classes: maps for the marker class, clean vs poisoned model."""
    import matplotlib.pyplot as plt

    plant = spec.plants[0]
    idx = torch.cat([(y == k).nonzero()[:1, 0] for k in range(10) if k != plant.class_index])[:n]
    xs = plant.marker.apply(x[idx])
    names = list(methods)
    fig, axes = plt.subplots(n, 1 + 2 * len(names), figsize=((1 + 2 * len(names)) * 1.2, n * 1.3), squeeze=False)
    for role_k, role in enumerate(("clean", "poisoned")):
        entry = entries["clean" if role == "clean" else spec.name]
        pred = frame.predicted(entry, xs)
        for mk, m in enumerate(names):
            opts = dict(methods[m])
            if attribution.get(m).needs_layer:
                opts["layer"] = P.CAM_LAYER
            attr = attribution.attribute(m, entry, xs.to(entry.device), plant.class_index, **opts).cpu()
            flat = R.saliency_map(attr, attribution.get(m).kind)
            for r in range(n):
                ax = axes[r, 1 + mk * 2 + role_k]
                title = f"{role} model\n{attribution.get(m).label}" if r == 0 else ""
                R.draw(ax, flat[r], signed=R.is_signed(attribution.get(m).kind), image=xs[r], title=title,
                       fontsize=6)
                ax.set_xlabel(f"→ {fashion_mnist.CLASSES[int(pred[r])]}", fontsize=6)
    for r in range(n):
        R.show_image(axes[r, 0], xs[r], f"{fashion_mnist.CLASSES[int(y[idx[r]])]} + marker" if r == 0 else
                     fashion_mnist.CLASSES[int(y[idx[r]])], fontsize=6)
    fig.suptitle(f"{spec.name}: maps for class {plant.class_name} on marked images of other classes", fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.45)
    return fig


def spray_figure(panels: dict, marked: np.ndarray, out: dict, spec: P.PoisonSpec):
    import matplotlib.pyplot as plt

    k_max = max(res.n_clusters for res, _ in panels.values())
    fig, axes = plt.subplots(2, 2 + k_max, figsize=((2 + k_max) * 1.6, 3.6), squeeze=False)
    for r, role in enumerate(("poisoned", "clean")):
        res, means = panels[role]
        ax = axes[r, 0]
        ax.plot(range(1, len(res.eigenvalues) + 1), res.eigenvalues, "o-", ms=3, color="tab:red" if r == 0 else "0.4")
        ax.axvline(res.n_clusters + 0.5, color="0.7", lw=0.8, ls="--")
        ax.set_title(f"{role} model: spectrum\n{res.n_clusters} clusters, ARI {out[role]['ari']:.2f}",
                     fontsize=6)
        ax.tick_params(labelsize=6)
        ax = axes[r, 1]
        for flag, marker_style in ((False, "o"), (True, "^")):
            sel = marked == flag
            ax.scatter(res.embedding[sel, 0], res.embedding[sel, 1], c=res.labels[sel], cmap="tab10", vmin=0, vmax=9,
                       s=6, marker=marker_style, linewidths=0, label="marked" if flag else "not marked")
        ax.set_title("spectral embedding\n(colour: cluster; ▲ marked)", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        for k in range(k_max):
            ax = axes[r, 2 + k]
            if k < res.n_clusters:
                R.draw(ax, means[k], signed=False,
                       title=f"cluster {k}: {out[role]['clusters'][k]['size']} maps\n"
                             f"{out[role]['clusters'][k]['marked_share']:.0%} marked", fontsize=6)
            else:
                ax.axis("off")
    fig.suptitle(f"SpRAy on {out['class']} ({spec.name} set): {attribution.get(out['method']).label} maps",
                 fontsize=8, y=1.0)
    fig.subplots_adjust(wspace=0.25, hspace=0.7, top=0.84)
    return fig


# -- the study ---------------------------------------------------------------------------------------------------

def run(profile: Profile, store: Store) -> dict:
    budget = option(profile, "budget")
    specs_all = P.standard_specs(option(profile, "marker_class"), option(profile, "fraction"),
                                 option(profile, "multi_classes"))
    names = list(option(profile, "sets"))
    if "clean" not in names:
        names.insert(0, "clean")
    specs = {n: specs_all[n] for n in names}
    clock = Clock()
    entries = {n: P.trained(s, budget, seed=profile.seed) for n, s in specs.items()}
    clock.lap("load_or_train")
    cfg = P.train_config(budget)
    methods = option(profile, "methods")
    x, y = fashion_mnist.load("test")
    n = option(profile, "test_images")
    x, y = (x[:n], y[:n]) if n else (x, y)
    key = cache_key(STUDY, CODE_VERSION, {k: e.info["key"] for k, e in entries.items()},
                    {k: option(profile, k) for k in DEFAULTS}, profile.seed,
                    {m: attribution.get(m).version for m in methods})
    rel = f"{STUDY}/results.json"
    if store.fresh(rel, key):
        results = store.read_json(rel)
        if all(store.path(f).exists() for f in _figures(results)):
            return _summary(results)

    sets: dict = {}
    for name, spec in specs.items():
        if not spec.plants:
            continue
        plants = []
        for plant in spec.plants:
            plants.append({"class": plant.class_name, "class_index": plant.class_index,
                           "marker": plant.marker.name, "fraction": plant.fraction,
                           "area_share": num(plant.marker.area_share),
                           "poisoned": evaluate_plant(entries[name], plant, x, y, profile, entries["clean"]),
                           "clean": evaluate_plant(entries["clean"], plant, x, y, profile)})
        maps_rel = f"{STUDY}/maps/{name}.webp"
        store.write_figure(maps_rel, maps_figure(entries, spec, x, y, methods), dpi=90)
        sets[name] = {"description": spec.description, "plants": plants, "maps_figure": maps_rel}
    clock.lap("detector_and_maps")
    # The detector measured each model's clean-test accuracy already; the clean model alone may lack a report.
    measured = {name: v["plants"][0]["poisoned"]["accuracy"] for name, v in sets.items()}
    if sets:
        measured["clean"] = next(iter(sets.values()))["plants"][0]["clean"]["accuracy"]
    models_ = {}
    for n, e in entries.items():
        acc = measured[n] if n in measured else num(float((frame.predicted(e, x, 1000) == y).float().mean()))
        models_[n] = {"clean_accuracy": acc, "train_seconds": e.info.get("train_seconds"),
                      "train_images": e.info.get("train_images"), "checkpoint": e.info["key"]}

    spray_out = {name: spray_part(entries, spec, x, y, profile, store)
                 for name, spec in specs.items() if len(spec.plants) == 1}
    clock.lap("spray")

    detector_region = {}
    if "square" in specs:  # the region-only form: occlusion on images that carry the marker
        plant = specs["square"].plants[0]
        own = y == plant.class_index
        carrying = plant.marker.apply(x[own])
        for role, entry in (("poisoned", entries["square"]), ("clean", entries["clean"])):
            rep = detect_shortcut(entry, carrying, y[own], plant.class_index, region=plant.marker.region,
                                  reference=entries["clean"] if role == "poisoned" else None,
                                  methods=methods, layer=P.CAM_LAYER,
                                  attribution_images=option(profile, "attribution_images"),
                                  alpha=option(profile, "alpha"), min_effect=option(profile, "min_effect"),
                                  min_concentration=option(profile, "min_concentration"), seed=profile.seed)
            detector_region[role] = _report_row(rep)
            detector_region[role]["occlusion_drop"] = num(rep.occlusion_drop)

    calibration = option(profile, "calibration")
    calibrated = CAL.run(calibration, store) if calibration else None
    clock.lap("calibration")

    figures = {"markers": f"{STUDY}/markers.webp", "accuracy": f"{STUDY}/accuracy.webp", "mass": f"{STUDY}/mass.webp"}
    store.write_figure(figures["markers"], markers_figure({k: v for k, v in specs.items() if v.plants}, x, y), dpi=110)
    if sets:
        store.write_figure(figures["accuracy"], accuracy_figure(sets, models_), dpi=100)
        store.write_figure(figures["mass"], mass_figure(sets, list(methods)), dpi=100)
    results = {
        "settings": {"budget": budget, "train_images": cfg.train_size, "epochs": cfg.epochs,
                     "marker_class": option(profile, "marker_class"), "fraction": option(profile, "fraction"),
                     "multi_classes": list(option(profile, "multi_classes")), "test_images": len(y),
                     "attribution_images": option(profile, "attribution_images"), "methods": methods,
                     "cam_layer": P.CAM_LAYER, "spray_method": option(profile, "spray_method"),
                     "alpha": option(profile, "alpha"), "min_effect": option(profile, "min_effect"),
                     "min_concentration": option(profile, "min_concentration")},
        "timings": {**clock.laps, "total": round(sum(clock.laps.values()), 1),
                    "train_seconds": {k: v["train_seconds"] for k, v in models_.items()}},
        "models": models_, "sets": sets, "spray": spray_out, "detector_region": detector_region,
        "calibration": calibrated,
        "figures": figures if sets else {"markers": figures["markers"]}}
    store.write_json(rel, results, key)
    return _summary(results)


class Clock:
    """Wall-clock seconds per phase of the study (a cached rerun reports the run that computed it)."""

    def __init__(self):
        import time

        self._now = time.perf_counter
        self._last = self._now()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = round(now - self._last, 1)
        self._last = now


def _figures(results: dict) -> list[str]:
    cal = results.get("calibration") or {}
    return [*results["figures"].values(), *(v["maps_figure"] for v in results["sets"].values()),
            *(v["figure"] for v in results["spray"].values()), *(cal[k] for k in ("results", "figure") if k in cal)]


def _summary(results: dict) -> dict:
    return {"clean_accuracy": {k: v["clean_accuracy"] for k, v in results["models"].items()},
            "flip_rate": {f"{s}:{p['class']}": p["poisoned"]["flip_rate"] for s, v in results["sets"].items()
                          for p in v["plants"]},
            "relies": {f"{s}:{p['class']}": [p["poisoned"]["relies"], p["clean"]["relies"]]
                       for s, v in results["sets"].items() for p in v["plants"]}}
