"""The concepts chapter's known truth: the Clever Hans square marker, as a concept of the poisoned model
and of its clean control (the Clever Hans study's checkpoints, :func:`xai.shortcuts.poisoned.trained`,
with its ``budget``, ``marker_class`` and ``fraction``: nothing is trained here on a warm cache).

* **TCAV** (:mod:`xai.concepts.tcav`) of the marker (``tcav_concept_images`` blank images carrying it)
  for the marker class, on ``tcav_class_images`` unmarked test images of the class, at every layer of
  the CNN, ``tcav_runs`` runs against random test images, the two-sided t-test against
  random-vs-random CAVs, Bonferroni over layers.
* **Random concepts**: ``random_sets`` fixed sets of random test images, each tested as a concept the
  same way. None is a concept; the share a naive reading would call one (a single run's score more
  than ``naive_margin`` from 0.5), the share with an uncorrected p < ``alpha``, and the share that
  passes the corrected test are what the test is for.
* **Localisation** of discovered concepts (:func:`xai.concepts.discovery.discover`, ``localisation_k``
  factors at the Grad-CAM layer) on ``localisation_images`` marked class images: the concept with the
  most relevance inside the marker, its relevance mass there against the marker's area share.
* **Dissection** (:func:`xai.concepts.dissection.dissect`) of every unit of every layer against the
  marker region over ``dissection_images`` marked test images; the poisoned model's top units by IoU
  are rendered (channel objective, 28 px, ``unit_steps`` steps).

``results.json:marker``: ``settings``; ``tcav.<poisoned|clean>``: ``layers`` (per layer: ``mean``,
``std``, ``p_value``, ``alpha``, ``significant``, ``reported``, ``scores``, ``null_mean``, ``accuracy``),
``best`` (the layer with the highest mean: ``layer``, ``mean``, ``p_value``, ``significant``);
``random_sets.<poisoned|clean>``: ``tests`` (sets x layers), ``naive_share``, ``uncorrected_share``,
``corrected_share``, ``naive_margin``; ``localisation.<role>``: ``concept``, ``relevance_mass``,
``relevance_concentration``, ``presence_mass``, ``importance``, ``area_share``, ``error``;
``dissection.<role>.<layer>``: ``units``, ``detectors``, ``top``; ``units`` (the rendered units:
``layer``, ``unit``, ``rank`` (by IoU within the layer), ``iou``, ``detector``, ``image``); ``figure`` (``localisation.webp``).
"""
from __future__ import annotations

import torch

from ..concepts import discovery, dissection, sources
from ..concepts import tcav as T
from ..data import fashion_mnist
from ..featvis import microscope as M
from ..profiles import Profile
from ..render.store import Store
from ..shortcuts import poisoned as P
from . import cleverhans as CH
from .featvis import png

ROOT = "concepts/marker"
DEFAULTS = {
    "tcav_runs": 20,
    "tcav_concept_images": 50,
    "tcav_class_images": 100,
    "tcav_random_images": 500,
    "random_sets": 10,
    "naive_margin": 0.2,
    "alpha": 0.05,
    "localisation_images": 100,
    "localisation_k": 6,
    "dissection_images": 500,
    "dissected_units": 4,  # top units per layer rendered
    "unit_steps": 64,
}


def _opt(profile: Profile, key: str):
    return profile.option("concepts", key, DEFAULTS[key])


def _p(v: float) -> float:
    return float(f"{v:.3g}")


def _test_row(t: T.ConceptTest) -> dict:
    return {"mean": round(t.mean, 4), "std": round(t.std, 4), "p_value": _p(t.p_value), "alpha": _p(t.alpha),
            "significant": t.significant, "reported": None if t.reported is None else round(t.reported, 4),
            "scores": [round(s, 4) for s in t.scores], "null_mean": round(sum(t.null_scores) / len(t.null_scores), 4),
            "accuracy": round(sum(t.accuracies) / len(t.accuracies), 4)}


def models(profile: Profile) -> tuple[dict, object]:
    """The square-marker model and its clean control (``{"poisoned", "clean"}``), and the marker's plant."""
    budget = CH.option(profile, "budget")
    spec_all = P.standard_specs(CH.option(profile, "marker_class"), CH.option(profile, "fraction"),
                                CH.option(profile, "multi_classes"))
    entries = {"poisoned": P.trained(spec_all["square"], budget, seed=profile.seed),
               "clean": P.trained(spec_all["clean"], budget, seed=profile.seed)}
    return entries, spec_all["square"].plants[0]


def run(profile: Profile, store: Store, jobs) -> dict:
    budget = CH.option(profile, "budget")
    entries, plant = models(profile)
    settings = {k: _opt(profile, k) for k in DEFAULTS}
    settings.update(budget=budget, marker=plant.marker.name, marker_class=plant.class_name,
                    class_index=plant.class_index, area_share=round(plant.marker.area_share, 6), layers=list(P.LAYERS))
    spec = {"checkpoints": {k: e.info["key"] for k, e in entries.items()}, "settings": settings}
    result = jobs.run("marker", spec, lambda out: _compute(entries, plant, profile, out))
    return {"settings": settings, **{k: v for k, v in result.items() if k not in ("seconds", "cpu_seconds")}}


