"""Executors: where ``xai precompute`` runs its studies. ``inprocess`` (the default) runs them one after
another in this process; ``ray`` runs each study as a Ray task, independent studies at once.

The unit of work is one study. A Ray task gets the profile and the store's root path and writes
through its own :class:`~xai.render.store.Store` on that path, with the same keys an in-process run
writes: the store's file locks and atomic writes already let several processes write one folder.
So every worker must see the store's folder (and the cache, ``XAI_CACHE``, where checkpoints and
attribution maps live) at the same path: on one machine it is so; a real cluster needs a shared
filesystem (NFS, a cluster FS) mounted at the same path on every node, and the same checkout and
virtual environment there.

A study that fails (an exception, or its worker killed) is reported by name and the others go on;
those that need its outputs (:data:`xai.studies.DEPENDS`) are not started. The run then ends with
:class:`StudiesFailedError`. A rerun computes only what is missing: studies that finished find every
cached job fresh in the store and rewrite nothing but their manifest entry.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import MissingDataError, XaiError
from ..profiles import Profile
from ..render.store import Store

EXECUTORS = ("inprocess", "ray")


class StudiesFailedError(XaiError):
    """Some studies failed (``failed``: name -> why) or were not started because a study they need
    failed (``skipped``); ``done`` holds the summaries of those that finished."""

    def __init__(self, failed: dict[str, str], skipped: dict[str, str], done: dict[str, dict]):
        self.failed, self.skipped, self.done = failed, skipped, done
        parts = [f"{n} ({why})" for n, why in failed.items()]
        parts += [f"{n} (not run: {why})" for n, why in skipped.items()]
        super().__init__(f"{len(failed) + len(skipped)} of {len(failed) + len(skipped) + len(done)} "
                         f"studies did not finish: {'; '.join(parts)}")


class Executor(Protocol):
    def run(self, names: list[str] | None, profile: Profile, store: Store, *,
            log: Callable[[str], None] = print) -> dict[str, dict]:
        """Run the named studies (all when None); return ``{study: summary}``."""


class InProcess:
    """Today's behaviour: the studies in registry order in this process; the first failure stops the run."""

    def run(self, names: list[str] | None, profile: Profile, store: Store, *,
            log: Callable[[str], None] = print) -> dict[str, dict]:
        from .. import studies

        return studies.run(names, profile, store, log=log)


def study_task(name: str, profile: Profile, root: str, store_profile: str, threads: int) -> dict:
    """What one Ray task runs: one study into the store at ``root``; returns its summary."""
    import torch

    from .. import studies

    # Ray sets OMP_NUM_THREADS to the task's CPUs; torch has already read it if imported earlier.
    torch.set_num_threads(threads)
    return studies.run_study(name, profile, Store(root, profile=store_profile))


@dataclass
class RayExecutor:
    """Studies as Ray tasks. ``address``: a running cluster (``ray start --head`` prints it; None starts a
    local one, or uses the one this process already joined). ``workers``: studies at once (default:
    the cluster's CPUs over ``cpus_per_task``). ``retries``: Ray's reruns of a task whose worker died;
    0 by default, since a rerun of the command resumes from the store anyway. ``task`` is what a task
    runs (tests wrap it to kill a worker)."""

    address: str | None = None
    workers: int | None = None
    cpus_per_task: float = 1
    gpus_per_task: float = 0
    retries: int = 0
    task: Callable[[str, Profile, str, str, int], dict] = study_task

    def run(self, names: list[str] | None, profile: Profile, store: Store, *,
            log: Callable[[str], None] = print) -> dict[str, dict]:
        from .. import studies

        order = studies.enabled(names, profile, log=log)
        try:
            import ray
        except ImportError as e:
            raise MissingDataError(f"--executor ray needs Ray: pip install -e '.[ray]' ({e})") from None
        started_here = not ray.is_initialized()
        if started_here:
            local = self.address is None
            cpus = int((self.workers or os.cpu_count() or 1) * self.cpus_per_task) if local else None
            ray.init(address=self.address, num_cpus=cpus, include_dashboard=False, log_to_driver=True)
        try:
            studies.record_build(store, profile)
            return self._schedule(ray, order, profile, store, log)
        finally:
            if started_here:
                ray.shutdown()

    def _schedule(self, ray, order: list[str], profile: Profile, store: Store, log) -> dict[str, dict]:
        from .. import studies

        cap = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_task))
        remote = ray.remote(self.task)
        resources = {"num_cpus": self.cpus_per_task, "num_gpus": self.gpus_per_task, "max_retries": self.retries}
        root = str(Path(store.root).resolve())  # workers may start in another directory
        threads = max(1, int(self.cpus_per_task))
        # Dependencies outside the selection are not waited for (as in process: --only leaderboard runs
        # leaderboard alone, training what it lacks).
        needs = {n: [d for d in studies.DEPENDS.get(n, ()) if d in order] for n in order}
        pending = list(order)
        running: dict = {}  # ObjectRef -> (study, start time)
        done: dict[str, dict] = {}
        failed: dict[str, str] = {}
        skipped: dict[str, str] = {}
        while pending or running:
            for n in list(pending):
                lost = [d for d in needs[n] if d in failed or d in skipped]
                if lost:
                    skipped[n] = f"needs {lost[0]}, which did not finish"
                    pending.remove(n)
                    log(f"[{n}] not run: {skipped[n]}")
                elif len(running) < cap and all(d in done for d in needs[n]):
                    pending.remove(n)
                    ref = remote.options(name=f"xai-study-{n}", **resources).remote(n, profile, root, store.profile, threads)
                    running[ref] = (n, time.perf_counter())
                    log(f"[{n}] submitted to Ray")
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                n, start = running.pop(ref)
                try:
                    done[n] = ray.get(ref)
                    log(f"[{n}] finished on Ray in {time.perf_counter() - start:.1f} s")
                except Exception as e:  # noqa: BLE001 - any failure of one study is reported, the rest go on
                    failed[n] = _why(ray, e)
                    log(f"[{n}] FAILED: {failed[n]}")
        if failed or skipped:
            raise StudiesFailedError(failed, skipped, done)
        return {n: done[n] for n in order}


def _why(ray, e: Exception) -> str:
    """One line on what became of a task: the study's own error, or the worker's death."""
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = e.cause if isinstance(e.cause, Exception) else e
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    if isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return f"its worker died ({type(e).__name__})"
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def get(name: str, **options) -> Executor:
    """The executor of that name; ``options`` (address, workers, cpus_per_task, gpus_per_task) are Ray's."""
    from ..errors import UnknownNameError

    if name == "inprocess":
        given = [k.replace("_", "-") for k, v in options.items() if v is not None]
        if given:
            raise XaiError(f"--{given[0]} applies to --executor ray only")
        return InProcess()
    if name == "ray":
        return RayExecutor(**{k: v for k, v in options.items() if v is not None})
    raise UnknownNameError("executor", name, EXECUTORS)
