"""The artifact store: everything the studies write for the book, under ``book/_generated/``.

Writes are atomic. Each artifact can carry a cache key (a hash of everything that determines it); a
rebuild skips work whose key is unchanged, so an interrupted build resumes where it stopped.
``manifest.json`` records package versions, seeds, timings and the git commit of the build.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..paths import REPO, generated_dir

PACKAGES = ("torch", "torchvision", "timm", "captum", "numpy", "scipy", "matplotlib", "scikit-image",
            "pillow", "jupyter-book", "safetensors")


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts (configs, ids, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            versions[p] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "python": platform.python_version(), "platform": platform.platform(), "processor": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions, "git_commit": commit, "git_dirty": dirty,
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

    def _record_key(self, rel: str, key: str | None) -> None:
        if key is None:
            return
        with self._lock:
            keys = self._keys()
            keys[rel] = key
            atomic_write_json(self._keys_path(), keys)

    # -- writers -------------------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any, key: str | None = None) -> Path:
        p = atomic_write_json(self.path(rel), obj)
        self._record_key(rel, key)
        return p

    def write_text(self, rel: str, text: str, key: str | None = None) -> Path:
        p = atomic_write_text(self.path(rel), text)
        self._record_key(rel, key)
        return p

    def write_bytes(self, rel: str, data: bytes, key: str | None = None) -> Path:
        p = atomic_write_bytes(self.path(rel), data)
        self._record_key(rel, key)
        return p

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
        """``compute()`` once per key; later runs with the same key read the stored result."""
        if self.fresh(rel, key):
            return self.read_json(rel)
        value = compute()
        self.write_json(rel, value, key)
        return value

    # -- manifest ------------------------------------------------------------------------------
    def update_manifest(self, study: str, summary: dict, seconds: float, seed: int) -> None:
        with self._lock:
            path = self.root / "manifest.json"
            try:
                manifest = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                manifest = {}
            if manifest.get("profile") not in (None, self.profile):
                manifest = {}  # a build of another profile: start over rather than mix
            manifest.update({"profile": self.profile, "environment": environment(),
                             "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            manifest.setdefault("studies", {})[study] = {"seconds": round(seconds, 2), "seed": seed,
                                                         "summary": summary}
            atomic_write_json(path, manifest)

    @contextmanager
    def study(self, name: str, seed: int):
        """Time a study and record it in the manifest: ``with store.study("x", seed) as rec: rec["k"] = v``."""
        summary: dict = {}
        start = time.perf_counter()
        yield summary
        self.update_manifest(name, summary, time.perf_counter() - start, seed)
