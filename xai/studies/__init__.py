"""Studies: one module per chapter. Each is ``run(profile, store) -> summary`` and writes through the store.

A study is a plain function with explicit inputs and outputs, so an engine such as Ray or Dask could
run them across machines later; the order below only matters for studies that read another's output.
"""
from __future__ import annotations

import importlib
import time

import torch

from .. import profiles
from ..errors import UnknownNameError
from ..profiles import Profile
from ..render.store import Store

STUDIES: dict[str, str] = {
    "overview": "xai.studies.overview",
    "saliency": "xai.studies.saliency",
    "gradcam": "xai.studies.gradcam",
    "faithfulness": "xai.studies.faithfulness",
    "misclassification": "xai.studies.misclassification",
    "counterfactual": "xai.studies.counterfactual",
    "cleverhans": "xai.studies.cleverhans",
    "leaderboard": "xai.studies.leaderboard",  # after cleverhans: it ranks methods on its models
    "featvis": "xai.studies.featvis",
    "concepts": "xai.studies.concepts",
    "speed": "xai.studies.speed",
}


def run(names: list[str] | None, profile: Profile, store: Store, *, log=print) -> dict[str, dict]:
    """Run the named studies (all when None) in registry order; returns their summaries."""
    names = list(STUDIES) if not names else names
    for n in names:
        if n not in STUDIES:
            raise UnknownNameError("study", n, STUDIES)
    # The book reads the registry from here (a study missing from it shows as "not computed"), not from
    # this package: its extension imports neither torch nor xai.
    store.record_build({"registered_studies": list(STUDIES), "profiles": profiles.table()})
    results = {}
    for n in [s for s in STUDIES if s in names]:
        if n in profile.disabled:
            log(f"[{n}] off in the {profile.name} config")
            continue
        torch.manual_seed(profile.seed)
        start = time.perf_counter()
        log(f"[{n}] running ({profile.name} profile)")
        module = importlib.import_module(STUDIES[n])
        with store.study(n, profile.seed) as summary:
            summary.update(module.run(profile.for_study(n), store) or {})
        log(f"[{n}] done in {time.perf_counter() - start:.1f} s")
        results[n] = summary
    return results
