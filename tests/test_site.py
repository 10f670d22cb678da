"""The built site, tested as a reader meets it.

* The smoke profile's site is built in isolation (its own copy of the book and its own generated
  folder), with warnings as errors: that build succeeding is the first test.
* Headless Chromium (Debian's, through Playwright) then loads every page from a localhost server:
  no console error, no failed request, no request to another host, every image decoded with alt
  text, every interactive control changing what it should, hover cards on citations.
* Every internal link and anchor resolves (checked on the HTML files).
* The same book builds again, to the same pages, in a process where ``import torch`` and ``import xai``
  fail: the extension reads only the generated folder.
* A second, tiny book built from synthetic artifacts exercises every widget type whatever studies
  exist, and a third proves that a false claim, a missing file, a missing key and a partial
  precompute each fail the build with a message that names the culprit.

Screenshots of the first page and of an interactive figure go to ``test-artifacts/``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
SITE_BUDGET_BYTES = 25 * 2**20  # the smoke site; the theme's own assets are about 3.5 MB of it


# -- building books in isolation ----------------------------------------------------------------------

def copy_book(dest: Path) -> None:
    """The book's sources without any generated artifacts or caches."""
    shutil.copy2(ROOT / "_config.yml", dest / "_config.yml")
    shutil.copy2(ROOT / "_toc.yml", dest / "_toc.yml")
    shutil.copytree(ROOT / "book", dest / "book",
                    ignore=shutil.ignore_patterns("_generated", "__pycache__", "_build"))


