"""Bound prose: values and claims read from the generated JSON at build time.

``{res}`REF_OR_EXPR|FMT``            a value in running text (see ``data.py`` for references and formats)
``{bind}`` with ``name = REF_OR_EXPR`` lines   names for the rest of the page
``:::{claim}`` + ``:let:``/``:when:``  a passage that is only true while ``:when:`` holds; the build
                                        fails (naming the page, the expression and its values) otherwise
``{cases}`` holding ``{case}`` blocks    alternatives for results that may go either way: exactly one
                                        ``:when:`` must hold, the others are left out
``{generated} study/file.md``          a Markdown snippet a study wrote (the speed section), parsed as MyST
``{study} NAME``                       the provenance note of a chapter, or the "not computed" notice
"""
from __future__ import annotations

import html
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective, SphinxRole

from .data import (Absent, BookDataError, NotComputed, bind, evaluate, format_value, is_ref, names_in, parse_lets,
                   split_format)

logger = logging.getLogger(__name__)

SCOPE = "xai_names"  # env.temp_data key: a stack of name scopes, innermost last (temp_data is per page)
SOURCES = "xai_sources"  # the same stack, holding what each name was bound to (shown on hover)


# -- nodes --------------------------------------------------------------------------------------------

class xai_value(nodes.inline):
    """A value from the generated JSON; ``ref`` keeps where it came from (shown on hover)."""


class xai_claim(nodes.General, nodes.Element):
    """A passage whose condition was checked against the generated JSON when the page was built."""


def visit_value(self, node: xai_value) -> None:
    self.body.append(f'<span class="xai-res" data-ref="{html.escape(node["ref"])}">')


def depart_value(self, node: xai_value) -> None:
    self.body.append("</span>")


def visit_claim(self, node: xai_claim) -> None:
    self.body.append(f'<div class="xai-claim" data-claim="{html.escape(node["when"])}">')


def depart_claim(self, node: xai_claim) -> None:
    self.body.append("</div>")


# -- helpers shared by every directive that reads generated data ----------------------------------------

def generated(env):
    return env.app.xai_generated


def fail(env, err: Exception, location) -> None:
    """Report a data error at its page and line; the page stays outdated so the error cannot go stale."""
    logger.warning(str(err), location=location, type="xai", subtype="data")
    env.xai_failures.add(env.docname)


def current_names(env, key: str = SCOPE) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for scope in env.temp_data.get(key, []):
        names.update(scope)
    return names


def provenance(env, expr: str) -> str:
    """The expression with the references its names were bound to: what a reader sees on hover."""
    if is_ref(expr):
        return expr
    sources = current_names(env, SOURCES)
    seen: list[str] = []
    todo = sorted(names_in(expr))
    while todo:  # names bound to expressions over other names: follow them to the files
        n = todo.pop(0)
        if n in sources and n not in seen:
            seen.append(n)
            if not is_ref(sources[n]):
                todo += sorted(names_in(sources[n]))
    used = [f"{n} = {sources[n]}" for n in seen]
    return expr + (" where " + "; ".join(used) if used else "")


def not_computed_admonition(study: str, what: str, reason: str | None = None) -> nodes.admonition:
    node = nodes.admonition(classes=["xai-not-computed", "note"])
    node += nodes.title(text="Not computed in this build")
    para = nodes.paragraph()
    para += nodes.Text(f"{what} comes from the ")
    para += nodes.literal(text=study)
    if reason:
        # The study's own words (text, never markup): it ran, but this part had nothing to run on.
        para += nodes.Text(f" study, which skipped this part: {reason}.")
        node += para
        return node
    # The registry is the one the precompute recorded in the manifest: the book cannot ask the package.
    para += nodes.Text(" study, which the precompute of this build did not have (it was not registered in ")
    para += nodes.literal(text="xai.studies.STUDIES")
    para += nodes.Text("). Once it is, ")
    para += nodes.literal(text="make book")
    para += nodes.Text(" computes it and this place shows the result.")
    node += para
    return node


# -- {res} ----------------------------------------------------------------------------------------------

class ResRole(SphinxRole):
    """``{res}`saliency/summary.json:a.b|.3f``` or, inside a claim, ``{res}`name|.1%```."""

    def run(self):
        expr, fmt = split_format(self.text)
        gen = generated(self.env)
        try:
            names = current_names(self.env)
            value = gen.resolve(expr) if is_ref(expr) else evaluate(expr, names)
            text = format_value(value, fmt)
        except NotComputed as nc:
            node = nodes.inline(text="not computed", classes=["xai-na"])
            node["ids"] = []
            self.env.xai_not_computed.setdefault(self.env.docname, set()).add(nc.study)
            return [node], []
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            return [nodes.problematic(self.rawtext, self.rawtext)], []
        node = xai_value(text, text, classes=["xai-res"])
        node["ref"] = provenance(self.env, expr)
        return [node], []


# -- {claim} ----------------------------------------------------------------------------------------------

