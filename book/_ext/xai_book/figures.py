"""Figures built from generated artifacts: numbered, captioned, and interactive without a kernel.

Every figure is a docutils ``figure`` (so Sphinx numbers it and ``{numref}`` reaches it) holding the
widget's HTML and a caption parsed from the directive's content. Widgets render their first state on
the server, with real ``<img alt>``; ``xai.js`` only swaps what is shown.

``{xai-figure}``    one pre-rendered image.
``{xai-explorer}``  records (a JSON list of objects) shown as a grid of images, with selectors
                    (``:select:``) and sliders (``:slider:``) over their keys: model/method/layer
                    pickers, a Grad-CAM threshold, a feature-visualization step.
``{xai-channels}``  a layer's channels as a grid; hover or focus one to enlarge it with its dataset
                    exemplars.
``{xai-table}``     a numbered table whose rows are records and whose cells are formatted values.

Images are copied into the site under ``_generated/`` and PNG/JPEG become WebP on the way.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.osutil import relative_uri

from .bound import SCOPE, SOURCES, current_names, fail, generated, not_computed_admonition
from .data import Absent, BookDataError, NotComputed, bind, evaluate, is_ref, parse_lets
from .text import script_json, template

logger = logging.getLogger(__name__)

WIDTHS = ("text", "page", "screen")
PIXEL_MAX = 96  # images this small are drawn with hard pixel edges (Fashion-MNIST, channel grids)
CONVERT = {".png", ".jpg", ".jpeg"}


# -- assets ---------------------------------------------------------------------------------------------

def site_path(rel: str) -> str:
    """Where a generated file lands in the built site (PNG and JPEG become WebP)."""
    p = Path("_generated") / rel
    if p.suffix.lower() in CONVERT:
        p = p.with_suffix(".webp")
    return p.as_posix()


def use_asset(directive: SphinxDirective, rel: str) -> dict[str, Any]:
    """Register an image for the current page; returns its URL (relative to the page) and size."""
    from PIL import Image

    env = directive.env
    src = generated(env).path(rel)
    dest = site_path(Path(src).relative_to(generated(env).root).as_posix())
    env.xai_assets.setdefault(env.docname, {})[dest] = str(src)
    with Image.open(src) as im:
        w, h = im.size
    page = env.app.builder.get_target_uri(env.docname)
    return {"src": relative_uri(page, dest), "w": w, "h": h, "pixel": max(w, h) <= PIXEL_MAX}


def write_assets(app, exception) -> None:
    """Copy (and convert) every image the pages use; unchanged ones are skipped."""
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    done: set[str] = set()
    for assets in app.env.xai_assets.values():
        for dest, src in assets.items():
            if dest in done:
                continue
            done.add(dest)
            target = out / dest
            if target.exists() and target.stat().st_mtime >= Path(src).stat().st_mtime:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            convert_image(Path(src), target)


def convert_image(src: Path, dest: Path) -> None:
    """WebP for the site: lossless for flat graphics and tiny images, high-quality lossy for photos."""
    from PIL import Image

    tmp = dest.with_name(dest.name + ".tmp")
    if src.suffix.lower() not in CONVERT:
        tmp.write_bytes(src.read_bytes())
    else:
        with Image.open(src) as im:
            im.load()
            flat = im.getcolors(maxcolors=256) is not None or max(im.size) <= PIXEL_MAX
            mode = "RGBA" if im.mode in ("RGBA", "LA", "P") and _has_alpha(im) else "RGB"
            im.convert(mode).save(tmp, format="WEBP", lossless=flat, quality=90 if flat else 84, method=4)
    os.replace(tmp, dest)


def _has_alpha(im) -> bool:
    if im.mode == "P":
        return "transparency" in im.info
    return im.getchannel("A").getextrema()[0] < 255


# -- figure scaffolding ---------------------------------------------------------------------------------

class GeneratedFigure(SphinxDirective):
    """Shared by the figure directives: width classes, numbering, caption, missing-data rules."""

    has_content = True
    option_spec = {
        "name": directives.unchanged,
        "width": lambda v: directives.choice(v, WIDTHS),
        "class": directives.class_option,
        "let": directives.unchanged,  # names for this figure's other options and caption, as in claims
    }
    what = "This figure"

    def widget(self) -> str:
        raise NotImplementedError

    def run(self):
        if not self.content:
            fail(self.env, BookDataError(f"{self.name} needs a caption (the directive's content)"),
                 self.get_location())
            return []
        lets = parse_lets(self.options.get("let", ""))
        pushed = False
        try:
            if lets:
                # Names of an absent study stay bound (as Absent), so the caption shows them as such.
                names = bind(generated(self.env), lets, current_names(self.env), keep_absent=True)
                self.env.temp_data.setdefault(SCOPE, []).append(names)
                self.env.temp_data.setdefault(SOURCES, []).append(dict(lets))
                pushed = True
                absent = [names[n] for n, _ in lets if isinstance(names[n], Absent)]
                if absent:
                    raise NotComputed(absent[0].study, absent[0].reason)
            return self._run()
        except NotComputed as nc:
            self.env.xai_not_computed.setdefault(self.env.docname, set()).add(nc.study)
            return [self._placeholder(nc.study, nc.reason)]
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            # Keep the number and label, so that references to the figure add no errors of their own.
            box = nodes.error("", nodes.paragraph(text=f"Build error: {err}"))
            return [self._figure(box)]
        finally:
            if pushed:
                self.env.temp_data[SCOPE].pop()
                self.env.temp_data[SOURCES].pop()

    def _placeholder(self, study: str, reason: str | None = None) -> nodes.figure:
        """The figure's number, label and caption, holding the notice instead of the widget, so that
        cross-references to it still resolve."""
        return self._figure(not_computed_admonition(study, self.what, reason))

    def _run(self):
        return [self._figure(nodes.raw("", self.widget(), format="html"))]

    def _figure(self, content: nodes.Node) -> nodes.figure:
        width = self.options.get("width", "text")
        fig = nodes.figure(classes=["xai-figure", f"xai-{width}", *self.options.get("class", [])])
        fig += content
        body = nodes.Element()
        self.state.nested_parse(self.content, self.content_offset, body)
        first = body[0] if len(body) else None
        if not isinstance(first, nodes.paragraph):
            raise BookDataError(f"{self.name}: the caption must start with a paragraph")
        fig += nodes.caption(first.rawsource, "", *first.children)
        if len(body) > 1:
            fig += nodes.legend("", *body[1:])
        if "name" in self.options:
            self.add_name(fig)
        else:
            fig["ids"].append(f"xai-fig-{self.env.new_serialno('xai-fig')}")
        return fig

    # shared by the widgets
    def first_of_page(self) -> bool:
        """The first figure of a page loads eagerly; the rest wait until they are scrolled near."""
        n = self.env.temp_data.get("xai_images", 0)
        self.env.temp_data["xai_images"] = n + 1
        return n == 0

    def records(self) -> list[dict]:
        ref = self.options.get("data", "").strip()
        gen = generated(self.env)
        if not ref:
            raise BookDataError(f"{self.name} needs `:data: file.json[:key.path]` (a list of objects)")
        value = gen.resolve(ref) if is_ref(ref) else evaluate(ref, current_names(self.env))
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise BookDataError(f"{ref} must be a list of objects for {self.name}")
        where = self.options.get("where")
        if where:
            value = [r for r in value if evaluate(where, {**current_names(self.env), **_identifiers(r)})]
        if not value:
            raise BookDataError(f"{ref}: no records{' where ' + where if where else ''}")
        return value


def _identifiers(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(k, str) and k.isidentifier() and not k.startswith("_")}


def img_tag(asset: dict, alt: str, *, eager: bool, cls: str = "") -> str:
    if not alt.strip():
        raise BookDataError("every image needs alt text")
    classes = " ".join(c for c in (cls, "xai-pixel" if asset["pixel"] else "") if c)
    return (f'<img src="{html.escape(asset["src"])}" alt="{html.escape(alt)}" width="{asset["w"]}" '
            f'height="{asset["h"]}"{" class=" + chr(34) + classes + chr(34) if classes else ""}'
            f' loading="{"eager" if eager else "lazy"}" decoding="async">')


def _label(record: dict, axis: str) -> str:
    return str(record.get(f"{axis}_label", record[axis]))


def axis_title(axis: str, labels: dict[str, str]) -> str:
    return labels.get(axis, axis.replace("_", " ").capitalize())


def parse_axis_labels(text: str | None) -> dict[str, str]:
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            k, eq, v = part.partition("=")
            if not eq:
                raise BookDataError(f"bad :axis-labels: entry {part!r} (write key=Label, key=Label)")
            out[k.strip()] = v.strip()
    return out


# -- {xai-figure} ---------------------------------------------------------------------------------------

class FigureDirective(GeneratedFigure):
    """One generated image: ``{xai-figure} overview/fmnist_samples.png`` with ``:alt:``."""

    required_arguments = 1
    option_spec = {**GeneratedFigure.option_spec, "alt": directives.unchanged_required}

    def widget(self) -> str:
        alt = self.options.get("alt", "")
        if not alt.strip():
            raise BookDataError("xai-figure needs `:alt:` text")
        asset = use_asset(self, self.arguments[0])
        return f'<div class="xai-static">{img_tag(asset, alt, eager=self.first_of_page())}</div>'


# -- {xai-explorer} -------------------------------------------------------------------------------------

class ExplorerDirective(GeneratedFigure):
    """Records as a grid of images with selectors and sliders over their keys."""

    option_spec = {
        **GeneratedFigure.option_spec,
        "data": directives.unchanged_required,   # REF to a list of objects
        "where": directives.unchanged,           # keep records for which this expression holds
        "image": directives.unchanged,           # key holding the image path (default: image)
        "alt": directives.unchanged,             # template, e.g. "Grad-CAM of {model} on {photo}"
        "note": directives.unchanged,            # template for a line under each image
        "select": directives.unchanged,          # keys with a picker each
        "slider": directives.unchanged,          # keys with a slider each (ordered values)
        "columns": directives.unchanged,         # one column per value of this key
        "rows": directives.unchanged,            # one row per value of this key
        "axis-labels": directives.unchanged,     # key=Label, key=Label
    }
    what = "This figure"

    def widget(self) -> str:
        records = self.records()
        selects = (self.options.get("select") or "").split()
        sliders = (self.options.get("slider") or "").split()
        col = (self.options.get("columns") or "").strip() or None
        row = (self.options.get("rows") or "").strip() or None
        axes = selects + sliders + [a for a in (row, col) if a]
        if len(set(axes)) != len(axes):
            raise BookDataError(f"{self.name}: a key may drive only one control or grid axis ({axes})")
        image_key = self.options.get("image", "image")
        alt_t = self.options.get("alt")
        note_t = self.options.get("note")
        labels = parse_axis_labels(self.options.get("axis-labels"))
        for r in records:
            for a in axes + [image_key]:
                if a not in r:
                    raise BookDataError(f"{self.options['data']}: a record lacks key {a!r} "
                                        f"(keys: {', '.join(sorted(r))})")
        # Each control state must pick at most one record per cell, or the figure would hide data.
        seen: dict[tuple, dict] = {}
        for r in records:
            k = tuple(str(r[a]) for a in axes)
            if k in seen:
                raise BookDataError(f"{self.options['data']}: two records share {dict(zip(axes, k))}; add the "
                                    f"key that tells them apart to :select:/:slider:/:columns:/:rows: or :where:")
            seen[k] = r

        values = {a: _ordered(records, a, numeric=a in sliders) for a in axes}
        eager_first = self.first_of_page()
        data_records = []
        for r in records:
            asset = use_asset(self, str(r[image_key]))
            alt = template(alt_t, r) if alt_t else str(r.get("alt", ""))
            if not alt.strip():
                raise BookDataError(f"{self.options['data']}: no alt text (give :alt: a template or records "
                                    "an 'alt' key)")
            data_records.append({"k": {a: str(r[a]) for a in axes}, "src": asset["src"], "w": asset["w"],
                                 "h": asset["h"], "pixel": asset["pixel"], "alt": alt,
                                 "note": template(note_t, r) if note_t else ""})
        state = {a: values[a][0][0] for a in selects + sliders}
        if not any(all(d["k"][a] == v for a, v in state.items()) for d in data_records):
            first = data_records[0]["k"]
            state = {a: first[a] for a in state}

        uid = f"xe{self.env.new_serialno('xai-explorer')}"
        parts = [f'<div class="xai-explorer" id="{uid}" data-xai="explorer">', '<div class="xai-controls">']
        for a in selects:
            parts.append(_picker(uid, a, axis_title(a, labels), values[a], state[a]))
        for a in sliders:
            parts.append(_slider(uid, a, axis_title(a, labels), values[a], state[a]))
        parts.append("</div>")
        cols = values[col] if col else [(None, None)]
        rows = values[row] if row else [(None, None)]
        parts.append(f'<div class="xai-grid" style="--xai-cols:{len(cols)}" data-cols="{len(cols)}" data-row="{html.escape(row or "")}" '
                     f'data-col="{html.escape(col or "")}">')
        if col:
            if row:
                parts.append('<div class="xai-corner"></div>')
            parts.extend(f'<div class="xai-col-head">{html.escape(lab)}</div>' for _, lab in cols)
        for rv, rlab in rows:
            if row:
                parts.append(f'<div class="xai-row-head">{html.escape(rlab)}</div>')
            for cv, _ in cols:
                want = {**state, **({row: rv} if row else {}), **({col: cv} if col else {})}
                hit = next((d for d in data_records if d["k"] == want), None)
                attrs = (f' data-rv="{html.escape(rv)}"' if row else "") + (f' data-cv="{html.escape(cv)}"' if col else "")
                if hit is None:
                    parts.append(f'<div class="xai-cell xai-missing"{attrs}><span class="xai-none">—</span></div>')
                    continue
                asset = {"src": hit["src"], "w": hit["w"], "h": hit["h"], "pixel": hit["pixel"]}
                parts.append(f'<div class="xai-cell"{attrs}>{img_tag(asset, hit["alt"], eager=eager_first)}'
                             f'<p class="xai-note">{html.escape(hit["note"])}</p></div>')
        parts.append("</div>")
        payload = {"axes": selects + sliders, "records": data_records}
        parts.append(f'<script type="application/json" class="xai-data">{script_json(payload)}</script></div>')
        return "".join(parts)


def _ordered(records: list[dict], axis: str, *, numeric: bool) -> list[tuple[str, str]]:
    """(value, label) pairs in first-seen order; sliders sort numeric values."""
    out: dict[str, str] = {}
    for r in records:
        out.setdefault(str(r[axis]), _label(r, axis))
    pairs = list(out.items())
    if numeric:
        try:
            pairs.sort(key=lambda p: float(p[0]))
        except ValueError:
            pass  # ordinal labels (e.g. "early", "late") keep the study's order
    return pairs


def _picker(uid: str, axis: str, title: str, values: list[tuple[str, str]], current: str) -> str:
    name = f"{uid}-{axis}"
    if len(values) <= 6:
        opts = "".join(
            f'<label class="xai-choice"><input type="radio" name="{html.escape(name)}" value="{html.escape(v)}"'
            f'{" checked" if v == current else ""}><span>{html.escape(lab)}</span></label>'
            for v, lab in values)
        return (f'<fieldset class="xai-control xai-radio" data-axis="{html.escape(axis)}">'
                f'<legend>{html.escape(title)}</legend>{opts}</fieldset>')
    opts = "".join(f'<option value="{html.escape(v)}"{" selected" if v == current else ""}>{html.escape(lab)}</option>'
                   for v, lab in values)
    return (f'<label class="xai-control xai-select"><span class="xai-control-title">{html.escape(title)}</span>'
            f'<select data-axis="{html.escape(axis)}">{opts}</select></label>')


def _slider(uid: str, axis: str, title: str, values: list[tuple[str, str]], current: str) -> str:
    idx = next(i for i, (v, _) in enumerate(values) if v == current)
    stops = json.dumps([{"v": v, "label": lab} for v, lab in values], separators=(",", ":"), ensure_ascii=False)
    return (f'<label class="xai-control xai-slider"><span class="xai-control-title">{html.escape(title)}</span>'
            f'<input type="range" min="0" max="{len(values) - 1}" step="1" value="{idx}" '
            f'data-axis="{html.escape(axis)}" data-stops="{html.escape(stops)}" '
            f'aria-valuetext="{html.escape(values[idx][1])}">'
            f'<output>{html.escape(values[idx][1])}</output></label>')


# -- {xai-channels} -------------------------------------------------------------------------------------

class ChannelsDirective(GeneratedFigure):
    """A layer's channels as a grid; hovering or focusing one shows it large with its exemplars."""

    option_spec = {
        **GeneratedFigure.option_spec,
        "data": directives.unchanged_required,   # REF to a list of channel records
        "where": directives.unchanged,
        "select": directives.unchanged,          # usually: layer (or model layer)
        "image": directives.unchanged,           # default: image
        "exemplars": directives.unchanged,       # key with a list of image paths (default: exemplars)
        "alt": directives.unchanged,             # template for the channel image
        "exemplar-alt": directives.unchanged,    # template; {i} is the exemplar's rank (1-based)
        "note": directives.unchanged,            # template for the enlarged channel's line
        "axis-labels": directives.unchanged,
        "links": directives.unchanged,           # records of model, layer, anchors: units on another page
        "link-page": directives.unchanged,       # the docname those anchors are on
        "link-text": directives.unchanged,
    }
    what = "This figure"

    def _links(self) -> dict[tuple[str, str], list[str]]:
        """(model, layer) -> the anchors of its units on ``:link-page:``; none when the study that lists
        them was not computed (the grid is whole without them)."""
        text = (self.options.get("links") or "").strip()
        if not text:
            return {}
        page = (self.options.get("link-page") or "").strip()
        if page not in self.env.found_docs:
            raise BookDataError(f"{self.name}: :link-page: {page!r} is not a page of this book")
        try:
            value = evaluate(text, current_names(self.env))
        except NotComputed:
            return {}
        if not isinstance(value, list) or not all(isinstance(v, dict) and {"model", "layer", "anchors"} <= set(v)
                                                   for v in value):
            raise BookDataError(f"{self.name}: :links: must give records with model, layer and anchors")
        builder = self.env.app.builder
        base = relative_uri(builder.get_target_uri(self.env.docname), builder.get_target_uri(page))
        return {(str(v["model"]), str(v["layer"])): [f"{base}#{a}" for a in v["anchors"]] for v in value}

    def widget(self) -> str:
        records = self.records()
        links = self._links()
        link_text = self.options.get("link-text") or "This unit among all of its layer's"
        selects = (self.options.get("select") or "").split()
        image_key = self.options.get("image", "image")
        ex_key = self.options.get("exemplars", "exemplars")
        alt_t = self.options.get("alt") or "Channel {channel}"
        ex_alt_t = self.options.get("exemplar-alt") or "Dataset exemplar {i} for channel {channel}"
        note_t = self.options.get("note") or "Channel {channel}"
        labels = parse_axis_labels(self.options.get("axis-labels"))
        for r in records:
            for a in selects + [image_key, ex_key]:
                if a not in r:
                    raise BookDataError(f"{self.options['data']}: a record lacks key {a!r} "
                                        f"(keys: {', '.join(sorted(r))})")
            if not isinstance(r[ex_key], list):
                raise BookDataError(f"{self.options['data']}: {ex_key!r} must be a list of image paths")
        values = {a: _ordered(records, a, numeric=False) for a in selects}
        data = []
        for r in records:
            a = use_asset(self, str(r[image_key]))
            exemplars = []
            for i, rel in enumerate(r[ex_key], 1):
                e = use_asset(self, str(rel))
                exemplars.append({"src": e["src"], "w": e["w"], "h": e["h"], "pixel": e["pixel"],
                                  "alt": template(ex_alt_t, {**r, "i": i})})
            anchors = links.get((str(r.get("model")), str(r.get("layer"))), [])
            c = r.get("channel")
            link = anchors[c] if isinstance(c, int) and 0 <= c < len(anchors) else None
            data.append({"k": {s: str(r[s]) for s in selects}, "src": a["src"], "w": a["w"], "h": a["h"],
                         "pixel": a["pixel"], "alt": template(alt_t, r), "note": template(note_t, r),
                         "exemplars": exemplars, "link": link})
        state = dict(data[0]["k"])
        shown = [d for d in data if d["k"] == state]
        eager = self.first_of_page()
        uid = f"xc{self.env.new_serialno('xai-channels')}"
        parts = [f'<div class="xai-channels" id="{uid}" data-xai="channels">', '<div class="xai-controls">']
        for s in selects:
            parts.append(_picker(uid, s, axis_title(s, labels), values[s], state[s]))
        parts.append('</div><div class="xai-channel-layout"><div class="xai-channel-grid" role="group" '
                     'aria-label="Channels: hover, focus or use the arrow keys to enlarge one">')
        for i, d in enumerate(shown):
            parts.append(f'<button type="button" class="xai-channel{" xai-active" if i == 0 else ""}" '
                         f'data-i="{data.index(d)}" aria-pressed="{"true" if i == 0 else "false"}">'
                         f'{img_tag(d, d["alt"], eager=eager)}</button>')
        first = shown[0]
        parts.append('</div><div class="xai-channel-detail" aria-live="polite">')
        parts.append(img_tag(first, first["alt"], eager=eager, cls="xai-channel-big"))
        parts.append(f'<p class="xai-note">{html.escape(first["note"])}</p><div class="xai-exemplars">')
        parts.extend(img_tag(e, e["alt"], eager=eager) for e in first["exemplars"])
        parts.append("</div>")
        if links:
            parts.append(f'<p class="xai-note"{"" if first["link"] else " hidden"}><a class="xai-channel-link" '
                         f'href="{html.escape(first["link"] or "#")}">{html.escape(link_text)}</a></p>')
        parts.append("</div></div>")
        payload = {"axes": selects, "records": data}
        parts.append(f'<script type="application/json" class="xai-data">{script_json(payload)}</script></div>')
        return "".join(parts)