def jupyter_book(src: Path, generated: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XAI_GENERATED": str(generated)}
    return subprocess.run([str(JUPYTER_BOOK), "build", str(src), "-W", "-n", "--keep-going"], env=env,
                          capture_output=True, text=True, timeout=600)


def precompute_and_build(src: Path, what: str, *args: str) -> dict:
    """``xai precompute ARGS`` into ``src``'s copy of the book, then ``jupyter-book build -W -n``; a failed
    precompute fails the calling test with its output (``what`` names the build)."""
    copy_book(src)
    generated = src / "book" / "_generated"
    env = {**os.environ, "XAI_GENERATED": str(generated)}
    pre = subprocess.run([sys.executable, "-m", "xai", "precompute", *args], env=env,
                         capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if pre.returncode != 0:
        pytest.fail(f"{what} precompute failed:\n{pre.stdout[-3000:]}\n{pre.stderr[-5000:]}")
    build = jupyter_book(src, generated)
    return {"src": src, "html": src / "_build" / "html", "build": build, "generated": generated}


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory):
    """``xai precompute --profile smoke`` into the copy, then ``jupyter-book build -W -n``.

    ``XAI_TEST_SITE=<folder of a built site>`` tests that site instead (to iterate on the pages without
    waiting for a precompute); ``make test`` and CI never set it.
    """
    if os.environ.get("XAI_TEST_SITE"):
        html = Path(os.environ["XAI_TEST_SITE"]).resolve()
        done = subprocess.CompletedProcess([], 0, stdout="build succeeded (XAI_TEST_SITE)", stderr="")
        return {"src": html.parent.parent, "html": html, "build": done, "generated": None}
    return precompute_and_build(tmp_path_factory.mktemp("smoke-site"), "smoke", "--profile", "smoke")


@pytest.fixture(scope="session")
def site(smoke_build) -> Path:
    if smoke_build["build"].returncode != 0:
        pytest.fail("the smoke site did not build; see test_smoke_site_builds_with_warnings_as_errors")
    return smoke_build["html"]


def test_smoke_site_builds_with_warnings_as_errors(smoke_build):
    b = smoke_build["build"]
    log = b.stdout + b.stderr
    assert b.returncode == 0, f"jupyter-book build -W -n failed:\n{log[-8000:]}"
    assert "build succeeded" in log
    assert (smoke_build["html"] / "index.html").is_file()


# The book's extension reads only the generated folder: in this interpreter torch and xai cannot load.
IMPORT_BLOCKER = """
import importlib.abc
import sys

BLOCKED = ("torch", "xai")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the book must build from book/_generated alone")
        return None


sys.meta_path.insert(0, Blocker())
"""


def test_smoke_site_builds_without_torch_or_xai(smoke_build, tmp_path):
    """The same sources and generated folder build with -W where ``import torch`` and ``import xai``
    fail, and give the same pages: the book needs nothing from the package or the models."""
    if smoke_build["generated"] is None:
        pytest.skip("XAI_TEST_SITE names a built site; this test needs its sources and generated folder")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(IMPORT_BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(hook), "XAI_GENERATED": str(smoke_build["generated"])}
    for module in ("torch", "xai"):  # the blocker works, so the build below proves something
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert probe.returncode != 0 and "is blocked" in probe.stderr, probe.stderr[-2000:]
    src = tmp_path / "src"
    src.mkdir()
    copy_book(src)
    build = subprocess.run([str(JUPYTER_BOOK), "build", str(src), "-W", "-n", "--keep-going"], env=env,
                           capture_output=True, text=True, timeout=600)
    log = build.stdout + build.stderr
    assert build.returncode == 0 and "build succeeded" in log, log[-8000:]
    assert "is blocked" not in log, log[-8000:]
    # Every chapter's HTML is the one the ordinary build wrote.
    pages = sorted(p.relative_to(smoke_build["html"]) for p in (smoke_build["html"] / "book").glob("*.html"))
    assert pages
    for rel in pages:
        assert (src / "_build" / "html" / rel).read_text() == (smoke_build["html"] / rel).read_text(), rel


# -- a localhost server and Chromium -------------------------------------------------------------------

class Visit:
    """One page in a fresh context, recording everything that went wrong while it loaded and ran."""

    def __init__(self, browser, base: str, path: str, *, dark: bool = False, width: int = 1400):
        self.base = base
        self.problems: list[str] = []
        self.context = browser.new_context(viewport={"width": width, "height": 900},
                                           color_scheme="dark" if dark else "light")
        self.page = self.context.new_page()
        host = urlsplit(base).netloc
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog opened: {d.message}"), d.dismiss()))
        # ERR_ABORTED is the browser cancelling an image whose src a control has already replaced (a fast
        # slider under load); a missing file still shows up as a 404 response or a broken naturalWidth.
        self.page.on("requestfailed", lambda r: None if "ERR_ABORTED" in str(r.failure) else
                     self.problems.append(f"request failed: {r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        self.page.on("request", lambda r: urlsplit(r.url).scheme in ("http", "https")
                     and urlsplit(r.url).netloc != host and self.problems.append(f"request to another host: {r.url}"))
        self.page.goto(f"{base}/{path}")
        self.page.wait_for_load_state("networkidle")

    def load_all_images(self) -> None:
        """Scroll every image into view so lazy ones load, then wait for the network to settle."""
        self.page.evaluate("""async () => {
            for (const img of document.querySelectorAll('img')) {
                img.scrollIntoView();
                await new Promise(r => requestAnimationFrame(r));
            }
            window.scrollTo(0, 0);
        }""")
        self.page.wait_for_load_state("networkidle")
        self.page.wait_for_function("Array.from(document.images).every(i => i.hidden || i.complete)", timeout=15000)

    def close(self) -> None:
        self.context.close()


def site_pages(html: Path) -> list[str]:
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html") if "_static" not in p.parts)


# -- every page ---------------------------------------------------------------------------------------

def test_every_page_loads_cleanly_with_decoded_images_and_alt_text(site, serve, browser):
    base = serve(site)
    pages = site_pages(site)
    assert {"book/intro.html", "book/references.html", "book/reproduce.html"} <= set(pages)
    failures = []
    images_seen = 0
    for path in pages:
        v = Visit(browser, base, path)
        try:
            v.load_all_images()
            images = v.page.evaluate("""() => Array.from(document.images).filter(i => !i.hidden).map(i => ({
                src: i.currentSrc || i.src, alt: i.getAttribute('alt'), w: i.naturalWidth}))""")
            images_seen += len(images)
            for img in images:
                if not img["w"]:
                    failures.append(f"{path}: image not decoded: {img['src']}")
                if not (img["alt"] or "").strip():
                    failures.append(f"{path}: image without alt text: {img['src']}")
            failures += [f"{path}: {p}" for p in v.problems]
        finally:
            v.close()
    assert not failures, "\n".join(failures)
    assert images_seen > 0


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.imgs: list[dict] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "name" in a:
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.links.append(a[key])
        if tag == "img":
            self.imgs.append(a)
        # Anything the browser loads by itself must come from this site.
        loads = (tag == "script" and a.get("src")) or (tag == "img" and a.get("src")) or \
                (tag == "link" and (a.get("rel") or "") in ("stylesheet", "icon", "preload", "modulepreload")
                 and a.get("href"))
        if loads and urlsplit(loads).scheme in ("http", "https", ""):
            if urlsplit(loads).netloc:
                self.external.append(loads)


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_every_internal_link_and_anchor_resolves(site):
    parsed = {site / p: _parse(site / p) for p in site_pages(site)}
    broken = []
    checked = 0
    for page, links in parsed.items():
        for link in links.links:
            scheme = urlsplit(link).scheme
            if scheme in ("http", "https", "mailto", "data", "javascript") or link.startswith("//"):
                continue
            target, frag = urldefrag(link)
            path = (page.parent / unquote(urlsplit(target).path)).resolve() if target else page
            if path.is_dir():
                path = path / "index.html"
            checked += 1
            if not path.exists():
                broken.append(f"{page.relative_to(site)}: {link} -> missing {path}")
            elif frag and path.suffix == ".html":
                ids = parsed[path].ids if path in parsed else _parse(path).ids
                if unquote(frag) not in ids:
                    broken.append(f"{page.relative_to(site)}: {link} -> no id #{frag} in {path.relative_to(site)}")
    assert not broken, "\n".join(broken[:50])
    assert checked > 100


def test_the_channel_grid_links_its_units_into_the_microscope(site):
    """Every channel of the feature-visualization grid whose layer the Microscope holds links to that
    unit's anchor there (the links sit in the figure's data until a channel is shown); others have none."""
    import re

    page = (site / "book" / "featvis.html").read_text()
    ids = _parse(site / "book" / "microscope.html").ids
    payload = re.search(r'data-xai="channels".*?<script type="application/json" class="xai-data">(.*?)</script>',
                        page, re.S).group(1)
    records = json.loads(payload)["records"]
    linked = [r["link"] for r in records if r["link"]]
    assert linked and len(linked) < len(records)  # bn2 (1280 channels) is in the grid, not in the Microscope
    for link in linked:
        target, frag = urldefrag(link)
        assert target == "microscope.html" and frag in ids, link
    assert 'class="xai-channel-link"' in page


def test_site_is_self_contained_small_and_optimised(site):
    external = []
    for page in site_pages(site):
        external += [f"{page}: {u}" for u in _parse(site / page).external]
    for css in site.rglob("*.css"):
        for url in re.findall(r"url\(\s*['\"]?(https?:[^)'\"]+)", css.read_text(errors="replace")):
            external.append(f"{css.relative_to(site)}: {url}")
        if re.search(r"@import\s+(url\()?['\"]?https?:", css.read_text(errors="replace")):
            external.append(f"{css.relative_to(site)}: @import from another host")
    assert not external, "resources from another host:\n" + "\n".join(external)
    generated = [p for p in (site / "_generated").rglob("*") if p.is_file()]
    assert generated, "no generated images were copied into the site"
    assert all(p.suffix == ".webp" for p in generated), [p.name for p in generated if p.suffix != ".webp"]
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "site-size.txt").write_text(
        f"smoke site: {size / 2**20:.2f} MiB in {sum(1 for p in site.rglob('*') if p.is_file())} files; "
        f"generated images {sum(p.stat().st_size for p in generated) / 2**20:.2f} MiB\n")
    assert size < SITE_BUDGET_BYTES, f"the smoke site is {size / 2**20:.1f} MiB"


def test_images_below_the_first_figure_load_lazily(site):
    for page in (site / "book").glob("*.html"):
        imgs = [i for i in _parse(page).imgs if (i.get("src") or "").startswith("../_generated/")]
        if len(imgs) < 2:
            continue
        eager = [i for i in imgs if i.get("loading") == "eager"]
        lazy = [i for i in imgs if i.get("loading") == "lazy"]
        assert len(eager) + len(lazy) == len(imgs), page
        assert lazy, f"{page.name}: no image loads lazily"
        assert all(i.get("width") and i.get("height") for i in imgs), f"{page.name}: image without its size"


# -- interactive figures ------------------------------------------------------------------------------

EXPECTED_CELLS = """(root) => {
    const data = JSON.parse(root.querySelector('script.xai-data').textContent);
    const state = {};
    root.querySelectorAll('.xai-controls [data-axis]').forEach(c => {
        const a = c.getAttribute('data-axis');
        if (c.tagName === 'FIELDSET') state[a] = c.querySelector('input:checked').value;
        else if (c.type === 'range') state[a] = JSON.parse(c.getAttribute('data-stops'))[+c.value].v;
        else state[a] = c.value;
    });
    const grid = root.querySelector('.xai-grid');
    const rk = grid.getAttribute('data-row'), ck = grid.getAttribute('data-col');
    return Array.from(grid.querySelectorAll('.xai-cell')).map(cell => {
        const want = Object.assign({}, state);
        if (rk) want[rk] = cell.getAttribute('data-rv');
        if (ck) want[ck] = cell.getAttribute('data-cv');
        const rec = data.records.find(r => Object.keys(want).every(k => r.k[k] === want[k]));
        const img = cell.querySelector('img');
        return {want: rec ? rec.src : null, alt: rec ? rec.alt : null,
                shown: img && !img.hidden ? img.getAttribute('src') : null,
                shownAlt: img && !img.hidden ? img.getAttribute('alt') : null};
    });
}"""


def check_explorer(root, label: str) -> int:
    """Move every control of one explorer through its values; each time the images shown must be the
    records the controls select. Returns the number of control changes that changed an image."""
    changes = 0

    def shown():
        cells = root.evaluate(EXPECTED_CELLS)
        for c in cells:
            assert c["shown"] == c["want"] and c["shownAlt"] == c["alt"], f"{label}: shows {c}"
        return [c["shown"] for c in cells]

    before = shown()
    for fs in root.query_selector_all("fieldset.xai-radio"):
        for lab in fs.query_selector_all("label.xai-choice"):
            lab.click()
            now = shown()
            changes += now != before
            before = now
    for sel in root.query_selector_all(".xai-select select"):
        for value in [o.get_attribute("value") for o in sel.query_selector_all("option")]:
            sel.select_option(value)
            now = shown()
            changes += now != before
            before = now
    for rng in root.query_selector_all("input[type=range]"):
        rng.focus()
        for _ in range(int(rng.get_attribute("max"))):
            rng.press("ArrowRight")
            now = shown()
            out = rng.evaluate("e => e.parentNode.querySelector('output').textContent")
            assert out == rng.get_attribute("aria-valuetext"), f"{label}: slider label {out!r} out of step"
            changes += now != before
            before = now
    return changes


def test_every_explorer_control_swaps_the_images_it_should(site, serve, browser):
    base = serve(site)
    seen = 0
    for path in site_pages(site):
        if "data-xai=\"explorer\"" not in (site / path).read_text():
            continue
        v = Visit(browser, base, path)
        try:
            for i, root in enumerate(v.page.query_selector_all("[data-xai=explorer]")):
                movable = root.evaluate("""r => Array.from(r.querySelectorAll('.xai-controls [data-axis]')).some(c =>
                    c.tagName === 'FIELDSET' ? c.querySelectorAll('input').length > 1
                    : c.type === 'range' ? +c.max > 0 : c.options.length > 1)""")
                changes = check_explorer(root, f"{path} explorer {i}")
                if movable:
                    assert changes > 0, f"{path} explorer {i}: no control changed an image"
                seen += 1
            assert not v.problems, v.problems
        finally:
            v.close()
    assert seen >= 1, "the smoke site has no interactive figure"


def test_keyboard_operates_a_selector(site, serve, browser):
    v = Visit(browser, serve(site), "book/intro.html")
    try:
        fig = v.page.query_selector("#fig-photos")
        first = fig.query_selector("fieldset.xai-radio input:checked")
        before = fig.query_selector(".xai-cell img").get_attribute("src")
        first.focus()
        v.page.keyboard.press("ArrowRight")
        after = fig.query_selector(".xai-cell img").get_attribute("src")
        assert after != before, "arrow key on the photo selector did not change the photo"
        check_explorer(fig, "intro photos")
        ARTIFACTS.mkdir(exist_ok=True)
        fig.screenshot(path=str(ARTIFACTS / "site-interactive-figure.png"))
        assert not v.problems, v.problems
    finally:
        v.close()


def test_citation_hover_cards_and_screenshots(site, serve, browser):
    base = serve(site)
    ARTIFACTS.mkdir(exist_ok=True)
    v = Visit(browser, base, "book/intro.html")
    try:
        v.page.screenshot(path=str(ARTIFACTS / "site-first-page.png"))
        cite = v.page.query_selector("a.xai-cite")
        assert cite is not None, "no citation became a hover card"
        assert cite.get_attribute("title") is None  # the card replaces the native tooltip
        cite.hover()
        card = v.page.query_selector("#xai-card")
        assert card.is_visible()
        assert "Russakovsky" in card.inner_text() or "Tan" in card.inner_text()
        v.page.mouse.move(0, 0)
        assert not card.is_visible()
        cite.focus()
        assert card.is_visible(), "keyboard focus does not show the card"
        v.page.keyboard.press("Escape")
        assert not card.is_visible()
        value = v.page.query_selector(".xai-res")
        value.focus()
        assert "overview/" in card.inner_text() or "json" in card.inner_text()
        assert not v.problems, v.problems
    finally:
        v.close()


def _contrast(fg: list[float], bg: list[float]) -> float:
    """WCAG contrast ratio; a translucent foreground is first blended over the background."""
    if len(fg) == 4:
        fg = [fg[3] * f + (1 - fg[3]) * b for f, b in zip(fg[:3], bg[:3])]

    def lum(c):
        ch = [x / 255 for x in c[:3]]
        ch = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in ch]
        return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2]
    hi, lo = sorted([lum(fg), lum(bg)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


COLORS = """() => {
    const rgb = s => s.match(/[\\d.]+/g).map(Number);
    const bg = rgb(getComputedStyle(document.body).backgroundColor);
    const pick = (sel, prop) => rgb(getComputedStyle(document.querySelector(sel))[prop || 'color']);
    return {theme: document.documentElement.dataset.theme, bg,
            text: pick('.bd-article section > p'), caption: pick('figure.xai-figure figcaption'),
            control: pick('.xai-radio input:not(:checked) + span'),
            checked: pick('.xai-radio input:checked + span'),
            checkedBg: pick('.xai-radio input:checked + span', 'backgroundColor')};
}"""


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_text_is_readable_in_light_and_dark_mode(site, serve, browser, dark):
    v = Visit(browser, serve(site), "book/intro.html", dark=dark)
    try:
        c = v.page.evaluate(COLORS)
        assert c["theme"] == ("dark" if dark else "light")
        assert _contrast(c["text"], c["bg"]) >= 7, c
        assert _contrast(c["caption"], c["bg"]) >= 4.5, c
        assert _contrast(c["control"], c["bg"]) >= 4.5, c
        assert _contrast(c["checked"], c["checkedBg"]) >= 4.5, c
        if dark:
            v.page.screenshot(path=str(ARTIFACTS / "site-first-page-dark.png"))
    finally:
        v.close()


# -- every widget type, on synthetic artifacts ----------------------------------------------------------

WIDGET_PAGE = """# Widgets

```{study} demo
```

```{bind}
summary = demo/summary.json
scores = summary["scores"]
```

The demo has {res}`demo/summary.json:count` records and its best score is {res}`demo/summary.json:scores.b|.2f`.
Together they make {res}`scores["a"] + scores["b"]|.2f`; the larger is {res}`argmax(scores)`.

:::{claim}
:let: s = demo/summary.json:scores
:when: s["b"] > s["a"]
B beats A: {res}`s["b"]|.2f` against {res}`s["a"]|.2f`.
:::

::::{cases}
:::{case}
:when: scores["a"] > scores["b"]
Case A wins.
:::
:::{case}
:when: scores["a"] <= scores["b"]
Case B wins.
:::
::::

```{xai-explorer}
:let: maps = demo/maps.json
:data: [dict(m, threshold=m["threshold"]) for m in maps if m["area"] > 0]
:select: model
:slider: threshold
:columns: method
:alt: {method} map of {model} at threshold {threshold}
:note: area {area:.0%}
:width: page
:name: fig-demo
Maps by model, method and threshold.
```

```{xai-channels}
:data: demo/channels.json
:select: layer
:alt: Channel {channel} of {layer}
:note: {layer}, channel {channel}
:width: screen
Channels of two layers with their exemplars.
```

```{xai-figure} demo/wide.png
:alt: A wide synthetic figure
:width: screen
A static figure, {numref}`fig-demo` is the explorer.
```

```{xai-table}
:let: maps = demo/maps.json
:data: [m for m in maps if m["threshold"] == 0.5]
:columns: model=Model, method=Method, area=Area|.0%, area * 2=Doubled|.2f
Areas at threshold 0.5.
```

$$
\\alpha_k^c = \\frac{1}{Z}\\sum_{i,j} \\frac{\\partial y^c}{\\partial A^k_{ij}}
$$
"""


# Labels as a user's own model or photo folder might carry them: each would run script if it reached the
# page as markup, and each must reach the reader as the text it is.
HOSTILE = {"img": "<img src=x onerror=alert(1)>", "script": "</script><script>alert(2)</script>",
           "attr": '"><svg onload=alert(3)>', "myst": "{{ 6 * 7 }} {doc}`widgets` $x$"}

HOSTILE_PAGE = """# Hostile strings

```{study} demo
```

```{bind}
h = demo/hostile.json
```

A class {res}`demo/hostile.json:label`, a name {res}`h["names"][1]` and markup {res}`h["names"][3]`.

```{xai-explorer}
:data: demo/hostile_maps.json
:select: model
:columns: method
:alt: {model} map by {method}
:note: {note}
Hostile names in a grid.
```

```{xai-channels}
:data: demo/hostile_channels.json
:select: layer
:alt: Channel {channel} of {layer}
:note: {layer}
Hostile layer names.
```

```{xai-table}
:data: demo/hostile_maps.json
:columns: model=Model, method=Method, note=Note
Hostile cells.
```

"""


def _hostile_artifacts(gen: Path) -> None:
    h = list(HOSTILE.values())
    maps = []
    for mi, model in enumerate([HOSTILE["img"], "m2"]):
        for hi, method in enumerate([HOSTILE["script"], "grad"]):
            rel = f"demo/hostile/{mi}_{hi}.png"
            _png(gen / rel, (90 * mi, 60 * hi, 120))
            maps.append({"model": model, "method": method, "image": rel, "note": HOSTILE["attr"]})
    channels = []
    for li, layer in enumerate([HOSTILE["img"], HOSTILE["attr"]]):
        for c in range(2):
            rel = f"demo/hostile/ch{li}_{c}.png"
            _png(gen / rel, (100 * li, 50 * c, 60), size=(24, 24))
            channels.append({"layer": layer, "channel": c, "image": rel, "exemplars": [rel]})
    (gen / "demo/hostile_maps.json").write_text(json.dumps(maps))
    (gen / "demo/hostile_channels.json").write_text(json.dumps(channels))
    (gen / "demo/hostile.json").write_text(json.dumps({"label": HOSTILE["img"], "names": h}))


def _png(path: Path, colour: tuple[int, int, int], size=(48, 32)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _mini_book(root: Path, pages: dict[str, str]) -> None:
    """A book with the real config, extension and styles, and these pages (first one is the root)."""
    copy_book(root)
    for p in (root / "book").glob("*.md"):
        if p.name != "references.md":
            p.unlink()
    pages = {**pages, "references": (root / "book" / "references.md").read_text()}
    for name, text in pages.items():
        (root / "book" / f"{name}.md").write_text(text)
    names = list(pages)
    toc = {"format": "jb-book", "root": f"book/{names[0]}", "chapters": [{"file": f"book/{n}"} for n in names[1:]]}
    (root / "_toc.yml").write_text(json.dumps(toc))


def _manifest(gen: Path, studies: list[str]) -> None:
    """A manifest as the precompute writes it: these studies ran, the package's registry besides."""
    from xai.studies import STUDIES

    gen.mkdir(parents=True, exist_ok=True)
    (gen / "manifest.json").write_text(json.dumps({
        "profile": "smoke", "environment": {"git_commit": None, "packages": {}},
        "registered_studies": list(dict.fromkeys([*STUDIES, *studies])),
        "studies": {s: {"seconds": 1.0, "seed": 0, "summary": {}} for s in studies}}))


@pytest.fixture(scope="session")
def widget_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("widget-site")
    gen = root / "book" / "_generated"
    _mini_book(root, {"widgets": WIDGET_PAGE, "hostile": HOSTILE_PAGE})
    _manifest(gen, ["demo"])
    _hostile_artifacts(gen)
    maps = []
    for mi, model in enumerate(["m1", "m2"]):
        for hi, method in enumerate(["grad", "cam", "ig"]):
            for ti, t in enumerate([0.25, 0.5, 0.75]):
                rel = f"demo/maps/{model}_{method}_{t}.png"
                _png(gen / rel, (40 + 100 * mi, 30 + 80 * hi, 20 + 90 * ti))
                maps.append({"model": model, "method": method, "threshold": t, "image": rel, "area": 1 - t})
    maps = [m for m in maps if not (m["model"] == "m2" and m["method"] == "ig")]  # a hole the grid must show
    channels = []
    for li, layer in enumerate(["conv1", "conv2"]):
        for c in range(6):
            rel = f"demo/ch/{layer}_{c}.png"
            _png(gen / rel, (30 * c, 100 * li, 200), size=(24, 24))
            ex = []
            for k in range(3):
                erel = f"demo/ch/{layer}_{c}_ex{k}.png"
                _png(gen / erel, (30 * c, 60 * k, 100 * li), size=(28, 28))
                ex.append(erel)
            channels.append({"layer": layer, "channel": c, "image": rel, "exemplars": ex})
    _png(gen / "demo/wide.png", (200, 200, 200), size=(900, 200))
    (gen / "demo/maps.json").write_text(json.dumps(maps))
    (gen / "demo/channels.json").write_text(json.dumps(channels))
    (gen / "demo/summary.json").write_text(json.dumps({"count": len(maps), "scores": {"a": 0.25, "b": 0.75}}))
    build = jupyter_book(root, gen)
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    return root / "_build" / "html"


def test_widgets_render_numbered_captioned_and_bound(widget_site):
    html = (widget_site / "book" / "widgets.html").read_text()
    assert "Figure 1" in html and "Figure 2" in html and "Figure 3" in html
    assert "The demo has <span class=\"xai-res\" data-ref=\"demo/summary.json:count\">15</span>" in html
    assert "0.75</span> against <span" in html
    assert "Case B wins." in html and "Case A wins." not in html
    assert "make <span class=\"xai-res\" data-ref=\"scores[&quot;a&quot;] + scores[&quot;b&quot;] where scores = " \
           "summary[&quot;scores&quot;]; summary = demo/summary.json\">1.00</span>" in html
    assert ">b</span>." in html
    assert "<math" in html and not re.search(r"<script[^>]*mathjax", html, re.I)
    table = html.split('class="xai-table')[1].split("</table>")[0]
    assert "Table 1" in table and "Areas at threshold 0.5." in table
    assert table.count("<tr") == 1 + 5 and "<p>Doubled</p>" in table and "<p>50%</p>" in table and "<p>1.00</p>" in table
    assert html.count('data-xai="explorer"') == 1 and html.count('data-xai="channels"') == 1


HOSTILE_DOM = """() => {
    const article = document.querySelector('.bd-article');
    return {
        handlers: Array.from(article.querySelectorAll('*')).flatMap(e => Array.from(e.attributes)
            .filter(a => a.name.startsWith('on')).map(a => e.tagName + ' ' + a.name)),
        injected: article.querySelectorAll('img[src="x"], b, script:not(.xai-data)').length +
            Array.from(article.querySelectorAll('svg')).filter(s => !s.closest('button.copybtn')).length,
        title: document.title,
        text: article.innerText,
        alts: Array.from(article.querySelectorAll('img')).map(i => i.getAttribute('alt')),
    };
}"""


def test_hostile_strings_stay_text(widget_site, serve, browser):
    page = (widget_site / "book" / "hostile.html").read_text()
    for value in (HOSTILE["img"], HOSTILE["script"], HOSTILE["attr"]):
        assert value not in page  # every one is escaped in the HTML as written
    v = Visit(browser, serve(widget_site), "book/hostile.html")
    try:
        served = v.page.evaluate(HOSTILE_DOM)  # as the server rendered it
        assert f"{HOSTILE['img']} map by {HOSTILE['script']}" in served["alts"]
        assert "Channel 0 of " + HOSTILE["img"] in served["alts"]
        for value in (HOSTILE["img"], HOSTILE["attr"], HOSTILE["myst"]):
            assert value in served["text"], value
        root = v.page.query_selector("[data-xai=explorer]")
        assert check_explorer(root, "hostile") >= 1  # the script swaps in records with the same strings
        for button in v.page.query_selector_all(".xai-channel"):
            button.hover()
        v.page.query_selector("[data-xai=channels] fieldset label.xai-choice:nth-of-type(2)").click()
        swapped = v.page.evaluate(HOSTILE_DOM)
        assert "Channel 0 of " + HOSTILE["attr"] in swapped["alts"]
        for dom in (served, swapped):
            assert not dom["handlers"] and dom["injected"] == 0 and dom["title"] != "ran", dom
        assert not v.problems, v.problems  # no dialog, no request for "x", no script error
    finally:
        v.close()


def test_synthetic_explorer_with_slider_columns_and_gaps(widget_site, serve, browser):
    v = Visit(browser, serve(widget_site), "book/widgets.html")
    try:
        root = v.page.query_selector("[data-xai=explorer]")
        assert check_explorer(root, "synthetic") >= 3
        # m2 has no "ig" maps: its column shows the gap rather than a stale image.
        root.query_selector("fieldset label.xai-choice:nth-of-type(2)").click()
        gap = root.query_selector(".xai-cell[data-cv='ig']")
        assert "xai-missing" in gap.get_attribute("class")
        assert root.query_selector(".xai-cell[data-cv='ig'] img") is None or \
            root.query_selector(".xai-cell[data-cv='ig'] img").is_hidden()
        slider = root.query_selector("input[type=range]")
        slider.focus()
        v.page.keyboard.press("End")
        assert slider.get_attribute("aria-valuetext") == "0.75"
        assert "m2_grad_0.75" in root.query_selector(".xai-cell[data-cv='grad'] img").get_attribute("src")
        assert root.query_selector(".xai-cell[data-cv='grad'] .xai-note").inner_text() == "area 25%"
        assert not v.problems, v.problems
    finally:
        v.close()


def test_channel_grid_enlarges_on_hover_and_focus_and_moves_by_arrow_keys(widget_site, serve, browser):
    v = Visit(browser, serve(widget_site), "book/widgets.html")
    try:
        root = v.page.query_selector("[data-xai=channels]")
        big = root.query_selector(".xai-channel-big")
        buttons = root.query_selector_all(".xai-channel")
        assert len(buttons) == 6
        buttons[3].hover()
        assert "conv1_3.webp" in big.get_attribute("src") and big.get_attribute("alt") == "Channel 3 of conv1"
        exemplars = root.query_selector_all(".xai-exemplars img")
        assert [e.get_attribute("src").rsplit("/", 1)[1] for e in exemplars] == [
            f"conv1_3_ex{k}.webp" for k in range(3)]
        assert all(e.get_attribute("alt") for e in exemplars)
        buttons[0].focus()
        assert "conv1_0.webp" in big.get_attribute("src")
        v.page.keyboard.press("ArrowRight")
        assert "conv1_1.webp" in big.get_attribute("src")
        assert root.query_selector(".xai-channel.xai-active").get_attribute("aria-pressed") == "true"
        root.query_selector("fieldset label.xai-choice:nth-of-type(2)").click()
        assert "conv2_0.webp" in big.get_attribute("src")
        assert len(root.query_selector_all(".xai-channel")) == 6
        root.query_selector_all(".xai-channel")[5].focus()
        assert "conv2_5.webp" in big.get_attribute("src")
        assert v.page.evaluate("Array.from(document.images).every(i => !i.complete || i.naturalWidth > 0)")
        assert not v.problems, v.problems
    finally:
        v.close()


def test_screen_width_figures_reach_past_the_text_column(widget_site, serve, browser):
    v = Visit(browser, serve(widget_site), "book/widgets.html", width=1600)
    try:
        widths = v.page.evaluate("""() => ({
            text: document.querySelector('.bd-article p').getBoundingClientRect().width,
            page: document.querySelector('.xai-page').getBoundingClientRect().width,
            screen: document.querySelector('.xai-screen').getBoundingClientRect().width})""")
        assert widths["page"] > widths["text"] * 1.2, widths
        assert widths["screen"] > widths["page"], widths
    finally:
        v.close()


# -- what must fail the build ------------------------------------------------------------------------

FAILING_PAGES = {
    "ok": "# Fine\n\nNothing to see.\n",
    "false_claim": """# False claim

:::{claim}
:let: s = demo/summary.json:scores
:when: s["a"] > s["b"]
A beats B.
:::
""",
    "no_case": """# No case holds

::::{cases}
:::{case}
:let: s = demo/summary.json:scores
:when: s["a"] > 1
Never.
:::
:::{case}
:let: s = demo/summary.json:scores
:when: s["b"] > 1
Nor this.
:::
::::
""",
    "two_cases": """# Two cases hold

::::{cases}
:::{case}
:let: s = demo/summary.json:scores
:when: s["a"] < 1
One.
:::
:::{case}
:let: s = demo/summary.json:scores
:when: s["b"] < 1
Two.
:::
::::
""",
    "missing_file": "# Missing file\n\nValue {res}`demo/nothere.json:x`.\n",
    "traversal": """# Traversal

```{xai-explorer}
:data: demo/records.json
:alt: {name.__class__}
A template that walks into the value.
```
""",
    "missing_key": "# Missing key\n\nValue {res}`demo/summary.json:scores.zzz|.2f`.\n",
    "not_run": "# Not run\n\nPhotos: {res}`overview/photos.json|count`.\n",
    "unregistered": """# Unregistered

```{study} nosuchstudy
```

:::{claim}
:let: x = nosuchstudy/a.json:b
:when: x > 1
Hidden.
:::

Value: {res}`nosuchstudy/a.json:b`.

```{bind}
y = nosuchstudy/a.json:c
z = y * 2
```

:::{claim}
:when: z > 1
Also hidden.
:::

```{xai-figure} nosuchstudy/fig.png
:alt: never shown
:name: fig-absent
The caption stays, so that {numref}`fig-absent` still resolves.
```

```{xai-figure} demo/none.png
:alt: never shown
:let: q = nosuchstudy/a.json:q
A caption with a value {res}`q|.2f` from the absent study.
```
""",
}


@pytest.fixture(scope="session")
def failing_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("failing-site")
    gen = root / "book" / "_generated"
    _mini_book(root, FAILING_PAGES)
    _manifest(gen, ["demo"])  # "overview" is registered but absent: a partial precompute
    (gen / "demo").mkdir()
    (gen / "demo/summary.json").write_text(json.dumps({"scores": {"a": 0.25, "b": 0.75}}))
    _png(gen / "demo/a.png", (10, 20, 30))
    (gen / "demo/records.json").write_text(json.dumps([{"name": "a", "image": "demo/a.png"}]))
    build = jupyter_book(root, gen)
    return build, root / "_build" / "html"


def _warnings_for(log: str, page: str) -> list[str]:
    return [line for line in log.splitlines() if f"book/{page}.md" in line and "WARNING" in line]


def test_a_claim_that_no_longer_holds_fails_the_build(failing_build):
    build, _ = failing_build
    log = build.stdout + build.stderr
    assert build.returncode != 0
    w = _warnings_for(log, "false_claim")
    assert w and "claim no longer holds" in w[0] and 's["a"] > s["b"]' in w[0] and "0.25" in w[0], log[-4000:]


def test_cases_fail_the_build_unless_exactly_one_holds(failing_build):
    build, _ = failing_build
    log = build.stdout + build.stderr
    w = _warnings_for(log, "no_case")
    assert w and "exactly one case must hold, but 0 of 2 do" in w[0], log[-4000:]
    w = _warnings_for(log, "two_cases")
    assert w and "exactly one case must hold, but 2 of 2 do" in w[0], log[-4000:]


def test_missing_files_keys_and_studies_fail_the_build_by_name(failing_build):
    build, _ = failing_build
    log = build.stdout + build.stderr
    w = _warnings_for(log, "missing_file")
    assert w and "demo/nothere.json" in w[0] and "missing artifact" in w[0], log[-4000:]
    w = _warnings_for(log, "missing_key")
    assert w and "'zzz'" in w[0] and "keys: a, b" in w[0], log[-4000:]
    w = _warnings_for(log, "not_run")
    assert w and "'overview'" in w[0] and "xai precompute --profile smoke --only overview" in w[0], log[-4000:]
    assert not _warnings_for(log, "ok") and not _warnings_for(log, "unregistered")


def test_a_template_that_walks_into_a_value_fails_the_build(failing_build):
    build, html = failing_build
    log = build.stdout + build.stderr
    w = _warnings_for(log, "traversal")
    assert w and "{name.__class__}" in w[0] and "not a plain key" in w[0], log[-4000:]
    assert "class 'str'" not in (html / "book" / "traversal.html").read_text()


def test_a_study_this_checkout_lacks_shows_a_notice_instead(failing_build):
    _, html = failing_build
    page = (html / "book" / "unregistered.html").read_text()
    assert "Not computed in this build" in page and "nosuchstudy" in page
    assert "Hidden." not in page and "Also hidden." not in page and "never shown" not in page
    assert "The caption stays" in page and 'href="#fig-absent"' in page
    assert 'A caption with a value <span class="xai-na">not computed</span> from the absent study' in page
    assert page.count("Not computed in this build") == 3  # the chapter notice and two figures
    assert 'class="xai-na"' in page


def test_an_incremental_rebuild_without_W_still_fails_on_the_same_pages(failing_build):
    """The failing pages are read again on the next build (nothing changed on disk), and bound-data
    errors fail the build even when warnings are not errors."""
    _, html = failing_build
    root = html.parent.parent
    env = {**os.environ, "XAI_GENERATED": str(root / "book" / "_generated")}
    again = subprocess.run([str(JUPYTER_BOOK), "build", str(root)], env=env, capture_output=True, text=True,
                           timeout=600)
    log = again.stdout + again.stderr
    assert again.returncode != 0
    assert ("bound data failed on book/false_claim, book/missing_file, book/missing_key, book/no_case, "
            "book/not_run, book/traversal, book/two_cases") in log
