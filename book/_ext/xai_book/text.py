"""Generated strings on their way into a page: record templates, JSON inside ``<script>``, and the
Markdown snippets studies write, none of which may become markup.

Class names, model names and photo credits come from the data (and, once a user's own model or image
folder is loaded, from the user): a ``<script>`` in a label must reach the reader as text. HTML that
the extension writes escapes every such string itself (``html.escape``); text that goes into docutils
nodes goes in as text nodes, which the HTML writer escapes.
"""
from __future__ import annotations

import json
import re
import string
from typing import Any

from docutils import nodes

from .data import BookDataError

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def template(text: str, record: dict) -> str:
    """``{key}`` and ``{key:spec}`` fields filled from a record, and nothing else.

    ``str.format`` would also follow ``{key.attr}`` and ``{key[i]}`` into any object (``{x.__class__}``),
    which bound expressions may not do either: those, conversions (``{key!r}``), positional fields and
    fields nested in a spec are errors. ``{{`` and ``}}`` are literal braces.
    """
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:
        raise BookDataError(f"template {text!r}: {e}") from None
    out = []
    for literal, field, spec, conversion in parts:
        out.append(literal)
        if field is None:
            continue
        if not _FIELD.match(field):
            raise BookDataError(f"template {text!r}: {{{field}}} is not a plain key of the record; templates take "
                                "{key} or {key:format}, without attribute access or indexing")
        if conversion is not None or "{" in (spec or ""):
            raise BookDataError(f"template {text!r}: field {field!r} has a conversion or a nested field; "
                                "templates take {key} or {key:format}")
        if field not in record:
            raise BookDataError(f"template {text!r} uses {field!r}, which the record lacks "
                                f"(keys: {', '.join(sorted(map(str, record)))})")
        try:
            out.append(format(record[field], spec or ""))
        except (ValueError, TypeError) as e:
            raise BookDataError(f"template {text!r}: cannot format {record[field]!r} with {spec!r}: {e}") from None
    return "".join(out)


def script_json(obj: Any) -> str:
    """JSON to sit inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` appears literally,
    so no string in it can close the element (``</script>``) or open a comment (``<!--``)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")

