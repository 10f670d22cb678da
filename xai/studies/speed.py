"""The "Reproduce it" chapter's speed section: the last full benchmark, as it was recorded.

``make bench`` (``scripts/bench --profile full``) takes the best part of an hour and is not part of
``make book``. It writes ``BENCHMARKS.md`` and ``benchmarks.json`` at the repository root, both
committed; this study turns the JSON into the book's figure and tables. Nothing is measured here: the
page says which machine and date the numbers are from.

The page itself holds the figure and its caption (bound to ``speed/results.json``) and the notice for a
build without a record; ``section.md`` is BENCHMARKS.md's text, the one Markdown a study still writes,
since ``xai.bench.report`` renders it for both.
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
INPUTS = (RECORD,)  # read by xai.studies.reuse: a new record is a change of this study's inputs
VERSION = 3  # of the section this writes: a new version rewrites it from the same record


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
        store.write_json("speed/results.json", {"measured": False})
        return {"measured": False}
    raw = RECORD.read_bytes()
    results = json.loads(raw)
    key = cache_key("speed", hashlib.sha256(raw).hexdigest(), VERSION)
    if not store.fresh("speed/section.md", key):
        store.write_figure("speed/speed.png", report.figure(results), key)
        store.write_text("speed/section.md", book_markdown(_literal_machine(results)), key)
        store.write_json("speed/results.json", {"measured": True, "measured_at": results["measured_at"],
                                                "machine": {"gpu": None, **results["machine"]},
                                                "targets": results.get("targets", [])}, key)
    return {"measured": True, "measured_at": results["measured_at"]}
