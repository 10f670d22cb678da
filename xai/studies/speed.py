"""The "Reproduce it" chapter's speed section: the last full benchmark, as it was recorded.

``make bench`` (``scripts/bench --profile full``) takes the best part of an hour and is not part of
``make book``. It writes ``BENCHMARKS.md`` and ``benchmarks.json`` at the repository root, both
committed; this study turns the JSON into the book's figure and into flat records for its tables
and bound sentences (the page builds the tables). Nothing is measured here: the page says which
machine and date the numbers are from.

``speed/results.json``: ``measured`` (False without a record; nothing else then), ``measured_at``,
``profile``, ``machine`` (``cpu``, ``cpu_count``, ``torch_threads``, ``gpu`` or None, ``device``,
``torch``, ``python``), ``peak`` (matmul GFLOP/s), ``targets`` (``what``, ``target``, ``value``,
``unit``, ``met``, and as the table shows them ``shown``, ``met_text``), ``attribution`` (``model``, ``image_size``, ``batch``, ``cam_layer``, ``repeats``,
``rows``: one per method and anchor: ``label``, ``library``, ``ours_per_s``, ``anchor_per_s``,
``speedup``, ``max_abs_diff``, ``normalised``, ``rho``, ``rho_min``, ``map_rho``, ``ours_peak``,
``anchor_peak``; ``calls``: ``label``, ``ours``, ``anchors``; ``stochastic``: ``label``, ``rho``,
``map_rho`` (two of our own draws); ``auto``: Integrated Gradients with ``steps="auto"`` or None;
``occlusion``: ``flops_saved``, ``rel_max_abs_diff`` or None), ``featvis`` (the record's section, and
``rows``: ``renderer``, ``per_s``, ``median_s``, ``activation``, ``peak``) or None, ``metrics`` (``model``,
``batch``, ``rows``: ``label``, ``family``, ``ours_s``, ``anchor_s``, ``speedup``, ``agreement``
(text), ``note``, ``call``) or None, ``ray`` and ``e2e`` (the record's, or None).
"""
from __future__ import annotations

import hashlib
import json

from ..bench import report
from ..paths import REPO
from ..profiles import Profile
from ..render.store import Store, cache_key

RECORD = REPO / "benchmarks.json"
INPUTS = (RECORD,)  # read by xai.studies.reuse: a new record is a change of this study's inputs
VERSION = 4  # of what this writes: a new version rewrites it from the same record


def _attribution(att: dict) -> dict:
    rows, calls, stochastic = [], [], []
    auto = occlusion = None
    for r in att["rows"]:
        for a in r["anchors"]:
            ag, mag = a["agreement"], a.get("map_agreement") or {}
            rows.append({"label": r["label"], "library": a["library"], "ours_per_s": r["ours"]["per_second"],
                         "anchor_per_s": a["timing"]["per_second"], "speedup": a["speedup"],
                         "max_abs_diff": ag["max_abs_diff"], "normalised": ag["normalised"],
                         "rho": ag["spearman_mean"], "rho_min": ag["spearman_min"],
                         "map_rho": mag.get("spearman_mean"), "ours_peak": r["ours"]["fraction_of_peak"],
                         "anchor_peak": a["timing"]["fraction_of_peak"]})
        calls.append({"label": r["label"], "ours": f"{r['method']}({', '.join(f'{k}={v}' for k, v in r['options'].items())})",
                      "anchors": "; ".join(f"{a['library']}: {a['call']}" for a in r["anchors"])})
        if "self_agreement" in r:
            stochastic.append({"label": r["label"], "rho": r["self_agreement"]["spearman_mean"],
                               "map_rho": (r.get("self_map_agreement") or {}).get("spearman_mean")})
        if r.get("auto"):
            auto = r["auto"]
        if r.get("incremental"):
            inc = r["incremental"]
            occlusion = {"label": r["label"], "flops_saved": inc["flops_saved_counted"],
                         "rel_max_abs_diff": inc["against_full"]["rel_max_abs_diff"],
                         "images": inc["against_full"]["images"], "incremental": inc["plan"]["incremental"]}
    return {k: att[k] for k in ("model", "image_size", "batch", "cam_layer", "repeats")} | {
        "rows": rows, "calls": calls, "stochastic": stochastic, "auto": auto, "occlusion": occlusion}


def _featvis(fv: dict | None) -> dict | None:
    if not fv:
        return None
    rows = [{"renderer": "ours (batched)", "per_s": fv["ours"]["per_second"], "median_s": fv["ours"]["median_s"],
             "activation": fv["ours_mean_activation"], "peak": fv["ours"]["fraction_of_peak"]},
            {"renderer": "lucent render_vis", "per_s": fv["lucent"]["per_second"], "median_s": fv["lucent"]["median_s"],
             "activation": fv["lucent_mean_activation"], "peak": fv["lucent"]["fraction_of_peak"]}]
    keep = ("model", "units", "layers", "size", "steps", "model_size", "repeats", "speedup", "ours_higher_fraction",
            "time_to_quality", "floor", "schedule")
    return {k: fv.get(k) for k in keep} | {"rows": rows}


def _metrics(mt: dict | None) -> dict | None:
    if not mt:
        return None
    rows = []
    for r in mt["rows"]:
        a = r["anchors"][0]
        rows.append({"label": r["label"], "family": r["family"], "ours_s": r["ours"]["median_s"],
                     "anchor_s": a["timing"]["median_s"], "speedup": a["speedup"],
                     "agreement": report._agreement_text(a["agreement"], a["note"]), "note": a["note"] or "",
                     "call": a["call"]})
    return {k: mt[k] for k in ("model", "batch", "image_size", "repeats", "attributions")} | {"rows": rows}


def _shown(t: dict) -> str:
    v = t["value"]
    if v is None:
        return "not measured"
    return (f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min") if t["unit"] == "s" else f"{v:.2f}x"


def book_record(results: dict) -> dict:
    """The benchmark record as the book's flat records (see the module's docstring)."""
    m = results["machine"]
    return {"measured": True, "measured_at": results["measured_at"], "profile": results["profile"],
            "machine": {"gpu": None, **{k: m.get(k) for k in ("cpu", "cpu_count", "torch_threads", "gpu", "device",
                                                              "torch", "python")}},
            "peak": (results.get("peak") or {}).get("gflops_per_s"),
            "targets": [{**t, "shown": _shown(t), "met_text": {True: "yes", False: "no", None: "–"}[t["met"]]}
                        for t in results.get("targets", [])],
            "attribution": _attribution(results["attribution"]) if results.get("attribution") else None,
            "featvis": _featvis(results.get("featvis")), "metrics": _metrics(results.get("metrics")),
            "ray": results.get("ray"), "e2e": results.get("e2e")}


def run(profile: Profile, store: Store) -> dict:
    if not RECORD.exists():
        store.write_json("speed/results.json", {"measured": False})
        return {"measured": False}
    raw = RECORD.read_bytes()
    results = json.loads(raw)
    key = cache_key("speed", hashlib.sha256(raw).hexdigest(), VERSION)
    if not store.fresh("speed/results.json", key) or not store.path("speed/speed.png").exists():
        store.write_figure("speed/speed.png", report.figure(results), key)
        store.write_json("speed/results.json", book_record(results), key)
    return {"measured": True, "measured_at": results["measured_at"]}
