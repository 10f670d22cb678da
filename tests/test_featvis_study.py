"""The feature-visualization study on the smoke profile, into a temporary store; and the engine on a
trained (smoke-budget) Fashion-MNIST model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from xai import models, profiles
from xai.featvis import objectives as O, param as P, render
from xai.render.store import Store
from xai.studies import STUDIES, featvis


def test_class_visualizations_of_a_trained_model_reach_their_class():
    entry = models.load("fmnist_cnn", budget="smoke", progress=False)
    classes = list(range(entry.num_classes))
    r = render(entry.model, O.class_logit(classes), P.FFTParam(10, 1, 28, seed=0), (), steps=64, seed=0)
    with torch.no_grad():
        top1 = entry.model(r.images.to(entry.device)).argmax(-1).cpu()
    assert (top1 == torch.tensor(classes)).sum() >= 9, top1.tolist()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("featvis")
    profile = profiles.get("smoke")
    store = Store(root, profile.name)
    summary = featvis.run(profile, store)
    return profile, store, summary


def test_registered():
    assert STUDIES["featvis"] == "xai.studies.featvis"


def test_smoke_study_writes_every_section(smoke):
    profile, store, summary = smoke
    res = store.read_json("featvis/results.json")
    for key in ("settings", "grids", "classes", "transfer", "ladder", "progress", "photo_start", "objective",
                "fmnist", "quality", "timing"):
        assert key in res, key
    assert set(res["grids"]) == set(profile.imagenet_models) | set(profile.fmnist_models)
    opts = profile.options["featvis"]
    for name, grid in res["grids"].items():
        assert len(grid["layers"]) == opts["grid_layers"]
        for row in grid["layers"]:
            assert len(row["channels"]) == len(row["images"]) == len(row["values"]) == opts[
                "grid_channels" if grid["family"] == "imagenet" else "fmnist_channels"]
            # Channels are the most active ones, in decreasing order of activity.
            assert row["activity"] == sorted(row["activity"], reverse=True)
            assert all(math.isfinite(v) for v in row["values"])
            if grid["family"] == "fmnist":
                assert len(row["exemplars"]) == len(row["channels"])
                for acts in row["exemplar_activations"]:
                    assert acts == sorted(acts, reverse=True) and len(acts) == opts["exemplars"]
    lite0 = profile.imagenet_models[0]
    n_classes = len(res["classes"]["classes"])
    assert len(res["classes"]["images"][lite0]) == n_classes * opts["class_samples"]
    assert len(res["transfer"]["rows"]) == n_classes * opts["class_samples"]
    assert set(res["transfer"]["rows"][0]["eval"]) == set(profile.imagenet_models)
    assert [r["id"] for r in res["ladder"]["rungs"]] == ["none", "l2", "tv_blur", "transforms", "fft", "all",
                                                          "default", "maco"]
    assert [r["id"] for r in res["objective"]["rows"]] == ["logit", "softmax"]
    assert [f["step"] for f in res["progress"]["units"][0]["frames"]] == opts["progress_steps"]
    variants = [v["id"] for v in res["photo_start"]["photos"][0]["variants"]]
    assert variants[:2] == ["noise_class", "photo_class"] and len(variants) == 4
    for name in profile.fmnist_models:
        assert len(res["fmnist"][name]["classes"]["images"]) == 10 * opts["fmnist_class_samples"]
    assert res["quality"]["bar"] == 0.9 and lite0 in res["quality"]["own_top1_rate"]
    assert summary["jobs"] == len(res["timing"]["jobs"]) and summary["cached_jobs"] == 0
    # Every image path named anywhere in the results exists.
    paths = [v for v in _strings(res) if v.endswith(".png")]
    assert paths and all(store.path(p).is_file() for p in paths)


def test_progress_step_equals_the_ladder_default_rung(smoke):
    """The progress run and the ladder's default rung share classes and seeds: the same image at that step."""
    _, store, _ = smoke
    res = store.read_json("featvis/results.json")
    steps = res["ladder"]["steps"]
    default = next(r for r in res["ladder"]["rungs"] if r["id"] == "default")
    for unit, path in zip(res["progress"]["units"], default["images"]):
        frame = next(f for f in unit["frames"] if f["step"] == steps)
        a, b = featvis.read_png(store, frame["path"]), featvis.read_png(store, path)
        assert (a - b).abs().max() <= 2 / 255


