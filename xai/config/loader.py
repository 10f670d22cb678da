"""Reading a report config: a shipped profile by name, or a user's YAML file by path.

Errors are one line: the file, the key path and what is wrong, with close matches for a mistyped key,
model id, method or study. Relative paths in a file (weights, class lists, image folders) are relative
to the file's own folder, so a config can travel with its data.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import XaiError
from .schema import ReportConfig

SHIPPED = Path(__file__).resolve().parent / "profiles"


class ConfigError(XaiError):
    """A config file that cannot be used as it is: ``source``, ``path`` (dotted key path), ``problem``."""

    def __init__(self, source: str, path: str, problem: str):
        self.source, self.path, self.problem = source, path, problem
        super().__init__(f"config {source}: {path + ': ' if path else ''}{problem}")


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def resolve(name_or_path: str | Path) -> Path:
    """A shipped profile's file (``full``, ``quick``, ``smoke``) or an existing path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in str(name_or_path):
        if not p.is_file():
            raise ConfigError(str(p), "", "no such file")
        return p.resolve()
    if (SHIPPED / f"{p}.yaml").is_file():
        return SHIPPED / f"{p}.yaml"
    from ..errors import UnknownNameError

    raise UnknownNameError("profile", str(name_or_path), shipped(), hint="or give a path to a YAML config")


def load(name_or_path: str | Path, *, check_names: bool = True) -> ReportConfig:
    """The validated config. With ``check_names``, model specs, model ids, methods and studies are
    checked against what exists (cheap: no model is built)."""
    path = resolve(name_or_path)
    source = path.name if path.parent == SHIPPED else str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(source, where, f"not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(source, "", "a config is a mapping of keys (name, models, images, studies)")
    raw = _relative_paths(raw, path.parent)
    try:
        config = ReportConfig.model_validate(raw)
    except ValidationError as e:
        raise _one_line(e, source) from None
    if check_names:
        check(config, source)
    return config


def _relative_paths(raw: dict, base: Path) -> dict:
    def fix(v: Any) -> Any:
        return str((base / v).resolve()) if isinstance(v, str) and not Path(v).is_absolute() else v

    for m in raw.get("models") or []:
        if isinstance(m, dict):
            for k in ("weights", "classes"):
                if k in m:
                    m[k] = fix(m[k])
    for f in ((raw.get("images") or {}).get("folders") or []):
        if isinstance(f, dict) and "root" in f:
            f["root"] = fix(f["root"])
    return raw


def _one_line(error: ValidationError, source: str) -> ConfigError:
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    path = ".".join(loc)
    if first["type"] == "extra_forbidden":
        fields = _fields_at(ReportConfig, first["loc"][:-1])
        close = difflib.get_close_matches(loc[-1], fields, n=3, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}?" if close else (f"; known keys: {', '.join(fields)}" if fields else "")
        return ConfigError(source, path, f"unknown key{hint}")
    value = first.get("input")
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "a mapping"
    more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return ConfigError(source, path, f"{first['msg']}, got {shown}{more}")


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The declared keys of the sub-model at ``loc`` (indices into lists are skipped)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_of(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def check(config: ReportConfig, source: str = "config") -> None:
    """Names that must exist: model specs, the model ids and methods that studies name."""
    from .. import attribution, models
    from ..errors import UnknownNameError

    for i, m in enumerate(config.models):
        try:
            models.check(m.spec)
        except XaiError as e:
            raise ConfigError(source, f"models.{i}.spec", str(e)) from None
        for k in ("weights", "classes"):
            p = getattr(m, k)
            if p is not None and not Path(p).is_file():
                raise ConfigError(source, f"models.{i}.{k}", f"no such file: {p}")
    for f_i, f in enumerate(config.images.folders):
        if not Path(f.root).is_dir():
            raise ConfigError(source, f"images.folders.{f_i}.root", f"no such folder: {f.root}")
    ids = config.model_ids
    for f_i, f in enumerate(config.images.folders):
        if f.labels is not None and f.labels not in ids:
            raise ConfigError(source, f"images.folders.{f_i}.labels", str(UnknownNameError("model id", f.labels, ids)))
    for study, sc in config.studies:
        for key in ("models", "photo_models", "sanity_models", "class_models"):
            for name in getattr(sc, key, None) or []:
                if name not in ids:
                    raise ConfigError(source, f"studies.{study}.{key}",
                                      str(UnknownNameError("model id", name, ids)))
        for key in ("methods", "sanity_methods", "compare_methods"):
            names = getattr(sc, key, None) or []
            for name in (names if isinstance(names, list) else list(names)):
                if name not in attribution.METHODS:
                    raise ConfigError(source, f"studies.{study}.{key}",
                                      str(UnknownNameError("attribution method", name, attribution.METHODS)))
