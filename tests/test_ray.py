"""``xai precompute --executor ray``: a local Ray cluster writes what an in-process run writes, a failed or
killed study is reported by name while the others finish, and a rerun completes only what is missing.

Two cheap studies of the smoke profile (overview and Grad-CAM, about 40 s cold on a busy 2-core CPU;
saliency would add 45 s) stand for the report. Each run gets a cache of its own (the downloaded data and trained checkpoints
linked in, no attribution maps), so the Ray run computes its maps rather than reading the in-process
run's.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("ray")  # starts a local Ray cluster: one at a time on this machine

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")

from tolerance import NETWORK  # noqa: E402
from xai import cli, profiles
from xai import run as xrun  # noqa: E402
from xai.paths import cache_dir  # noqa: E402
from xai.render.store import Store  # noqa: E402

STUDIES = ["overview", "gradcam"]
KILLED = "gradcam"
SHARED_CACHE = ("data", "debs", "checkpoints")
# Leaves that are wall times: they differ between any two runs.
TIMING = re.compile(r"second")
# Written by the store itself: timings and environment (manifest), the lock.
NOT_RESULTS = {"manifest.json", ".store.lock"}


def fresh_cache(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in SHARED_CACHE:
        if (cache_dir() / name).exists():
            (root / name).symlink_to(cache_dir() / name, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Workers inherit the environment of ray.init: the Ray side's cache is set before, restored after.
    ray_cache = fresh_cache(tmp_path_factory.mktemp("ray") / "cache")
    before = os.environ.get("XAI_CACHE")
    os.environ["XAI_CACHE"] = str(ray_cache)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if before is None:
            del os.environ["XAI_CACHE"]
        else:
            os.environ["XAI_CACHE"] = before
    # The kill hooks below are defined here, in a module the workers cannot import: send them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory):
    root = tmp_path_factory.mktemp("inprocess")
    mp = pytest.MonkeyPatch()
    mp.setenv("XAI_CACHE", str(fresh_cache(root / "cache")))
    try:
        profile = profiles.get("smoke")
        xrun.InProcess().run(STUDIES, profile, Store(root / "out", profile="smoke"))
    finally:
        mp.undo()
    return root / "out"


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in NOT_RESULTS}


def assert_same_json(a, b, where: str) -> None:
    """Equal key by key; floats by rule 3 of tests/tolerance.py (two float32 passes through the same
    network computed by another process, whose thread count may sum in another order), relative to
    the larger magnitude, at least 1 (the results are scores, correlations and probabilities of order 1)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            if not TIMING.search(k):
                assert_same_json(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool) and isinstance(b, (int, float)):
        if math.isnan(a):
            assert math.isnan(b), f"{where}: nan != {b}"
        else:
            assert abs(a - b) <= NETWORK * max(1.0, abs(a), abs(b)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_results(expected: Path, got: Path) -> None:
    assert files(got) == files(expected)
    for rel in sorted(f for f in files(expected) if f.endswith(".json")):
        assert_same_json(json.loads((expected / rel).read_text()), json.loads((got / rel).read_text()), rel)


def test_ray_run_equals_inprocess(cluster, inprocess, tmp_path):
    # Through the command line, which joins the cluster this process already started.
    out = tmp_path / "out"
    assert cli.main(["precompute", "--profile", "smoke", "--only", *STUDIES, "--out", str(out),
                     "--executor", "ray", "--workers", "2"]) == 0
    assert_same_results(inprocess, out)  # keys.json among them: the same cache keys
    manifest, expected = (json.loads((d / "manifest.json").read_text()) for d in (out, inprocess))
    assert set(manifest["studies"]) == set(STUDIES)
    for key in ("profile", "registered_studies", "profiles"):  # what the book reads of the build
        assert manifest[key] == expected[key]


def die_after_first_job(name, profile, root, store_profile, threads):
    """The killed study's task: SIGKILL its own worker once the study's first cached job is on disk."""
    if name == KILLED:
        original = Store.job

        def job(self, record, key, compute):
            result = original(self, record, key, compute)
            os.kill(os.getpid(), signal.SIGKILL)
            return result

        Store.job = job
    return xrun.study_task(name, profile, root, store_profile, threads)


def job_records(root: Path) -> dict[str, dict]:
    """Every cached job's record in the store: ``{record: {"key", "files", "result"}}``."""
    out = {}
    for rel in json.loads((root / "keys.json").read_text()):
        rec = json.loads((root / rel).read_text()) if rel.endswith(".json") else None
        if isinstance(rec, dict) and {"key", "files", "result"} <= rec.keys():
            out[rel] = rec
    return out


def test_killed_worker_is_reported_and_a_rerun_completes_only_what_is_missing(cluster, inprocess, tmp_path):
    profile, out = profiles.get("smoke"), tmp_path / "out"
    with pytest.raises(xrun.StudiesFailedError) as failure:
        xrun.RayExecutor(workers=2, task=die_after_first_job).run(STUDIES, profile, Store(out, "smoke"),
                                                                       log=lambda _: None)
    assert set(failure.value.failed) == {KILLED} and not failure.value.skipped
    assert "worker died" in failure.value.failed[KILLED]
    assert set(failure.value.done) == set(STUDIES) - {KILLED}
    assert KILLED in str(failure.value)

    # The killed study left some of its jobs, not all: what the rerun must complete.
    before = job_records(out)
    killed_before = [r for r in before if r.startswith(f"{KILLED}/")]
    assert killed_before and not files(inprocess) <= files(out)
    stamps = {rel: (out / rel).stat().st_mtime_ns for rec in before for rel in [rec, *before[rec]["files"]]}

    xrun.RayExecutor(workers=2).run(STUDIES, profile, Store(out, "smoke"), log=lambda _: None)
    assert_same_results(inprocess, out)
    after = job_records(out)
    assert len(after) > len(before) and before.keys() <= after.keys()
    # Finished jobs, of every study and of the killed one, were neither recomputed nor rewritten.
    assert {rel: (out / rel).stat().st_mtime_ns for rel in stamps} == stamps


def raise_for_cleverhans(name, profile, root, store_profile, threads):
    """A stand-in task that fails one study and returns at once for the others (no study is run)."""
    if name == "cleverhans":
        raise ValueError("bad checkpoint")
    return {"stand_in": name}


def test_a_failed_study_stops_only_its_dependents(cluster, tmp_path):
    names = ["overview", "cleverhans", "leaderboard", "speed"]  # leaderboard needs cleverhans
    with pytest.raises(xrun.StudiesFailedError) as failure:
        xrun.RayExecutor(task=raise_for_cleverhans).run(names, profiles.get("smoke"), Store(tmp_path),
                                                             log=lambda _: None)
    e = failure.value
    assert e.failed == {"cleverhans": "ValueError: bad checkpoint"}
    assert set(e.skipped) == {"leaderboard"} and "cleverhans" in e.skipped["leaderboard"]
    assert e.done == {"overview": {"stand_in": "overview"}, "speed": {"stand_in": "speed"}}


def test_cli_rejects_ray_options_without_ray(capsys):
    assert cli.main(["precompute", "--profile", "smoke", "--address", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--address applies to --executor ray only" in err[0]