# -- {xai-table} ----------------------------------------------------------------------------------------

class TableDirective(GeneratedFigure):
    """A numbered table whose rows are records: ``:columns: key=Header|fmt, key=Header``.

    A column key may be an expression over the record's keys (``p_pred - p_true=Margin|.2f``).
    """

    option_spec = {
        **GeneratedFigure.option_spec,
        "data": directives.unchanged_required,
        "where": directives.unchanged,
        "columns": directives.unchanged_required,
    }
    what = "This table"

    def _run(self):
        from .data import format_value, split_format

        records = self.records()
        columns = []
        for part in _split_columns(self.options["columns"]):
            expr, _, header = part.partition("=")
            header, fmt = split_format(header) if header else (expr.strip(), None)
            columns.append((expr.strip(), header.strip() or expr.strip(), fmt))
        table = nodes.table(classes=["xai-table", f"xai-{self.options.get('width', 'text')}"])
        title = nodes.Element()
        self.state.nested_parse(self.content, self.content_offset, title)
        if not title.children or not isinstance(title[0], nodes.paragraph):
            raise BookDataError(f"{self.name}: the caption must be a paragraph")
        table += nodes.title(title[0].rawsource, "", *title[0].children)
        group = nodes.tgroup(cols=len(columns))
        table += group
        for _ in columns:
            group += nodes.colspec(colwidth=1)
        head, body = nodes.thead(), nodes.tbody()
        group += head
        group += body
        row = nodes.row()
        for _, header, _ in columns:
            row += nodes.entry("", nodes.paragraph(text=header))
        head += row
        for r in records:
            row = nodes.row()
            names = {**current_names(self.env), **_identifiers(r)}
            for expr, _, fmt in columns:
                value = r[expr] if expr in r else evaluate(expr, names)
                # A cell with no value (a metric a record lacks) is a dash, not a formatting error.
                text = "–" if value is None and not (fmt or "").startswith("?") else format_value(value, fmt)
                row += nodes.entry("", nodes.paragraph(text=text))
            body += row
        if "name" in self.options:
            self.add_name(table)
        else:
            table["ids"].append(f"xai-table-{self.env.new_serialno('xai-table')}")
        return [table]


def _split_columns(text: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    return [c.strip() for c in out + [cur] if c.strip()]


def setup(app) -> None:
    app.add_directive("xai-figure", FigureDirective)
    app.add_directive("xai-explorer", ExplorerDirective)
    app.add_directive("xai-channels", ChannelsDirective)
    app.add_directive("xai-table", TableDirective)
    app.connect("build-finished", write_assets)