def _compute(entries: dict, plant, profile: Profile, out) -> dict:
    x, y = fashion_mnist.load("test")
    cls = plant.class_index
    own = torch.nonzero(y == cls).flatten()
    others = torch.nonzero(y != cls).flatten()
    n_cls, n_rand = _opt(profile, "tcav_class_images"), _opt(profile, "tcav_random_images")
    n_con, runs, alpha = _opt(profile, "tcav_concept_images"), _opt(profile, "tcav_runs"), _opt(profile, "alpha")
    class_x = x[own[:n_cls]]
    random_x = x[-n_rand:]  # every class, disjoint from the class images' head of the test set
    pool = x[others[: _opt(profile, "random_sets") * n_con]]  # the fixed random "concepts", disjoint sets
    random_sets = {f"random-{i}": pool[i * n_con:(i + 1) * n_con] for i in range(_opt(profile, "random_sets"))}
    concept = {"marker": sources.marker_images(plant.marker, n_con)}
    tcav, rand = {}, {}
    for role, e in entries.items():
        res = T.tcav(e.model, class_x, cls, concept, random_x, P.LAYERS, runs=runs, alpha=alpha, seed=profile.seed)
        layers = {L: _test_row(res.get("marker", L)) for L in P.LAYERS}
        best = max(P.LAYERS, key=lambda L: layers[L]["mean"])
        tcav[role] = {"layers": layers, "best": {"layer": best, **{k: layers[best][k] for k in
                                                                    ("mean", "p_value", "significant")}}}
        rand[role] = _random_sets(e.model, class_x, cls, random_sets, random_x, runs, alpha, profile)
    marked = plant.marker.apply(x[own[:_opt(profile, "localisation_images")]])
    loc = {role: _localise(e, marked, plant, profile) for role, e in entries.items()}
    scan = plant.marker.apply(x[:_opt(profile, "dissection_images")])
    dis = {role: dissection.dissect(e.model, scan, plant.marker.region, P.LAYERS) for role, e in entries.items()}
    units = []
    top = _opt(profile, "dissected_units")
    for layer, d in dis["poisoned"].items():
        chosen = d.top(top)
        r = M.render_channels(entries["poisoned"].model, layer, [c for c, _ in chosen], size=28,
                              steps=_opt(profile, "unit_steps"), seed=profile.seed, channels_in=1, batch=None)
        for rank, ((c, iou), img) in enumerate(zip(chosen, r.images), 1):
            rel = f"{ROOT}/units/{layer}/c{c}.png"
            out.write_bytes(rel, png(img))
            units.append({"layer": layer, "unit": c, "rank": rank, "iou": round(iou, 4), "image": rel,
                          "detector": c in d.detectors})
    out.write_figure(f"{ROOT}/localisation.webp", _figure(loc, marked), dpi=100)
    return {"tcav": tcav, "random_sets": rand,
            "localisation": {k: v["row"] for k, v in loc.items()},
            "dissection": {role: {L: {"units": int(d.iou.numel()), "detectors": d.detectors,
                                      "top": d.to_json(top)["top"]} for L, d in ds.items()} for role, ds in dis.items()},
            "units": units, "figure": f"{ROOT}/localisation.webp",
            "images": len(units), "steps": _opt(profile, "unit_steps")}


def _random_sets(model, class_x, cls, random_sets, random_x, runs, alpha, profile) -> dict:
    res = T.tcav(model, class_x, cls, random_sets, random_x, P.LAYERS, runs=runs, alpha=alpha, seed=profile.seed + 1)
    margin = _opt(profile, "naive_margin")
    tests = [{"concept": t.concept, "layer": t.layer, "first_run": round(t.scores[0], 4), "mean": round(t.mean, 4),
              "p_value": _p(t.p_value), "significant": t.significant} for t in res.tests]
    n = len(tests)
    return {"tests": tests, "naive_margin": margin, "alpha": alpha, "corrected_alpha": _p(res.tests[0].alpha),
            "naive_share": round(sum(abs(t["first_run"] - 0.5) > margin for t in tests) / n, 4),
            "uncorrected_share": round(sum(t["p_value"] < alpha for t in tests) / n, 4),
            "corrected_share": round(sum(t["significant"] for t in tests) / n, 4), "n": n}


def _localise(entry, marked: torch.Tensor, plant, profile: Profile) -> dict:
    c = discovery.discover(entry.model, marked, P.CAM_LAYER, plant.class_index, k=_opt(profile, "localisation_k"),
                           seed=profile.seed)
    loc = discovery.localisation(c, plant.marker.region)
    g = max(range(c.k), key=lambda i: loc[i]["relevance_mass"])
    imp = c.importance()
    row = {"concept": g, "relevance_mass": round(loc[g]["relevance_mass"], 4),
           "relevance_concentration": round(loc[g]["relevance_concentration"], 4),
           "presence_mass": round(loc[g]["presence_mass"], 4), "importance": round(float(imp[g]), 4),
           "area_share": round(loc[g]["area_share"], 6), "error": round(c.error, 4), "k": c.k}
    return {"row": row, "maps": c.heatmaps(tuple(plant.marker.region.shape))[:, g]}


def _figure(loc: dict, marked: torch.Tensor):
    """Per model, marked images with the most marker-bound concept's presence map over them."""
    import matplotlib.pyplot as plt

    from ..render import maps as R

    n = min(4, marked.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.1), squeeze=False)
    for r, (role, v) in enumerate(loc.items()):
        for i in range(n):
            R.draw(axes[r, i], v["maps"][i].numpy(), signed=False, image=marked[i],
                   title=f"{role}: concept {v['row']['concept']}" if i == 0 else "")
    fig.tight_layout()
    return fig
