"""``make bench``: our methods against the anchor libraries, and the speed of the whole rebuild.

Sections (``scripts/bench --profile P [--only SECTION ...] [--e2e]``):

- ``attribution`` (:mod:`.attribution`): gradient, Integrated Gradients, SmoothGrad, Grad-CAM, Grad-CAM++,
  Score-CAM and Occlusion, ours vs captum's and pytorch-grad-cam's, images per second, speed-up and
  agreement (max abs difference, Spearman rank correlation) for every pair; for Score-CAM also the
  passes skipped exactly and its approximations' time and agreement (:mod:`.scorecam`);
- ``featvis`` (:mod:`.featvis`): our batched renderer vs torch-lucent's ``render_vis``, units per second,
  speed-up, the final activations of both, and each side's time to lucent's final activation;
- ``metrics`` (:mod:`.metrics`): every metric of :data:`xai.metrics.METRICS` that Quantus also has, ours
  vs Quantus's on a Fashion-MNIST CNN, seconds per call, the ratio and agreement (or the definitional
  difference);
- ``ray`` (:mod:`.precompute`): ``xai precompute`` of the smoke profile on a local Ray cluster with two
  workers against in process, each from a cold store, as a ratio;
- ``e2e`` (:mod:`.e2e`, opt-in, long): ``make book`` cold and warm for the quick and full profiles;
- always: the machine (CPU, cores, GPU), its measured float32 matmul GFLOP/s and the model's FLOPs per
  forward(+backward), against which every timed side's FLOPs per second are a fraction of peak.

Each comparison runs in one process on one model, input batch and device (CUDA when present), with a
warm-up call per side (on the first ``warmup_batch`` images; it also counts the FLOPs, scaled to the
batch) and the sides interleaved over repeated runs; times are medians. Sizes per profile are in :data:`CONFIGS` (``full`` is the issue's specification).

Outputs (paths relative to the artifact store, ``book/_generated/``):

- ``bench/results.json``: ``{"profile", "measured_at", "config", "machine", "peak", "model_flops",
  "attribution": {"rows": [{"method", "label", "options", "ours": TIMING, "anchors": [{"library",
  "call", "timing": TIMING, "speedup", "agreement": {"max_abs_diff", "rel_max_abs_diff",
  "spearman_mean", "spearman_min", "normalised", ...}}], "self_agreement"?, "passes"? (Score-CAM:
  {"passes", "constant", "shared", "made", "skipped_fraction", "every_pass", "approximations": [{"options",
  "seconds", "speedup", "spearman_mean", "spearman_min"}]})}], ...},
  "featvis": {"ours": TIMING, "lucent": TIMING, "speedup", "ours_mean_activation",
  "lucent_mean_activation", "final_activation": {layer: {..., "<side>_time_to_quality": {"steps",
  "seconds", "curve"}}}, "schedule", "kept_steps", "time_to_quality": {"ours"|"lucent": {"median_s",
  "median_steps", "reached", "units"}, "speedup"}, ...}, "metrics": {"model", "batch", "rows":
  [{"metric", "label", "family", "options", "ours": TIMING, "anchors": [{"library": "quantus", "call",
  "timing": TIMING, "speedup", "agreement": {"kind", ...}, "note"}]}], ...}, "e2e"?: {profile: {"cold_s",
  "warm_s"}}, "targets": [{"what", "target", "value", "unit", "met"}]}`` where TIMING is
  ``{"seconds", "median_s", "per_second", "flops", "gflops_per_s", "fraction_of_peak", "spread"}``.
  A section not run this time is kept from the previous results if they came from the same machine
  (and, except ``e2e``, the same profile); each section carries its own ``measured_at``.
- ``bench/speed.png``: speed-ups with targets, and the fraction of peak of both sides.
- the markdown tables: the repository's ``BENCHMARKS.md`` for the ``full`` profile, else
  ``bench/BENCHMARKS.md`` in the store (``--markdown PATH`` overrides).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import UnknownNameError, XaiError
from ..paths import REPO

SECTIONS = ("attribution", "featvis", "metrics", "ray", "e2e")
DEFAULT_SECTIONS = ("attribution", "featvis", "metrics", "ray")
RESULTS = "bench/results.json"
FIGURE = "bench/speed.png"
STORE_MARKDOWN = "bench/BENCHMARKS.md"


@dataclass(frozen=True)
class BenchConfig:
    model: str = "efficientnet_lite0"
    image_size: int = 224
    batch: int = 16
    ig_steps: int = 64
    # IG with steps="auto" (from ig_steps, doubling per image) against one fixed count as high as the worst
    ig_auto_target: float = 0.01
    ig_auto_max_steps: int = 512
    smoothgrad_samples: int = 32
    # Score-CAM costs one forward pass per channel and image: blocks.5 (192 channels) keeps the full
    # benchmark within reach of a 2-core CPU, where the last layer (1280 channels) would take hours.
    cam_layer: str = "blocks.5"
    occlusion_window: int = 28
    occlusion_stride: int = 14
    # Images per forward pass, ours (and anchors whose default would not fit). 8, not 32: at 224 px this
    # CPU runs big batches slower per image (cache), e.g. occlusion of 4 photos (49 windows each) took
    # 2.1 s with 8 images per pass and 3.8 s with 32; captum's default of 4 per pass took 2.7 s.
    internal_batch_size: int = 8
    # Occluded images per batch for our occlusion, which is incremental: only the network's small late
    # maps are computed in full, where bigger batches pay (1 thread, 224 px, per window: 9.8 ms at 8,
    # 7.0 at 16, 6.4 at 32, 7.1 at 64; a full pass of 8 at 224 px holds more memory than one of 32 there).
    occlusion_batch: int = 32
    repeats: int = 3
    warmup_batch: int = 2  # images in each side's warm-up call (which also counts its FLOPs)
    featvis_layers: tuple[str, ...] = ("blocks.3", "blocks.5")
    featvis_channels: int = 16
    featvis_size: int = 128
    featvis_model_size: int = 224
    featvis_steps: int = 256
    featvis_repeats: int = 1  # lucent's one-unit calls make one run long; its per-unit times are all recorded
    matmul_size: int = 2048
    # The metrics section: a one-channel model (Quantus's ROAD fails on three channels), its test images.
    metrics_model: str = "fmnist_cnn"
    metrics_budget: str = "full"  # training budget of the metrics model (trained and cached on first use)
    metrics_batch: int = 16
    metrics_samples: int = 16  # perturbations (or subsets) per image and metric
    e2e_profiles: tuple[str, ...] = ("quick", "full")
    # The ray section: this profile's precompute (these studies; None: all of them) with this many workers.
    precompute_profile: str = "smoke"
    precompute_studies: tuple[str, ...] | None = None
    precompute_workers: int = 2
    seed: int = 0
    # CPU threads; None keeps torch's default (all cores). The smoke run uses one: on a busy machine
    # two spinning OpenMP threads per process can be ten times slower than one.
    threads: int | None = None


CONFIGS: dict[str, BenchConfig] = {
    "full": BenchConfig(),
    "quick": BenchConfig(batch=4, ig_steps=16, smoothgrad_samples=8, occlusion_stride=28, featvis_channels=4,
                         featvis_steps=32, metrics_budget="smoke", metrics_batch=8, metrics_samples=8),
    "smoke": BenchConfig(image_size=64, batch=2, ig_steps=4, ig_auto_max_steps=16, smoothgrad_samples=4, cam_layer="blocks.1",
                         occlusion_window=32, occlusion_stride=32, internal_batch_size=8, repeats=3,
                         featvis_layers=("blocks.1", "blocks.3"), featvis_channels=2, featvis_size=32,
                         featvis_model_size=64, featvis_steps=4, matmul_size=512, metrics_budget="smoke",
                         metrics_batch=4, metrics_samples=4, threads=1,
                         # two studies that run in parallel in about a minute, cold, on 2 cores
                         precompute_studies=("overview", "gradcam")),
}


def config(profile: str) -> BenchConfig:
    if profile not in CONFIGS:
        raise UnknownNameError("benchmark profile", profile, CONFIGS)
    return CONFIGS[profile]


def model_flops(entry, size: int) -> dict:
    """FLOPs of one image's forward pass, and of forward plus backward to the input."""
    import torch

    from .measure import count_flops

    x = torch.rand(1, entry.input_size[0], size, size, device=entry.device)
    with torch.no_grad():
        _, fwd = count_flops(lambda: entry.model(x))

    def fwd_bwd():
        xr = x.clone().requires_grad_(True)
        entry.model(xr).max().backward()

    _, both = count_flops(fwd_bwd)
    return {"model": entry.name, "image_size": size, "forward_per_image": fwd, "forward_backward_per_image": both}


