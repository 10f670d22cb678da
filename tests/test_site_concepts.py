"""The concepts chapter, built with warnings as errors from the smoke profile's concepts study, and its
interactive figures driven in Chromium: hovering a grid position shows its dictionary entry, the
pickers switch grids, and the group selector swaps each group's visualization, map and attribution.

The chapter binds only its own study's results, so a book of that page alone (the real extension,
styles and config) builds from the one study's precompute; the whole smoke site (tests/test_site.py)
builds it among every chapter."""
from __future__ import annotations

import json

import pytest

from test_site import Visit, _mini_book, check_explorer, jupyter_book
from xai import profiles, studies
from xai.render.store import Store
from test_site import ROOT


@pytest.fixture(scope="module")
def concepts_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts-site")
    gen = tmp_path_factory.mktemp("concepts-generated")
    studies.run(["concepts"], profiles.get("smoke"), Store(gen, profile="smoke"), log=lambda *_: None)
    # Stand-ins for the sections of other chapters the page links to: the links must resolve under -n.
    stubs = {"saliency": "(saliency-lrp)=\n# LRP\n\nA stand-in for the saliency chapter's LRP section.\n",
             "microscope": "(chapter-microscope)=\n# Microscope\n\nA stand-in for the Microscope chapter.\n"}
    _mini_book(root, {"concepts": (ROOT / "book" / "concepts.md").read_text(), **stubs})
    build = jupyter_book(root, gen)
    return {"build": build, "html": root / "_build" / "html", "generated": gen}


def test_the_chapter_builds_with_warnings_as_errors(concepts_site):
    b = concepts_site["build"]
    assert b.returncode == 0, (b.stdout + b.stderr)[-8000:]
    page = (concepts_site["html"] / "book" / "concepts.html").read_text()
    assert page.count('data-xai="blocks"') == 1 and page.count('data-xai="explorer"') == 4
    assert "Build error" not in page


PAYLOAD = "r => JSON.parse(r.querySelector('script.xai-data').textContent)"
SHOWN = """r => ({
    note: r.querySelector('.xai-blocks-detail .xai-note').textContent,
    channels: Array.from(r.querySelectorAll('.xai-dictionary img')).map(i => [i.getAttribute('src'), i.alt]),
    tiles: Array.from(r.querySelectorAll('.xai-tile img')).map(i => i.getAttribute('src')),
    active: Array.from(r.querySelectorAll('.xai-tile')).findIndex(b => b.classList.contains('xai-active')),
    box: r.querySelector('.xai-blocks-box') && r.querySelector('.xai-blocks-box').style.cssText,
    photo: r.querySelector('.xai-blocks-photo img') && r.querySelector('.xai-blocks-photo img').getAttribute('src'),
})"""


def _expect(rec: dict, i: int) -> dict:
    e = rec["entries"][i]
    return {"note": e["note"], "channels": [[c["src"], c["alt"]] for c in e["channels"]],
            "tiles": [t["src"] for t in rec["tiles"]], "active": i}


def test_hovering_a_grid_position_shows_its_dictionary_entry(concepts_site, serve, browser):
    if concepts_site["build"].returncode != 0:
        pytest.fail("the chapter did not build; see test_the_chapter_builds_with_warnings_as_errors")
    v = Visit(browser, serve(concepts_site["html"]), "book/concepts.html")
    try:
        root = v.page.query_selector("[data-xai=blocks]")
        data = root.evaluate(PAYLOAD)
        rec = data["records"][0]
        boxes = set()
        for i, tile in enumerate(root.query_selector_all(".xai-tile")):
            tile.hover()
            shown = root.evaluate(SHOWN)
            assert {k: shown[k] for k in ("note", "channels", "tiles", "active")} == _expect(rec, i), i
            boxes.add(shown["box"])
        assert len(boxes) == rec["rows"] * rec["cols"]  # the marked region moves with the position
        # The keyboard: focus the first position and step right and down through the grid.
        root.query_selector(".xai-tile").focus()
        v.page.keyboard.press("ArrowRight")
        assert root.evaluate(SHOWN)["active"] == 1
        v.page.keyboard.press("ArrowDown")
        assert root.evaluate(SHOWN)["active"] == 1 + rec["cols"]
        # Another layer: the grid is rebuilt from that record, its first entry shown.
        labels = root.query_selector_all("fieldset[data-axis=layer] label.xai-choice")
        assert len(labels) == 2
        labels[1].click()
        state = json.loads(root.get_attribute("data-state"))
        other = next(r for r in data["records"] if r["k"] == state)
        assert other is not rec and state["layer"] != rec["k"]["layer"]
        shown = root.evaluate(SHOWN)
        assert {k: shown[k] for k in ("note", "channels", "tiles", "active")} == _expect(other, 0)
        root.query_selector_all(".xai-tile")[-1].hover()
        assert root.evaluate(SHOWN)["channels"] == _expect(other, len(other["tiles"]) - 1)["channels"]
        v.load_all_images()
        broken = v.page.evaluate("Array.from(document.images).filter(i => !i.hidden && (!i.naturalWidth || !i.alt))"
                                 ".map(i => i.src)")
        assert not broken, broken
        assert not v.problems, v.problems
    finally:
        v.close()


def test_the_group_selector_shows_each_groups_map_and_visualization(concepts_site, serve, browser):
    if concepts_site["build"].returncode != 0:
        pytest.fail("the chapter did not build")
    v = Visit(browser, serve(concepts_site["html"]), "book/concepts.html")
    try:
        fig = v.page.query_selector("#fig-neuron-groups")
        groups = fig.query_selector_all("fieldset[data-axis=group] label.xai-choice")
        assert len(groups) == profiles.get("smoke").options["concepts"]["groups"]
        assert check_explorer(fig, "neuron groups") >= len(groups) - 1  # every other group changes the images
        groups[1].click()
        srcs = [i.get_attribute("src") for i in fig.query_selector_all(".xai-cell img")]
        assert [s.rsplit("/", 1)[1] for s in srcs] == ["g1.webp", "g1_map.webp", "g1_attr.webp"]
        for fid in ("fig-discovered-concepts", "fig-marker-units", "fig-crp"):
            check_explorer(v.page.query_selector(f"#{fid}"), fid)
        assert not v.problems, v.problems
    finally:
        v.close()
