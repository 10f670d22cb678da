"""Faults during a build lose nothing: a killed precompute resumes to the same artifacts, concurrent
precomputes keep each other's records, and a failing site build leaves the previous site in place."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def precompute(out: Path, *studies: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "xai", "precompute", "--profile", "smoke", "--out", str(out), "--only", *studies]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]


def artifacts(root: Path) -> dict[str, Path]:
    """Every file the studies wrote. The manifest (timings, dates) and the lock are the build's own, and
    a temporary ``.*.part`` file is a write in progress (one that a kill -9 cut short stays behind as
    litter; no artifact or key refers to it)."""
    skip = {"manifest.json", ".store.lock"}
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip and not p.name.endswith(".part")}


# -- the artifact store's shared records ----------------------------------------------------------------

WRITER = """
import sys
from xai.render.store import Store, cache_key
root, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(root, profile="smoke")
for i in range(n):
    store.write_json(f"{name}/a{i}.json", {"i": i}, key=cache_key(name, i))
    if i % 25 == 0:
        store.update_manifest(f"{name}-{i}", {"i": i}, 0.0, 0)
"""


def test_concurrent_writers_keep_each_others_keys_and_manifest_entries(tmp_path):
    # Without a lock across processes, each read-modify-write of keys.json that overlaps one of the
    # other process's drops that process's newest key: with hundreds of writes each, some always do.
    n = 300
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name, str(n)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("left", "right")]
    for p in procs:
        finish(p, timeout=300)
    keys = json.loads((tmp_path / "keys.json").read_text())
    want = {f"{name}/a{i}.json" for name in ("left", "right") for i in range(n)}
    assert set(keys) == want, f"lost {len(want - set(keys))} keys"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["studies"]) == {f"{name}-{i}" for name in ("left", "right") for i in range(0, n, 25)}
    assert not list(tmp_path.rglob("*.part"))


def test_an_artifact_rewritten_under_a_new_key_loses_its_old_key_first(tmp_path):
    from xai.render.store import Store

    store = Store(tmp_path)
    store.write_text("a.txt", "old", key="k1")
    seen = []

    def write_new(p: Path) -> Path:
        # The moment the new content lands: a kill -9 here must not leave "a.txt" fresh for k1.
        seen.append(store.fresh("a.txt", "k1"))
        p.write_text("new")
        return p

    store._write("a.txt", write_new, "k2")
    assert seen == [False]
    assert store.fresh("a.txt", "k2") and not store.fresh("a.txt", "k1")
    store.write_text("a.txt", "unkeyed")
    assert not store.fresh("a.txt", "k2")


def test_two_concurrent_precomputes_of_different_studies_both_end_up_in_the_records(tmp_path):
    procs = [precompute(tmp_path, "overview"), precompute(tmp_path, "speed")]
    for p in procs:
        finish(p)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["studies"]) == {"overview", "speed"}
    keys = json.loads((tmp_path / "keys.json").read_text())
    assert {k.split("/", 1)[0] for k in keys} == {"overview", "speed", "_studies"}  # each study's record
    assert {"_studies/overview.json", "_studies/speed.json"} <= set(keys)
    # Every keyed file is there, and every file a study keys is in keys.json.
    assert all((tmp_path / k).is_file() for k in keys)
    assert {"overview/photos/chelsea.webp", "speed/speed.png"} <= set(keys)


# -- a precompute killed part-way ----------------------------------------------------------------------

def _wait_for_artifacts(proc: subprocess.Popen, root: Path, at_least: int, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"the precompute ended (exit {proc.returncode}) before it could be killed part-way")
        if len(artifacts(root)) >= at_least:
            return
        time.sleep(0.02)
    pytest.fail("no artifact appeared in time")


def test_a_killed_precompute_reruns_to_the_artifacts_of_an_uninterrupted_one(tmp_path):
    """SIGKILL once the first artifacts exist, rerun, compare every file with an uninterrupted run.

    The overview study writes its photo thumbnails first (each under a cache key) and its JSON and
    Fashion-MNIST figure after loading the models, so a kill after the first files lands mid-study.
    Its images are deterministic byte for byte (WebP of fixed pixels at fixed settings; matplotlib's PNG
    carries no date), so files are compared byte for byte; JSON is compared as parsed values.
    """
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    finish(precompute(reference, "overview"))  # first, so that the model checkpoints are cached for both
    proc = precompute(resumed, "overview")
    _wait_for_artifacts(proc, resumed, at_least=1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = artifacts(resumed)
    manifest = resumed / "manifest.json"
    assert not manifest.exists() or "overview" not in json.loads(manifest.read_text())["studies"]
    assert set(partial) < set(artifacts(reference)), "the kill came too late to interrupt anything"

    finish(precompute(resumed, "overview"))
    want, got = artifacts(reference), artifacts(resumed)
    assert set(got) == set(want)
    for rel, path in want.items():
        if path.suffix == ".json":
            assert untimed(json.loads(got[rel].read_text())) == untimed(json.loads(path.read_text())), rel
        else:
            assert got[rel].read_bytes() == path.read_bytes(), rel
    ref_summary = json.loads((reference / "manifest.json").read_text())["studies"]["overview"]["summary"]
    assert json.loads(manifest.read_text())["studies"]["overview"]["summary"] == ref_summary


def untimed(obj):
    """A study's record (``_studies/<name>.json``) less the time its run took: the rest must be equal."""
    if isinstance(obj, dict) and isinstance(obj.get("result"), dict) and "seconds" in obj["result"]:
        return {**obj, "result": {k: v for k, v in obj["result"].items() if k != "seconds"}}
    return obj


