"""A study whose inputs are unchanged is reused, not rerun; a change of any input, or a lost file, reruns it.

The study here is this module (registered as ``toy`` for the test): it counts its runs and writes two
files, so each test can say whether a ``run_study`` ran it.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from xai import models, profiles, studies
from xai.render.store import Store
from xai.studies import reuse

CALLS: list[int] = []
INPUTS: list[Path] = []  # set per test: files outside the package this study "reads"


def run(profile, store):
    CALLS.append(profile.seed)
    store.write_json("toy/result.json", {"seed": profile.seed, "option": profile.option("toy", "x")})
    store.write_bytes("toy/figures/a.png", b"not really a png")
    if profile.option("toy", "fail"):
        raise RuntimeError("the study failed part-way")
    return {"runs": len(CALLS)}


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setitem(studies.STUDIES, "toy", __name__)
    monkeypatch.setattr(sys.modules[__name__], "INPUTS", [])
    CALLS.clear()
    profile = dataclasses.replace(profiles.get("smoke"), name="smoke")
    store = Store(tmp_path / "gen", profile="smoke")
    log: list[str] = []

    def go(p=profile) -> dict:
        return studies.run_study("toy", p, store, log=log.append)

    return go, profile, store, log


def manifest_entry(store: Store) -> dict:
    return json.loads((store.root / "manifest.json").read_text())["studies"]["toy"]


def test_an_unchanged_study_is_reused_with_its_summary_and_its_own_compute_time(toy):
    go, _, store, log = toy
    first = go()
    computed = manifest_entry(store)
    assert CALLS == [0] and first == {"runs": 1} and "reused" not in computed
    assert go() == first and CALLS == [0]
    again = manifest_entry(store)
    assert again["reused"] is True and again["seconds"] == computed["seconds"]
    assert "unchanged since its last run" in log[-1]
    # The entry is restored from the record when the manifest is lost (a build of another profile resets it).
    (store.root / "manifest.json").unlink()
    assert go() == first and CALLS == [0] and manifest_entry(store)["summary"] == first


def test_a_lost_file_reruns_the_study(toy):
    go, _, store, _ = toy
    go()
    (store.root / "toy/figures/a.png").unlink()
    go()
    assert CALLS == [0, 0] and (store.root / "toy/figures/a.png").exists()


def test_a_file_left_under_the_studys_folder_counts_as_one_of_its_files(toy):
    # Written by an earlier run and reused by the study's own cached jobs without being rewritten: still
    # one of its outputs, so losing it reruns the study.
    go, _, store, _ = toy
    (store.root / "toy").mkdir(parents=True)
    (store.root / "toy/old.json").write_text("{}")
    go()
    (store.root / "toy/old.json").unlink()
    go()
    assert CALLS == [0, 0]


def test_each_input_reruns_the_study_when_it_changes(toy, tmp_path, monkeypatch):
    go, profile, _, _ = toy
    go()
    go(dataclasses.replace(profile, options={**profile.options, "toy": {"x": 1}}))
    go(dataclasses.replace(profile, seed=3))
    monkeypatch.setattr(reuse, "code_fingerprint", lambda: "another version of the code")
    go()
    monkeypatch.setattr(reuse, "distributions", lambda: ("torch==0.0",))
    go()
    assert CALLS == [0, 0, 3, 0, 0]

    data = tmp_path / "benchmarks.json"
    data.write_text("{}")
    monkeypatch.setattr(sys.modules[__name__], "INPUTS", [data])
    go()
    go()
    data.write_text('{"measured": true}')
    go()
    assert CALLS == [0, 0, 3, 0, 0, 0, 0]

    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(b"one")
    mine = dataclasses.replace(profile, other_models=("mine",),
                               sources=(profiles.ModelSource("mine", "timm/resnet18", weights=str(weights)),))
    go(mine)
    go(mine)
    weights.write_bytes(b"two")
    go(mine)
    assert len(CALLS) == 9


def test_a_study_that_fails_leaves_no_record_and_runs_again(toy):
    go, profile, store, _ = toy
    failing = dataclasses.replace(profile, options={**profile.options, "toy": {"fail": True}})
    with pytest.raises(RuntimeError):
        go(failing)
    assert not (store.root / reuse.record_path("toy")).exists()
    with pytest.raises(RuntimeError):
        go(failing)
    assert CALLS == [0, 0]


def test_a_run_that_fails_after_a_finished_one_is_never_taken_for_it(toy):
    # Finished under one key; then a run under another key fails after rewriting the study's files; then
    # the first key again (the option reverted): its record must not vouch for the files the failed run left.
    go, profile, _, _ = toy
    go()
    with pytest.raises(RuntimeError):
        go(dataclasses.replace(profile, options={**profile.options, "toy": {"fail": True}}))
    go()
    assert CALLS == [0, 0, 0]


def _user_model():
    raise NotImplementedError  # only its source file matters here


def test_models_defined_outside_the_package_are_inputs_by_their_source_file(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    models.register("toy_user_model")(_user_model)
    assert models.definition_files("toy_user_model") == [Path(__file__).resolve()]
    assert models.definition_files("efficientnet_lite0") == []  # this package's own: in the code's hash
    assert models.definition_files("timm/resnet18") == []


def test_a_model_from_a_package_depends_on_every_module_of_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "toy_models_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("WIDTH = 8\n")
    (pkg / "nets.py").write_text("from .helpers import WIDTH\n\ndef toy_pkg_model():\n    return WIDTH\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    assert models.import_model_module("toy_models_pkg.nets:toy_pkg_model") == "toy_pkg_model"
    assert sorted(f.name for f in models.definition_files("toy_pkg_model")) == ["__init__.py", "helpers.py", "nets.py"]
    profile = dataclasses.replace(profiles.get("smoke"), other_models=("toy_pkg_model",))
    before = reuse.key("toy", profile, sys.modules[__name__])
    (pkg / "helpers.py").write_text("WIDTH = 16\n")
    assert reuse.key("toy", profile, sys.modules[__name__]) != before


def test_the_speed_study_is_keyed_on_the_benchmark_record():
    from xai.studies import speed

    assert speed.RECORD in speed.INPUTS
