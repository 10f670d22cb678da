"""``{xai-microscope}``: every unit of some layers, browsable, each with a linkable anchor.

Each record is one layer of one model (the microscope study's ``layers``): its units' visualizations on
sprite sheets (``sheets``: ``image``, ``exemplars``, ``first``, ``count``, ``rows``; ``columns`` per row)
and, per unit, its anchor, final objective value and exemplars (sources, labels, values). The page is
rendered on the server: every sheet is an ``<img>`` (lazy below the page's first figure) under one link
per unit (``<a id="blocks.3-c17" href="#blocks.3-c17">``), so an anchor works without script. ``xai.js``
opens the unit a hash names (on load and on every hash change), or the one a reader clicks or asks for
by layer and channel index: the detail shows it large (the sheet as a background, moved to its tile)
with its exemplars (the exemplar sheet, which is fetched only once a unit of its sheet is opened).

Options: ``:data:`` (records), ``:where:``, ``:alt:`` (a sheet's template: the record's keys and
``first``, ``last``), ``:unit:`` (a unit's label template: the record's keys and ``channel``).
"""
from __future__ import annotations

import html

from docutils.parsers.rst import directives

from .data import BookDataError
from .figures import GeneratedFigure, img_tag, use_asset
from .text import script_json, template

REQUIRED = ("model", "layer", "units", "columns", "sheets", "anchors", "values", "k", "exemplar_sources",
            "exemplar_labels", "exemplar_values")


def _pct(i: int, n: int) -> str:
    """Background position of tile ``i`` of ``n`` along one axis (CSS: 0 % left, 100 % right)."""
    return "0%" if n <= 1 else f"{100 * i / (n - 1):.6g}%"


