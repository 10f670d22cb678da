"""The "Reproduce it" chapter's speed section: the last full benchmark, as it was recorded.

``make bench`` (``scripts/bench --profile full``) takes the best part of an hour and is not part of
``make book``. It writes ``BENCHMARKS.md`` and ``benchmarks.json`` at the repository root, both
committed; this study turns the JSON into the book's figure and tables. Nothing is measured here: the
page says which machine and date the numbers are from.
"""
from __future__ import annotations

import hashlib
import json

from ..bench import report
from ..paths import REPO
from ..profiles import Profile
from ..render import markdown as md
from ..render.store import Store, cache_key

RECORD = REPO / "benchmarks.json"
VERSION = 2  # of the section this writes: a new version rewrites it from the same record


def book_markdown(results: dict) -> str:
    """BENCHMARKS.md's text as a section of a page: its title dropped and its headings one level down."""
    lines = report.markdown(results).splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + line if line.startswith("## ") else line for line in lines) + "\n"


def _literal_machine(results: dict) -> dict:
    """The machine's names (read from the machine: /proc/cpuinfo, the GPU driver) as literal Markdown."""
    m = dict(results["machine"])
    m["cpu"] = md.text(m["cpu"])
    if m.get("gpu"):
        m["gpu"] = {**m["gpu"], "name": md.text(m["gpu"]["name"])}
    return {**results, "machine": m}


def run(profile: Profile, store: Store) -> dict:
    if not RECORD.exists():
        text = ("No benchmark has been recorded for this build: `make bench` measures one (about an hour on a "
                "2-core CPU) and writes `benchmarks.json`, which this section shows.\n")
        store.write_json("speed/results.json", {"measured": False})
        store.write_text("speed/section.md", text)
        return {"measured": False}
    raw = RECORD.read_bytes()
    results = json.loads(raw)
    key = cache_key("speed", hashlib.sha256(raw).hexdigest(), VERSION)
    if not store.fresh("speed/section.md", key):
        store.write_figure("speed/speed.png", report.figure(results), key)
        m = results["machine"]
        where = md.text(m["gpu"]["name"]) if m.get("gpu") else f"{md.text(m['cpu'])} ({m['cpu_count']} cores, no GPU)"
        figure = ["```{xai-figure} speed/speed.png",
                  ":name: fig-speed",
                  ":alt: Horizontal bars of the speed-up of each of our methods over its anchor library on a "
                  "log axis with the targets marked, and beside them the fraction of the machine's matmul peak "
                  "each side reaches.",
                  f"Speed-up of our implementations over captum, pytorch-grad-cam and lucent on {where}, "
                  f"measured {results['measured_at'][:10]}; black ticks mark the targets.",
                  "```", ""]
        store.write_text("speed/section.md", "\n".join(figure) + book_markdown(_literal_machine(results)), key)
        store.write_json("speed/results.json", {"measured": True, "measured_at": results["measured_at"],
                                                "machine": m, "targets": results.get("targets", [])}, key)
    return {"measured": True, "measured_at": results["measured_at"]}
