"""`make bench PROFILE=smoke` runs and writes its files, with agreement numbers that make sense.

Benchmarks are not timed tests: nothing here asserts a speed.
"""
import json
from dataclasses import replace
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tolerance as tol
import torch

from xai import bench
from xai.bench import measure, report
from xai.bench.attribution import COMPARED
from xai.errors import UnknownNameError, XaiError
from xai.paths import REPO

pytestmark = pytest.mark.xdist_group("ray")  # starts a local Ray cluster: one at a time on this machine

# Pairs that run the same algorithm on both sides, with the rule of tests/tolerance.py that bounds
# their end-to-end difference. Methods that run many passes use a copy with batch norms folded into the
# convolutions (xai.layers.fast_model), which rounds differently from the anchor's pass (rule 3).
SAME_ALGORITHM = {
    ("gradient", "captum"): "cross_library",  # one backward pass of the same network
    ("occlusion", "captum"): "cross_library",  # forward values are continuous: no gate can flip them
    ("grad_cam", "captum"): "cross_library",
    ("grad_cam", "pytorch-grad-cam"): "cross_library",
    # Gradients at 4 path points on the folded copy: a ReLU6 gate within rounding of its kink flips.
    ("integrated_gradients", "captum"): "kinks",
    # Cause of the 2.9e-3 seen end to end on an AMD EPYC: rounding in a near-zero denominator, not a
    # disagreement. The layer gradients of the two passes differ by 7e-7 of their maximum (rule 3; ours
    # come from a graph started at the layer in NHWC, the library's from the whole network in NCHW), and
    # blocks.1's activations are signed, so 2 g**2 + sum(a) g**3 comes within 1 % of the 1e-6 eps on some
    # channels: that amplifies the gradients' rounding about 4000 times. Fed the library's own
    # activations and gradients in float64, the formulas agree to 3e-16 (the bench's formula check).
    ("grad_cam_pp", "pytorch-grad-cam"): "ill_conditioned",
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    md = out / "BENCH.md"
    env = {**os.environ, "XAI_GENERATED": str(out / "generated"), "PYTHONWARNINGS": "ignore"}
    # The ray section (two cold precomputes) has a test of its own below, to keep this one's time.
    cmd = [sys.executable, str(REPO / "scripts" / "bench"), "--profile", "smoke", "--markdown", str(md),
           "--only", *(s for s in bench.DEFAULT_SECTIONS if s != "ray")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gen = out / "generated"
    return {"results": json.loads((gen / bench.RESULTS).read_text()), "figure": gen / bench.FIGURE, "markdown": md,
            "stdout": proc.stdout, "generated": gen}


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_smoke_writes_results_figure_and_markdown(smoke):
    from PIL import Image

    r = smoke["results"]
    assert r["profile"] == "smoke"
    with Image.open(smoke["figure"]) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200
    text = smoke["markdown"].read_text()
    for heading in ("## Targets", "## Attribution", "## Feature visualization", "## Metrics", "## End to end"):
        assert heading in text
    for row in r["attribution"]["rows"] + r["metrics"]["rows"]:
        assert f"| {row['label']} |" in text
    # The repository's BENCHMARKS.md is only for the full profile; smoke must not overwrite it.
    assert not (smoke["generated"] / bench.STORE_MARKDOWN).exists()
    assert r["machine"]["cpu"] and r["machine"]["cpu_count"] >= 1
    assert r["machine"]["torch_threads"] == 1


def test_every_method_is_compared_with_its_anchors(smoke):
    rows = smoke["results"]["attribution"]["rows"]
    assert [row["method"] for row in rows] == list(COMPARED)
    for row in rows:
        assert len(row["ours"]["seconds"]) == bench.config("smoke").repeats
        assert _finite_positive(row["ours"]["per_second"]) and row["ours"]["flops"] > 0
        assert row["anchors"], row["method"]
        for a in row["anchors"]:
            assert _finite_positive(a["speedup"]) and _finite_positive(a["timing"]["per_second"])
            assert a["timing"]["flops"] > 0 and _finite_positive(a["timing"]["fraction_of_peak"])
            ag = a["agreement"]
            assert ag["images"] == smoke["results"]["attribution"]["batch"]
            assert math.isfinite(ag["max_abs_diff"]) and ag["max_abs_diff"] >= 0
            assert -1 <= ag["spearman_min"] <= ag["spearman_mean"] <= 1


def test_same_algorithms_agree_to_float_precision(smoke):
    seen = set()
    for row in smoke["results"]["attribution"]["rows"]:
        for a in row["anchors"]:
            pair = (row["method"], a["library"])
            if pair not in SAME_ALGORITHM:
                continue
            seen.add(pair)
            ag, rule = a["agreement"], SAME_ALGORITHM[pair]
            assert ag["constant_maps"] == 0, pair
            assert ag["spearman_min"] > tol.RANK, (pair, ag)
            if rule == "cross_library":  # rule 5, well-conditioned
                assert ag["rel_max_abs_diff"] <= tol.CROSS_LIBRARY, (pair, ag)
            elif rule == "kinks":  # rule 4: the rank correlation asserted above is all that holds
                pass
            else:  # rule 5, ill-conditioned: the formula and its inputs on their own
                check = a["check"]
                assert check["formula_float64"]["rel_max_abs_diff"] <= tol.FORMULA64, (pair, check)
                assert check["layer_activations"]["rel_max_abs_diff"] <= tol.NETWORK, (pair, check)
                assert check["layer_gradients"]["rel_max_abs_diff"] <= tol.NETWORK, (pair, check)
    assert seen == set(SAME_ALGORITHM)


def test_formula_check_tells_a_real_disagreement_from_rounding(lite0):
    """The ill-conditioned rule must still catch a formula that differs: Grad-CAM's weights are not
    Grad-CAM++'s, and fed the same float64 inputs they disagree by far more than FORMULA64."""
    from xai.bench.attribution import bench_inputs, formula_check

    x, t, _ = bench_inputs(lite0, 64, 2)
    right = formula_check("grad_cam_pp", "GradCAMPlusPlus", lite0.model, "blocks.1", x, t)
    wrong = formula_check("grad_cam", "GradCAMPlusPlus", lite0.model, "blocks.1", x, t)
    assert right["formula_float64"]["rel_max_abs_diff"] <= tol.FORMULA64
    assert wrong["formula_float64"]["rel_max_abs_diff"] > 1e3 * tol.FORMULA64


def test_occlusion_row_records_its_incremental_plan(smoke):
    occ = {row["method"]: row for row in smoke["results"]["attribution"]["rows"]}["occlusion"]["incremental"]
    # The smoke setting's four windows per image save less than a clean pass: it runs in full, and says why.
    assert occ["plan"]["incremental"] is (occ["plan"]["reason"] is None)
    assert occ["plan"]["windows"] > 0 and 0 <= occ["plan"]["flops_saved"] < 1
    assert occ["against_full"]["rel_max_abs_diff"] <= tol.NETWORK  # rule 3: the same copy, other crops
    assert "Occlusion r" in smoke["markdown"].read_text()


def test_differing_algorithms_still_point_the_same_way(smoke):
    rows = {row["method"]: row for row in smoke["results"]["attribution"]["rows"]}
    sg = rows["smoothgrad"]
    # Independent noise draws: agreement is limited by the samples, but a sign or axis error would make it <= 0.
    assert sg["self_agreement"]["spearman_mean"] > 0
    assert sg["anchors"][0]["agreement"]["spearman_mean"] > 0
    assert sg["anchors"][0]["map_agreement"]["spearman_mean"] > 0
    # Score-CAM's channel weights differ by design (probability vs softmax over channels), not its maps' sense.
    assert rows["score_cam"]["anchors"][0]["agreement"]["spearman_mean"] > 0


def test_every_metric_quantus_has_gets_a_row(smoke):
    from xai.metrics import METRICS

    mt = smoke["results"]["metrics"]
    cfg = bench.config("smoke")
    assert mt["batch"] == cfg.metrics_batch and mt["attributions"] == "gradient"
    # Quantus has every family's metrics; deletion and insertion (as AUCs) it has not
    assert [r["metric"] for r in mt["rows"]] == [n for n in METRICS if n not in ("deletion", "insertion")]
    for r in mt["rows"]:
        assert len(r["ours"]["seconds"]) == cfg.repeats and _finite_positive(r["ours"]["median_s"])
        (a,) = r["anchors"]
        assert a["library"] == "quantus" and _finite_positive(a["speedup"])
        assert _finite_positive(a["timing"]["median_s"]) and a["call"]
        kind = a["agreement"]["kind"]
        assert kind in ("same inputs", "own draws", "definition differs")
        if kind == "definition differs":
            assert a["note"], r["metric"]  # the difference is stated


def test_metrics_agree_with_quantus_where_they_share_a_definition(smoke, fmnist_cnn_smoke):
    """The bench's agreement, by the rules of tests/tolerance.py (as in test_metrics_quantus.py)."""
    import math as m

    from xai import attribution as A
    from xai.bench.metrics import bench_inputs

    rows = {r["metric"]: r["anchors"][0]["agreement"] for r in smoke["results"]["metrics"]["rows"]}
    x, t = bench_inputs(fmnist_cnn_smoke, bench.config("smoke").metrics_batch)
    n = x[0].numel()
    total = float(A.gradient(fmnist_cnn_smoke.model, x, t).abs().flatten(1).sum(1).min())
    bounds = {
        # Exact: 0/1 predictions averaged; the same sparse systems (tie-free maps; margins checked in the tests)
        "road_morf": 0.0, "road_lerf": 0.0, "pointing_game": 0.0,
        # The same passes on the same batches, Quantus's float32 norms (test_metrics_quantus.py derives the
        # rule-2 bounds, which depend on the draws); rule 3's bound covers them
        "max_sensitivity": tol.NETWORK, "avg_sensitivity": tol.NETWORK, "local_lipschitz": tol.NETWORK,
        # Quantus's epsilons (test_metrics_quantus.py derives them), plus one float32 rounding of ours
        "sparseness": n * 1e-7 / total + tol.ulps(1), "complexity": n * 1e-12 + tol.ulps(1, m.log(n)),
        "relevance_mass": tol.ulps(1),
    }
    for name, bound in bounds.items():
        ag = rows[name]
        assert ag["kind"] == "same inputs" and ag["values"] > 0, name
        assert ag["max_abs_diff"] <= bound * max(1.0, ag["scale"]), (name, ag)
    for name in ("faithfulness_correlation", "random_logit"):  # rule 7: paired differences of two estimates
        ag = rows[name]
        assert ag["kind"] == "own draws"
        assert abs(ag["mean_diff"]) <= tol.SIGMA * ag["diff_sem"], (name, ag)


def test_featvis_reports_speed_and_final_activations(smoke):
    fv = smoke["results"]["featvis"]
    cfg = bench.config("smoke")
    assert fv["units"] == cfg.featvis_channels * len(cfg.featvis_layers)
    assert _finite_positive(fv["speedup"])
    for side in ("ours", "lucent"):
        assert _finite_positive(fv[side]["per_second"]) and fv[side]["flops"] > 0
    assert len(fv["lucent_unit_seconds"]) == fv["units"]
    floor = fv["floor"]
    assert set(floor["step_seconds"]) == set(cfg.featvis_layers)
    assert all(_finite_positive(s) for s in floor["step_seconds"].values())
    assert math.isclose(floor["run_seconds"], sum(floor["step_seconds"].values()) * cfg.featvis_steps)
    assert math.isclose(floor["max_speedup"], fv["lucent"]["median_s"] / floor["run_seconds"], rel_tol=1e-2)  # median_s is rounded
    for layer in cfg.featvis_layers:
        acts = fv["final_activation"][layer]
        assert len(acts["ours"]) == len(acts["lucent"]) == cfg.featvis_channels
        assert all(math.isfinite(v) for v in acts["ours"] + acts["lucent"])


def test_featvis_times_both_sides_to_lucents_final_activation(smoke):
    fv = smoke["results"]["featvis"]
    cfg = bench.config("smoke")
    tq = fv["time_to_quality"]
    assert fv["kept_steps"][-1] == cfg.featvis_steps
    for layer in cfg.featvis_layers:
        acts = fv["final_activation"][layer]
        theirs, ours = acts["lucent_time_to_quality"], acts["ours_time_to_quality"]
        # Rule 1: the last kept image is the final one, scored by the same function in the same batch.
        assert [c[-1] for c in theirs["curve"]["activation"]] == acts["lucent"]
        assert [c[-1] for c in ours["curve"]["activation"]] == acts["ours"]
        # So lucent reaches its own bar at the latest on its last step, and every time is a real one.
        assert all(s is not None and s <= cfg.featvis_steps for s in theirs["steps"])
        for q in (theirs, ours):
            for step, sec in zip(q["steps"], q["seconds"]):
                assert (step is None) == (sec is None)
                assert step is None or (step in fv["kept_steps"] and _finite_positive(sec))
    assert tq["lucent"]["reached"] == tq["lucent"]["units"] == fv["units"]
    if tq["ours"]["median_s"] is not None:
        assert math.isclose(tq["speedup"], tq["lucent"]["median_s"] / tq["ours"]["median_s"])


def test_score_cam_counts_its_skipped_passes_and_measures_its_approximations(smoke):
    row = next(r for r in smoke["results"]["attribution"]["rows"] if r["method"] == "score_cam")
    p = row["passes"]
    assert p["passes"] == p["channels"] * p["images"] == p["constant"] + p["shared"] + p["made"]
    assert p["every_pass"]["agreement"]["rel_max_abs_diff"] <= tol.NETWORK  # rule 3: shared passes change nothing
    assert {tuple(a["options"]) for a in p["approximations"]} == {("max_channels",), ("mask_size",)}
    for a in p["approximations"]:
        assert _finite_positive(a["seconds"]) and -1 <= a["spearman_min"] <= a["spearman_mean"] <= 1


def test_physical_reference_and_targets(smoke):
    r = smoke["results"]
    assert _finite_positive(r["peak"]["gflops_per_s"])
    mf = r["model_flops"]
    # Backward to the input costs about one more forward (no weight gradients): between 1.5x and 3.5x.
    assert 1.5 < mf["forward_backward_per_image"] / mf["forward_per_image"] < 3.5  # counted FLOPs, not rounding
    whats = {t["what"]: t for t in r["targets"]}
    for method, library, _ in report.SPEED_TARGETS:
        assert isinstance(whats[f"{method} vs {library}"]["met"], bool)
    assert isinstance(whats["feature visualization vs lucent"]["met"], bool)
    assert whats["warm rebuild, full profile"]["met"] is None  # e2e is opt-in and was not run


def test_agreement_measures():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 8, 8))
    same = measure.agreement(a, a)
    assert same["max_abs_diff"] == 0 and same["spearman_min"] == pytest.approx(1)
    flipped = measure.agreement(a, -a)
    assert flipped["spearman_mean"] == pytest.approx(-1)
    # Min-max scaling makes an affine rescaling of the anchor invisible.
    scaled = measure.agreement(a, 3 * a + 1, normalise=True)
    assert scaled["max_abs_diff"] < 1e-12  # rule 2 in float64 (spacing 2.2e-16) on 192 values
    with_constant = measure.agreement(np.zeros((2, 4)), np.stack([np.zeros(4), np.arange(4.0)]))
    assert with_constant["constant_maps"] == 2 and with_constant["spearman_mean"] is None
    with pytest.raises(ValueError):
        measure.agreement(a, a[:2])


