"""The saliency, Grad-CAM and faithfulness studies on the smoke profile, into a temporary store."""
import json
import math

import pytest
import torch
from PIL import Image

from xai import attribution, profiles, studies
from xai.render.store import Store
from xai.studies import saliency

NAMES = ["saliency", "gradcam", "faithfulness"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    maps = tmp_path_factory.mktemp("attribution-cache")
    mp = pytest.MonkeyPatch()
    mp.setattr(saliency, "cache_dir", lambda: maps)  # a cold map cache: everything is computed
    # The smoke work comes in batches too small to gain from a second thread, and on a shared CPU two
    # OpenMP threads wait on each other: measured 10x slower here. Speed is the benchmarks' business.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = Store(root, profile="smoke")
        summaries = studies.run(NAMES, profiles.get("smoke"), store, log=lambda *_: None)
        yield store, summaries, maps, mp
    finally:
        mp.undo()
        torch.set_num_threads(threads)


def _figures(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _figures(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _figures(v)
    elif isinstance(obj, str) and obj.endswith((".webp", ".png")):
        yield obj


def test_every_figure_named_in_the_results_exists(built):
    store, summaries, _, _ = built
    assert set(summaries) == set(NAMES)
    for name in NAMES:
        results = store.read_json(f"{name}/results.json")
        paths = list(_figures(results))
        assert paths, name
        for rel in paths:
            assert rel.startswith(f"{name}/"), rel  # the book finds a file by the study that wrote it
            with Image.open(store.path(rel)) as im:
                assert im.size[0] > 20 and im.size[1] > 20


def test_saliency_results(built):
    store, _, _, _ = built
    r = store.read_json("saliency/results.json")
    smoke = profiles.get("smoke")
    assert set(r["methods"]) == set(saliency.method_names(smoke)) == set(profiles.GALLERY_METHODS)
    assert r["imagenet"]["photos"] == list(smoke.photos[:2])
    assert r["imagenet"]["cam_layer"]["efficientnet_lite0"] == "bn2"
    assert r["fmnist"]["cam_layer"]["fmnist_vit"] == "blocks.2"  # the last block reaches the head by its class token
    for model in [*smoke.imagenet_models, *smoke.fmnist_models]:
        assert set(r["timings"][model]) == set(profiles.GALLERY_METHODS)
        assert all(t["seconds_per_image"] >= 0 for t in r["timings"][model].values())
    vit_na = r["fmnist"]["not_applicable"]["fmnist_vit"]
    assert {"guided_backprop", "deconvolution", "guided_grad_cam"} <= set(vit_na) and "GELU" in vit_na["guided_backprop"]
    # captum's DeepLIFT has no rule for ReLU6: the Lite models refuse it, by name of the activation, and only it
    lite_na = r["imagenet"]["not_applicable"]["efficientnet_lite0"]
    assert set(lite_na) == {"deeplift", "deeplift_shap"} and all("ReLU6" in v for v in lite_na.values())
    assert "deeplift" not in r["fmnist"]["not_applicable"]["fmnist_cnn"]  # plain ReLU: DeepLIFT applies
    # LRP's accounts: the canonized pass balances (input + biases = logit), the plain one does not
    acc = r["lrp"]["models"]["efficientnet_lite0"]["epsilon_plus_flat"]
    for i in range(len(r["lrp"]["photos"])):
        c = acc["canonized"]
        assert c["input"][i] + c["biases"][i] + c["unaccounted"][i] == pytest.approx(1, abs=2e-4)  # 4 digits each
        assert abs(c["unaccounted"][i]) < 1e-3 < abs(acc["plain"]["unaccounted"][i])
    agree = r["imagenet"]["cam_agreement"]["efficientnet_lite0"]
    assert "grad_cam" not in agree and {"hires_cam", "xgrad_cam", "eigen_cam", "ablation_cam"} <= set(agree)
    assert all(v is None or -1 <= v <= 1 for v in agree.values())
    lvs = r["logit_vs_softmax"]["efficientnet_lite0"]["chelsea"]
    assert -1 <= lvs["spearman_softmax"] <= 1 and 0 < lvs["p"] <= 1
    assert r["choices"]["photo"] == "chelsea"


def test_saliency_sensitivity(built):
    store, _, _, _ = built
    s = store.read_json("saliency/results.json")["sensitivity"]
    assert s["model"] == "efficientnet_lite0" and s["photos"] == ["chelsea"]
    params = s["parameters"]
    assert set(params) == {"ig_baseline", "smoothgrad_noise", "occlusion_window"}
    for p in params.values():
        reference = [v for v in p["variants"] if v["value"] == p["reference"]]
        assert len(reference) == 1 and reference[0]["spearman"] == [1.0]  # the reference map against itself
        assert all(r is None or -1 <= r <= 1 for v in p["variants"] for r in v["spearman"])
    ig = params["ig_baseline"]
    assert [v["value"] for v in ig["variants"]] == list(attribution.BASELINES)
    assert all(math.isfinite(x) for v in ig["variants"] for x in v["score_difference"] + v["attribution_sum"])
    occ = params["occlusion_window"]
    assert [v["value"] for v in occ["variants"]] == [occ["reference"] // 2, occ["reference"], 2 * occ["reference"]]
    assert all((occ["side"] - v["value"]) % v["stride"] == 0 for v in occ["variants"])  # every pixel covered


def test_gradcam_results(built):
    store, _, _, _ = built
    r = store.read_json("gradcam/results.json")
    seg = r["segmentation"]
    assert seg["thresholds"] == pytest.approx([0.1 * i for i in range(1, 10)])
    for row in seg["models"]["efficientnet_lite0"].values():
        assert len(row["area"]) == len(row["confidence_black"]) == len(row["images"]) == 9
        assert all(a >= b for a, b in zip(row["area"], row["area"][1:]))  # a higher threshold keeps less
        assert 0 < row["area"][-1] <= row["area"][0] <= 1
        for rel in row["images"]:
            assert store.path(rel).exists()
    layers = r["layers"]["efficientnet_lite0"]
    assert len(layers["grid"]) >= 3 and layers["grid"]["bn2"] == [7, 7]
    assert "blocks.3" in r["layers"]["fmnist_vit"]["not_applicable"]
    cf = r["counterfactual"]["efficientnet_lite0"]
    tried = layers["layers"]  # the entry's layers of interest, as timm's metadata gives them
    before = tried[tried.index("bn2") - 1]  # the CAM layer, then the layer of interest before it
    assert cf["layers"] == ["bn2", before]
    assert set(cf[before]["photos"]) == {"chelsea", "coffee"}


def test_faithfulness_results(built):
    store, _, _, _ = built
    r = store.read_json("faithfulness/results.json")
    for model, table in r["table"].items():
        assert {"random", "centre"} <= set(table)
        for metric in r["computed"][model]:
            v = table["random"][metric]
            assert 0 <= v["mean"] <= 1 and v["ci95"] >= 0 and v["n"] >= 2
    assert "not_applicable" in r["table"]["fmnist_vit"]["guided_backprop"]
    assert r["completeness"]["sweep"]["steps"] == [8, 32]
    gaps = r["completeness"]["sweep"]["gap_mean"]
    assert gaps[1] < gaps[0]  # more steps, smaller quadrature error
    auto = r["completeness"]["auto"]
    assert auto["start_steps"] == 4 and auto["max_steps"] == 16 and len(auto["steps"]) == 2
    for steps, gap, reached in zip(auto["steps"], auto["gap"], auto["reached"]):
        # doubled from the gallery's 4 until the 1 % target or the budget, and never past the budget
        assert steps in (4, 8, 16) and (reached == (gap is None or gap <= auto["target"]))
        assert reached or steps == 16
    assert auto["fixed_steps"] == max(auto["steps"]) and store.path(auto["figure"]).exists()
    san = r["sanity"]["fmnist_cnn"]
    assert san["units"][0] == "fc" and len(san["methods"]["gradient"]["spearman_abs"]) == len(san["units"])
    # The book's table names the method rows by their labels, and only the baseline rows go without one.
    assert r["labels"]["gradient"] == "Gradient" and set(r["labels"]) == set(r["rows"]) - {"random", "centre"}
    assert not list(store.root.rglob("*.md"))  # no study writes Markdown


def test_a_rerun_reuses_cached_work(built):
    store, _, maps, _ = built
    parts = sorted(p for p in store.root.rglob("parts/*.json"))
    before = {p: p.stat().st_mtime_ns for p in parts}
    cached = sorted(maps.rglob("*.pt"))
    assert cached
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    studies.run(NAMES, profiles.get("smoke"), store, log=lambda *_: None)
    assert {p: p.stat().st_mtime_ns for p in parts} == before
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp
    manifest = json.loads((store.root / "manifest.json").read_text())
    assert set(NAMES) <= set(manifest["studies"])
