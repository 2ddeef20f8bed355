"""YAML configs for every runner: read a mapping, apply `key.sub=value` overrides, validate.

Each runner's schema is a pydantic model with `extra="forbid"`; `load_config` reports every
problem at once, on one line, naming the file and the key (an unknown key with the closest
known one: "unknown key 'train.max_stpes' in override 'train.max_stpes=5'; did you mean
'train.max_steps'?").
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError, excerpt
from .bounded_yaml import load_yaml, parse_yaml

C = TypeVar("C", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML file; one-line errors for a missing file or bad YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    raw = load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-4", "mode=talos"]` → nested dict; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[leaf] = parse_yaml(value, f"override '{key}'") if value else ""
    return out


def deep_update(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    """Merge `upd` into `base` recursively (mappings merge, everything else replaces)."""
    for k, v in upd.items():
        merge = isinstance(v, dict) and isinstance(base.get(k), dict | None)
        base[k] = deep_update(dict(base.get(k) or {}), v) if merge else v
    return base


def validation_problems(exc: ValidationError, schema: type[BaseModel] | None = None, overrides: list[str] = ()) -> list[str]:
    """One `loc: message (got value)` string per pydantic error (the input is shown where the
    message does not already say what was wrong with it). An unknown key is "unknown key 'K'
    [in override 'K=V']; did you mean 'KEY'?", the closest key of `schema` at that place."""
    msgs = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            msgs.append(_unknown_key(err["loc"], schema, overrides))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {excerpt(err['input'])})" if err["type"] not in ("missing", "value_error") else ""
        msgs.append(f"{loc}: {msg}{got}" if loc else msg)
    return msgs


def _unknown_key(loc: tuple, schema: type[BaseModel] | None, overrides: list[str]) -> str:
    key = ".".join(str(x) for x in loc)
    source = next((o for o in overrides if f"{o.partition('=')[0]}.".startswith(f"{key}.")), None)
    text = f"unknown key '{key}'" + (f" in override {excerpt(source)}" if source else "")
    known = _section_keys(schema, loc[:-1]) if schema is not None else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"{text}; did you mean '{'.'.join([*(str(x) for x in loc[:-1]), close[0]])}'?"
    return f"{text} (known here: {', '.join(sorted(known))})" if known else text


def _section_keys(schema: type[BaseModel], path: tuple) -> list[str]:
    """The keys (field names and aliases) of the config section at `path` of `schema` ([]
    where the path leaves the schema's models: a dict or a union member's tag)."""
    model: type[BaseModel] | None = schema
    for part in path:
        if isinstance(part, int):  # a list item: the model was already taken from list[Model]
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return []
    return [k for name, f in model.model_fields.items() for k in (name, f.alias) if k]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model an annotation holds (itself, or inside Optional / list / tuple)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def validate(cls: type[C], raw: dict[str, Any], where: str, overrides: list[str] = ()) -> C:
    """`cls(**raw)`, with every validation problem reported at once on one line (`overrides`:
    the command line's `key=value` items, named when one of them holds an unknown key)."""
    try:
        return cls(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + "; ".join(validation_problems(exc, cls, list(overrides)))) from None


def load_config(cls: type[C], source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> C:
    """Read a YAML file (or take a dict), apply overrides, validate as `cls`."""
    raw = dict(source) if isinstance(source, dict) else read_yaml_mapping(source)
    raw = deep_update(raw, parse_overrides(overrides or []))
    return validate(cls, raw, "config" if isinstance(source, dict) else str(source), overrides or [])
