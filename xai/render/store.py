"""The artifact store: everything the studies write for the book, under ``book/_generated/``.

Writes are atomic. Each artifact can carry a cache key (a hash of everything that determines it); a
rebuild skips work whose key is unchanged, so an interrupted build resumes where it stopped.
``manifest.json`` records package versions, seeds, timings and the git commit of the build.

The manifest is also all the book's extension knows about the build (it imports neither torch nor
``xai``): the profile, the commit and its date, package versions, the study registry and the profiles'
table, written by :meth:`Store.record_build` and :func:`environment`.

``keys.json`` and ``manifest.json`` are shared by every study writing into the folder, and two
``xai precompute`` runs may write into it at once (two terminals, two studies): each read-modify-write
of them holds an exclusive lock on ``.store.lock`` beside them, so neither run loses the other's entries.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..paths import REPO, generated_dir

LOCK_FILE = ".store.lock"
PACKAGES = ("torch", "torchvision", "timm", "captum", "numpy", "scipy", "matplotlib", "scikit-image",
            "pillow", "jupyter-book", "safetensors")


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts (configs, ids, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict:
    import torch

    commit = _git("rev-parse", "HEAD") or None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(), "platform": platform.platform(), "processor": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": {p: _version(p) for p in PACKAGES}, "xai_version": _version("xai"),
        "git_commit": commit, "git_commit_date": _git("log", "-1", "--format=%cs", commit) if commit else None,
        "git_dirty": None if status is None else bool(status),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Store:
    """Reads and writes artifacts relative to one root (one profile's build)."""

    def __init__(self, root: str | Path | None = None, profile: str = "full"):
        self.root = Path(root) if root is not None else generated_dir()
        self.profile = profile
        self._lock = threading.Lock()
        self._recorders: list[set[str]] = []
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths and keys ------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        p = (self.root / rel).resolve()
        if self.root.resolve() not in p.parents and p != self.root.resolve():
            raise ValueError(f"artifact path {rel!r} leaves the store")
        return p

    def _keys_path(self) -> Path:
        return self.root / "keys.json"

    def _keys(self) -> dict[str, str]:
        try:
            return json.loads(self._keys_path().read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def fresh(self, rel: str, key: str) -> bool:
        """True if ``rel`` exists and was written with this cache key."""
        return self.path(rel).exists() and self._keys().get(rel) == key

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One writer at a time of the shared records: threads of this process and other processes."""
        with self._lock, open(self.root / LOCK_FILE, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes, also on kill -9
            yield

    def _set_key(self, rel: str, key: str | None) -> None:
        with self._exclusive():
            keys = self._keys()
            if keys.get(rel) == key:
                return
            if key is None:
                del keys[rel]
            else:
                keys[rel] = key
            atomic_write_json(self._keys_path(), keys)

    def _write(self, rel: str, write: Callable[[Path], Path], key: str | None) -> Path:
        # An old key must not outlive its file: were the run killed after the new file lands but before
        # its key, a later run asking for the old key would take the new content for the old.
        if self._keys().get(rel) not in (None, key):
            self._set_key(rel, None)
        p = write(self.path(rel))
        if key is not None:
            self._set_key(rel, key)
        with self._lock:
            for files in self._recorders:
                files.add(rel)
        return p

    @contextmanager
    def recording(self) -> Iterator[set[str]]:
        """``with store.recording() as files:`` collects the path of every artifact written meanwhile
        through this store (by any thread: one study at a time per store)."""
        files: set[str] = set()
        with self._lock:
            self._recorders.append(files)
        try:
            yield files
        finally:
            with self._lock:  # by identity: nested recorders may hold equal sets
                self._recorders[:] = [r for r in self._recorders if r is not files]

    def forget(self, rel: str) -> None:
        """Drop ``rel``'s key: from now on it is fresh under no key (its file stays)."""
        self._set_key(rel, None)

    # -- writers -------------------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any, key: str | None = None) -> Path:
        return self._write(rel, lambda p: atomic_write_json(p, obj), key)

    def write_text(self, rel: str, text: str, key: str | None = None) -> Path:
        return self._write(rel, lambda p: atomic_write_text(p, text), key)

    def write_bytes(self, rel: str, data: bytes, key: str | None = None) -> Path:
        return self._write(rel, lambda p: atomic_write_bytes(p, data), key)

    def write_figure(self, rel: str, fig, key: str | None = None, dpi: int = 110) -> Path:
        """A matplotlib figure as PNG (or WebP by extension); the figure is closed afterwards."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fmt = Path(rel).suffix.lstrip(".").lower() or "png"
        if fmt == "webp":
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=dpi, bbox_inches="tight")
            from PIL import Image

            Image.open(io.BytesIO(png.getvalue())).save(buf, format="WEBP", quality=88, method=6)
        else:
            fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return self.write_bytes(rel, buf.getvalue(), key)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.path(rel).read_text())

    def cached_json(self, rel: str, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key; later runs with the same key read the stored result, while every
        file it wrote through this store still exists (it is a :meth:`job`)."""
        return self.job(rel, key, lambda _out: compute())

    # -- cached jobs ---------------------------------------------------------------------------
    def job(self, record: str, key: str, compute: Callable[["JobOutput"], Any]) -> Any:
        """The one cached-job protocol: run ``compute(out)`` unless a record of the same key exists and
        every file the job wrote still exists; return its JSON-able result either way.

        The job writes its files through ``out`` (the store's writers), which lists them in the record:
        a job declares what it writes by writing it, so a deleted figure makes the job stale, never a
        page that fails while the cache says "fresh".
        """
        done = self.job_record(record, key)
        if done is not None:
            return done["result"]
        out = JobOutput(self, key)
        # Every file written through the store while the job runs is one of its files, whether through
        # ``out`` or by a helper that was handed the store.
        with self.recording() as written:
            result = compute(out)
        self.write_json(record, {"key": key, "files": sorted(written | out.kept), "result": result}, key)
        return result

    def job_record(self, record: str, key: str) -> dict | None:
        """The record of a finished job with this key whose files all exist, else None."""
        if not self.fresh(record, key):
            return None
        try:
            rec = self.read_json(record)
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(rec, dict) or rec.get("key") != key or "result" not in rec:
            return None
        if not all(self.path(f).exists() for f in rec.get("files", [])):
            return None
        return rec

    # -- manifest ------------------------------------------------------------------------------
    def _edit_manifest(self, edit: Callable[[dict], None]) -> None:
        env = environment()
        with self._exclusive():
            path = self.root / "manifest.json"
            try:
                manifest = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                manifest = {}
            before = json.dumps({**manifest, "updated": None}, sort_keys=True)
            if manifest.get("profile") not in (None, self.profile):
                manifest = {}  # a build of another profile: start over rather than mix
            manifest.update({"profile": self.profile, "environment": env,
                             "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            manifest.setdefault("studies", {})  # also in a manifest that so far holds only the build's record
            edit(manifest)
            # Unchanged but for its time stamp: not rewritten, so that Sphinx, for which every page bound to
            # a study depends on this file, has nothing to read again in a warm rebuild.
            if json.dumps({**manifest, "updated": None}, sort_keys=True) != before or not path.exists():
                atomic_write_json(path, manifest)

    def update_manifest(self, study: str, summary: dict, seconds: float, seed: int, *,
                        reused: bool = False) -> None:
        """A study's entry; ``reused``: this run found its last results valid, computed in ``seconds``."""
        entry = {"seconds": round(seconds, 2), "seed": seed, "summary": summary}
        self._edit_manifest(lambda m: m["studies"].__setitem__(study, {**entry, "reused": True} if reused else entry))

    def record_build(self, build: dict) -> None:
        """What the book needs to know about the code that computed this folder, beside the studies'
        own records: top-level manifest keys (``registered_studies``, ``profiles``), replaced whole."""
        if "studies" in build:
            raise ValueError("the studies' records are written by update_manifest, one study at a time")
        self._edit_manifest(lambda m: m.update(build))


class JobOutput:
    """The writers a cached job uses (the store's: the job's record lists every path written while it
    runs), and :meth:`keep` for files written by other means."""

    def __init__(self, store: Store, key: str):
        self.store, self.key, self.kept = store, key, set()

    def write_json(self, rel: str, obj: Any) -> Path:
        return self.store.write_json(rel, obj)

    def write_text(self, rel: str, text: str) -> Path:
        return self.store.write_text(rel, text)

    def write_bytes(self, rel: str, data: bytes) -> Path:
        return self.store.write_bytes(rel, data)

    def write_figure(self, rel: str, fig, dpi: int = 110) -> Path:
        return self.store.write_figure(rel, fig, dpi=dpi)

    def keep(self, rel: str) -> None:
        """A file written by other means (an image saved by a library) that the job's freshness depends on."""
        if not self.store.path(rel).exists():
            raise FileNotFoundError(f"job output {rel} was not written")
        self.kept.add(rel)

