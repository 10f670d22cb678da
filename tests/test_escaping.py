"""Strings from the data reach the page as text: never as HTML, MyST markup or a template that walks
into objects. The studies' tables are built by the book's extension as text nodes; no study writes Markdown
(``xai.render.markdown`` escapes what ``make bench`` writes into BENCHMARKS.md). (The site-level check, in a browser, is ``test_site.py::test_hostile_strings_stay_text``.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from docutils import nodes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "book" / "_ext"))

from xai.render import markdown as md  # noqa: E402
from xai_book.data import BookDataError  # noqa: E402
from xai_book.text import script_json, template  # noqa: E402

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "</script><script>alert(1)</script>",
    "<!--<script>",
    "a | b",
    "{{ ''.__class__ }}",
    "{doc}`intro`",
    "$x^2$",
    "[click](javascript:alert(1))",
    "<https://example.org>",
    "*em* __strong__ ~~gone~~",
    "`tick` ``two``",
    "&amp; &lt;b&gt;",
    "back\\slash\\",
    "line\nbreak\ttab",
    "# not a heading",
    "1. not a list",
]


# -- templates ------------------------------------------------------------------------------------------

def test_template_fills_plain_fields_and_format_specs():
    rec = {"model": "lite0", "area": 0.256, "n": 1234, "label": "<b>cat</b>"}
    assert template("{model}: {area:.0%} of {n:,d} ({label})", rec) == "lite0: 26% of 1,234 (<b>cat</b>)"
    assert template("{{literal}} {model}", rec) == "{literal} lite0"
    assert template("no fields", rec) == "no fields"


@pytest.mark.parametrize("text", ["{x.__class__}", "{x.__class__.__mro__}", "{x[0]}", "{x[__class__]}",
                                  "{x!r}", "{x!s}", "{}", "{0}", "{x:{w}}", "{x.real}"])
def test_template_refuses_traversal_conversions_and_positional_fields(text):
    with pytest.raises(BookDataError, match="template"):
        template(text, {"x": "value", "w": 5})


@pytest.mark.parametrize("text, record", [("{missing}", {"x": 1}), ("{x:.2f}", {"x": "text"}), ("{x", {"x": 1}),
                                          ("x}", {"x": 1})])
def test_template_errors_are_book_data_errors(text, record):
    with pytest.raises(BookDataError):
        template(text, record)


def test_str_format_would_have_walked_into_the_object():
    # The reason for the restricted formatter: str.format reaches attributes that a page must not.
    assert "class" in "{x.__class__}".format(x="value")


# -- JSON inside <script> -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", HOSTILE)
def test_script_json_cannot_end_the_element_and_reads_back_the_same(value):
    obj = {"records": [{"alt": value, "note": value, value: [value]}]}
    text = script_json(obj)
    assert not set("<>&") & set(text)
    assert json.loads(text) == obj


# -- Markdown that studies write ------------------------------------------------------------------------

def _md_parser():
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    # The book's own extensions (_config.yml), substitutions among them.
    cfg = MdParserConfig(enable_extensions={"colon_fence", "dollarmath", "amsmath", "deflist", "substitution"})
    return create_md_parser(cfg, RendererHTML)


def _cells(parser, row: str) -> list[list]:
    """The inline tokens of each body cell of a one-row table."""
    tokens = parser.parse(f"| a | b |\n| --- | --- |\n{row}\n")
    body = tokens[[t.type for t in tokens].index("tbody_open"):]
    return [t.children for t in body if t.type == "inline"]


@pytest.mark.parametrize("value", HOSTILE)
def test_markdown_text_and_code_are_literal_in_a_table_cell(value):
    parser = _md_parser()
    flat = " ".join(value.split())
    text_cell, code_cell = _cells(parser, f"| {md.text(value)} | {md.code(value)} |")
    # Only plain text comes out of the escaped cell, and it reads back as the value.
    assert {t.type for t in text_cell} <= {"text"}, text_cell
    assert "".join(t.content for t in text_cell) == flat
    assert [t.type for t in code_cell] == ["code_inline"] and code_cell[0].content.strip() == flat.strip()


def test_unescaped_values_would_have_become_markup():
    # The check above can fail: the same values written as they are turn into HTML, roles and math.
    parser = _md_parser()
    kinds = set()
    for value in HOSTILE[:10]:
        cells = _cells(parser, f"| {' '.join(value.split())} | x |")
        kinds |= {t.type for t in cells[0]}
    assert {"html_inline", "math_inline", "substitution_inline", "link_open"} <= kinds


def _hostile_generated(root: Path, value: str):
    """A generated folder whose studies' JSON carries ``value`` in every name the tables show."""
    from xai_book.data import Generated

    photo = {"id": value, "label": 1, "label_name": value, "credit": value, "correct": {value: False},
             "predictions": {value: [{"index": 2, "name": value, "p": 0.5}]}}
    model = {"name": value, "family": value, "arch": value, "input_size": [3, 8, 8], "parameters": 10,
             "weights": value}
    confusion = {value: {"accuracy": 0.5, "top_confusions": [{"true_name": value, "pred_name": value, "count": 3,
                                                               "share_of_true": 0.1}]}}
    cell = {"mean": 0.5, "ci95": 0.1}
    faithfulness = {"rows": [value, "random"], "labels": {value: value},
                    "table": {value: {value: {"deletion_zero": cell, "insertion_blur": cell}, "random": {}}}}
    plant = {"class": value, "clean": {"marked_accuracy": 0.9, "flip_rate": 0.0, "removal_drop": 0.0, "relies": False},
             "poisoned": {"marked_accuracy": 0.2, "flip_rate": 0.7, "removal_drop": 0.5, "relies": True}}
    cleverhans = {"sets": {value: {"plants": [plant]}},
                  "models": {"clean": {"clean_accuracy": 0.9}, value: {"clean_accuracy": 0.8}}}
    ranked = {"mean": 0.5, "rank": 1}
    case = {"methods": [value], "labels": {value: value, "lime": value}, "not_applicable": {"lime": value},
            "ground_truth": {"relevance_mass": {value: ranked}, "pointing_game": {value: ranked}},
            "metrics": {value: {"label": value, "family": value, "rank": {value: 1.5}}}}
    leaderboard = {"headline": value, "cases": {value: case}}
    files = {"overview/photos.json": [photo], "overview/models.json": [model],
             "leaderboard/results.json": leaderboard,
             "misclassification/results.json": {"fmnist": confusion},
             "faithfulness/results.json": faithfulness, "cleverhans/results.json": cleverhans}
    for rel, obj in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(obj))
    studies = ["overview", "misclassification", "faithfulness", "cleverhans", "leaderboard"]
    (root / "manifest.json").write_text(json.dumps({"profile": "smoke", "registered_studies": studies,
                                                    "studies": {s: {} for s in studies}}))
    return Generated(root)