def test_time_sides_warms_up_counts_flops_and_alternates():
    calls = []
    w = torch.randn(16, 16)

    def side(name):
        def fn():
            calls.append(name)
            return w @ w
        return fn

    timings, outputs = measure.time_sides({"a": side("a"), "b": side("b")}, 3, torch.device("cpu"))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then rounds in rotating order
    assert timings["a"].flops == timings["b"].flops == 2 * 16 ** 3
    assert len(timings["a"].seconds) == 3 and torch.equal(outputs["a"], w @ w)


def test_bad_names_are_clear_errors(capsys):
    with pytest.raises(UnknownNameError, match="smoke"):
        bench.config("smok")
    assert bench.main(["--profile", "smoke", "--only", "atribution"]) == 1
    assert "did you mean: attribution" in capsys.readouterr().err


def _user_caches(tmp_path, monkeypatch) -> dict:
    """A user's cache (data, checkpoints, attribution maps), artifacts and site, as the variables name them."""
    paths = {"XAI_CACHE": tmp_path / "cache", "XAI_GENERATED": tmp_path / "generated", "XAI_BUILD": tmp_path / "_build"}
    for rel in ("cache/data/fmnist.gz", "cache/checkpoints/model.safetensors", "cache/attributions/ab/map.pt",
                "generated/manifest.json", "_build/html/index.html"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    for var, path in paths.items():
        monkeypatch.setenv(var, str(path))
    return paths


def _snapshot(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_e2e_builds_cold_then_warm_without_touching_the_users_caches(tmp_path, monkeypatch):
    from xai.bench import e2e

    user = _user_caches(tmp_path, monkeypatch)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    before = _snapshot(tmp_path)
    seen = []

    def fake_make_book(profile, env):
        # Every build: the user's files exactly as they were; it writes only where env points.
        assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("scratch/")} == before
        assert all(not Path(env[v]).is_relative_to(user[v]) for v in user)
        cache, gen, build = (Path(env[v]) for v in ("XAI_CACHE", "XAI_GENERATED", "XAI_BUILD"))
        assert (cache / "data").resolve() == (user["XAI_CACHE"] / "data").resolve()  # downloaded data reused
        seen.append((profile, sorted(p.name for p in cache.iterdir()),
                     sorted(p.name for p in gen.iterdir()) if gen.exists() else None,
                     build.exists()))
        for d in (gen, build, cache / "checkpoints"):
            d.mkdir(parents=True, exist_ok=True)
            (d / "built").write_text(profile)
        return 0

    monkeypatch.setattr(e2e, "make_book", fake_make_book)
    out = e2e.run(["quick", "full"], log=lambda _: None)
    # The first build of a profile finds only the downloaded data; the second, the first one's output.
    assert seen == [("quick", ["data"], None, False), ("quick", ["checkpoints", "data"], ["built"], True),
                    ("full", ["data"], None, False), ("full", ["checkpoints", "data"], ["built"], True)]
    assert out["full"]["cold_s"] >= 0 and out["full"]["started_without"] == list(e2e.STARTS_WITHOUT)
    assert _snapshot(tmp_path) == before
    assert not list((tmp_path / "scratch").iterdir()), "the scratch folder was not removed"

    monkeypatch.setattr(e2e, "make_book", lambda profile, env: 2)
    with pytest.raises(XaiError, match="failed"):
        e2e.run(["quick"], log=lambda _: None)
    assert _snapshot(tmp_path) == before and not list((tmp_path / "scratch").iterdir())


KILLED_E2E = """
import os, sys, time
from pathlib import Path
from xai.bench import e2e

def slow_build(profile, env):
    Path(env["XAI_GENERATED"]).mkdir(parents=True, exist_ok=True)
    Path(sys.argv[1]).write_text("building")
    time.sleep(60)
    return 0

e2e.make_book = slow_build
e2e.run(["quick"], log=lambda _: None)
"""


def test_an_e2e_run_killed_mid_build_leaves_the_users_caches_in_place(tmp_path, monkeypatch):
    import signal
    import time

    _user_caches(tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    flag = tmp_path / "scratch" / "building.flag"
    flag.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path / "scratch")}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_E2E, str(flag)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), "the e2e run did not start its build"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    after = {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("scratch/")}
    assert after == before


