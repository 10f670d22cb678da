"""The concepts study at the smoke profile: what it writes, that its numbers keep their identities, and
its cache (a warm rerun renders nothing, a deleted image reruns exactly its job). Numerical bounds name
their rule in tests/tolerance.py."""
import json
import os
from pathlib import Path

import pytest

from tolerance import NETWORK, ulps
from xai import profiles, studies
from xai.render.store import Store
from xai.studies import concepts

KEYS = {"settings", "blocks", "grids", "groups", "discovery", "imagenet", "marker", "crp", "timing"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts-store")
    store = Store(root, profile="smoke")
    summary = studies.run(["concepts"], profiles.get("smoke"), store, log=lambda *_: None)["concepts"]
    return store, summary, store.read_json("concepts/results.json")


def _files(results) -> list[str]:
    """Every image path the results name (what the book would load)."""
    out = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.startswith("concepts/") and v.endswith((".png", ".webp")):
            out.append(v)

    walk(results)
    return out


def test_results_have_every_part_and_every_file_they_name(built):
    store, summary, r = built
    assert KEYS <= set(r)
    smoke = profiles.get("smoke").options["concepts"]
    photos, layers = r["blocks"]["photos"], r["blocks"]["layers"]
    assert len(photos) == smoke["photos"] and len(layers) == 2
    assert len(r["grids"]) == len(photos) * len(layers) == summary["grids"]
    for g in r["grids"]:
        h, w = g["shape"]
        assert h <= smoke["cells"] and w <= smoke["cells"]
        assert len(g["tiles"]) == len(g["entries"]) == len(g["values"]) == h * w
        for e in g["entries"]:
            assert len(e["channels"]) == len(e["values"]) == len(e["images"]) == smoke["dictionary_top"]
            assert e["values"] == sorted(e["values"], reverse=True)  # most active first
    for g in r["groups"]:
        assert len(g["groups"]) == smoke["groups"]
        # Rule 2: the groups' shares of gradient x activation add up to the layer's (summed in float64, stored
        # as float32 and rounded to 1e-6 in the JSON); ulps of the h*w*C entries of the layer's map (7x7x320
        # at lite0's last block) bound the float32 side generously.
        total = sum(x["attribution"] for x in g["groups"])
        assert abs(total - g["total"]) <= smoke["groups"] * 1e-6 + ulps(7 * 7 * 320, abs(g["total"]) + 1)
    assert len(r["discovery"]["concepts"]) == smoke["concept_k"]
    files = _files(r)
    assert len(files) > 20 and all(store.path(f).is_file() for f in files)


def test_human_concepts_are_tested_for_every_class_at_every_layer(built):
    _, _, r = built
    hi = r["imagenet"]
    smoke = profiles.get("smoke").options["concepts"]
    assert len(hi["layers"]) == len(smoke["imagenet_tcav_layers"]) >= 2
    assert len(hi["classes"]) == smoke["imagenet_tcav_classes"]
    kinds = {c["kind"] for c in hi["concepts"]}
    assert kinds == {"texture", "colour", "crop"}
    assert hi["tested"] == len(hi["concepts"]) * len(hi["classes"]) * len(hi["layers"])
    passed = {(x["photo"], x["layer"], x["concept"]) for x in hi["significant"]}
    for c in hi["classes"]:
        for layer in hi["layers"]:
            for concept, t in hi["tests"][c["photo"]][layer].items():
                assert 0 <= t["mean"] <= 1 and len(t["scores"]) == hi["runs"]
                # the verdict is the corrected test's, and the list of passes is exactly the passing tests
                if t["p_value"] != t["alpha"]:  # both are rounded to 3 digits in the JSON
                    assert t["significant"] == (t["p_value"] < t["alpha"])
                assert t["significant"] == ((c["photo"], layer, concept) in passed)
    # a crop cut from a class's own photo is marked circular for that class only
    by_photo = {c["photo"]: c for c in hi["classes"]}
    if "chelsea" in by_photo:
        assert "fur" in by_photo["chelsea"]["circular"]
    assert all("fur" not in c["circular"] for c in hi["classes"] if c["photo"] not in ("chelsea", "pekinese", "baboon"))


def test_the_marker_concept_separates_the_poisoned_model_from_its_control(built):
    _, _, r = built
    tc = r["marker"]["tcav"]
    best = tc["poisoned"]["best"]
    clean = tc["clean"]["layers"][best["layer"]]
    # Properties of the planted shortcut with margins, as in test_concepts (another CPU trains another model).
    assert best["significant"] and best["mean"] > 0.8
    assert not (clean["significant"] and clean["mean"] > 0.5)
    for role in ("poisoned", "clean"):
        for row in tc[role]["layers"].values():
            assert row["significant"] == (row["p_value"] < row["alpha"])
            assert row["reported"] == (row["mean"] if row["significant"] else None)


def test_random_concepts_shares_are_consistent(built):
    _, _, r = built
    s = r["marker"]["settings"]
    for rs in r["marker"]["random_sets"].values():
        assert rs["n"] == s["random_sets"] * len(s["layers"]) == len(rs["tests"])
        # The corrected level is below the uncorrected one: whatever passes it has p < alpha too.
        assert rs["corrected_alpha"] < rs["alpha"] and rs["corrected_share"] <= rs["uncorrected_share"]
        naive = sum(abs(t["first_run"] - 0.5) > rs["naive_margin"] for t in rs["tests"]) / rs["n"]
        assert rs["naive_share"] == round(naive, 4)


def test_conditional_heatmaps_add_up_and_name_their_channels(built):
    store, _, r = built
    smoke = profiles.get("smoke").options["concepts"]
    c = r["crp"]["imagenet"]
    assert c["propagation"] == "lrp_epsilon_plus_flat" and len(c["photos"]) == smoke["photos"]
    for row in c["photos"]:
        assert len(row["top"]) == smoke["crp_top"]
        rel = [t["relevance"] for t in row["top"]]
        assert rel == sorted(rel, reverse=True)  # most relevant first
        # The parts (top channels and the rest) add up to the LRP heatmap of the logit. Rule 3: the
        # conditioned passes against the whole pass through the layers below the conditioned one.
        assert row["sum_error"] <= NETWORK
        shares = [t["share"] for t in row["top"]] + [row["rest_share"]]
        # Rule 2: shares of the layer's relevance magnitude, each rounded to 1e-4 in the JSON.
        assert abs(sum(shares) - row["layer_total"] / row["layer_magnitude"]) <= len(shares) * 1e-4
    heat = [p for p in c["panels"] if p["row"] == "heatmap"]
    units = [p for p in c["panels"] if p["row"] == "unit"]
    assert len(heat) == len(c["photos"]) * (smoke["crp_top"] + 2) and len(units) == len(c["photos"]) * smoke["crp_top"]
    for row in c["photos"]:
        shown = [p for p in units if p["photo"] == row["photo"]]
        assert [p["note"] for p in shown] == [f"channel {t['channel']}" for t in row["top"]]
        assert all(p["image"].endswith(f"/c{t['channel']}.png") for p, t in zip(shown, row["top"]))
    m = r["crp"]["marker"]
    assert m["images"] == smoke["crp_marker_images"]
    for role in ("poisoned", "clean"):
        assert 0 <= m[role]["whole_mass"] <= 1 and 0 <= m[role]["top_mass"] <= 1
        assert m[role]["detectors"] == r["marker"]["dissection"][role]["relu3"]["detectors"]
    assert store.path(m["figure"]).is_file()


def first_summary(store: Store) -> dict:
    return json.loads((store.root / "manifest.json").read_text())["studies"]["concepts"]["summary"]


def test_a_warm_rerun_renders_nothing_and_a_deleted_image_reruns_its_job(built):
    store, _, first = built
    jobs = {j["name"] for j in first["timing"]["jobs"]}
    assert {"marker", "discovery"} <= jobs and any(n.startswith("grid/") for n in jobs)
    files = _files(first)
    mtimes = {f: os.stat(store.path(f)).st_mtime_ns for f in files}
    log: list[str] = []
    assert studies.run(["concepts"], profiles.get("smoke"), store, log=log.append)["concepts"] == first_summary(store)
    assert any("unchanged since its last run" in line for line in log)  # the whole study reused
    # The study's own cached jobs, when it does run with nothing changed (as after a code change):
    warm = concepts.run(profiles.get("smoke"), store)
    again = store.read_json("concepts/results.json")
    assert warm["jobs_run"] == 0 and all(j["cached"] for j in again["timing"]["jobs"])
    assert {f: os.stat(store.path(f)).st_mtime_ns for f in files} == mtimes  # nothing was rewritten
    assert again["marker"] == first["marker"] and again["grids"] == first["grids"]

    grid = first["grids"][0]
    victim = grid["tiles"][-1]
    store.path(victim).unlink()
    studies.run(["concepts"], profiles.get("smoke"), store, log=lambda *_: None)
    log = {j["name"]: j["cached"] for j in store.read_json("concepts/results.json")["timing"]["jobs"]}
    rerun = [n for n, cached in log.items() if not cached]
    assert rerun == [f"grid/{grid['photo']}/{grid['layer']}"]
    assert store.path(victim).is_file()
    record = json.loads(Path(store.path(f"concepts/jobs/grid__{grid['photo']}__{grid['layer']}.json")).read_text())
    assert victim in record["files"]


def test_the_study_defaults_are_the_schema_defaults():
    """The full profile sets no concepts option: the study's defaults must be the schema's, or a config
    file's view of the full build and the study's would differ."""
    from xai.config.schema import ConceptsConfig
    from xai.studies.concepts import DEFAULTS

    schema = ConceptsConfig()
    assert {k: getattr(schema, k) for k in DEFAULTS} == DEFAULTS
