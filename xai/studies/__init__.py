"""Studies: one module per chapter. Each is ``run(profile, store) -> summary`` and writes through the store.

A study is a plain function with explicit inputs and outputs, so an executor (:mod:`xai.run`)
may run independent studies in parallel, in other processes or on other machines; :data:`DEPENDS`
says which study must finish before another starts.
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
    "microscope": "xai.studies.microscope",
    "speed": "xai.studies.speed",
}

# Study -> the studies whose outputs it reuses. Not for correctness (every study computes what it lacks,
# and the store's writes are atomic and locked), but so that a parallel run does not do the same work
# twice: leaderboard ranks methods on cleverhans' checkpoints (it would train them again), faithfulness
# reads saliency's cached maps, counterfactual the Fashion-MNIST probabilities misclassification caches.
DEPENDS: dict[str, tuple[str, ...]] = {
    "faithfulness": ("saliency",),
    "counterfactual": ("misclassification",),
    "leaderboard": ("cleverhans",),
}


def selected(names: list[str] | None) -> list[str]:
    """The named studies (all when None or empty) in registry order; an unknown name is an error."""
    names = list(STUDIES) if not names else names
    for n in names:
        if n not in STUDIES:
            raise UnknownNameError("study", n, STUDIES)
    return [s for s in STUDIES if s in names]


def record_build(store: Store, profile: Profile) -> None:
    # The book reads the registry from here (a study missing from it shows as "not computed"), not from
    # this package: its extension imports neither torch nor xai. ``published`` false puts a notice on
    # every page (a test build with stand-in weights must say it is not the report).
    store.record_build({"registered_studies": list(STUDIES), "profiles": profiles.table(),
                        "published": profile.published})


def enabled(names: list[str] | None, profile: Profile, *, log=print) -> list[str]:
    """:func:`selected`, less the studies the profile's config turns off (each said in the log)."""
    out = []
    for n in selected(names):
        if n in profile.disabled:
            log(f"[{n}] off in the {profile.name} config")
        else:
            out.append(n)
    return out


def run_study(name: str, profile: Profile, store: Store, *, log=print) -> dict:
    """One study, seeded and timed in the manifest; returns its summary. A study whose inputs are those
    of its last finished run, and whose files are all there, is not run again (:mod:`.reuse`)."""
    from . import reuse

    module = importlib.import_module(STUDIES[name])
    seen = profile.for_study(name)
    key = reuse.key(name, seen, module)
    done = reuse.finished(store, name, key)
    if done is not None:
        store.update_manifest(name, done["summary"], done["seconds"], done["seed"], reused=True)
        log(f"[{name}] unchanged since its last run ({done['seconds']:.1f} s): reused")
        return done["summary"]
    reuse.start(store, name)
    torch.manual_seed(profile.seed)
    start = time.perf_counter()
    log(f"[{name}] running ({profile.name} profile)")
    with store.recording() as written:
        summary = module.run(seen, store) or {}
    seconds = time.perf_counter() - start
    store.update_manifest(name, summary, seconds, profile.seed)
    reuse.record(store, name, key, written, {"summary": summary, "seconds": round(seconds, 2), "seed": profile.seed})
    log(f"[{name}] done in {seconds:.1f} s")
    return summary


def run(names: list[str] | None, profile: Profile, store: Store, *, log=print) -> dict[str, dict]:
    """Run the named studies (all when None) in registry order; returns their summaries."""
    order = enabled(names, profile, log=log)
    record_build(store, profile)
    return {n: run_study(n, profile, store, log=log) for n in order}