def test_rerun_reads_the_cache_and_a_changed_knob_reruns_only_its_jobs(smoke):
    profile, store, _ = smoke
    again = featvis.run(profile, store)
    assert again["cached_jobs"] == again["jobs"]
    changed = profiles.with_options(profile, featvis={**profile.options["featvis"], "ladder_steps": 3})
    third = featvis.run(changed, store)
    jobs = store.read_json("featvis/results.json")["timing"]["jobs"]
    rerun = sorted(j["name"] for j in jobs if not j["cached"])
    # the ladder's steps are also the optimizer comparison's: its four runs rerun with it, nothing else
    optimizer_jobs = sorted(f"featvis/optimizers/{o}_{lr:g}" for o, lr in featvis.DEFAULTS["optimizer_runs"])
    assert rerun == sorted(["featvis/ladder/static", "featvis/ladder/transforms", *optimizer_jobs])
    assert third["jobs"] - third["cached_jobs"] == 2 + len(optimizer_jobs)


def test_optimizer_comparison_runs_every_optimizer_with_both_validity_rules(smoke):
    profile, store, _ = smoke
    op = store.read_json("featvis/results.json")["optimizers"]
    runs = [(o, lr) for o, lr in featvis.DEFAULTS["optimizer_runs"]]
    assert [(r["optimizer"], r["lr"], r["valid"]) for r in op["rows"]] == [
        (o, lr, v) for o, lr in runs for v in ("clip", "sigmoid")]
    n = len(op["classes"])
    for r in op["rows"]:
        assert len(r["images"]) == len(r["values"]) == n and len(r["history_mean"]) == op["steps"]
        assert r["mean_value"] == pytest.approx(sum(r["values"]) / n, abs=1e-3)
        assert 0 <= r["own_top1_rate"] <= 1 and all(store.path(p).exists() for p in r["images"])
    assert store.path(op["figure"]).exists()


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_results_json_is_plain_json(smoke):
    _, store, _ = smoke
    text = store.path("featvis/results.json").read_text()
    assert "NaN" not in text and json.loads(text)


def test_pattern_wavelength_and_colourfulness_measure_what_they_say():
    from xai.studies.featvis import colourfulness, pattern_wavelength

    x = torch.arange(64, dtype=torch.float32)
    fine = (torch.sin(2 * math.pi * x / 4) * 0.5 + 0.5).expand(3, 64, 64)  # vertical stripes, 4 px period
    broad = (torch.sin(2 * math.pi * x / 16) * 0.5 + 0.5).expand(3, 64, 64)
    wl = pattern_wavelength(torch.stack([fine, broad]))
    # Not rounding: the wavelength is read off a 64-point spectrum, whose bins are 1/64 cycle/px apart.
    assert wl[0] == pytest.approx(4, rel=0.05) and wl[1] == pytest.approx(16, rel=0.05)
    grey = torch.full((3, 8, 8), 0.5)
    red = torch.zeros(3, 8, 8)
    red[0] = 1
    c = colourfulness(torch.stack([grey, red]))
    # The values are stored rounded to 4 decimals; rg 1, yb 0.5 for pure red.
    assert c[0] == 0 and c[1] == pytest.approx(0.3 * math.sqrt(1.25), abs=5e-5)


def test_dream_depth_dreams_at_every_layer_of_every_imagenet_model(smoke):
    profile, store, _ = smoke
    dd = store.read_json("featvis/results.json")["dream_depth"]
    assert set(dd["models"]) == set(profile.imagenet_models)
    for name, m in dd["models"].items():
        assert len(m["layers"]) >= 2  # every layer of interest of the model
        for start in ("photo", "noise"):
            rows = m[start]
            assert [r["layer"] for r in rows] == m["layers"]
            for r in rows:
                assert store.path(r["path"]).exists() and math.isfinite(r["wavelength"]) and r["wavelength"] > 0
                assert 0 <= r["target_p"] <= 1 and r["colourfulness"] >= 0 and r["change"] >= 0
        # a dream from noise ends far from the photo; from the photo, nearer to it
        assert mean(r["change"] for r in m["photo"]) < mean(r["change"] for r in m["noise"])


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)
