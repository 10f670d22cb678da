"""The feature-visualization study's sequences: the regularization ladder (each rung adds one ingredient
of the standard recipe), the images over optimization steps, and noise against a photo as the start.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import featvis, models
from ..data import images
from ..featvis import Penalties
from ..featvis import objectives as O
from ..featvis import param as P
from ..profiles import Profile
from ..render.store import Store
from ._frame import labelled_photos, model_id, photos_of
from .featvis_base import (LADDER_PENALTIES, ROOT, Jobs, _pngs, _rate, default_transforms, option, png,
                           probabilities, square_crop)

def _top1_rate(entry: models.ModelEntry, x: torch.Tensor, targets: Sequence[int]) -> float | None:
    top1 = probabilities(entry, x).argmax(-1)
    return _rate([int(t) == c for t, c in zip(top1, targets)])


def _target_p(entry: models.ModelEntry, x: torch.Tensor, targets: Sequence[int]) -> list[float]:
    p = probabilities(entry, x)
    return [round(float(p[k, t]), 4) for k, t in enumerate(targets)]


# -- (3) the regularization ladder and (6) logit vs softmax -------------------------------------------------
RUNGS = [
    # id, label, parameterization, transforms?, penalties, objective
    ("none", "none: raw pixels", "pixel", False, {}, "logit"),
    ("l2", "L2 penalty", "pixel", False, {"l2": LADDER_PENALTIES["l2"]}, "logit"),
    ("tv_blur", "total variation + blur", "pixel", False,
     {"tv": LADDER_PENALTIES["tv"], "blur": LADDER_PENALTIES["blur"]}, "logit"),
    ("transforms", "jitter + scale + rotate", "pixel", True, {}, "logit"),
    ("fft", "Fourier + colour decorrelation", "fft", False, {}, "logit"),
    ("all", "all of the above", "fft", True, dict(LADDER_PENALTIES), "logit"),
    ("default", "default: Fourier + decorrelation + transforms", "fft", True, {}, "logit"),
    ("maco", "MACO: photos' Fourier magnitude, phase only, + transforms", "maco", True, {}, "logit"),
    ("softmax", "default, maximising the softmax probability", "fft", True, {}, "softmax"),
]


def ladder(entry: models.ModelEntry, imagenet: dict, class_list: list[dict], profile: Profile, jobs: Jobs,
           store: Store) -> tuple[dict, dict]:
    """Every rung renders the same classes from the same seeds. Rungs with and without transforms run as
    two batched jobs (a batch shares one transform pipeline); parameterizations and penalties vary per image."""
    size, steps = option(profile, "size"), option(profile, "ladder_steps")
    classes = [c["index"] for c in class_list[:option(profile, "ladder_classes")]]
    seeds = [profile.seed + 7 * c + 3 for c in classes]
    photos = photos_of(profile, entry)
    magnitude = P.natural_magnitude([images.load(pid) for pid in photos], size)
    rung_rows: dict[str, dict] = {}
    for with_transforms in (False, True):
        rungs = [r for r in RUNGS if r[3] == with_transforms]
        n = len(rungs) * len(classes)
        cls, all_seeds = [], []
        weights = {k: torch.zeros(n) for k in ("l2", "tv", "blur", "logit", "softmax")}
        for ri, (_, _, _, _, pen, obj) in enumerate(rungs):
            for ci, c in enumerate(classes):
                k = ri * len(classes) + ci
                for pk, pv in pen.items():
                    weights[pk][k] = pv
                weights[obj][k] = 1.0
                cls.append(c)
                all_seeds.append(seeds[ci])
        paths = [f"{ROOT}/ladder/{r[0]}/{c}.png" for r in rungs for c in classes]
        spec = {"model": model_id(entry), "rungs": [r[:3] + (r[3], sorted(r[4].items()), r[5]) for r in rungs],
                "classes": classes, "seeds": seeds, "size": size, "steps": steps, "magnitude_photos": photos,
                "transforms": repr(default_transforms(size)) if with_transforms else None}

        def compute(rungs=rungs, cls=cls, all_seeds=all_seeds, weights=weights, with_transforms=with_transforms):
            kinds = {"pixel": lambda: P.PixelParam(len(classes), 3, size, seed=seeds),
                     "fft": lambda: P.FFTParam(len(classes), 3, size, seed=seeds),
                     "maco": lambda: P.FFTParam(len(classes), 3, size, seed=seeds, magnitude=magnitude)}
            param = P.Stack([kinds[r[2]]() for r in rungs])
            objective = weights["logit"] * O.class_logit(cls) + weights["softmax"] * O.class_prob(cls)
            penalties = Penalties(l2=weights["l2"], tv=weights["tv"], blur=weights["blur"])
            return featvis.render(entry.model, objective, param, default_transforms(size) if with_transforms else (),
                                  steps, seed=all_seeds, penalties=penalties)

        rec = jobs.run(f"{ROOT}/ladder/{'transforms' if with_transforms else 'static'}", spec, paths, compute)
        for ri, r in enumerate(rungs):
            sl = slice(ri * len(classes), (ri + 1) * len(classes))
            rung_rows[r[0]] = {"id": r[0], "label": r[1], "param": r[2], "transforms": r[3],
                               "penalties": r[4], "objective": r[5], "images": paths[sl],
                               "values": rec["values"][sl]}
    for row in rung_rows.values():
        x = _pngs(store, row["images"])
        row["own_top1_rate"] = _top1_rate(entry, x, classes)
        row["own_target_p"] = _target_p(entry, x, classes)
        row["transfer_top1_rate"] = {m: _top1_rate(e, x, classes) for m, e in imagenet.items()}
        with torch.no_grad():
            logits = entry.model(x.to(entry.device)).float().cpu()
        row["mean_logit"] = round(float(logits[torch.arange(len(classes)), classes].mean()), 4)
    names = [entry.class_names[c] for c in classes]
    ladder_out = {"render_model": entry.name, "classes": [{"index": c, "name": nm} for c, nm in zip(classes, names)],
                  "steps": steps, "seeds": seeds,
                  "rungs": [rung_rows[r[0]] for r in RUNGS if r[5] == "logit"]}
    objective_out = {"render_model": entry.name, "classes": ladder_out["classes"], "steps": steps,
                     "rows": [{**{k: rung_rows[rid][k] for k in ("images", "own_top1_rate", "own_target_p",
                                                                 "mean_logit", "transfer_top1_rate")},
                               "id": label} for rid, label in (("default", "logit"), ("softmax", "softmax"))]}
    return ladder_out, objective_out


# -- (3b) keeping pixels valid, and what the optimizer contributes ------------------------------------------
def optimizers(entry: models.ModelEntry, class_list: list[dict], profile: Profile, jobs: Jobs, store: Store) -> dict:
    """Raw pixels (no transforms, no penalties, a constant learning rate: the assignments' loop), kept
    in [0, 1] by clipping after each step or by a sigmoid, for each (optimizer, lr) of ``optimizer_runs``:
    one job per run, both validity rules in it, the ladder's classes and seeds."""
    size, steps = option(profile, "size"), option(profile, "ladder_steps")
    classes = [c["index"] for c in class_list[:option(profile, "ladder_classes")]]
    seeds = [profile.seed + 7 * c + 3 for c in classes]
    valids = ("clip", "sigmoid")
    cls = classes * len(valids)
    objective = O.class_logit(cls)
    rows = []
    for opt, lr in option(profile, "optimizer_runs"):
        run_id = f"{opt}_{lr:g}"
        paths = [f"{ROOT}/optimizers/{run_id}/{v}/{c}.png" for v in valids for c in classes]
        spec = {"model": model_id(entry), "optimizer": opt, "lr": lr, "valid": valids, "classes": classes,
                "seeds": seeds, "size": size, "steps": steps, "schedule": "constant"}

        def compute(opt=opt, lr=lr):
            param = P.Stack([P.PixelParam(len(classes), 3, size, valid=v, seed=seeds) for v in valids])
            return featvis.render(entry.model, objective, param, (), steps, optimizer=opt, lr=lr,
                                  schedule="constant", seed=seeds * len(valids))

        rec = jobs.run(f"{ROOT}/optimizers/{run_id}", spec, paths, compute, history=True)
        x = _pngs(store, paths)
        for vi, v in enumerate(valids):
            sl = slice(vi * len(classes), (vi + 1) * len(classes))
            hist = rec["history"][sl]
            rows.append({"optimizer": opt, "lr": lr, "valid": v, "images": paths[sl], "values": rec["values"][sl],
                         "mean_value": round(sum(rec["values"][sl]) / len(classes), 4),
                         "history_mean": [round(sum(h[k] for h in hist) / len(hist), 4) for k in range(len(hist[0]))],
                         "own_top1_rate": _top1_rate(entry, x[sl], classes),
                         "own_target_p": _target_p(entry, x[sl], classes)})
    figure = f"{ROOT}/optimizers.webp"
    from ..render.figures import optimizer_curves

    store.write_figure(figure, optimizer_curves(rows, entry.name))
    return {"render_model": entry.name, "classes": [{"index": c, "name": entry.class_names[c]} for c in classes],
            "steps": steps, "size": size, "seeds": seeds, "rows": rows, "figure": figure}


# -- (4) progress over steps ---------------------------------------------------------------------------------
def progress(entry: models.ModelEntry, class_list: list[dict], profile: Profile, jobs: Jobs, store: Store) -> dict:
    size = option(profile, "size")
    shots = sorted(option(profile, "progress_steps"))
    classes = [c["index"] for c in class_list[:option(profile, "ladder_classes")]]
    seeds = [profile.seed + 7 * c + 3 for c in classes]  # the ladder's seeds: its default rung is step ``ladder_steps``
    spec = {"model": model_id(entry), "classes": classes, "seeds": seeds, "size": size, "snapshots": shots,
            "transforms": repr(default_transforms(size))}
    objective = O.class_logit(classes)
    paths = [f"{ROOT}/progress/{c}/final.png" for c in classes]
    rec = jobs.run(f"{ROOT}/progress", spec, paths, lambda: featvis.render(
        entry.model, objective, P.FFTParam(len(classes), 3, size, seed=seeds), default_transforms(size), shots[-1],
        seed=seeds, snapshots=shots), model=entry.model, objective=objective,
        snapshot_path=lambda step, i: f"{ROOT}/progress/{classes[i]}/step{step}.png")
    frame_paths = [rec["snapshots"][str(s)][i] for i in range(len(classes)) for s in shots]
    target_p = iter(_target_p(entry, _pngs(store, frame_paths), [c for c in classes for _ in shots]))
    units = []
    for i, c in enumerate(classes):
        frames = [{"step": s, "path": rec["snapshots"][str(s)][i], "value": rec["snapshot_values"][str(s)][i],
                   "target_p": next(target_p)} for s in shots]
        units.append({"class": c, "name": entry.class_names[c], "frames": frames})
    return {"render_model": entry.name, "steps": shots, "units": units}


# -- (5) noise start vs photo start, DeepDream on a photo ---------------------------------------------------------
def photo_start(entry: models.ModelEntry, profile: Profile, jobs: Jobs, store: Store) -> dict:
    size, steps = option(profile, "size"), option(profile, "photo_steps")
    pids = labelled_photos(profile, entry, option(profile, "photo_count"))
    dream_layers = [entry.layers[i] for i in option(profile, "dream_layers")]
    variants = [("noise_class", "class logit from noise"), ("photo_class", "class logit from the photo")] + \
               [(f"dream_{layer}", f"DeepDream at {layer} from the photo") for layer in dream_layers]
    snaps = sorted({0, steps // 4, steps})
    starts = {pid: square_crop(images.load(pid), size) for pid in pids}
    for pid, img in starts.items():
        store.write_bytes(f"{ROOT}/photo/{pid}/start.png", png(img))
    labels = [images.photo(pid).label for pid in pids]
    n_var, n_ph = len(variants), len(pids)
    cls = [labels[j] for _ in variants for j in range(n_ph)]
    seeds = [profile.seed + 500 + j for _ in variants for j in range(n_ph)]
    w_cls = torch.tensor([1.0 if v[0].endswith("_class") else 0.0 for v in variants for _ in pids])
    objective = w_cls * O.class_logit(cls)
    for layer in dream_layers:
        w = torch.tensor([1.0 if v[0] == f"dream_{layer}" else 0.0 for v in variants for _ in pids])
        objective = objective + w * O.deepdream(layer)
    start_batch = torch.stack([starts[pid] for pid in pids]) if pids else torch.zeros(0, 3, size, size)
    paths = [f"{ROOT}/photo/{pid}/{v[0]}.png" for v in variants for pid in pids]
    spec = {"model": model_id(entry), "photos": pids, "variants": [v[0] for v in variants], "size": size,
            "steps": steps, "seeds": seeds, "snapshots": snaps, "transforms": repr(default_transforms(size))}
    if not pids:
        return {"render_model": entry.name, "steps": steps, "snapshot_steps": snaps, "dream_layers": dream_layers,
                "photos": []}

    def compute():
        parts = [P.FFTParam(n_ph, 3, size, seed=seeds[:n_ph])]
        parts += [P.FFTParam(n_ph, 3, size, init=start_batch) for _ in variants[1:]]
        return featvis.render(entry.model, objective, P.Stack(parts), default_transforms(size), steps, seed=seeds,
                              snapshots=snaps)

    rec = jobs.run(f"{ROOT}/photo_start", spec, paths, compute, model=entry.model, objective=objective,
                   snapshot_path=lambda step, i: f"{ROOT}/photo/{pids[i % n_ph]}/{variants[i // n_ph][0]}/step{step}.png")
    final_p = _target_p(entry, _pngs(store, paths), cls)
    photo_p = _target_p(entry, start_batch, labels)
    out = []
    for j, pid in enumerate(pids):
        vs = []
        for vi, (vid, label) in enumerate(variants):
            k = vi * n_ph + j
            vs.append({"id": vid, "label": label, "path": paths[k], "value": rec["values"][k], "target_p": final_p[k],
                       "snapshots": {s: ps[k] for s, ps in rec["snapshots"].items()}})
        out.append({"id": pid, "class": labels[j], "name": entry.class_names[labels[j]],
                    "photo": f"{ROOT}/photo/{pid}/start.png", "photo_target_p": photo_p[j], "variants": vs})
    return {"render_model": entry.name, "steps": steps, "snapshot_steps": snaps, "dream_layers": dream_layers,
            "photos": out}


# -- (8) Fashion-MNIST class visualizations ----------------------------------------------------------------
