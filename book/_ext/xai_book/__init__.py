"""The book's own Sphinx extension: bound prose, generated figures, the distill look.

Pages stay declarative: they name artifacts and conditions; this extension reads ``book/_generated``
at build time and emits the HTML. A missing artifact, a missing key or a claim that no longer holds
is a build error at the page and line that asked for it (see ``data.py`` for the rules).

It reads nothing else about the build: profile, commit, versions and the study registry come from
``manifest.json``, and it imports neither torch nor the ``xai`` package (``tests/test_site.py`` builds
the smoke site in a process where both imports fail; ``tests/test_book_ext.py`` checks the sources).

Authoring reference (MyST)::

    {res}`overview/photos.json:[id=coffee].predictions.efficientnet_lite0.0.p|.0%`   a value
    {res}`len(photos)|,d`        an expression over names bound by {bind}, a claim or a figure's :let:

    ```{bind}                    names for the rest of the page, one per line
    sal = saliency/results.json
    inet = sal["imagenet"]
    ```

    :::{claim}                   must hold, or the build fails with the values that broke it
    :let: t = inet["targets"]; wrong = [p for m in t for p in t[m] if t[m][p]["correct"] is False]
    :when: len(wrong) >= 1
    Prose with {res}`wrong|list`.
    :::

    ::::{cases}                  results that may go either way: exactly one case must hold
    :::{case}
    :when: x > 0.5
    ...
    :::
    :::{case}
    :when: x <= 0.5
    ...
    :::
    ::::

    ```{xai-figure} saliency/choices.webp        one image (:alt: required, :width: text|page|screen)
    ```{xai-explorer}            records -> image grid with controls: :data: (list of objects; a
                                 reference or an expression), :image: (key, default image), :alt: and
                                 :note: (templates: {key} or {key:.2f} of a record), :select: keys (pickers),
                                 :slider: keys, :columns: / :rows: keys, :where:, :let:, :axis-labels:
    ```{xai-channels}            channel grid; hover/focus enlarges with :exemplars: (list of paths)
    ```{xai-blocks}              activation grid: hover a position for its semantic dictionary entry
                                 (:data: grid records, :select:, :photo:, :alt:, :entry-alt:, :note:)
    ```{xai-microscope}          every unit of some layers on lazy sprite sheets, one anchor per unit
                                 (:data: layer records, :alt: sheet template, :unit: label template)
    ```{xai-table}               :data: records, :columns: key=Header|fmt, expr=Header|fmt
    ```{study-table} overview/models             a study's result table, built from its JSON (tables.py)
    ```{study} saliency          provenance note (or "not computed" when the study is not registered)
    ```{byline}  ```{profiles-table}  ```{environment-table}

Formats after ``|``: any Python format spec (``.3f``, ``.1%``, ``,d``), ``list`` ("a, b and c"),
``count`` (length), ``?yes:no``. Expressions are Python without attribute access or dunders, with
``len min max sum mean median sorted items keys values argmax argmin isclose round abs all any join ...``.
Each figure, table and claim's caption is MyST, so captions can hold ``{res}`` and ``{cite:p}``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.errors import SphinxError

from . import blocks, bound, distill, figures, microscope, tables
from .data import Generated, generated_root

STATIC = Path(__file__).resolve().parent.parent.parent / "_static"


class BookDataFailed(SphinxError):
    category = "Bound data"


def _init_env(app, env=None, docnames=None) -> None:
    env = env or app.env
    for attr in ("xai_assets", "xai_not_computed"):
        if not hasattr(env, attr):
            setattr(env, attr, {})
    if not hasattr(env, "xai_failures"):
        env.xai_failures = set()


def _builder_inited(app) -> None:
    app.xai_generated = Generated(generated_root(app.srcdir),
                                  on_read=lambda path: app.env.note_dependency(str(path)))
    _init_env(app)


def _purge(app, env, docname) -> None:
    _init_env(app, env)
    env.xai_assets.pop(docname, None)
    env.xai_not_computed.pop(docname, None)
    env.xai_failures.discard(docname)


def _merge(app, env, docnames, other) -> None:
    _init_env(app, env)
    for d in docnames:
        if d in getattr(other, "xai_assets", {}):
            env.xai_assets[d] = other.xai_assets[d]
        if d in getattr(other, "xai_not_computed", {}):
            env.xai_not_computed[d] = other.xai_not_computed[d]
        if d in getattr(other, "xai_failures", set()):
            env.xai_failures.add(d)


def _outdated(app, env, added, changed, removed) -> list[str]:
    """Pages whose data failed last time are read again, so an incremental build cannot hide the error;
    so are pages that showed a "not computed" notice, since the study may exist now."""
    _init_env(app, env)
    return sorted(d for d in env.xai_failures | set(env.xai_not_computed) if d in env.found_docs)


def _finished(app, exception) -> None:
    failed = sorted(getattr(app.env, "xai_failures", ()))
    if exception is None and failed and not (app.warningiserror or getattr(app, "keep_going", False)):
        # -W already turns these into a failed build; without it they must still fail it.
        raise BookDataFailed(f"bound data failed on {', '.join(failed)} (see the warnings above)")


def _prune(app, exception) -> None:
    """Drop what no page requests: source maps of the theme's bundles, its UI translations, and the
    template macros the themes leave among the static files."""
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    for p in [*static.rglob("*.map"), *static.glob("*webpack-macros.html")]:
        p.unlink()
    if app.config.language in (None, "en"):
        shutil.rmtree(static / "locales", ignore_errors=True)
    # Pages without an icon link (the root redirect) make browsers ask for /favicon.ico.
    icon = STATIC / "favicon.ico"
    if icon.is_file():
        shutil.copy2(icon, Path(app.outdir) / "favicon.ico")


def _static_path(app, config) -> None:
    if str(STATIC) not in config.html_static_path:
        config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("config-inited", _static_path)
    app.connect("builder-inited", _builder_inited)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-get-outdated", _outdated)
    bound.setup(app)
    figures.setup(app)
    blocks.setup(app)
    microscope.setup(app)
    distill.setup(app)
    tables.setup(app)
    app.connect("build-finished", _prune)
    app.connect("build-finished", _finished, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
