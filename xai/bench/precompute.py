"""The precompute on Ray against in process: ``xai precompute`` of one profile, run once with
``--executor inprocess`` and once with ``--executor ray --workers N``, each from a cold store.

Each side runs as its own ``xai precompute`` process in a scratch environment of its own (see
:func:`.e2e.cold_environment`): no generated artifacts and no cached attribution maps, so both
compute the same work; the downloaded data and the trained checkpoints are linked in, so neither
side pays for training. The Ray side's time includes starting its local cluster, which is what a
user of ``--executor ray`` on one machine waits for.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from ..errors import XaiError
from .e2e import DOWNLOADED, cold_environment


def _precompute(args: list[str], env: dict[str, str], log: Callable[[str], None]) -> float:
    cmd = [sys.executable, "-m", "xai", "precompute", *args, "--out", env["XAI_GENERATED"]]
    log(f"bench: ray: {' '.join(cmd[2:])}")
    start = time.perf_counter()
    r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise XaiError(f"bench: {' '.join(cmd[2:4])} failed (exit {r.returncode}) after {seconds:.0f} s: {tail}")
    return seconds


def run(cfg, log: Callable[[str], None] = print) -> dict:
    """``{"profile", "studies", "workers", "inprocess_s", "ray_s", "speedup"}``, or ``{"skipped": why}``."""
    try:
        import ray  # noqa: F401
    except ImportError as e:
        return {"skipped": f"ray is not installed ({e}): pip install -e '.[ray]'"}
    only = ["--only", *cfg.precompute_studies] if cfg.precompute_studies else []
    base = ["--profile", cfg.precompute_profile, *only]
    seconds = {}
    for side, extra in (("inprocess", []), ("ray", ["--executor", "ray", "--workers", str(cfg.precompute_workers)])):
        with cold_environment(keep=(*DOWNLOADED, "checkpoints")) as env:
            seconds[side] = _precompute(base + extra, env, log)
    out = {"profile": cfg.precompute_profile, "studies": list(cfg.precompute_studies or ["all"]),
           "workers": cfg.precompute_workers, "inprocess_s": round(seconds["inprocess"], 1),
           "ray_s": round(seconds["ray"], 1), "speedup": round(seconds["inprocess"] / seconds["ray"], 2)}
    log(f"bench: ray: precompute {out['profile']} ({', '.join(out['studies'])}): in process {out['inprocess_s']} s, "
        f"Ray with {out['workers']} workers {out['ray_s']} s, {out['speedup']}x")
    return out