class MicroscopeDirective(GeneratedFigure):
    option_spec = {
        **GeneratedFigure.option_spec,
        "data": directives.unchanged_required,
        "where": directives.unchanged,
        "alt": directives.unchanged,
        "unit": directives.unchanged,
    }
    what = "This figure"

    def _layer(self, r: dict, eager: bool) -> dict:
        for key in REQUIRED:
            if key not in r:
                raise BookDataError(f"{self.options['data']}: a record lacks key {key!r} (keys: {', '.join(sorted(r))})")
        n, cols = int(r["units"]), int(r["columns"])
        for key in ("anchors", "values", "exemplar_sources", "exemplar_labels", "exemplar_values"):
            if len(r[key]) != n:
                raise BookDataError(f"{self.options['data']}: {r['layer']} has {n} units but {len(r[key])} {key}")
        if sum(int(s["count"]) for s in r["sheets"]) != n:
            raise BookDataError(f"{self.options['data']}: the sheets of {r['layer']} do not hold its {n} units")
        alt_t = self.options.get("alt") or "Feature visualizations of channels {first} to {last} of {layer} in {model}"
        sheets = []
        for s in r["sheets"]:
            first, count = int(s["first"]), int(s["count"])
            a = use_asset(self, str(s["image"]))
            e = use_asset(self, str(s["exemplars"]))
            sheets.append({"src": a["src"], "w": a["w"], "h": a["h"], "first": first, "count": count,
                           "rows": int(s["rows"]), "ex": e["src"],
                           "alt": template(alt_t, {**r, "first": first, "last": first + count - 1}),
                           "pixel": int(r.get("tile", 64)) < 64})
        return {"model": str(r["model"]), "layer": str(r["layer"]), "units": n, "cols": cols, "k": int(r["k"]),
                "objective": str(r.get("objective_layer", r["layer"])), "sheets": sheets,
                "anchors": [str(a) for a in r["anchors"]], "values": [float(v) for v in r["values"]],
                "sources": [[str(x) for x in row] for row in r["exemplar_sources"]],
                "labels": [[None if x is None else str(x) for x in row] for row in r["exemplar_labels"]],
                "exvalues": [[float(v) for v in row] for row in r["exemplar_values"]]}

    def widget(self) -> str:
        records = self.records()
        eager = self.first_of_page()
        layers = [self._layer(r, eager) for r in records]
        seen: set[str] = set()
        for L in layers:
            for a in L["anchors"]:
                if a in seen:
                    raise BookDataError(f"{self.options['data']}: two units share the anchor {a!r}")
                seen.add(a)
        unit_t = self.options.get("unit") or "Channel {channel} of {layer} in {model}"
        uid = f"xm{self.env.new_serialno('xai-microscope')}"
        parts = [f'<div class="xai-microscope" id="{uid}" data-xai="microscope">',
                 f'<form class="xai-controls xai-microscope-search" role="search" aria-label="Find a unit" novalidate>'
                 f'<label class="xai-control xai-select"><span class="xai-control-title">Layer</span>'
                 f'<select name="layer">']
        parts.extend(f'<option value="{i}">{html.escape(L["model"])} · {html.escape(L["layer"])} '
                     f'({L["units"]})</option>' for i, L in enumerate(layers))
        parts.append(f'</select></label><label class="xai-control"><span class="xai-control-title">Channel</span>'
                     f'<input type="number" name="channel" min="0" max="{layers[0]["units"] - 1}" step="1" '
                     f'inputmode="numeric" value="0"></label><button type="submit" class="xai-go">Show</button>'
                     f'<output class="xai-note xai-microscope-status" aria-live="polite"></output></form>')
        parts.append('<div class="xai-microscope-layout"><div class="xai-microscope-units">')
        sheet_no = 0
        for li, L in enumerate(layers):
            parts.append(f'<section class="xai-microscope-layer" data-l="{li}" aria-label="{html.escape(L["model"])} '
                         f'{html.escape(L["layer"])}"><p class="xai-microscope-head"><strong>'
                         f'{html.escape(L["layer"])}</strong> of {html.escape(L["model"])}: {L["units"]} channels'
                         f'{" (maximised at " + html.escape(L["objective"]) + ")" if L["objective"] != L["layer"] else ""}'
                         '</p>')
            for si, s in enumerate(L["sheets"]):
                parts.append(f'<div class="xai-sheet" style="aspect-ratio:{s["w"]}/{s["h"]}">')
                parts.append(img_tag(s, s["alt"], eager=eager and sheet_no == 0, cls="xai-sheet-image"))
                sheet_no += 1
                rows = s["rows"]
                for j in range(s["count"]):
                    c = s["first"] + j
                    r_, q = divmod(j, L["cols"])
                    label = template(unit_t, {**records[li], "channel": c})
                    anchor = html.escape(L["anchors"][c])
                    parts.append(f'<a class="xai-unit" id="{anchor}" href="#{anchor}" data-l="{li}" data-c="{c}" '
                                 f'data-s="{si}" aria-label="{html.escape(label)}" title="{html.escape(label)}" '
                                 f'style="left:{100 * q / L["cols"]:.6g}%;top:{100 * r_ / rows:.6g}%;'
                                 f'width:{100 / L["cols"]:.6g}%;height:{100 / rows:.6g}%"></a>')
                parts.append("</div>")
            parts.append("</section>")
        first, s0 = layers[0], layers[0]["sheets"][0]
        label = template(unit_t, {**records[0], "channel": 0})
        parts.append('</div><aside class="xai-microscope-detail" aria-live="polite">')
        parts.append(f'<div class="xai-unit-big{" xai-pixel" if s0["pixel"] else ""}" role="img" '
                     f'aria-label="{html.escape(label)}" style="{_tile_style(s0, 0, first["cols"])}"></div>')
        parts.append(f'<p class="xai-note xai-unit-note">{html.escape(label)}: final objective '
                     f'{first["values"][0]:.3g}</p>')
        parts.append(f'<p class="xai-note xai-unit-hint">Its {first["k"]} strongest exemplars appear here once '
                     'a unit is opened.</p><div class="xai-unit-exemplars" role="img" hidden></div>'
                     '<ol class="xai-unit-sources"></ol><p class="xai-note"><a class="xai-unit-link" '
                     f'href="#{html.escape(first["anchors"][0])}">Link to this unit</a></p></aside></div>')
        payload = {"layers": layers, "unit": unit_t}
        parts.append(f'<script type="application/json" class="xai-data">{script_json(payload)}</script></div>')
        return "".join(parts)


def _tile_style(sheet: dict, j: int, cols: int) -> str:
    r, q = divmod(j, cols)
    return (f"background-image:url('{html.escape(sheet['src'])}');background-size:{cols * 100}% "
            f"{sheet['rows'] * 100}%;background-position:{_pct(q, cols)} {_pct(r, sheet['rows'])}")


def setup(app) -> None:
    app.add_directive("xai-microscope", MicroscopeDirective)
