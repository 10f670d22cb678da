"""Strings from the data as literal Markdown, for the snippets some studies still write (``*.md`` tables
that the book includes with ``{generated}``).

Class names, model names and photo credits may come from a user's own model or image folder. The book
parses these snippets as MyST, which passes HTML through and reads ``{role}``, ``$math$`` and
``{{ substitutions }}``: a value goes in through :func:`text` or :func:`code`, never as it is.
"""
from __future__ import annotations

import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark, which makes it literal.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def _one_line(value: object) -> str:
    # A table row is one line; a line break in a value would end it (and start a block of its own).
    return " ".join(str(value).split())


def text(value: object) -> str:
    """``value`` as literal text in running Markdown or a table cell: nothing in it is markup."""
    return _PUNCTUATION.sub(r"\\\1", _one_line(value))


def code(value: object) -> str:
    """``value`` as an inline code span in a table cell (a name: `efficientnet_lite0`).

    Code spans take no escapes, so the fence is one backtick longer than any run inside; a ``|`` still
    splits a table row there and is written ``\\|``, which the table reads back as ``|``.
    """
    s = _one_line(value).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"