# -- a site build that fails ----------------------------------------------------------------------------

FAKE_JUPYTER_BOOK = """#!{python}
# Stands in for jupyter-book: records what it found in its output folder, then does to that folder what a
# build that fails part-way does (pages gone, others half-written), and exits with FAKE_JB_RC.
import os, sys
from pathlib import Path
args = sys.argv[1:]
html = Path(args[args.index("--path-output") + 1]) / "_build" / "html"
index = html / "index.html"
Path(os.environ["FAKE_JB_SEEN"]).write_text(index.read_text() if index.exists() else "(nothing)")
html.mkdir(parents=True, exist_ok=True)
index.unlink(missing_ok=True)
(html / "half.html").write_text("<html><body>half")
if os.environ["FAKE_JB_RC"] == "0":
    index.write_text("new site")
sys.exit(int(os.environ["FAKE_JB_RC"]))
"""


def build_site(tmp_path: Path, rc: int) -> tuple[subprocess.CompletedProcess, str]:
    fake = tmp_path / "jupyter-book"
    fake.write_text(FAKE_JUPYTER_BOOK.replace("{python}", sys.executable))
    fake.chmod(0o755)
    seen = tmp_path / "seen.txt"
    env = _env(XAI_BUILD=str(tmp_path / "_build"), XAI_JUPYTER_BOOK=str(fake), FAKE_JB_RC=str(rc),
               FAKE_JB_SEEN=str(seen), XAI_GENERATED=str(tmp_path / "generated"))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build"), "--skip-precompute"], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, seen.read_text()


def site_files(build: Path) -> dict[str, str]:
    return {p.relative_to(build).as_posix(): p.read_text() for p in build.rglob("*") if p.is_file()}


def test_a_failing_site_build_keeps_the_previous_site_and_a_good_one_replaces_it(tmp_path):
    build = tmp_path / "_build"
    (build / "html" / "book").mkdir(parents=True)
    (build / "html" / "index.html").write_text("previous site")
    (build / "html" / "book" / "intro.html").write_text("previous intro")
    (build / ".doctrees").mkdir()
    (build / ".doctrees" / "environment.pickle").write_text("state")
    before = site_files(build)

    proc, seen = build_site(tmp_path, rc=1)
    assert proc.returncode == 1
    assert "previous site is unchanged" in proc.stderr
    assert seen == "previous site"  # the build started from a copy of the last one (incremental)
    assert site_files(build) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_build", "jupyter-book", "seen.txt"]

    proc, seen = build_site(tmp_path, rc=0)
    assert proc.returncode == 0, proc.stderr
    after = site_files(build)
    assert after["html/index.html"] == "new site" and "html/half.html" in after
    # What the build did not touch carries over from the last build, as in an incremental Sphinx build.
    assert after["html/book/intro.html"] == "previous intro" and after[".doctrees/environment.pickle"] == "state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_build", "jupyter-book", "seen.txt"]


def test_a_build_killed_during_the_swap_or_the_build_is_recovered_by_the_next(tmp_path):
    # Killed between the two renames of the swap: the last good site is the hidden ".old" one.
    old = tmp_path / "._build.old" / "html"
    old.mkdir(parents=True)
    (old / "index.html").write_text("previous site")
    # Killed during the build: its half-built folder is still there.
    stale = tmp_path / "._build.next" / "_build" / "html"
    stale.mkdir(parents=True)
    (stale / "stale.html").write_text("from a killed build")
    proc, seen = build_site(tmp_path, rc=1)
    assert proc.returncode == 1
    assert seen == "previous site"
    assert site_files(tmp_path / "_build") == {"html/index.html": "previous site"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_build", "jupyter-book", "seen.txt"]
