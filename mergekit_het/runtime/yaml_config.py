"""YAML configs for every runner: read a mapping, apply `key.sub=value` overrides, validate.

Each runner's schema is a pydantic model with `extra="forbid"`; `load_config` reports every
problem at once, on one line, naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

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


def validation_problems(exc: ValidationError) -> list[str]:
    """One `loc: message (got value)` string per pydantic error (the input is shown where the
    message does not already say what was wrong with it)."""
    msgs = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {excerpt(err['input'])})" if err["type"] not in ("missing", "value_error", "extra_forbidden") else ""
        msgs.append(f"{loc}: {msg}{got}" if loc else msg)
    return msgs


def validate(cls: type[C], raw: dict[str, Any], where: str) -> C:
    """`cls(**raw)`, with every validation problem reported at once on one line."""
    try:
        return cls(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + "; ".join(validation_problems(exc))) from None


def load_config(cls: type[C], source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> C:
    """Read a YAML file (or take a dict), apply overrides, validate as `cls`."""
    raw = dict(source) if isinstance(source, dict) else read_yaml_mapping(source)
    raw = deep_update(raw, parse_overrides(overrides or []))
    return validate(cls, raw, "config" if isinstance(source, dict) else str(source))
