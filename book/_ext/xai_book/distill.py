"""The distill look: title block with byline, MathML math (no MathJax, nothing fetched), assets."""
from __future__ import annotations

import html
import json

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

from .bound import fail, generated
from .data import BookDataError


class xai_byline(nodes.General, nodes.Element):
    pass


def visit_byline(self, node: xai_byline) -> None:
    cells = "".join(
        f'<div class="xai-byline-cell"><h3>{html.escape(k)}</h3><p>{v}</p></div>' for k, v in node["cells"])
    self.body.append(f'<div class="xai-byline" role="doc-credit">{cells}</div>')
    raise nodes.SkipNode


class BylineDirective(SphinxDirective):
    """Authors, date and version of the build, under the title of the first page."""

    has_content = False

    def run(self):
        gen = generated(self.env)
        try:
            manifest = gen.manifest
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            return []
        environment = manifest.get("environment", {})
        commit = environment.get("git_commit") or ""
        date = environment.get("git_commit_date") or str(manifest.get("updated", ""))[:10]
        pkg = environment.get("xai_version") or "unknown"
        short = html.escape(commit[:10]) if commit else "uncommitted"
        dirty = " + local changes" if environment.get("git_dirty") else ""
        node = xai_byline()
        node["cells"] = [
            ("Authors", html.escape(self.config.author)),
            ("Published", html.escape(date or "unreleased")),
            ("Version", f"xai {html.escape(pkg)} · commit <code>{short}</code>{html.escape(dirty)}"),
            ("Built", f"{html.escape(gen.profile)} profile · {_plural(len(manifest.get('studies', {})), 'study')} "
                      "computed"),
        ]
        return [node]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


# -- tables about the build itself, from the manifest: profiles and environment ------------------------

def _table(header: list[str], rows: list[list[str]], classes: list[str]) -> nodes.table:
    table = nodes.table(classes=classes)
    group = nodes.tgroup(cols=len(header))
    table += group
    for _ in header:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    head += _row(header)
    body = nodes.tbody()
    group += body
    for r in rows:
        body += _row(r)
    return table


def _row(cells: list[str]) -> nodes.row:
    row = nodes.row()
    for c in cells:
        entry = nodes.entry()
        entry += nodes.paragraph(text=c)
        row += entry
    return row


class ProfilesTable(SphinxDirective):
    """The build profiles as ``xai.profiles.PROFILES`` defines them, so the page cannot drift from the code:
    the precompute writes them into ``manifest.json`` (``profiles``)."""

    def run(self):
        gen = generated(self.env)
        try:
            profiles = gen.manifest.get("profiles")
            if not isinstance(profiles, list):
                raise BookDataError(f"{gen.root / 'manifest.json'} has no profiles table (written by an older "
                                    f"precompute): run `xai precompute --profile {gen.profile}`")
            rows = []
            for p in profiles:
                photos = "all" if p["photos"] is None else f"{len(p['photos'])}: {', '.join(p['photos'])}"
                rows.append([p["name"], ", ".join(p["imagenet_models"]), ", ".join(p["fmnist_models"]),
                             p["fmnist_budget"], photos, str(p["seed"])])
        except (KeyError, TypeError) as e:
            err = BookDataError(f"{gen.root / 'manifest.json'}: malformed profiles table ({type(e).__name__}: {e})")
            fail(self.env, err, self.get_location())
            return []
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            return []
        return [_table(["profile", "ImageNet models", "Fashion-MNIST models", "training budget", "photos",
                        "seed"], rows, ["xai-profiles"])]


class EnvironmentTable(SphinxDirective):
    """Package versions and machine of the build that computed the results (from ``manifest.json``)."""

    def run(self):
        gen = generated(self.env)
        try:
            env = gen.manifest.get("environment", {})
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            return []
        rows = [["profile", gen.profile], ["python", str(env.get("python"))],
                ["platform", str(env.get("platform"))], ["processor", str(env.get("processor"))],
                ["CPU threads", str(env.get("cpu_threads"))], ["GPU", str(env.get("cuda") or "none")]]
        rows += [[k, str(v)] for k, v in sorted(env.get("packages", {}).items())]
        seconds = sum(s.get("seconds", 0) for s in gen.manifest.get("studies", {}).values())
        rows.append(["precompute time", f"{seconds:,.0f} s over {len(gen.manifest.get('studies', {}))} studies"])
        return [_table(["", "this build"], rows, ["xai-environment"])]


# -- math: LaTeX to MathML at build time; browsers render MathML natively ------------------------------

def _mathml(latex: str, display: str) -> str:
    from latex2mathml.converter import convert

    try:
        return convert(latex, display=display)
    except Exception as e:  # the converter raises its own types; report the formula either way
        raise BookDataError(f"cannot convert math {latex!r} to MathML: {e}") from None


def visit_math_inline(self, node) -> None:
    self.body.append(f'<span class="math xai-math">{_mathml(node.astext(), "inline")}</span>')
    raise nodes.SkipNode


def visit_math_block(self, node) -> None:
    ids = " ".join(node.get("ids", []))
    id_attr = f' id="{html.escape(ids.split()[0])}"' if ids else ""
    number = ""
    if node.get("number"):
        number = f'<span class="eqno">({node["number"]})</span>'
    self.body.append(f'<div class="math xai-math-block"{id_attr}>{_mathml(node.astext(), "block")}{number}</div>')
    raise nodes.SkipNode


UNPUBLISHED = ('<div class="admonition warning xai-unpublished" role="note"><p class="admonition-title">'
               'Not for publication</p><p>This build comes from a config marked <code>published: false</code>: '
               'a test of the report on stand-in models (random weights, or a config under development). '
               'Its figures and numbers do not describe trained models and must not be read or shared as '
               'the report.</p></div>')


def _unpublished_notice(app, pagename, templatename, context, doctree) -> None:
    """Every page of a build whose manifest says ``published: false`` opens with the notice."""
    if doctree is None or "body" not in context:
        return
    if not hasattr(app, "xai_published"):
        # Read here, not through Generated: writing pages is past the phase that records dependencies.
        try:
            manifest = json.loads((app.xai_generated.root / "manifest.json").read_text())
            app.xai_published = manifest.get("published", True) is not False
        except (OSError, ValueError):  # no manifest: the pages already fail on it where they use it
            app.xai_published = True
    if not app.xai_published:
        context["body"] = UNPUBLISHED + context["body"]


def setup(app) -> None:
    app.connect("html-page-context", _unpublished_notice)
    app.add_node(xai_byline, html=(visit_byline, None))
    app.add_directive("byline", BylineDirective)
    app.add_directive("profiles-table", ProfilesTable)
    app.add_directive("environment-table", EnvironmentTable)
    app.add_html_math_renderer("mathml", (visit_math_inline, None), (visit_math_block, None))
    app.add_css_file("xai.css")
    app.add_js_file("xai.js", loading_method="defer")
