"""What the book knows about the generated artifacts: references into JSON, expressions, formatting.

A *reference* names a value in a JSON file under the generated folder::

    saliency/summary.json:models.efficientnet_lite0.deletion_auc
    overview/photos.json:[id=chelsea].predictions.efficientnet_lite0.0.name
    overview/models.json                       (the whole file)

The first path segment is the study that wrote the file (``manifest.json`` at the root is the build's
own record). Key segments are separated by dots; a number indexes a list; ``[key=value]`` picks the one
element of a list of objects whose ``key`` equals ``value``.

The rule for missing things: a study that ran for this build (it is in ``manifest.json``) must have
every file and key the pages ask for, otherwise the build fails naming the file and key. A study that
is not registered in ``xai.studies.STUDIES`` at all (not written yet, or not part of this checkout) is
*not computed*: its figures and claims give way to an explicit notice. A registered study that did not
run is an error too (the precompute was partial): ``xai precompute --profile P --only STUDY`` fixes it.

The registry is read from the manifest (``registered_studies``, written by the precompute), like
everything else the book knows about the build: this extension imports neither torch nor ``xai``, so
the book builds from the generated folder alone. A manifest without the registry (one written by hand)
has every study it lacks treated as registered: a missing study is then an error, never a silent notice.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BookDataError(Exception):
    """A page asks for something the generated artifacts cannot give; the message says what and where."""


class NotComputed(Exception):
    """The study behind a reference is not part of this build (not registered), or the part of its
    results it points into was skipped (``reason``, the study's own words): render a notice."""

    def __init__(self, study: str, reason: str | None = None):
        super().__init__(study)
        self.study, self.reason = study, reason


class Part(dict):
    """A JSON object of a study's results. A study that had nothing to run a part on writes the part as
    ``{"skipped": "<why>"}``; asking such a part for a key is NotComputed with that reason, so the
    passages, figures and tables built on it give way to the reason, and a key missing from any other
    object is still an error."""

    def __init__(self, data: dict, study: str):
        super().__init__(data)
        self.study = study

    def _refuse_if_skipped(self) -> None:
        reason = dict.get(self, "skipped")
        if isinstance(reason, str) and len(self) == 1:
            raise NotComputed(self.study, reason)

    def __missing__(self, key):
        self._refuse_if_skipped()
        raise KeyError(key)

    # Walking a skipped part (``for m, v in items(part)``) is asking it for its contents, too.
    def __iter__(self):
        self._refuse_if_skipped()
        return dict.__iter__(self)

    def keys(self):
        self._refuse_if_skipped()
        return dict.keys(self)

    def values(self):
        self._refuse_if_skipped()
        return dict.values(self)

    def items(self):
        self._refuse_if_skipped()
        return dict.items(self)

    def __reduce__(self):
        return Part, ({k: dict.__getitem__(self, k) for k in dict.keys(self)}, self.study)


def generated_root(srcdir: str | Path) -> Path:
    """The folder the studies wrote; XAI_GENERATED overrides it exactly as ``xai.paths`` does."""
    env = os.environ.get("XAI_GENERATED")
    return Path(env).resolve() if env else (Path(srcdir) / "book" / "_generated").resolve()


@dataclass
class Ref:
    file: str  # relative to the generated root, e.g. "saliency/summary.json"
    keys: tuple[str, ...]

    @property
    def study(self) -> str | None:
        return self.file.split("/", 1)[0] if "/" in self.file else None

    def __str__(self) -> str:
        return self.file + (":" + ".".join(self.keys) if self.keys else "")


_SELECTOR = re.compile(r"\[([^\[\]=]+)=([^\[\]]*)\]")
REF_PATTERN = re.compile(r"^[\w./-]+\.json(:.*)?$")


def is_ref(text: str) -> bool:
    return bool(REF_PATTERN.match(text.strip()))


def parse_ref(text: str) -> Ref:
    text = text.strip()
    if not is_ref(text):
        raise BookDataError(f"{text!r} is not a reference (expected FILE.json[:key.path])")
    file, _, path = text.partition(":")
    keys: list[str] = []
    # Split on dots outside [..] so that selector values may contain dots (ids such as "a.b").
    depth, cur = 0, ""
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "." and depth == 0:
            keys.append(cur)
            cur = ""
        else:
            cur += ch
    if cur or path:
        keys.append(cur)
    if any(k == "" for k in keys):
        raise BookDataError(f"empty key in reference {text!r}")
    # "a[id=x]" is shorthand for "a.[id=x]"
    expanded: list[str] = []
    for k in keys:
        m = re.fullmatch(r"([^\[\]]*)((?:\[[^\[\]=]+=[^\[\]]*\])*)", k)
        if not m:
            raise BookDataError(f"bad key {k!r} in reference {text!r}")
        if m.group(1):
            expanded.append(m.group(1))
        expanded.extend(f"[{a}={b}]" for a, b in _SELECTOR.findall(m.group(2)))
    return Ref(file, tuple(expanded))


class Generated:
    """Read-only view of one build's generated folder, with the study rules described above."""

    def __init__(self, root: Path, on_read=None):
        self.root = root
        # Called with every file a page reads, so that Sphinx re-reads the page when the file changes.
        self.on_read = on_read or (lambda path: None)
        self._cache: dict[str, Any] = {}
        self._manifest: dict | None = None

    # -- study status ---------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        self.on_read(self.root / "manifest.json")
        if self._manifest is None:
            path = self.root / "manifest.json"
            if not path.is_file():
                raise BookDataError(
                    f"{path} is missing: no study has run for this build. Run `xai precompute --profile "
                    f"smoke|quick|full` (or `make book`) before building the site.")
            self._manifest = json.loads(path.read_text())
        return self._manifest

    @property
    def profile(self) -> str:
        return str(self.manifest.get("profile", "unknown"))

    def study_ran(self, study: str) -> bool:
        return study in self.manifest.get("studies", {})

    def check_study(self, study: str) -> None:
        """Raise NotComputed for a study this checkout does not have, BookDataError for one that did not run."""
        if self.study_ran(study):
            return
        registered = self.manifest.get("registered_studies")
        if registered is not None and study not in registered:
            raise NotComputed(study)
        raise BookDataError(
            f"study {study!r} has no results in {self.root / 'manifest.json'} (profile {self.profile!r}): "
            f"run `xai precompute --profile {self.profile} --only {study}`")

    # -- files and values -----------------------------------------------------------------------
    def path(self, rel: str, *, study: str | None = None) -> Path:
        """Absolute path of an artifact that must exist (raises naming the file and the fix)."""
        rel = rel.strip().lstrip("/")
        study = study if study is not None else (rel.split("/", 1)[0] if "/" in rel else None)
        if study is not None:
            self.check_study(study)
        p = (self.root / rel).resolve()
        if self.root not in p.parents:
            raise BookDataError(f"artifact path {rel!r} leaves the generated folder {self.root}")
        if not p.is_file():
            hint = f"; study {study!r} ran but did not write it" if study else ""
            raise BookDataError(f"missing artifact {p}{hint} (profile {self.profile!r})")
        self.on_read(p)
        return p

    def load(self, rel: str) -> Any:
        p = self.path(rel)
        if rel not in self._cache:
            try:
                study = Path(rel).parts[0]
                self._cache[rel] = json.loads(p.read_text(), object_hook=lambda d: Part(d, study))
            except json.JSONDecodeError as e:
                raise BookDataError(f"{p} is not valid JSON: {e}") from e
        return self._cache[rel]

    def resolve(self, ref: Ref | str) -> Any:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        if ref.file == "manifest.json":
            value: Any = self.manifest
        else:
            value = self.load(ref.file)
        walked: list[str] = []
        for key in ref.keys:
            value = _step(value, key, ref, walked)
            walked.append(key)
        return value


def _step(value: Any, key: str, ref: Ref, walked: list[str]) -> Any:
    where = f"{ref.file}:{'.'.join(walked) or '(top)'}"
    m = _SELECTOR.fullmatch(key)
    if m:
        field, want = m.group(1), m.group(2)
        if not isinstance(value, list):
            raise BookDataError(f"{where} is not a list, cannot select [{field}={want}] (reference {ref})")
        hits = [v for v in value if isinstance(v, dict) and str(v.get(field)) == want]
        if len(hits) != 1:
            have = sorted({str(v.get(field)) for v in value if isinstance(v, dict)})[:20]
            raise BookDataError(f"{where}: {len(hits)} elements with {field}={want!r} (need exactly one; "
                                f"values present: {', '.join(have)}) (reference {ref})")
        return hits[0]
    if isinstance(value, dict):
        if key not in value:
            have = ", ".join(sorted(map(str, value))[:30])
            raise BookDataError(f"{where} has no key {key!r} (keys: {have}) (reference {ref})")
        return value[key]
    if isinstance(value, list):
        try:
            return value[int(key)]
        except (ValueError, IndexError):
            raise BookDataError(f"{where} is a list of {len(value)}; {key!r} is not an index in it "
                                f"(reference {ref})") from None
    raise BookDataError(f"{where} is a {type(value).__name__}, it has no key {key!r} (reference {ref})")


# -- expressions ------------------------------------------------------------------------------------

def _mean(xs):
    xs = list(xs)
    if not xs:
        raise BookDataError("mean() of an empty sequence")
    return statistics.fmean(xs)


def _median(xs):
    return statistics.median(list(xs))


SAFE_FUNCTIONS = {
    "len": len, "min": min, "max": max, "abs": abs, "sum": sum, "all": all, "any": any, "round": round,
    "sorted": sorted, "int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
    "set": set, "range": range, "zip": zip, "enumerate": enumerate, "mean": _mean, "median": _median,
    "isclose": math.isclose, "log10": math.log10, "sqrt": math.sqrt, "True": True, "False": False,
    "None": None, "keys": lambda d: list(d.keys()), "values": lambda d: list(d.values()),
    "items": lambda d: list(d.items()), "join": lambda sep, xs: sep.join(str(x) for x in xs),
    "argmax": lambda d: max(d, key=d.get), "argmin": lambda d: min(d, key=d.get),
}

_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.Constant,
    ast.Name, ast.Load, ast.Subscript, ast.Slice, ast.Tuple, ast.List, ast.Dict, ast.Set,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.keyword,
    ast.Lambda, ast.arguments, ast.arg, ast.Store, ast.JoinedStr, ast.FormattedValue,
    ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
    ast.Mod, ast.Pow, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is,
    ast.IsNot,
)


