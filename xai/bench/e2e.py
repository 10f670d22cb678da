"""End to end: the wall time of ``make book`` from a cold cache and again warm.

Cold means what a fresh clone has: the virtual environment and the downloaded data, but no generated
artifacts, no built site, no trained checkpoints and no cached attribution maps. The builds run against
a scratch folder of their own (``XAI_CACHE``, ``XAI_GENERATED`` and ``XAI_BUILD`` point into it, with the
downloaded data linked in), so the user's caches, artifacts and site are never moved or written: a
failed build, Ctrl-C or a kill -9 leaves them as they were. The scratch folder is deleted afterwards
(it goes where ``TMPDIR`` says; a kill -9 leaves it behind there, and nothing else).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import XaiError
from ..paths import REPO, cache_dir

# What scripts/fetch-data downloads into the cache: a fresh clone fetches it once, so a cold build reuses it.
DOWNLOADED = ("data", "debs")
# What a cold build starts without, as recorded with its time.
STARTS_WITHOUT = ("generated artifacts", "built site", "trained checkpoints", "attribution cache")


@contextmanager
def cold_environment(keep: Sequence[str] = DOWNLOADED) -> Iterator[dict[str, str]]:
    """Environment variables that point a build at an empty scratch cache, artifact folder and site; the
    cache's ``keep`` folders are linked in."""
    scratch = Path(tempfile.mkdtemp(prefix="xai-e2e-"))
    try:
        cache = scratch / "cache"
        cache.mkdir()
        for name in keep:
            if (cache_dir() / name).exists():
                (cache / name).symlink_to(cache_dir() / name, target_is_directory=True)
        yield {"XAI_CACHE": str(cache), "XAI_GENERATED": str(scratch / "generated"),
               "XAI_BUILD": str(scratch / "_build")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def make_book(profile: str, env: dict[str, str]) -> int:
    return subprocess.run(["make", "book", f"PROFILE={profile}"], cwd=REPO, env={**os.environ, **env}).returncode


def build_seconds(profile: str, env: dict[str, str], log: Callable[[str], None] = print) -> float:
    """Wall time of ``make book PROFILE=profile`` with ``env``; a failed build is an error."""
    log(f"bench: e2e: make book PROFILE={profile}")
    start = time.perf_counter()
    rc = make_book(profile, env)
    seconds = time.perf_counter() - start
    if rc:
        raise XaiError(f"make book PROFILE={profile} failed (exit {rc}) after {seconds:.0f} s")
    log(f"bench: e2e: make book PROFILE={profile}: {seconds:.1f} s")
    return seconds


def run(profiles: Sequence[str], log: Callable[[str], None] = print) -> dict:
    """Cold then warm ``make book`` for each profile, in order, each profile from its own cold start."""
    out = {}
    for profile in profiles:
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with cold_environment() as env:
            cold = build_seconds(profile, env, log)
            warm = build_seconds(profile, env, log)
        out[profile] = {"cold_s": round(cold, 1), "warm_s": round(warm, 1), "started": started,
                        "started_without": list(STARTS_WITHOUT)}
    return out
