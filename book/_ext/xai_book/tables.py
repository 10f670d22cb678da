"""The studies' result tables, built from their JSON: ``{study-table} overview/models``.

Studies write numbers, not Markdown. Each table here reads one study's JSON and becomes docutils
nodes directly: names from the data (class names, model names, photo credits, which a user's own model
or image folder supplies) go in as text nodes, which the HTML writer escapes, so nothing in them can
become markup and no Markdown escaping is needed. The nodes are the ones MyST makes of a pipe table
(``colwidths-auto``, ``text-right`` on right-aligned columns), so a page reads as it did when the
studies wrote these tables as Markdown snippets.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

from .bound import fail, generated, not_computed_admonition
from .data import BookDataError, Generated, NotComputed

# A cell is a run of pieces: ("text", s), ("code", s) or ("em", s).
Cell = list[tuple[str, str]]
RIGHT = "right"


class Table:
    def __init__(self, header: list[Cell], align: list[str | None]):
        if len(header) != len(align):
            raise ValueError("one alignment per column")
        self.header, self.align, self.rows = header, align, []

    def add(self, *cells: Cell) -> None:
        if len(cells) != len(self.header):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(self.header)} columns")
        self.rows.append(list(cells))


def one_line(value: object) -> str:
    # As the Markdown tables had it: a value's line breaks and runs of spaces become one space.
    return " ".join(str(value).split())


def text(value: object) -> Cell:
    return [("text", one_line(value))]


def code(value: object) -> Cell:
    return [("code", one_line(value))]


# -- the tables --------------------------------------------------------------------------------------------

def overview_models(gen: Generated, options: dict) -> Table:
    t = Table([text(h) for h in ("model", "family", "architecture", "input", "parameters", "weights",
                                 "test accuracy")], [None, None, None, None, RIGHT, None, RIGHT])
    for r in gen.load("overview/models.json"):
        acc = f"{r['test_accuracy']:.1%} ({r['test_images']:,} images)" if "test_accuracy" in r else "ImageNet-1k"
        t.add(code(r["name"]), text(r["family"]), text(r["arch"]), text("x".join(map(str, r["input_size"]))),
              text(f"{r['parameters'] / 1e6:.2f} M"), text(r["weights"]), text(acc))
    return t


def overview_photos(gen: Generated, options: dict) -> Table:
    rows = gen.load("overview/photos.json")
    model_names = list(dict.fromkeys(m for r in rows for m in r["predictions"]))
    t = Table([text("photo"), text("label"), *([("code", one_line(m)), ("text", " top-1")] for m in model_names),
               text("credit")], [None] * (len(model_names) + 3))
    for r in rows:
        cells = []
        for m in model_names:
            if m not in r["predictions"]:  # a photo of another label space than the model's
                cells.append([("text", "—")])
                continue
            top = r["predictions"][m][0]
            mark = "" if r["label"] is None else (" ✓" if r["correct"][m] else " ✗")
            cells.append([("text", f"{one_line(top['name'])} {top['p']:.2f}{mark}")])
        label = text(r["label_name"]) if r["label_name"] else text("— (no class)")
        t.add(text(r["id"]), label, *cells, text(r["credit"]))
    return t


def misclassification_confusions(gen: Generated, options: dict) -> Table:
    t = Table([text(h) for h in ("model", "accuracy", "true → predicted", "count", "share of the true class")],
              [None, RIGHT, None, RIGHT, RIGHT])
    for name, r in gen.load("misclassification/results.json")["fmnist"].items():
        for c in r["top_confusions"]:
            t.add(code(name), text(f"{r['accuracy']:.1%}"),
                  [("text", f"{one_line(c['true_name'])} → {one_line(c['pred_name'])}")], text(c["count"]),
                  text(f"{c['share_of_true']:.1%}"))
    return t


FAITHFULNESS_HEADS = {"deletion_zero": "deletion, black ↓", "deletion_blur": "deletion, blur ↓",
                      "insertion_zero": "insertion, black ↑", "insertion_blur": "insertion, blur ↑"}


def _faithfulness_cell(v: dict) -> str:
    if "mean" not in v:
        return "n/a"
    return f"{v['mean']:.3f} ± {v['ci95']:.3f}" if v["ci95"] is not None else f"{v['mean']:.3f}"


def faithfulness_table(gen: Generated, options: dict) -> Table:
    """Methods down, (model, metric) across; ``:metrics:`` picks the metrics (deletion with black and
    insertion from blur by default)."""
    results = gen.load("faithfulness/results.json")
    metrics = (options.get("metrics") or "deletion_zero insertion_blur").replace(",", " ").split()
    unknown = [k for k in metrics if k not in FAITHFULNESS_HEADS]
    if unknown:
        raise BookDataError(f"faithfulness table: unknown metric(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(FAITHFULNESS_HEADS)}")
    model_names = list(results["table"])
    t = Table([text("method"), *([("code", one_line(m)), ("text", f" {FAITHFULNESS_HEADS[k]}")]
                                 for m in model_names for k in metrics)],
              [None] + [RIGHT] * (len(model_names) * len(metrics)))
    labels = results["labels"]
    for row in results["rows"]:
        label = text(labels[row]) if row in labels else [("em", f"{one_line(row)} map (baseline)")]
        cells = []
        for m in model_names:
            r = results["table"][m].get(row)
            for k in metrics:
                cells.append(text("—" if r is None or (k not in r and "not_applicable" not in r)
                                  else ("n/a" if "not_applicable" in r else _faithfulness_cell(r[k]))))
        t.add(label, *cells)
    return t


def cleverhans_summary(gen: Generated, options: dict) -> Table:
    results = gen.load("cleverhans/results.json")
    t = Table([text(h) for h in ("set", "marker class", "model", "clean accuracy", "marked accuracy", "flip rate",
                                 "removal drop", "relies")], [None, None, None, RIGHT, RIGHT, RIGHT, RIGHT, None])
    for s, v in results["sets"].items():
        for p in v["plants"]:
            for role in ("clean", "poisoned"):
                r = p[role]
                acc = results["models"]["clean" if role == "clean" else s]["clean_accuracy"]
                t.add(text(s), text(p["class"]), text(role), text(f"{acc:.1%}"), text(f"{r['marked_accuracy']:.1%}"),
                      text(f"{r['flip_rate']:.1%}"), text(f"{r['removal_drop']:+.2f}"),
                      text("yes" if r["relies"] else "no"))
    return t


def leaderboard_table(gen: Generated, options: dict) -> Table:
    """The headline case's methods (rows, by ground-truth rank) x ranks: the two localisation scores, then
    every metric's, 1 the best."""
    results = gen.load("leaderboard/results.json")
    case = results["cases"][results["headline"]]
    gt, labels = case["ground_truth"], case["labels"]
    metrics = sorted(case["metrics"], key=lambda m: (case["metrics"][m]["family"], m))
    order = sorted(case["methods"], key=lambda m: (gt["relevance_mass"][m]["rank"] or 1e9, m))
    header = [text(h) for h in ("method", "relevance mass", "rank", "pointing game rank")]
    header += [text(case["metrics"][m]["label"]) for m in metrics]
    t = Table(header, [None] + [RIGHT] * (len(header) - 1))

    def rank(v) -> Cell:
        return text("—" if v is None else (f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"))

    for m in order:
        mass = gt["relevance_mass"][m]["mean"]
        t.add(text(labels.get(m, m)), text("—" if mass is None else f"{mass:.2f}"),
              rank(gt["relevance_mass"][m]["rank"]), rank(gt["pointing_game"][m]["rank"]),
              *(rank(case["metrics"][k]["rank"].get(m)) for k in metrics))
    for m in case.get("not_applicable", {}):
        t.add(text(labels.get(m, m)), *(text("n/a") for _ in header[1:]))
    return t


TABLES: dict[str, Callable[[Generated, dict], Table]] = {
    "overview/models": overview_models,
    "overview/photos": overview_photos,
    "misclassification/confusions": misclassification_confusions,
    "faithfulness/table": faithfulness_table,
    "cleverhans/summary": cleverhans_summary,
    "leaderboard/table": leaderboard_table,
}


# -- nodes ----------------------------------------------------------------------------------------------------

def _paragraph(cell: Cell) -> nodes.paragraph:
    para = nodes.paragraph()
    for kind, value in cell:
        if kind == "text":
            para += nodes.Text(value)
        elif kind == "code":
            para += nodes.literal(value, value)
        elif kind == "em":
            para += nodes.emphasis(value, value)
        else:
            raise ValueError(f"unknown cell piece {kind!r}")
    return para


def _row(cells: list[Cell], align: list[str | None]) -> nodes.row:
    row = nodes.row()
    for cell, a in zip(cells, align):
        entry = nodes.entry(classes=[f"text-{a}"] if a else [])
        entry += _paragraph(cell)
        row += entry
    return row


def table_node(t: Table) -> nodes.table:
    """The nodes MyST makes of a pipe table with these cells and alignments."""
    table = nodes.table(classes=["colwidths-auto"])
    group = nodes.tgroup(cols=len(t.header))
    table += group
    for _ in t.header:
        group += nodes.colspec(colwidth=100 // len(t.header))
    head = nodes.thead()
    group += head
    head += _row(t.header, t.align)
    if t.rows:
        body = nodes.tbody()
        group += body
        for r in t.rows:
            body += _row(r, t.align)
    return table


def build(gen: Generated, name: str, options: dict[str, Any] | None = None) -> nodes.table:
    """The table ``name`` from this build's JSON; BookDataError (naming what is missing) or NotComputed."""
    if name not in TABLES:
        near = difflib.get_close_matches(name, TABLES, n=3)
        raise BookDataError(f"no study table {name!r}" + (f"; did you mean {', '.join(near)}?" if near else
                                                           f"; tables: {', '.join(TABLES)}"))
    try:
        return table_node(TABLES[name](gen, options or {}))
    except (KeyError, IndexError, TypeError) as e:
        # The JSON lacks what the table needs: an older precompute, or a study that changed its output.
        raise BookDataError(f"study table {name!r}: the study's JSON has no usable {type(e).__name__} "
                            f"{e} (profile {gen.profile!r}; rerun `xai precompute --profile {gen.profile} "
                            f"--only {name.split('/')[0]}`)") from None


class StudyTableDirective(SphinxDirective):
    """``{study-table} NAME``: one of :data:`TABLES`, or the "not computed" notice for an absent study."""

    required_arguments = 1
    has_content = False
    option_spec = {"metrics": directives.unchanged}

    def run(self):
        name = self.arguments[0].strip()
        try:
            return [build(generated(self.env), name, self.options)]
        except NotComputed as nc:
            self.env.xai_not_computed.setdefault(self.env.docname, set()).add(nc.study)
            return [not_computed_admonition(nc.study, "This table", nc.reason)]
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            return []


def setup(app) -> None:
    app.add_directive("study-table", StudyTableDirective)