def compile_expression(text: str):
    """Compile a claim expression: plain Python over names, with no attribute access and no dunders."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise BookDataError(f"cannot parse expression {text!r}: {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise BookDataError(f"expression {text!r} uses {type(node).__name__}, which bound expressions may not use "
                                "(names, literals, arithmetic, comparisons, calls of "
                                f"{', '.join(sorted(k for k in SAFE_FUNCTIONS if k[0].islower()))})")
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            raise BookDataError(f"expression {text!r}: names may not start with '__'")
    return compile(tree, "<claim>", "eval")


def names_in(text: str) -> set[str]:
    tree = ast.parse(text.strip(), mode="eval")
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.Lambda) for a in n.args.args}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound


class Absent:
    """The value of a name bound to a study this checkout does not have, or to a skipped part of one:
    using it is NotComputed."""

    def __init__(self, study: str, reason: str | None = None):
        self.study, self.reason = study, reason


def evaluate(text: str, names: dict[str, Any]) -> Any:
    code = compile_expression(text)
    used = names_in(text)
    unknown = used - set(names) - set(SAFE_FUNCTIONS)
    if unknown:
        raise BookDataError(f"expression {text!r} uses unbound name(s) {', '.join(sorted(unknown))} "
                            f"(bound here: {', '.join(sorted(names)) or 'none'})")
    for n in sorted(used):
        if isinstance(names.get(n), Absent):
            raise NotComputed(names[n].study, names[n].reason)
    try:
        # One namespace as globals: comprehensions and lambdas look names up there, not in locals.
        return eval(code, {"__builtins__": {}, **SAFE_FUNCTIONS, **names})  # noqa: S307 - AST-checked above
    except (BookDataError, NotComputed):
        raise
    except Exception as e:  # the expression is the author's; report it with its values
        raise BookDataError(f"expression {text!r} failed: {type(e).__name__}: {e}") from None


def parse_lets(text: str) -> list[tuple[str, str]]:
    """``name = REF_OR_EXPR`` bindings, one per line or separated by ';'."""
    out = []
    for part in re.split(r"[;\n]", text or ""):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier() or name.startswith("_") or not value.strip():
            raise BookDataError(f"bad binding {part!r}: write `name = file.json:key.path` or `name = expression`")
        out.append((name, value.strip()))
    return out


def bind(gen: Generated, lets: list[tuple[str, str]], outer: dict[str, Any] | None = None, *,
         keep_absent: bool = False) -> dict[str, Any]:
    """Evaluate ``lets`` in order. With ``keep_absent``, a name whose study is not in this checkout is
    bound to :class:`Absent` (page-level bindings), so that only the passages that use it give way."""
    names = dict(outer or {})
    for name, value in lets:
        try:
            names[name] = gen.resolve(value) if is_ref(value) else evaluate(value, names)
        except NotComputed as nc:
            if not keep_absent:
                raise
            names[name] = Absent(nc.study, nc.reason)
    return names


# -- formatting -------------------------------------------------------------------------------------

def format_value(value: Any, fmt: str | None) -> str:
    """Format a value for prose.

    ``fmt`` is a Python format spec (``.3f``, ``.1%``, ``,d``, ``+.2f``) or one of: ``?yes:no`` (pick a
    word by truthiness), ``list`` (comma-separated, "and" before the last), ``code`` is handled by
    the role. Without a spec: ints with thousands separators, floats to three significant digits.
    """
    if fmt and fmt.startswith("?"):
        yes, _, no = fmt[1:].partition(":")
        return yes if value else no
    if fmt == "list":
        items = [str(v) for v in value]
        if not items:
            return "none"
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    if fmt == "count":
        return f"{len(value):,}"
    if isinstance(value, bool) and not fmt:
        return "yes" if value else "no"
    if fmt:
        try:
            return format(value, fmt)
        except (ValueError, TypeError) as e:
            raise BookDataError(f"cannot format {value!r} with {fmt!r}: {e}") from None
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return format_value(list(value), "list") if value else "none"
    return str(value)


def split_format(text: str) -> tuple[str, str | None]:
    """``EXPR|FMT`` -> (EXPR, FMT); the last '|' outside brackets and quotes separates them."""
    depth, quote = 0, None
    for i in range(len(text) - 1, -1, -1):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in ")]}":
            depth += 1
        elif ch in "([{":
            depth -= 1
        elif ch == "|" and depth == 0:
            return text[:i].strip(), text[i + 1:].strip() or None
    return text.strip(), None
