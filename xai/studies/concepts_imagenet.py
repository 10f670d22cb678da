"""The concepts chapter's human concepts: TCAV on an ImageNet model with concepts made on this machine
(:mod:`xai.concepts.sources`): procedural textures (stripes, dots, checkerboards, zigzags at two
periods), flat colours, and crops of the manifest photos (fur, sky, water, grass, foliage, wood, a
flag), each tested for the classes of the profile's first ``imagenet_tcav_classes`` labelled photos at
the layers of interest at positions ``imagenet_tcav_layers``.

The manifest has one photo per class, so a class's images are ``imagenet_tcav_class_images`` random
views of its photo (:func:`xai.concepts.sources.photo_views`): a score says what moves the class on
that photo. Random sets are drawn from ``imagenet_tcav_random_images`` random crops of every manifest
photo. The CAVs are trained once (``tcav_runs`` runs, as the marker's test) and scored for every class;
the t-test against random-vs-random CAVs is Bonferroni-corrected over concepts x layers per class. A
crop concept cut from a class's own photo is marked ``circular`` for that class.

``results.json:imagenet``: ``model``, ``layers``, ``runs``, ``set_size``, ``random_images``,
``class_images``, ``concepts`` (list of ``name``, ``kind`` (texture | colour | crop), ``sources``
(photos, crops only)), ``classes`` (list of ``photo``, ``class``, ``name``,
``circular`` (concepts cut from this photo)), ``tests.<photo>.<layer>.<concept>`` (as the marker's:
``mean``, ``std``, ``p_value``, ``alpha``, ``significant``, ``reported``, ``scores``, ``null_mean``,
``accuracy``), ``significant`` (list of ``photo``, ``name``, ``layer``, ``concept``, ``mean``,
``p_value``, ``circular``), ``tested`` (count of tests), ``figure`` (the scores), ``examples_figure``
(three images of each concept), ``seconds``.
"""
from __future__ import annotations

import torch

from ..concepts import sources
from ..concepts import tcav as T
from ..data import images
from ..errors import XaiError
from ..profiles import Profile
from ..render.figures import concept_examples, tcav_grid
from .concepts_marker import _test_row

DEFAULTS = {
    "imagenet_tcav_classes": 6,
    "imagenet_tcav_layers": [2, 3, 4],  # on efficientnet_lite0: blocks.2 (28x28), blocks.4 (14x14), blocks.6 (7x7)
    "imagenet_tcav_concept_images": 30,
    "imagenet_tcav_random_images": 200,
    "imagenet_tcav_class_images": 24,
}


def _opt(profile: Profile, key: str):
    return profile.option("concepts", key, DEFAULTS[key])


def concept_sets(n: int, size: int, seed: int) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Every texture, colour and photo-crop concept: ``({name: images}, [{name, kind, sources}])``."""
    sets, meta = {}, []
    for name, imgs in sources.standard_textures(n, size, seed=seed).items():
        sets[name] = imgs
        meta.append({"name": name, "kind": "texture", "sources": []})
    for name, imgs in sources.standard_colours(n, size, seed=seed + 1000).items():
        sets[name] = imgs
        meta.append({"name": name, "kind": "colour", "sources": []})
    for k, name in enumerate(sources.PHOTO_CROPS):
        sets[name] = sources.photo_crops(name, n, size, seed=seed + 2000 + k)
        meta.append({"name": name, "kind": "crop", "sources": sources.crop_sources(name)})
    return sets, meta


def run(entry, photos: list[str], profile: Profile, jobs) -> dict:
    """The part, as one cached job of the concepts study (``jobs``: its :class:`~.concepts.Jobs`), for the
    classes of ``photos`` (labelled ones)."""
    positions = _opt(profile, "imagenet_tcav_layers")
    bad = [p for p in positions if not 0 <= p < len(entry.layers)]
    if bad:
        raise XaiError(f"imagenet_tcav_layers {bad} lie outside {entry.name}'s {len(entry.layers)} layers of interest")
    layers = [entry.layers[p] for p in positions]
    n, n_rand, n_cls = (_opt(profile, k) for k in ("imagenet_tcav_concept_images", "imagenet_tcav_random_images",
                                                     "imagenet_tcav_class_images"))
    runs, alpha = profile.option("concepts", "tcav_runs", 20), profile.option("concepts", "alpha", 0.05)
    size = entry.input_size[-1]

    def compute(out):
        sets, meta = concept_sets(n, size, profile.seed)
        randoms = sources.random_photo_crops(n_rand, size, seed=profile.seed + 3000)
        bank = T.train_cavs(entry.model, sets, randoms, layers, runs=runs, seed=profile.seed)
        classes, tests, significant = [], {}, []
        for pid in photos:
            label = images.photo(pid).label
            circular = [m["name"] for m in meta if pid in m["sources"]]
            views = sources.photo_views(pid, n_cls, size, seed=profile.seed + 4000)
            res = T.score(bank, entry.model, views, label, alpha=alpha)
            tests[pid] = {L: {} for L in layers}
            for t in res.tests:
                row = _test_row(t)
                tests[pid][t.layer][t.concept] = row
                if t.significant:
                    significant.append({"photo": pid, "name": entry.class_names[label], "layer": t.layer,
                                        "concept": t.concept, "mean": row["mean"], "p_value": row["p_value"],
                                        "circular": t.concept in circular})
            classes.append({"photo": pid, "class": label, "name": entry.class_names[label], "circular": circular})
        result = {"model": entry.name, "layers": layers, "runs": runs, "set_size": bank.set_size,
                  "random_images": n_rand, "class_images": n_cls, "concepts": meta, "classes": classes,
                  "tests": tests, "significant": significant,
                  "tested": sum(len(v) for per in tests.values() for v in per.values())}
        figure = "concepts/imagenet/scores.webp"
        out.write_figure(figure, tcav_grid(result))
        result["figure"] = figure
        result["examples_figure"] = "concepts/imagenet/examples.webp"
        out.write_figure(result["examples_figure"], concept_examples({m["name"]: sets[m["name"]][:3] for m in meta},
                                                                     {m["name"]: m["kind"] for m in meta}))
        return result

    spec = {"photos": [images.photo(p).sha256 for p in photos], "layers": layers, "n": n, "random": n_rand,
            "class_images": n_cls, "runs": runs, "alpha": alpha, "crops": sources.PHOTO_CROPS,
            "textures": sources.TEXTURES, "colours": sources.COLOURS}
    r = jobs.run("imagenet_tcav", spec, compute)
    return {k: v for k, v in r.items() if k != "cpu_seconds"}
