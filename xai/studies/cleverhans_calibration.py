"""The Clever Hans chapter's calibration of the shortcut detector: its power on planted shortcuts of
graded strength beside its false-positive rate on clean models of other seeds.

:func:`xai.shortcuts.calibration.calibrate` trains (or loads) the models and scores the detector; this
part of the study stores the result as a cached job and draws the curve. It is a part of the Clever
Hans study, not a study of its own, because the chapter binds it next to the detector's verdicts and
its smoke-budget models are the chapter's own checkpoints.

Artifacts (under ``cleverhans/``):

``calibration.json``
    What :func:`~xai.shortcuts.calibration.calibrate` returns (``settings``, ``models``, ``power``,
    ``false_positive``, ``threshold_rule``, ``timings``; see its docstring), numbers made JSON-safe
    (NaN as null), plus ``budget``, ``figure`` and ``curve``: the figure's data, per reference
    (``clean``, ``moved``, ``mirrored``) and marker size (``"4"``, ``"2"``: side in pixels):
    ``area_share``, ``fractions``, ``power``, ``power_low``, ``power_high``, ``mean_effect``,
    ``models`` (per fraction), ``false_positive``, ``false_positive_interval``, ``clean_models``; and
    per size under ``threshold_rule``: ``fractions``, ``power``, ``false_positive``.
``calibration.webp``
    Power against the share of the class marked, one panel per marker size, one line per reference,
    with the false-positive rate of each reference as a band and the retired fixed rule for contrast.
"""
from __future__ import annotations

import math
from dataclasses import asdict

from ..render.store import Store, cache_key
from ..shortcuts import calibration as C

PART = "cleverhans-calibration"
VERSION = 1
RESULTS = "cleverhans/calibration.json"
FIGURE = "cleverhans/calibration.webp"
COLOURS = {"clean": "tab:red", "moved": "tab:blue", "mirrored": "tab:green"}


def json_safe(v):
    """NaN and infinities as null, recursively (JSON has no NaN; the book reads null as "not measured")."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: json_safe(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(u) for u in v]
    return v


def curve(res: dict) -> dict:
    """The figure's data, arranged by reference and marker size (see the module docstring)."""
    out: dict = {}
    for fp in res["false_positive"]:
        r, s = fp["reference"], fp["size"]
        cell = sorted((p for p in res["power"] if p["reference"] == r and p["size"] == s), key=lambda p: p["fraction"])
        out.setdefault(r, {})[str(s)] = {
            "area_share": fp["area_share"], "fractions": [p["fraction"] for p in cell],
            "power": [p["rate"] for p in cell], "power_low": [p["interval"][0] for p in cell],
            "power_high": [p["interval"][1] for p in cell], "mean_effect": [p["mean_effect"] for p in cell],
            "models": [p["models"] for p in cell], "false_positive": fp["rate"],
            "false_positive_interval": fp["interval"], "clean_models": fp["models"]}
    rule = res["threshold_rule"]
    out["threshold_rule"] = {}
    for fp in rule["false_positive"]:
        cell = sorted((p for p in rule["power"] if p["size"] == fp["size"]), key=lambda p: p["fraction"])
        out["threshold_rule"][str(fp["size"])] = {"fractions": [p["fraction"] for p in cell],
                                                  "power": [p["rate"] for p in cell], "false_positive": fp["rate"]}
    return out


def calibration_figure(res: dict, data: dict):
    import matplotlib.pyplot as plt

    st = res["settings"]
    sizes = [str(s) for s in st["marker_sizes"]]
    refs = st["references"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.3), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], sizes):
        for k, r in enumerate(refs):
            d = data[r][s]
            xs = [f * (1 + 0.04 * (k - 1)) for f in d["fractions"]]  # a small dodge keeps the bars apart
            err = [[p - lo for p, lo in zip(d["power"], d["power_low"])],
                   [hi - p for p, hi in zip(d["power"], d["power_high"])]]
            label = "clean control" if r == "clean" else f"{r} placebo"
            ax.errorbar(xs, d["power"], yerr=err, color=COLOURS.get(r, "0.3"), marker="o", ms=3.5, lw=1.2,
                        capsize=2, label=f"power, {label}")
            lo, hi = d["false_positive_interval"]
            ax.axhspan(lo, hi, color=COLOURS.get(r, "0.3"), alpha=0.08, lw=0)
            ax.axhline(d["false_positive"], color=COLOURS.get(r, "0.3"), ls="--", lw=0.8)
        rule = data["threshold_rule"][s]
        ax.plot(rule["fractions"], rule["power"], color="0.4", ls=":", marker="x", ms=4, lw=1,
                label=f"fixed rule (>= {st['threshold']:g})")
        ax.set_xscale("log")
        ax.set_xticks(st["fractions"], [f"{f:.0%}" for f in st["fractions"]])
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(f"share of {st['marker_class']} training images marked", fontsize=8)
        ax.set_title(f"{s}x{s} square ({float(st['area_shares'][s]):.1%} of the image)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("share of models called reliant", fontsize=8)
    axes[0, -1].legend(fontsize=6, loc="center right")
    n = data[refs[0]][sizes[0]]["models"][0]
    fig.suptitle(f"detector power ({n} model{'s' if n != 1 else ''} per point, {1 - st['alpha']:.0%} intervals)\n"
                 f"dashed: false-positive rate on clean models of other seeds (band: its interval)", fontsize=7)
    fig.tight_layout()
    return fig


def run(budget: str | C.CalibrationConfig, store: Store) -> dict:
    """Calibrate at ``budget`` (:data:`xai.shortcuts.calibration.BUDGETS`), cached on its config; returns what
    the chapter's results carry: ``results`` and ``figure`` (paths under the store), ``budget``, ``curve``,
    ``timings`` and the ``settings`` the prose needs (the full per-model rows stay in ``results``)."""
    cfg = C.config(budget)
    name = budget if isinstance(budget, str) else "custom"
    key = cache_key(PART, VERSION, asdict(cfg))

    def compute(out) -> dict:
        res = json_safe(C.calibrate(cfg))
        data = curve(res)
        out.write_figure(FIGURE, calibration_figure(res, data), dpi=100)
        out.write_json(RESULTS, {**res, "budget": name, "figure": FIGURE, "curve": data})
        st = res["settings"]
        return {"results": RESULTS, "figure": FIGURE, "budget": name, "curve": data, "timings": res["timings"],
                "settings": {k: st[k] for k in ("marker_class", "marker_sizes", "fractions", "area_shares", "seeds",
                                                "clean_seeds", "test_images", "alpha", "min_effect", "threshold",
                                                "references", "models", "train")}}

    return store.job("cleverhans/calibration.job.json", key, compute)