class ClaimDirective(SphinxDirective):
    """A passage that states a result; ``:when:`` must hold on the generated data or the build fails."""

    has_content = True
    option_spec = {
        "let": directives.unchanged,
        "when": directives.unchanged_required,
        # Only check and show the passage for these profiles (it names models or photos only they have).
        "profiles": directives.unchanged,
    }

    def run(self):
        when = self.options.get("when")
        if not when:
            fail(self.env, BookDataError("a claim needs `:when: EXPRESSION`"), self.get_location())
            return []
        gen = generated(self.env)
        try:
            profiles = (self.options.get("profiles") or "").replace(",", " ").split()
            if profiles and gen.profile not in profiles:
                return []
            lets = parse_lets(self.options.get("let", ""))
            names = bind(gen, lets, current_names(self.env))
            holds = evaluate(when, names)
        except NotComputed as nc:
            # The passage is about results this build does not have: leave it out, the chapter says why.
            self.env.xai_not_computed.setdefault(self.env.docname, set()).add(nc.study)
            self.on_absent()
            return []
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            self.on_absent()
            return []
        if not holds:
            return self.on_false(when, names)
        self.on_true(when)
        node = xai_claim()
        node["when"] = when
        self.env.temp_data.setdefault(SCOPE, []).append(names)
        self.env.temp_data.setdefault(SOURCES, []).append(dict(lets))
        try:
            self.state.nested_parse(self.content, self.content_offset, node)
        finally:
            self.env.temp_data[SCOPE].pop()
            self.env.temp_data[SOURCES].pop()
        return [node]


    def on_false(self, when: str, names: dict) -> list:
        used = names_in(when)
        values = ", ".join(f"{k} = {_short(v)}" for k, v in names.items() if k in used)
        fail(self.env, BookDataError(
            f"claim no longer holds: `{when}` is false ({values or 'no bound names'}); rewrite the "
            f"passage for the new results or find out why they changed"), self.get_location())
        return []

    def on_true(self, when: str) -> None:
        pass

    def on_absent(self) -> None:
        pass


# -- {cases} / {case} ------------------------------------------------------------------------------------

CASES = "xai_cases"  # env.temp_data key: the open {cases} blocks, innermost last


class CaseDirective(ClaimDirective):
    """One branch of a ``{cases}`` block: shown when its ``:when:`` holds, left out otherwise."""

    def run(self):
        if not self.env.temp_data.get(CASES):
            fail(self.env, BookDataError("a {case} must sit inside a {cases} block"), self.get_location())
            return []
        self.env.temp_data[CASES][-1]["n"] += 1
        return super().run()

    def on_false(self, when: str, names: dict) -> list:
        return []

    def on_true(self, when: str) -> None:
        self.env.temp_data[CASES][-1]["held"].append(when)

    def on_absent(self) -> None:
        self.env.temp_data[CASES][-1]["absent"] = True


class CasesDirective(SphinxDirective):
    """Alternative passages for results that may go either way; exactly one ``{case}`` must hold, so the
    prose is checked whichever way they go."""

    has_content = True

    def run(self):
        record = {"held": [], "n": 0, "absent": False}
        self.env.temp_data.setdefault(CASES, []).append(record)
        box = nodes.Element()
        try:
            self.state.nested_parse(self.content, self.content_offset, box)
        finally:
            self.env.temp_data[CASES].pop()
        if not record["absent"] and len(record["held"]) != 1:
            held = "; ".join(f"`{w}`" for w in record["held"]) or "none"
            fail(self.env, BookDataError(
                f"exactly one case must hold, but {len(record['held'])} of {record['n']} do ({held}); "
                "the cases must cover every outcome without overlapping"), self.get_location())
            return []
        return box.children


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


# -- {bind} -------------------------------------------------------------------------------------------------

class BindDirective(SphinxDirective):
    """Names for the rest of the page, one ``name = REF_OR_EXPR`` per line of content."""

    has_content = True

    def run(self):
        gen = generated(self.env)
        try:
            lets = parse_lets("\n".join(self.content))
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            return []
        try:
            names = bind(gen, lets, current_names(self.env), keep_absent=True)
        except BookDataError as err:
            # Reported once here; the names stay bound (as absent) so their uses do not repeat it.
            fail(self.env, err, self.get_location())
            names = {**current_names(self.env), **{n: Absent("(failed above)") for n, _ in lets}}
        for n, v in names.items():
            if isinstance(v, Absent) and not v.study.startswith("("):
                self.env.xai_not_computed.setdefault(self.env.docname, set()).add(v.study)
        self.env.temp_data.setdefault(SCOPE, []).append({n: names[n] for n, _ in lets})
        self.env.temp_data.setdefault(SOURCES, []).append(dict(lets))
        return []


# -- {study} ----------------------------------------------------------------------------------------------

class StudyDirective(SphinxDirective):
    """Top of a chapter: where its results come from, or that they are not part of this build."""

    required_arguments = 1

    def run(self):
        study = self.arguments[0]
        gen = generated(self.env)
        try:
            gen.check_study(study)
            record = gen.manifest["studies"][study]
            env_info = gen.manifest.get("environment", {})
        except NotComputed:
            return [not_computed_admonition(study, "This chapter's figures and results")]
        except BookDataError as err:
            fail(self.env, err, self.get_location())
            return []
        commit = (env_info.get("git_commit") or "")[:10]
        dirty = " (with local changes)" if env_info.get("git_dirty") else ""
        seconds = record.get("seconds")
        note = nodes.sidebar(classes=["margin", "xai-provenance"])
        para = nodes.paragraph()
        para += nodes.Text("Results on this page: ")
        para += nodes.literal(text=f"xai.studies.{study}")
        para += nodes.Text(f", {gen.profile} profile, seed {record.get('seed')}")
        if seconds is not None:
            para += nodes.Text(f", {seconds:,.0f} s to compute")
        if commit:
            para += nodes.Text(", commit ")
            para += nodes.literal(text=commit)
            para += nodes.Text(dirty)
        para += nodes.Text(".")
        note += para
        return [note]


def setup(app) -> None:
    app.add_node(xai_value, html=(visit_value, depart_value))
    app.add_node(xai_claim, html=(visit_claim, depart_claim))
    app.add_role("res", ResRole())
    app.add_directive("claim", ClaimDirective)
    app.add_directive("cases", CasesDirective)
    app.add_directive("case", CaseDirective)
    app.add_directive("bind", BindDirective)
    app.add_directive("study", StudyDirective)
