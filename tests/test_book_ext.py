"""The book's extension knows the build only through ``book/_generated``.

It imports neither torch nor ``xai`` (checked on its sources here, and by building the smoke site where
both imports fail in ``test_site.py``); what it needs about the build, the precompute writes into the
manifest through the store.
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "book" / "_ext"
sys.path.insert(0, str(EXT))

from xai_book.data import BookDataError, Generated, NotComputed  # noqa: E402

FORBIDDEN = ("torch", "xai")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_the_extension_imports_neither_torch_nor_xai():
    sources = sorted(EXT.rglob("*.py"))
    assert sources
    bad = [f"{p.relative_to(ROOT)}:{line}: {name}" for p in sources for line, name in _imports(p)
           if name.split(".")[0] in FORBIDDEN]
    assert not bad, bad
    # The issue's own check, which also catches an import written inside a string for exec/importlib.
    text = [f"{p.relative_to(ROOT)}:{i}" for p in sources for i, line in enumerate(p.read_text().splitlines(), 1)
            if "import torch" in line or "from xai" in line or "import xai" in line]
    assert not text, text


def test_the_import_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from xai.studies import STUDIES\n    import torch.nn as nn\n")
    assert [name for _, name in _imports(bad)] == ["xai.studies", "torch.nn"]


# -- what the precompute records for the book ------------------------------------------------------------

def test_the_precompute_records_what_the_book_needs(tmp_path):
    from xai import profiles
    from xai.render.store import Store
    from xai.studies import STUDIES

    store = Store(tmp_path, profile="smoke")
    store.record_build({"registered_studies": list(STUDIES), "profiles": profiles.table()})
    # Before any study has finished, the manifest says so: no study ran (and the book fails by name).
    assert json.loads((tmp_path / "manifest.json").read_text())["studies"] == {}
    store.update_manifest("overview", {"photos": 3}, 1.5, seed=0)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["registered_studies"] == list(STUDIES) and m["studies"]["overview"]["summary"] == {"photos": 3}
    assert [p["name"] for p in m["profiles"]] == list(profiles.PROFILES)
    smoke = next(p for p in m["profiles"] if p["name"] == "smoke")
    assert smoke["imagenet_models"] == list(profiles.PROFILES["smoke"].imagenet_models)
    assert smoke["photos"] == list(profiles.PROFILES["smoke"].photos)
    env = m["environment"]
    for key in ("xai_version", "git_commit", "git_commit_date", "git_dirty", "packages"):
        assert key in env, key
    if env["git_commit"]:  # the worktree is a git checkout: its commit date is an ISO date
        assert len(env["git_commit_date"]) == 10 and env["git_commit_date"][4] == "-"
    # A study's record and the build record are separate writers: neither replaces the other.
    store.record_build({"registered_studies": ["overview"], "profiles": []})
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["registered_studies"] == ["overview"] and "overview" in m["studies"]
    with pytest.raises(ValueError):
        store.record_build({"studies": {}})


def test_studies_run_records_the_registry_and_profiles(tmp_path, monkeypatch):
    import xai.studies as studies
    from xai import profiles
    from xai.render.store import Store

    store = Store(tmp_path, profile="smoke")
    monkeypatch.setattr(studies, "STUDIES", {"nothing": "tests.test_book_ext"})
    studies.run(["nothing"], profiles.get("smoke"), store, log=lambda *_: None)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["registered_studies"] == ["nothing"] and m["studies"]["nothing"]["summary"] == {"ran": True}
    assert m["profiles"] == profiles.table()


def run(profile, store) -> dict:
    """The study ``test_studies_run_records_the_registry_and_profiles`` registers."""
    return {"ran": True}


# -- how the extension reads the registry ---------------------------------------------------------------------

def _generated(tmp_path: Path, **manifest) -> Generated:
    (tmp_path / "manifest.json").write_text(json.dumps({"profile": "smoke", "studies": {"overview": {}}, **manifest}))
    return Generated(tmp_path)


def test_a_study_missing_from_the_recorded_registry_is_not_computed(tmp_path):
    gen = _generated(tmp_path, registered_studies=["overview", "saliency"])
    gen.check_study("overview")
    with pytest.raises(NotComputed):
        gen.check_study("nosuchstudy")
    with pytest.raises(BookDataError, match="--only saliency"):  # registered but did not run
        gen.check_study("saliency")


def test_without_a_recorded_registry_every_missing_study_is_an_error(tmp_path):
    gen = _generated(tmp_path)
    with pytest.raises(BookDataError, match="--only nosuchstudy"):
        gen.check_study("nosuchstudy")
