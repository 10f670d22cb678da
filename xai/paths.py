"""Where caches and generated artifacts live. Override with XAI_CACHE / XAI_GENERATED."""
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


def data_root() -> Path:
    """Files unpacked from Debian packages by scripts/fetch-data (mirrors their / layout)."""
    return cache_dir() / "data"


def checkpoint_dir() -> Path:
    return cache_dir() / "checkpoints"
