"""A study whose inputs have not changed since it last finished is not run again.

Each study's cached jobs already skip the work whose key is unchanged, but a warm ``make book`` still
paid for what a study does around them: loading its models, a forward pass over the photos to choose
channels, the figures it redraws from cached maps. So :func:`xai.studies.run_study` first asks
:func:`finished` whether the study's last run is still valid, and reuses its summary if so.

The key of a study hashes everything its outputs depend on:

* the code: every file of the ``xai`` package. Any change reruns every study, whose own cached jobs
  then skip what the change did not touch; a finer key would have to know which code each study calls.
* the Python version and the installed versions of ``xai``'s own requirements (torch, timm, the weight
  wheels, ...);
* the profile as the study sees it (``Profile.for_study``): its models, options, seed and photos;
* files outside the package that the profile points at: a config's weights and class lists, the
  modules that define a registered or entry-point model outside ``xai`` (``models.definition_files``),
  and those the study module lists in ``INPUTS`` (the speed study: ``benchmarks.json``);
* the device type (CPU or CUDA).

The record (``_studies/<name>.json``) lists the files the study wrote and every file under its folder;
a study any of whose files is gone is run again, so a deleted figure never leaves a page without it.
Data from ``scripts/fetch-data`` is not hashed: the script verifies it against fixed checksums.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import platform
import re
from importlib import metadata
from pathlib import Path
from types import ModuleType

from .. import models
from ..data import folders
from ..profiles import Profile
from ..render.store import Store, cache_key

RECORDS = "_studies"
VERSION = 1  # of the record's layout
HASHED_BYTES = 64 * 2**20  # larger input files are fingerprinted by size and modification time


@functools.cache
def code_fingerprint() -> str:
    """A hash of every file of the installed ``xai`` package (sources, shipped configs, manifests)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:20]


@functools.cache
def distributions() -> tuple[str, ...]:
    """The Python version and the installed version of each of ``xai``'s own requirements (extras
    included). Not every visible distribution: ``import ray`` puts copies of others on ``sys.path``, and an
    unrelated install would rerun every study."""
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in metadata.requires("xai") or []}
    found = []
    for name in sorted(names):
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return (f"python=={platform.python_version()}", *found)


def file_fingerprint(path: str | Path) -> list:
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        return [str(p), None]
    if st.st_size <= HASHED_BYTES:
        return [str(p), hashlib.sha256(p.read_bytes()).hexdigest()[:20]]
    return [str(p), st.st_size, st.st_mtime_ns]


def external_inputs(profile: Profile, module: ModuleType) -> list:
    """Fingerprints of the files outside the package that the study's outputs depend on: every model
    source of the config (studies also load models named in their options, not only those that
    ``for_study`` leaves), the profile's other models' definitions, and the module's ``INPUTS``."""
    files: list[str | Path] = [*getattr(module, "INPUTS", ())]
    specs = {profile.source(m).spec for m in (*profile.imagenet_models, *profile.fmnist_models, *profile.other_models)}
    for source in profile.sources:
        files += [f for f in (source.weights, source.classes) if f]
        specs.add(source.spec)
    for spec in sorted(specs):
        files += models.definition_files(spec)
    return [file_fingerprint(f) for f in files] + [[str(f), folders.digest(f)] for f in folders.files(profile.folders)]


def key(name: str, profile: Profile, module: ModuleType) -> str:
    """The study's key; ``profile`` as the study sees it."""
    # The device too: a CUDA run's numbers are not a CPU run's (the thread count changes only rounding).
    return cache_key("study", VERSION, name, code_fingerprint(), distributions(), models.default_device().type,
                     dataclasses.asdict(profile), external_inputs(profile, module))


def record_path(name: str) -> str:
    return f"{RECORDS}/{name}.json"


def start(store: Store, name: str) -> None:
    """Before a study runs: its last record stops counting, so that a run that fails or is killed after
    rewriting some files can never be taken for the last finished one (say after an option is reverted)."""
    store.forget(record_path(name))


def finished(store: Store, name: str, study_key: str) -> dict | None:
    """``{"summary", "seconds", "seed"}`` of the study's last run if it had this key and all its files
    are still there; else None."""
    rec = store.job_record(record_path(name), study_key)
    return None if rec is None else rec["result"]


def record(store: Store, name: str, study_key: str, written: set[str], result: dict) -> None:
    """After a study finished: its result and its files (those it wrote, and all under its folder)."""
    folder = store.path(name)
    # Hidden files are the store's own (a write in progress, ``.*.part``), not the study's.
    under = {str(p.relative_to(store.root.resolve())) for p in folder.rglob("*")
             if p.is_file() and not p.name.startswith(".")} if folder.is_dir() else set()
    store.write_json(record_path(name), {"key": study_key, "files": sorted(written | under), "result": result},
                     study_key)
