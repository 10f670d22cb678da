"""Strings from the data reach the page as text: never as HTML, MyST markup or a template that walks
into objects. (The site-level check, in a browser, is ``test_site.py::test_hostile_strings_stay_text``.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from docutils import nodes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "book" / "_ext"))

from xai.render import markdown as md  # noqa: E402
from xai_book.data import BookDataError  # noqa: E402
from xai_book.text import script_json, template, unraw  # noqa: E402

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


# -- raw HTML in a parsed snippet --------------------------------------------------------------------------

def test_unraw_turns_html_from_a_snippet_into_text_and_keeps_mysts_own():
    box = nodes.container()
    para = nodes.paragraph()
    para += nodes.Text("credit: ")
    para += nodes.raw("", "<img src=x onerror=alert(1)>", format="html")
    para += nodes.raw("", "<br />\n", format="html")  # a hard line break, as MyST writes it
    box += para
    box += nodes.raw("", "<script>alert(1)</script>", format="html")  # an HTML block
    box += nodes.raw("", "\\begin{x}", format="latex")
    unraw(box)
    raws = list(box.findall(nodes.raw))
    assert [r.astext() for r in raws] == ["<br />\n"]
    assert para.astext() == "credit: <img src=x onerror=alert(1)><br />\n"
    blocks = [n for n in box.children if isinstance(n, nodes.literal_block)]
    assert [b.astext() for b in blocks] == ["<script>alert(1)</script>", "\\begin{x}"]


def _inline_kinds(parser, markdown: str) -> tuple[set[str], list[int]]:
    """Inline token types in a snippet, and the number of cells in each table row."""
    tokens = parser.parse(markdown)
    kinds = {c.type for t in tokens if t.type == "inline" for c in t.children}
    cells, row = [], 0
    for t in tokens:
        if t.type in ("th_open", "td_open"):
            row += 1
        elif t.type == "tr_close":
            cells.append(row)
            row = 0
    return kinds, cells


@pytest.mark.parametrize("value", HOSTILE)
def test_the_studies_tables_keep_hostile_names_literal(value):
    from xai.studies.misclassification import confusions_markdown
    from xai.studies.overview import models_markdown, photos_markdown

    parser = _md_parser()
    photo = {"id": value, "label": 1, "label_name": value, "credit": value, "correct": {value: False},
             "predictions": {value: [{"index": 2, "name": value, "p": 0.5}]}}
    model = {"name": value, "family": value, "arch": value, "input_size": [3, 8, 8], "parameters": 10,
             "weights": value}
    confusion = {value: {"accuracy": 0.5, "top_confusions": [{"true_name": value, "pred_name": value, "count": 3,
                                                               "share_of_true": 0.1}]}}
    for snippet, columns in [(photos_markdown([photo], [value]), 4), (models_markdown([model]), 7),
                             (confusions_markdown(confusion), 5)]:
        kinds, cells = _inline_kinds(parser, snippet)
        assert kinds <= {"text", "code_inline"}, (kinds, snippet)
        assert cells == [columns, columns], snippet  # a "|" in a value adds no cell
        assert " ".join(value.split()).replace("`", "") in "".join(
            c.content for t in parser.parse(snippet) if t.type == "inline" for c in t.children).replace("`", "")
