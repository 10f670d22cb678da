"""End to end: the wall time of ``make book`` from a cold cache and again warm.

Cold means what a fresh clone has: the virtual environment and the downloaded data, but no generated
artifacts, no built site, no trained checkpoints and no cached attribution maps. Those are moved aside for the cold build; when
the builds succeed the set-aside copies are deleted (the new build replaces them), and when a build
fails or is interrupted they are put back, so nothing is lost either way.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import XaiError
from ..paths import REPO, cache_dir, checkpoint_dir, generated_dir

ASIDE_SUFFIX = ".bench-aside"


def cold_paths() -> list[Path]:
    # A fresh clone has no attribution cache either: keeping it made "cold" saliency take 25 s, not 134.
    return [generated_dir(), REPO / "_build", checkpoint_dir(), cache_dir() / "attributions"]


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def set_aside(paths: Sequence[Path]) -> Iterator[list[str]]:
    """Move ``paths`` out of the way; keep what the block builds if it succeeds, else restore them."""
    moved: list[tuple[Path, Path]] = []
    for p in paths:
        aside = p.with_name(p.name + ASIDE_SUFFIX)
        if aside.exists():
            raise XaiError(f"{aside} exists: an earlier cold build did not finish cleaning up; "
                           f"move it back to {p.name} or delete it, then run again")
    try:
        for p in paths:
            if p.exists():
                aside = p.with_name(p.name + ASIDE_SUFFIX)
                p.rename(aside)
                moved.append((p, aside))
        yield [str(p) for p, _ in moved]
    except BaseException:
        for p, aside in moved:
            _remove(p)
            aside.rename(p)
        raise
    for _, aside in moved:
        _remove(aside)


def build_seconds(profile: str, log: Callable[[str], None] = print) -> float:
    """Wall time of ``make book PROFILE=profile``; a failed build is an error."""
    log(f"bench: e2e: make book PROFILE={profile}")
    start = time.perf_counter()
    rc = subprocess.run(["make", "book", f"PROFILE={profile}"], cwd=REPO).returncode
    seconds = time.perf_counter() - start
    if rc:
        raise XaiError(f"make book PROFILE={profile} failed (exit {rc}) after {seconds:.0f} s")
    log(f"bench: e2e: make book PROFILE={profile}: {seconds:.1f} s")
    return seconds


def run(profiles: Sequence[str], log: Callable[[str], None] = print) -> dict:
    """Cold then warm ``make book`` for each profile, in order."""
    out = {}
    for profile in profiles:
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with set_aside(cold_paths()) as cleared:
            cold = build_seconds(profile, log)
            warm = build_seconds(profile, log)
        out[profile] = {"cold_s": round(cold, 1), "warm_s": round(warm, 1), "started": started,
                        "cleared": [str(Path(c).relative_to(REPO)) if Path(c).is_relative_to(REPO) else c
                                    for c in cleared]}
    return out
