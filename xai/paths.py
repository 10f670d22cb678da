"""Where caches, generated artifacts and the built site live. Override with XAI_CACHE / XAI_GENERATED / XAI_BUILD."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Downloaded data and trained checkpoints; survives rebuilds, safe to delete."""
    return Path(os.environ.get("XAI_CACHE", REPO / ".cache")).resolve()


def generated_dir() -> Path:
    """What the studies write and the book reads."""
    return Path(os.environ.get("XAI_GENERATED", REPO / "book" / "_generated")).resolve()


def build_dir() -> Path:
    """What scripts/build writes: the site in ``html/`` and Sphinx's state for incremental rebuilds."""
    return Path(os.environ.get("XAI_BUILD", REPO / "_build")).resolve()


def data_root() -> Path:
    """Files unpacked from Debian packages by scripts/fetch-data (mirrors their / layout)."""
    return cache_dir() / "data"


def checkpoint_dir() -> Path:
    return cache_dir() / "checkpoints"