@pytest.mark.parametrize("value", HOSTILE)
def test_the_studies_tables_keep_hostile_names_literal(value, tmp_path):
    from docutils.core import publish_from_doctree
    from docutils.utils import new_document
    from xai_book import tables

    gen = _hostile_generated(tmp_path, value)
    flat = " ".join(value.split())
    # (table, columns, rows): the rows of each table above, one column per model where the table has them
    for name, columns, rows in [("overview/photos", 4, 1), ("overview/models", 7, 1),
                                ("misclassification/confusions", 5, 1), ("faithfulness/table", 3, 2),
                                ("cleverhans/summary", 8, 2), ("leaderboard/table", 5, 2)]:
        table = tables.build(gen, name)
        entries = [[e for e in row.findall(nodes.entry)] for row in table.findall(nodes.row)]
        assert [len(r) for r in entries] == [columns] * (rows + 1), name  # header and body rows
        for para in table.findall(nodes.paragraph):
            # Text and code only (and the baseline row's emphasis): nothing in a value became markup.
            assert {type(c) for c in para.children} <= {nodes.Text, nodes.literal, nodes.emphasis}, (name, para)
        assert flat in table.astext(), name
        doc = new_document(name)
        doc += table
        page = publish_from_doctree(doc, writer_name="html5").decode()
        body = page[page.index("<table"):page.index("</table>")]
        if "<" in value:
            assert value.split()[0] not in body, (name, body)  # "<img", "</script><script>", "<!--<script>"
        assert "<script" not in body and "<img" not in body and "<a " not in body, (name, body)


def test_unescaped_tables_would_have_been_markup(tmp_path):
    # The check above can fail: the same value as a raw HTML node reaches the page as a tag.
    from docutils.core import publish_from_doctree
    from docutils.utils import new_document

    doc = new_document("raw")
    doc += nodes.raw("", HOSTILE[0], format="html")
    assert HOSTILE[0] in publish_from_doctree(doc, writer_name="html5").decode()


def test_an_unknown_table_or_a_missing_key_names_the_fix(tmp_path):
    from xai_book import tables

    gen = _hostile_generated(tmp_path, "x")
    with pytest.raises(BookDataError, match="did you mean overview/models"):
        tables.build(gen, "overview/model")
    (tmp_path / "faithfulness/results.json").write_text(json.dumps({"rows": [], "table": {}}))
    with pytest.raises(BookDataError, match="'labels'.*--only faithfulness"):
        tables.build(gen, "faithfulness/table")
