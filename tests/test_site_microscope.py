"""The Microscope: the smoke profile's study (every channel of its layers, sheets that hold exactly the
renderings and exemplars it reports) and its page, built with warnings as errors and driven in
Chromium: one anchor per unit, a hash opens its unit, the search finds a channel by index, sheets
below the first load lazily and a unit's exemplar sheet is fetched only when a unit of it opens.

The page binds only its own study's results, so a book of that page alone builds from the one study's
precompute; the whole smoke site (tests/test_site.py) builds it among every chapter, where the
feature-visualization chapter's channel grid links into it."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_site import ROOT, Visit, _mini_book, jupyter_book
from xai import featvis, profiles, studies
from xai.data import fashion_mnist
from xai.featvis import microscope as M
from xai.render.store import Store
from xai.studies import _frame as frame
from xai.studies import microscope as MS
from xai.studies.featvis_base import montage


@pytest.fixture(scope="module")
def microscope(tmp_path_factory):
    gen = tmp_path_factory.mktemp("microscope-generated")
    studies.run(["microscope"], profiles.get("smoke"), Store(gen, profile="smoke"), log=lambda *_: None)
    return {"generated": gen, "results": json.loads((gen / "microscope" / "results.json").read_text())}


@pytest.fixture(scope="module")
def microscope_site(tmp_path_factory, microscope):
    root = tmp_path_factory.mktemp("microscope-site")
    _mini_book(root, {"microscope": (ROOT / "book" / "microscope.md").read_text()})
    build = jupyter_book(root, microscope["generated"])
    return {"build": build, "html": root / "_build" / "html", **microscope}


def _png(gen, rel) -> np.ndarray:
    return np.asarray(Image.open(gen / rel), dtype=np.float32) / 255


def test_every_channel_of_each_layer_is_on_its_sheets(microscope):
    res, gen = microscope["results"], microscope["generated"]
    p = profiles.get("smoke")
    lite0, cnn = frame.load("efficientnet_lite0", p), frame.load("fmnist_cnn", p)
    assert [(L["model"], L["layer"]) for L in res["layers"]] == [("efficientnet_lite0", lite0.layers[0]),
                                                                ("fmnist_cnn", cnn.layers[0]), ("fmnist_cnn", cnn.layers[3])]
    for L in res["layers"]:
        entry = lite0 if L["model"] == "efficientnet_lite0" else cnn
        probe = torch.zeros(1, *entry.input_size)
        width = featvis.activations(entry.model, probe, [L["objective_layer"]]).layer(L["objective_layer"]).shape[1]
        assert L["units"] == width == len(L["anchors"]) == len(L["values"]) == len(L["exemplar_sources"])
        assert L["anchors"] == [M.unit_anchor(L["layer"], c) for c in range(width)]
        assert [s["first"] for s in L["sheets"]] == list(range(0, width, MS.option(p, "sheet_units")))
        for s in L["sheets"]:
            vis, ex = _png(gen, s["image"]), _png(gen, s["exemplars"])
            assert vis.shape[:2] == (s["rows"] * L["tile"], L["columns"] * L["tile"])
            assert ex.shape[:2] == (s["count"] * L["exemplar_tile"], L["k"] * L["exemplar_tile"])
        assert all(v[i] >= v[i + 1] for v in L["exemplar_values"] for i in range(len(v) - 1))
    assert res["summary"]["units"] == sum(L["units"] for L in res["layers"]) and res["skipped"] == {}


def test_the_sheets_hold_the_renderings_and_the_top_test_images(microscope):
    """The Fashion-MNIST layer's sheet is the engine's rendering of every channel (the same call, so
    equal to 8-bit rounding), and its exemplars are the test images of highest mean activation."""
    res, gen = microscope["results"], microscope["generated"]
    p = profiles.get("smoke")
    L = next(L for L in res["layers"] if L["model"] == "fmnist_cnn")
    cnn = frame.load("fmnist_cnn", p)
    r = M.render_channels(cnn.model, L["layer"], list(range(L["units"])), size=28, steps=MS.option(p, "fmnist_steps"),
                          seed=p.seed, batch=MS.option(p, "batch"), channels_in=1)
    s = L["sheets"][0]
    want = montage(list(r.images[:s["count"]]), L["columns"], gap=0)[0].numpy()
    assert np.abs(_png(gen, s["image"]) - want).max() <= 1 / 255 + 1e-6
    x, y = fashion_mnist.load("test")
    x = x[:MS.option(p, "fmnist_images")]
    acts = featvis.activations(cnn.model, x, [L["objective_layer"]]).layer(L["objective_layer"]).mean((2, 3))
    for c in (0, L["units"] - 1):
        top = acts[:, c].topk(L["k"]).indices.tolist()
        assert L["exemplar_sources"][c] == [f"test #{i}" for i in top]
        assert L["exemplar_labels"][c] == [fashion_mnist.CLASSES[int(y[i])] for i in top]
        sheet = next(t for t in L["sheets"] if t["first"] <= c < t["first"] + t["count"])
        j = c - sheet["first"]
        row = _png(gen, sheet["exemplars"])[j * 28:(j + 1) * 28]
        assert np.abs(row - np.concatenate([x[i, 0].numpy() for i in top], 1)).max() <= 1 / 255 + 1e-6
    assert L["beats_top_exemplar"] == sum(v > e[0] for v, e in zip(L["values"], L["exemplar_values"]))


def test_a_part_without_a_model_is_skipped_with_its_reason(microscope, tmp_path):
    p = dataclasses.replace(profiles.get("smoke"), fmnist_models=())
    summary = MS.run(p, Store(tmp_path, profile="smoke"))
    res = json.loads((tmp_path / "microscope" / "results.json").read_text())
    assert res["skipped"] == {"fmnist": frame.NO_FMNIST} and {L["model"] for L in res["layers"]} == {"efficientnet_lite0"}
    assert summary["units"] == res["layers"][0]["units"]
    with pytest.raises(Exception, match="fmnist_vgg"):
        MS.run(dataclasses.replace(p, options={**p.options, "microscope": {"model": "fmnist_vgg"}}),
               Store(tmp_path, profile="smoke"))
    assert MS.unit_anchors([("a", "conv", 2), ("b", "conv", 1), ("b", "fc", 1)]) == {
        ("a", "conv"): ["a.conv-c0", "a.conv-c1"], ("b", "conv"): ["b.conv-c0"], ("b", "fc"): ["fc-c0"]}


def test_the_page_builds_with_one_anchor_per_unit(microscope_site):
    b = microscope_site["build"]
    assert b.returncode == 0, (b.stdout + b.stderr)[-8000:]
    page = (microscope_site["html"] / "book" / "microscope.html").read_text()
    assert page.count('data-xai="microscope"') == 1 and "Build error" not in page
    anchors = [a for L in microscope_site["results"]["layers"] for a in L["anchors"]]
    for a in anchors:
        assert page.count(f'id="{a}"') == 1, a


OPEN = """r => ({open: r.getAttribute('data-open'), note: r.querySelector('.xai-unit-note').textContent,
    big: r.querySelector('.xai-unit-big').style.backgroundImage,
    pos: r.querySelector('.xai-unit-big').style.backgroundPosition,
    strip: r.querySelector('.xai-unit-exemplars').style.backgroundImage,
    stripHidden: r.querySelector('.xai-unit-exemplars').hidden,
    sources: Array.from(r.querySelectorAll('.xai-unit-sources li')).map(li => li.textContent),
    active: Array.from(r.querySelectorAll('.xai-unit.xai-active')).map(a => a.id)})"""


def _browse(site, browser, serve, path):
    if site["build"].returncode != 0:
        pytest.fail("the page did not build; see test_the_page_builds_with_one_anchor_per_unit")
    return Visit(browser, serve(site["html"]), path)


def test_sheets_load_lazily_and_exemplars_only_when_a_unit_opens(microscope_site, serve, browser):
    v = _browse(microscope_site, browser, serve, "book/microscope.html")

    def requested():  # every resource the page has fetched since it began loading
        return v.page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")

    try:
        root = v.page.query_selector("[data-xai=microscope]")
        sheets = root.query_selector_all("img.xai-sheet-image")
        assert len(sheets) == sum(len(L["sheets"]) for L in microscope_site["results"]["layers"])
        assert [s.get_attribute("loading") for s in sheets] == ["eager"] + ["lazy"] * (len(sheets) - 1)
        v.load_all_images()
        assert [u for u in requested() if "units-" in u] and not [u for u in requested() if "exemplars-" in u]
        assert root.evaluate(OPEN)["stripHidden"]
        unit = root.query_selector_all(".xai-unit")[-1]
        unit.scroll_into_view_if_needed()
        unit.click()
        v.page.wait_for_load_state("networkidle")
        shown = root.evaluate(OPEN)
        last = microscope_site["results"]["layers"][-1]
        assert shown["open"] == last["anchors"][-1] and shown["active"] == [last["anchors"][-1]]
        assert not shown["stripHidden"] and "exemplars-" in shown["strip"]
        v.page.wait_for_function("performance.getEntriesByType('resource').some(e => e.name.includes('exemplars-'))")
        fetched = {u.rsplit("/", 3)[-2] for u in requested() if "exemplars-" in u}
        assert fetched == {last["layer"]}  # now, and only the opened unit's sheet
        assert v.page.evaluate("location.hash") == "#" + last["anchors"][-1]
        assert v.problems == []
    finally:
        v.close()


def test_a_hash_opens_its_unit_and_the_search_finds_a_channel(microscope_site, serve, browser):
    layers = microscope_site["results"]["layers"]
    L, c = layers[1], 5
    v = _browse(microscope_site, browser, serve, f"book/microscope.html#{L['anchors'][c]}")
    try:
        root = v.page.query_selector("[data-xai=microscope]")
        shown = root.evaluate(OPEN)
        assert shown["open"] == L["anchors"][c] and shown["active"] == [L["anchors"][c]]
        assert shown["note"].startswith(f"Channel {c} of {L['layer']} in {L['model']}")
        j = c - L["sheets"][0]["first"]
        q, r = j % L["columns"], j // L["columns"]
        rows = L["sheets"][0]["rows"]
        assert shown["pos"] == f"{100 * q / (L['columns'] - 1):g}% {100 * r / (rows - 1) if rows > 1 else 0:g}%"
        assert len(shown["sources"]) == L["k"] and shown["sources"][0].startswith(L["exemplar_sources"][c][0])
        # A hash change opens another unit.
        other = layers[0]["anchors"][2]
        v.page.evaluate(f"location.hash = {json.dumps(other)}")
        v.page.wait_for_function(f"document.querySelector('[data-xai=microscope]').getAttribute('data-open') === {json.dumps(other)}")
        # The search: a layer and a channel index.
        target = layers[2]
        root.query_selector("select[name=layer]").select_option("2")
        root.query_selector("input[name=channel]").fill(str(target["units"] - 1))
        root.query_selector(".xai-go").click()
        v.page.wait_for_function(f"document.querySelector('[data-xai=microscope]').getAttribute('data-open') === {json.dumps(target['anchors'][-1])}")
        assert v.page.evaluate("location.hash") == "#" + target["anchors"][-1]
        # A channel the layer lacks is refused with the layer's range, and nothing else changes.
        root.query_selector("input[name=channel]").fill(str(target["units"]))
        root.query_selector(".xai-go").click()
        assert root.evaluate(OPEN)["open"] == target["anchors"][-1]
        assert root.query_selector(".xai-microscope-status").text_content() == \
            f"{target['layer']} has channels 0 to {target['units'] - 1}."
        assert v.problems == []
    finally:
        v.close()