def _previous(store, profile: str, machine: dict) -> dict:
    """Sections of the last results worth keeping: same machine, and same profile except for ``e2e``."""
    try:
        old = store.read_json(RESULTS)
    except (OSError, ValueError):
        return {}
    same_machine = all(old.get("machine", {}).get(k) == machine.get(k) for k in ("cpu", "cpu_count", "gpu"))
    if not same_machine:
        return {}
    keep = {}
    if old.get("e2e"):
        keep["e2e"] = old["e2e"]
    if old.get("profile") == profile:
        for section in ("attribution", "featvis", "metrics", "ray"):
            if old.get(section):
                keep[section] = old[section]
    return keep


def run(profile: str = "full", sections: Sequence[str] = DEFAULT_SECTIONS, *,
        e2e_profiles: Sequence[str] | None = None, markdown_path: Path | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Run the benchmark ``sections`` at the sizes of ``profile`` and write the results, figure and markdown."""
    import torch

    from .. import models
    from ..render.store import Store
    from . import attribution, e2e, featvis, report
    from . import metrics as metrics_bench
    from . import precompute as precompute_bench
    from .measure import machine, matmul_peak

    cfg = config(profile)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise UnknownNameError("benchmark section", unknown[0], SECTIONS)
    if e2e_profiles is not None:
        cfg = replace(cfg, e2e_profiles=tuple(e2e_profiles))
    device = models.default_device()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    info = machine(device)
    store = Store(profile=profile)
    results = {"profile": profile, "config": asdict(cfg), "machine": info, **_previous(store, profile, info)}

    def stamp() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z")

    if "e2e" in sections:
        # The builds run in a scratch folder of their own (see e2e); this store is not touched by them.
        # Profiles not built this time keep their last measurement (on this machine: see _previous).
        results["e2e"] = {**results.get("e2e", {}), **e2e.run(cfg.e2e_profiles, log)}
    log(f"bench: {profile} profile on {info['cpu']} ({info['cpu_count']} cores)"
        f"{', ' + info['gpu']['name'] if info['gpu'] else ''}, device {device}")
    results["peak"] = matmul_peak(device, cfg.matmul_size)
    peak = results["peak"]["gflops_per_s"] * 1e9
    log(f"bench: matmul peak {results['peak']['gflops_per_s']:.1f} GFLOP/s")
    if "attribution" in sections or "featvis" in sections:
        entry = models.load(cfg.model, device=device)
        results["model_flops"] = model_flops(entry, cfg.image_size)
        if "attribution" in sections:
            results["attribution"] = {"measured_at": stamp(), **attribution.run(entry, cfg, peak, log)}
        if "featvis" in sections:
            results["featvis"] = {"measured_at": stamp(), **featvis.run(entry, cfg, peak, log)}
    if "metrics" in sections:
        small = models.load(cfg.metrics_model, budget=cfg.metrics_budget, device=device, progress=False)
        results["metrics"] = {"measured_at": stamp(), **metrics_bench.run(small, cfg, log)}
    if "ray" in sections:
        results["ray"] = {"measured_at": stamp(), **precompute_bench.run(cfg, log)}
    results["measured_at"] = stamp()
    results["targets"] = report.targets(results)
    store.write_json(RESULTS, results)
    store.write_figure(FIGURE, report.figure(results))
    text = report.markdown(results)
    if markdown_path is None and profile != "full":
        store.write_text(STORE_MARKDOWN, text)
        markdown_path = store.path(STORE_MARKDOWN)
    else:
        from ..io import atomic_write_text

        markdown_path = Path(markdown_path or REPO / "BENCHMARKS.md")
        atomic_write_text(markdown_path, text)
        if markdown_path == REPO / "BENCHMARKS.md":
            from ..io import atomic_write_json

            # The record the book's "Reproduce it" chapter shows (xai.studies.speed), committed with it.
            atomic_write_json(REPO / "benchmarks.json", results)
    log(f"bench: wrote {store.path(RESULTS)}, {store.path(FIGURE)} and {markdown_path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description="Benchmarks against captum, pytorch-grad-cam, "
                                 "lucent and Quantus, and the wall time of the whole rebuild.")
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "full"), help="sizes: " + ", ".join(CONFIGS))
    ap.add_argument("--only", nargs="+", metavar="SECTION", help="run only these of: " + ", ".join(SECTIONS))
    ap.add_argument("--e2e", action="store_true", help="also time `make book` cold and warm (long; in a scratch "
                    "folder: your artifacts, site and checkpoints are not touched)")
    ap.add_argument("--e2e-profiles", nargs="+", metavar="PROFILE", help="profiles built by --e2e "
                    "(default: quick full)")
    ap.add_argument("--markdown", type=Path, help="where to write the markdown tables")
    args = ap.parse_args(argv)
    sections = list(args.only or DEFAULT_SECTIONS)
    if args.e2e and "e2e" not in sections:
        sections.append("e2e")
    try:
        results = run(args.profile, sections, e2e_profiles=args.e2e_profiles, markdown_path=args.markdown)
    except XaiError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    for t in results["targets"]:
        if t["met"] is not None:
            print(f"bench: target {t['what']} {t['target']}: {t['value']:.2f}{t['unit']} "
                  f"({'met' if t['met'] else 'MISSED'})")
    return 0