def test_an_e2e_run_keeps_the_other_profiles_last_measurement(tmp_path, monkeypatch):
    from xai.bench import e2e
    from xai.bench.measure import machine
    from xai.models import default_device
    from xai.render.store import Store

    monkeypatch.setenv("XAI_GENERATED", str(tmp_path / "generated"))
    info = machine(default_device())
    full = {"cold_s": 2000.0, "warm_s": 50.0, "started": "earlier", "started_without": []}
    Store(profile="smoke").write_json(bench.RESULTS, {"profile": "smoke", "machine": info, "e2e": {"full": full}})
    quick = {"cold_s": 900.0, "warm_s": 30.0, "started": "now", "started_without": []}
    monkeypatch.setattr(e2e, "run", lambda profiles, log=print: {p: quick for p in profiles})
    threads = torch.get_num_threads()  # the smoke config sets one thread; the rest of the session keeps its own
    try:
        out = bench.run("smoke", ["e2e"], e2e_profiles=["quick"], markdown_path=tmp_path / "B.md",
                        log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    assert out["e2e"] == {"full": full, "quick": quick}
    assert "| full | 33.3 min | 50 s |" in (tmp_path / "B.md").read_text()


def test_ray_section_times_both_executors(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
    # One study (a cold overview, about 10 s a side) keeps the test short; the bench's own is larger.
    monkeypatch.setitem(bench.CONFIGS, "smoke", replace(bench.CONFIGS["smoke"], precompute_studies=("overview",)))
    monkeypatch.setenv("XAI_GENERATED", str(tmp_path / "generated"))
    threads = torch.get_num_threads()
    try:
        out = bench.run("smoke", ["ray"], markdown_path=tmp_path / "B.md", log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    r = out["ray"]
    assert r["profile"] == "smoke" and r["studies"] == ["overview"] and r["workers"] == 2
    assert _finite_positive(r["inprocess_s"]) and _finite_positive(r["ray_s"])
    # Both times are rounded to 0.1 s before the ratio is formed from the unrounded ones.
    assert abs(r["speedup"] - r["inprocess_s"] / r["ray_s"]) <= 0.01 + 0.1 / r["ray_s"]
    text = (tmp_path / "B.md").read_text()
    assert "## Precompute on Ray" in text and f"{r['speedup']:.2f}x" in text


def test_report_copes_with_partial_results(smoke):
    import matplotlib.pyplot as plt

    for missing in ("attribution", "featvis", "metrics"):
        partial = {k: v for k, v in smoke["results"].items() if k != missing}
        partial["targets"] = report.targets(partial)
        text = report.markdown(partial)
        assert "## Targets" in text and ("## Attribution" in text) == (missing != "attribution")
        assert ("## Metrics" in text) == (missing != "metrics")
        plt.close(report.figure(partial))
    cpu_only = {**smoke["results"]["machine"], "gpu": None}  # the cold-build target depends on the device
    e2e = {**smoke["results"], "machine": cpu_only,
           "e2e": {"full": {"cold_s": 3000.0, "warm_s": 75.0, "started": "now", "started_without": []}}}
    met = {t["what"]: t["met"] for t in report.targets(e2e)}
    assert met["warm rebuild, full profile"] is False and met["cold build, full profile (CPU)"] is True
    assert met["cold build, full profile (GPU)"] is None  # no GPU: the row is there, and empty
    assert "No GPU was available to this run" in report.markdown(e2e)
    on_gpu = {**e2e, "machine": {**cpu_only, "gpu": {"name": "H200", "memory_gib": 139}}}
    rows = {t["what"]: t for t in report.targets(on_gpu)}
    assert rows["cold build, full profile (GPU)"]["met"] is False and rows["cold build, full profile (CPU)"]["value"] is None
    assert "No GPU was available" not in report.markdown(on_gpu)
    assert "| full | 50.0 min | 75 s |" in report.markdown(e2e)


def test_book_speed_section_from_a_recorded_run(smoke, tmp_path, monkeypatch):
    from xai import profiles
    from xai.render.store import Store
    from xai.studies import speed

    store = Store(root=tmp_path / "gen")
    profile = profiles.get("smoke")
    monkeypatch.setattr(speed, "RECORD", tmp_path / "missing.json")
    assert speed.run(profile, store) == {"measured": False}
    # The page says so itself; the study writes only the fact.
    assert store.read_json("speed/results.json") == {"measured": False}

    record = tmp_path / "benchmarks.json"
    record.write_text(json.dumps(smoke["results"]))
    monkeypatch.setattr(speed, "RECORD", record)
    assert speed.run(profile, store)["measured"] is True
    assert not list(store.root.rglob("*.md"))  # no Markdown: the page builds its tables from the JSON
    assert store.path("speed/speed.png").stat().st_size > 0
    book = json.loads(store.path("speed/results.json").read_text())
    assert [{k: t[k] for k in ("what", "target", "value", "unit", "met")} for t in book["targets"]] == \
        smoke["results"]["targets"]
    for t in book["targets"]:
        assert t["met_text"] == {True: "yes", False: "no", None: "–"}[t["met"]]
        assert (t["shown"] == "not measured") == (t["value"] is None)
    # one table row per (method, anchor) of the record, with the record's numbers
    pairs = [(r["label"], a["library"], a["speedup"]) for r in smoke["results"]["attribution"]["rows"]
             for a in r["anchors"]]
    assert [(r["label"], r["library"], r["speedup"]) for r in book["attribution"]["rows"]] == pairs
    assert len(book["attribution"]["calls"]) == len(smoke["results"]["attribution"]["rows"])
