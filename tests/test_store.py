import importlib.machinery
import importlib.util
import json
from pathlib import Path

import pytest

from xai.render.store import Store, cache_key

ROOT = Path(__file__).resolve().parent.parent


def test_atomic_writes_keys_and_manifest(tmp_path):
    store = Store(tmp_path, profile="smoke")
    key = cache_key("a", {"steps": 3})
    assert not store.fresh("x/result.json", key)
    calls = []
    value = store.cached_json("x/result.json", key, lambda: calls.append(1) or {"v": 1})
    again = store.cached_json("x/result.json", key, lambda: calls.append(1) or {"v": 2})
    assert value == again == {"v": 1} and len(calls) == 1
    assert store.cached_json("x/result.json", cache_key("b"), lambda: {"v": 3}) == {"v": 3}
    assert not list(tmp_path.rglob("*.part"))  # no temporary files left behind
    store.update_manifest("demo", {"n": 2}, 0.5, seed=7)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["studies"]["demo"]["seed"] == 7
    assert manifest["studies"]["demo"]["summary"] == {"n": 2}
    assert manifest["environment"]["packages"]["torch"]
    with pytest.raises(ValueError):
        store.path("../outside.json")


def test_interrupted_write_leaves_old_file(tmp_path):
    store = Store(tmp_path)
    store.write_text("a.txt", "old")

    class Boom(Exception):
        pass

    def fail(_):
        raise Boom

    from xai.io import atomic_write

    with pytest.raises(Boom):
        atomic_write(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "old" and not list(tmp_path.glob(".a.txt*"))


def _fetch_module():
    loader = importlib.machinery.SourceFileLoader("fetch_data", str(ROOT / "scripts" / "fetch-data"))
    spec = importlib.util.spec_from_loader("fetch_data", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_fetch_data_verifies_present_files(capsys):
    assert _fetch_module().main() == 0
    assert "verified" in capsys.readouterr().out


def test_fetch_data_stops_with_what_is_missing(monkeypatch, tmp_path, capsys):
    fetch = _fetch_module()
    monkeypatch.setenv("XAI_CACHE", str(tmp_path))
    # No system copy, no apt, no network: every way of getting the files fails.
    for name in ("via_apt_download", "via_apt_install", "via_upstream"):
        monkeypatch.setattr(fetch, name, lambda *a: False)
    monkeypatch.setattr(fetch.FASHION_MNIST.__class__, "candidates",
                        lambda self, rel: [tmp_path / "data" / self.directory.lstrip("/") / rel])
    assert fetch.main() == 1
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz: missing" in err and "data/baboon.jpg: missing" in err
    assert "apt-get install opencv-doc dataset-fashion-mnist" in err


def test_a_cached_job_is_fresh_only_while_every_file_it_wrote_exists(tmp_path):
    from xai.render.store import Store

    store = Store(tmp_path)
    runs = []

    def compute(out):
        runs.append(1)
        out.write_text("study/figure.txt", "drawn")
        out.write_json("study/part.json", {"n": len(runs)})
        return {"n": len(runs)}

    assert store.job("study/job.json", "k", compute) == {"n": 1}
    assert store.job("study/job.json", "k", compute) == {"n": 1} and len(runs) == 1  # read back
    assert sorted(store.read_json("study/job.json")["files"]) == ["study/figure.txt", "study/part.json"]
    (tmp_path / "study" / "figure.txt").unlink()  # a deleted figure makes the job stale
    assert store.job("study/job.json", "k", compute) == {"n": 2} and (tmp_path / "study" / "figure.txt").exists()
    assert store.job("study/job.json", "other key", compute) == {"n": 3}
    (tmp_path / "study" / "job.json").write_text("{broken")  # a damaged record is recomputed, not trusted
    assert store.job("study/job.json", "other key", compute) == {"n": 4}


def test_a_cached_json_part_declares_the_files_its_helpers_wrote_through_the_store(tmp_path):
    from xai.render.store import Store

    store = Store(tmp_path)
    runs = []

    def part():  # a helper handed the store, as the studies' figure functions are
        runs.append(1)
        store.write_text("study/figure.txt", "drawn")
        return {"figure": "study/figure.txt"}

    assert store.cached_json("study/part.json", "k", part) == {"figure": "study/figure.txt"}
    assert store.read_json("study/part.json")["files"] == ["study/figure.txt"]
    assert store.cached_json("study/part.json", "k", part) and len(runs) == 1
    (tmp_path / "study" / "figure.txt").unlink()  # the figure's part reruns; the cache never says "fresh"
    store.cached_json("study/part.json", "k", part)
    assert len(runs) == 2 and (tmp_path / "study" / "figure.txt").exists()
