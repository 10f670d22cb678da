"""``{xai-blocks}``: Building Blocks' activation grid with its semantic dictionary.

Each record is one photo at one layer: a grid of tiles (the rendering of the activation vector at each
position, row-major) and, per position, its dictionary entry (the most active channels, each with its
own rendering and activation). Hovering, focusing or clicking a tile shows its entry beside the grid,
with the position marked on the photo; pickers (``:select:``) switch photo and layer. As with the other
widgets, the first state is rendered on the server and ``xai.js`` only swaps what is shown.

Options: ``:data:`` (records), ``:select:`` (keys with a picker each), ``:tiles:`` (key of the tile
paths, default ``tiles``), ``:shape:`` (key of ``[rows, columns]``, default ``shape``), ``:entries:``
(key of the per-position entries, default ``entries``: objects with ``channels``, ``values`` and
``images``, aligned), ``:photo:`` (key of the photo's path, optional; the position is marked on it) and ``:photo-alt:``, ``:alt:`` (tile template; the
record's keys and ``row``, ``col``), ``:entry-alt:`` (a channel's template: also ``channel``,
``value``, ``rank``), ``:note:`` (the entry's line: the record's keys, ``row``, ``col`` and the
entry's keys), ``:axis-labels:``.
"""
from __future__ import annotations

import html

from docutils.parsers.rst import directives

from .data import BookDataError
from .figures import GeneratedFigure, _ordered, _picker, axis_title, img_tag, parse_axis_labels, use_asset
from .text import script_json, template


class BlocksDirective(GeneratedFigure):
    option_spec = {
        **GeneratedFigure.option_spec,
        "data": directives.unchanged_required,
        "where": directives.unchanged,
        "select": directives.unchanged,
        "tiles": directives.unchanged,
        "shape": directives.unchanged,
        "entries": directives.unchanged,
        "photo": directives.unchanged,
        "photo-alt": directives.unchanged,
        "alt": directives.unchanged_required,
        "entry-alt": directives.unchanged_required,
        "note": directives.unchanged,
        "axis-labels": directives.unchanged,
    }
    what = "This figure"

    def _record(self, r: dict) -> dict:
        tk, sk, ek = (self.options.get(k, k) for k in ("tiles", "shape", "entries"))
        pk = self.options.get("photo")
        for key in [tk, sk, ek] + ([pk] if pk else []):
            if key not in r:
                raise BookDataError(f"{self.options['data']}: a record lacks key {key!r} (keys: {', '.join(sorted(r))})")
        rows, cols = (int(v) for v in r[sk])
        if len(r[tk]) != rows * cols or len(r[ek]) != rows * cols:
            raise BookDataError(f"{self.options['data']}: a {rows}x{cols} grid needs {rows * cols} tiles and entries, "
                                f"got {len(r[tk])} and {len(r[ek])}")
        note_t = self.options.get("note") or "Row {row}, column {col}"
        tiles, entries = [], []
        for i, (rel, e) in enumerate(zip(r[tk], r[ek])):
            where = {**r, "row": i // cols + 1, "col": i % cols + 1}
            a = use_asset(self, str(rel))
            tiles.append({"src": a["src"], "w": a["w"], "h": a["h"], "pixel": a["pixel"],
                          "alt": template(self.options["alt"], where)})
            if not (len(e["channels"]) == len(e["values"]) == len(e["images"])):
                raise BookDataError(f"{self.options['data']}: entry {i} has unaligned channels, values and images")
            chans = []
            for rank, (c, v, img) in enumerate(zip(e["channels"], e["values"], e["images"]), 1):
                b = use_asset(self, str(img))
                fields = {**where, "channel": c, "value": v, "rank": rank}
                chans.append({"src": b["src"], "w": b["w"], "h": b["h"], "pixel": b["pixel"],
                              "alt": template(self.options["entry-alt"], fields), "label": f"c{c} · {v:.3g}"})
            entries.append({"channels": chans, "note": template(note_t, {**where, **e})})
        out = {"rows": rows, "cols": cols, "tiles": tiles, "entries": entries}
        if pk:
            p = use_asset(self, str(r[pk]))
            out["photo"] = {"src": p["src"], "w": p["w"], "h": p["h"], "pixel": p["pixel"],
                            "alt": template(self.options.get("photo-alt") or "The photo", r)}
        return out

    def widget(self) -> str:
        records = self.records()
        selects = (self.options.get("select") or "").split()
        labels = parse_axis_labels(self.options.get("axis-labels"))
        for r in records:
            for a in selects:
                if a not in r:
                    raise BookDataError(f"{self.options['data']}: a record lacks key {a!r} (keys: {', '.join(sorted(r))})")
        data = [{"k": {a: str(r[a]) for a in selects}, **self._record(r)} for r in records]
        seen = set()
        for d in data:
            k = tuple(sorted(d["k"].items()))
            if k in seen:
                raise BookDataError(f"{self.options['data']}: two records share {dict(k)}; add the key that tells "
                                    "them apart to :select: or :where:")
            seen.add(k)
        values = {a: _ordered(records, a, numeric=False) for a in selects}
        first = data[0]
        eager = self.first_of_page()
        uid = f"xb{self.env.new_serialno('xai-blocks')}"
        parts = [f'<div class="xai-blocks" id="{uid}" data-xai="blocks">', '<div class="xai-controls">']
        parts.extend(_picker(uid, a, axis_title(a, labels), values[a], first["k"][a]) for a in selects)
        parts.append('</div><div class="xai-blocks-layout">')
        parts.append(f'<div class="xai-blocks-grid" role="group" style="--xai-cols:{first["cols"]}" '
                     'aria-label="Positions: hover, focus or use the arrow keys to see a position\'s channels">')
        for i, t in enumerate(first["tiles"]):
            parts.append(f'<button type="button" class="xai-tile{" xai-active" if i == 0 else ""}" data-i="{i}" '
                         f'aria-pressed="{"true" if i == 0 else "false"}">{img_tag(t, t["alt"], eager=eager)}</button>')
        parts.append('</div><div class="xai-blocks-detail" aria-live="polite">')
        if "photo" in first:
            parts.append(f'<div class="xai-blocks-photo">{img_tag(first["photo"], first["photo"]["alt"], eager=eager)}'
                         f'<span class="xai-blocks-box" style="{_box(0, first)}"></span></div>')
        e = first["entries"][0]
        parts.append(f'<p class="xai-note">{html.escape(e["note"])}</p><div class="xai-dictionary">')
        parts.extend(_channel(c, eager) for c in e["channels"])
        parts.append("</div></div></div>")
        payload = {"axes": selects, "records": data}
        parts.append(f'<script type="application/json" class="xai-data">{script_json(payload)}</script></div>')
        return "".join(parts)


def _box(i: int, rec: dict) -> str:
    """The position's share of the photo, as CSS percentages (the grid pools the layer's map evenly)."""
    r, c = divmod(i, rec["cols"])
    return (f"left:{100 * c / rec['cols']:.4g}%;top:{100 * r / rec['rows']:.4g}%;"
            f"width:{100 / rec['cols']:.4g}%;height:{100 / rec['rows']:.4g}%")


def _channel(c: dict, eager: bool) -> str:
    return (f'<figure class="xai-dict-entry">{img_tag(c, c["alt"], eager=eager)}'
            f'<figcaption>{html.escape(c["label"])}</figcaption></figure>')


def setup(app) -> None:
    app.add_directive("xai-blocks", BlocksDirective)
