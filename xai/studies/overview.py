"""Chapter 1: the models and the data, as they are: predictions on every photo, training records."""
from __future__ import annotations

import torch

from .. import models
from ..data import fashion_mnist, images
from ..profiles import Profile
from ..render.store import Store, cache_key
from ._frame import all_photo_ids, book_group, load, photos_of


def run(profile: Profile, store: Store) -> dict:
    from ..render import figures

    photos = all_photo_ids(profile)
    rows = []
    for pid in photos:
        p = images.photo(pid)
        img = images.load(pid)
        rel = f"overview/photos/{pid}.webp"
        key = cache_key("thumb", p.sha256, 1)
        if not store.fresh(rel, key):
            store.write_bytes(rel, figures.thumbnail_webp(img, 320), key)
        rows.append({"id": pid, "label": p.label, "label_name": p.label_name, "label_space": p.label_space,
                     "note": p.note,
                     "credit": p.credit, "source": p.source, "file": p.file, "thumbnail": rel,
                     "size": list(img.shape[1:]), "predictions": {}})

    model_rows = []

    by_id = {r["id"]: r for r in rows}
    top1: dict = {}
    # Each model predicts the photos of its own label space only: another space's label is not its class.
    for name in profile.photo_models:
        entry = load(name, profile)
        model_rows.append(_model_row(entry))
        own = photos_of(profile, entry)
        batch = torch.stack([entry.prepare(images.load(pid)) for pid in own])
        for pid, top5 in zip(own, entry.predict(batch, k=5)):
            row = by_id[pid]
            row["predictions"][name] = [{"index": i, "name": n, "p": round(q, 4)} for i, n, q in top5]
            row.setdefault("correct", {})[name] = row["label"] is not None and top5[0][0] == row["label"]
        top1[name] = sum(by_id[pid]["correct"][name] for pid in own)  # False for an unlabelled photo

    for name in (*profile.imagenet_models, *profile.fmnist_models, *profile.other_models):
        if name in profile.photo_models:
            continue
        model_rows.append(_model_row(load(name, profile)))

    x, y = fashion_mnist.load("test")
    store.write_figure("overview/fmnist_samples.png", figures.fmnist_samples(x, y, fashion_mnist.CLASSES))
    store.write_json("overview/photos.json", rows)
    store.write_json("overview/models.json", model_rows)
    labelled = [r for r in rows if r["label"] is not None]
    return {
        "photos": len(rows),
        "models": [m["name"] for m in model_rows],
        "top1_correct": top1,
        "labelled_photos": len(labelled),
    }


def _model_row(entry: models.ModelEntry) -> dict:
    params = sum(p.numel() for p in entry.model.parameters())
    info = {k: v for k, v in entry.info.items() if k in
            ("arch", "weights", "test_accuracy", "test_images", "train_images", "train_seconds", "budget", "config")}
    return {"name": entry.name, "family": book_group(entry), "label_space": entry.label_space,
            "input_size": list(entry.input_size),
            "parameters": params, "layers": entry.layers, "classes": entry.num_classes, **info}
