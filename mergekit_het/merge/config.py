"""mergekit's YAML merge configuration, validated up front.

Accepted keys (mergekit 0.1 schema): `merge_method`, `models` (each `model` + `parameters`),
`base_model`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source`, and `slices`: output
slices, each a list of `sources` (`model`, `layer_range` [start, end), `parameters`) with its own
`base_model` and `parameters` (mergekit's `residual_weight` is accepted and ignored, as there)
and, beyond mergekit, its own `merge_method`. Every problem found is reported at once, before
any tensor is read: unknown keys (did-you-mean when close), wrong types, methods, parameters
(through the binder, `binder.py`: names, placement, types, ranges), slice shapes, and, for a
config file, model paths that do not exist; each names where it is (`models[1].parameters`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Mapping

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from ..errors import ConfigError
from ..io.resolve import check_reference
from ..methods import METHODS, MergeMethod, get_method
from ..runtime.device import DTYPES
from ..runtime.yaml_config import read_yaml_mapping
from .binder import check_parameters
from .tokenizer import TokenizerConfig, tokenizer_problems
Parameters = Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)]
"""A `parameters:` mapping; an empty one (`parameters:` with nothing after it, null) is {} as in mergekit."""
TOP_LEVEL_KEYS = ("merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source",
                  "tokenizer", "chat_template")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: Parameters = {}


class SliceSource(BaseModel):
    """One source of an output slice: layers [start, end) of `model` (None: all of them)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int] | None = None
    parameters: Parameters = {}


class OutputSlice(BaseModel):
    """One output slice: its sources' layers merged layer by layer, stacked after the previous slice."""

    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource]
    base_model: str | None = None
    parameters: Parameters = {}
    merge_method: str | None = None  # our extension; mergekit 0.1.5 has one method per merge
    residual_weight: float | None = None  # accepted and ignored, as in mergekit 0.1.5


class MergeConfig(BaseModel):
    """A merge as mergekit's YAML describes it (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    models: list[ModelEntry] = []
    slices: list[OutputSlice] | None = None
    base_model: str | None = None
    parameters: Parameters = {}
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerConfig | None = None
    chat_template: str | None = None

    @property
    def method(self) -> MergeMethod:
        return get_method(self.merge_method)

    def inputs(self) -> list[ModelEntry]:
        """The models merged against the base: `models` without the base model itself
        (for methods that take a base; mergekit skips it there)."""
        return merged_models(self, self.method)

    def referenced_models(self) -> list[str]:
        """Every model the config names, in order of appearance, each once."""
        refs = [m.model for m in self.models] + [s.model for sl in self.slices or [] for s in sl.sources]
        refs += [r for r in [self.base_model, *(sl.base_model for sl in self.slices or [])] if r]
        return list(dict.fromkeys(refs))

    def slice_method(self, index: int) -> MergeMethod:
        """The method of output slice `index` (its own `merge_method`, else the config's)."""
        return get_method(self.slices[index].merge_method or self.merge_method)

    def slice_base(self, index: int) -> str | None:
        """The base model of output slice `index` (its own, else the config's)."""
        return self.slices[index].base_model or self.base_model

    def torch_dtype(self, key: str = "dtype") -> torch.dtype | None:
        value = getattr(self, key)
        return None if value is None else DTYPES[value]


def merged_models(cfg: MergeConfig, method: MergeMethod) -> list[ModelEntry]:
    """`cfg.models` without the base model if `method` takes one (`MergeConfig.inputs`)."""
    if method.base == "none":
        return list(cfg.models)
    return [m for m in cfg.models if m.model != cfg.base_model]


def load_merge_config(source: str | Path | Mapping[str, Any], *, check_paths: bool | None = None) -> MergeConfig:
    """Parse and validate a mergekit YAML file (or an already-parsed mapping); one `ConfigError`
    lists every problem. `check_paths` (default: when `source` is a file) also reports model
    references that are neither existing paths nor Hub ids."""
    where = "config"
    if not isinstance(source, Mapping):
        where = str(source)
        source = read_yaml_mapping(source)
        check_paths = True if check_paths is None else check_paths
    data = dict(source)
    problems = []
    for key in [k for k in data if k not in TOP_LEVEL_KEYS]:
        close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1, cutoff=0.7)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(TOP_LEVEL_KEYS)}"
        problems.append(f"unknown key {key!r}{hint}")
        del data[key]
    cfg, more = _schema_checked(data)
    problems += more
    if cfg is not None:
        problems += validate(cfg)
        if check_paths:
            problems += _path_problems(cfg)
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)}")
    return cfg


def _schema_checked(data: dict[str, Any]) -> tuple[MergeConfig | None, list[str]]:
    """The config built from `data`, and the schema's problems: each bad entry is reported and
    dropped, and the rest validated again (so one run reports them all); None if it cannot be built."""
    problems: list[str] = []
    for _ in range(20):
        try:
            return MergeConfig(**data), problems
        except ValidationError as exc:
            errors = exc.errors()
        problems += [f"{_location(e['loc'])}: {e['msg']}" for e in errors]
        if not all(_drop(data, e["loc"]) for e in errors):
            return None, problems
    return None, problems


def _location(loc: tuple) -> str:
    """('models', 1, 'parameters') -> 'models[1].parameters'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _drop(data: Any, loc: tuple) -> bool:
    """Remove the entry at `loc` (its innermost key or list item); False if there is none, or
    it is required (a problem that cannot be dropped)."""
    *path, last = loc
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(data, dict) and last in data and last != "merge_method":
        del data[last]
        return True
    return False


def _path_problems(cfg: MergeConfig) -> list[str]:
    """Each reference that is neither a path nor a Hub id, named where it first appears."""
    places = [("base_model", cfg.base_model)] + [(f"models[{i}].model", m.model) for i, m in enumerate(cfg.models)]
    for i, sl in enumerate(cfg.slices or []):
        places += [(f"slices[{i}].base_model", sl.base_model)]
        places += [(f"slices[{i}].sources[{j}].model", s.model) for j, s in enumerate(sl.sources)]
    problems, seen = [], set()
    for where, ref in places:
        if ref is None or ref in seen:
            continue
        seen.add(ref)
        try:
            check_reference(ref)
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def validate(cfg: MergeConfig) -> list[str]:
    """Every problem with the config, without touching the file system."""
    problems: list[str] = []
    method = _method(cfg.merge_method, "merge_method", problems)
    for key in ("dtype", "out_dtype"):
        value = getattr(cfg, key)
        if value is not None and value not in DTYPES:
            problems.append(f"{key} '{value}' is unknown; choose one of {', '.join(DTYPES)}")
    problems += tokenizer_problems(cfg)
    if cfg.slices is not None:
        if cfg.models:
            problems.append("give either 'models' or 'slices', not both")
        return problems + _slice_problems(cfg, method)
    if method is None:
        return problems
    if method.base == "required" and not cfg.base_model:
        problems.append(f"merge_method '{method.name}' needs base_model")
    if method.base == "none" and cfg.base_model and cfg.base_model not in {m.model for m in cfg.models}:
        problems.append(f"merge_method '{method.name}' takes no base_model; list '{cfg.base_model}' under models instead")
    problems += _count_problems(method, len(merged_models(cfg, method)), "")
    problems += _parameter_problems(cfg, method)
    return problems


def _method(name: str, where: str, problems: list[str]) -> MergeMethod | None:
    """The method `name`; if unknown, its problem is added and the closest method (if one is
    close) returned, so that the parameters are still checked in the same run."""
    try:
        return get_method(name)
    except ConfigError as exc:
        problems.append(str(exc) if where == "merge_method" else f"{where}: {exc}")
    close = difflib.get_close_matches(name, list(METHODS), n=1, cutoff=0.7)
    return get_method(close[0]) if close else None


def _count_problems(method: MergeMethod, n: int, where: str) -> list[str]:
    if n < method.min_models:
        return [f"{where}merge_method '{method.name}' needs at least {method.min_models} model(s) besides the base, got {n}"]
    if method.max_models is not None and n > method.max_models:
        return [f"{where}merge_method '{method.name}' takes at most {method.max_models} model(s) besides the base, got {n}"]
    return []


def _slice_problems(cfg: MergeConfig, top: MergeMethod | None) -> list[str]:
    """Each output slice: its method, sources, layer ranges (equal lengths), base among its
    sources (mergekit never adds it there), model count and parameters (source > slice > top
    level; the top-level ones checked once, against the config's method)."""
    problems = check_parameters(top, cfg.parameters, [], require=False)[0] if top else []
    if not cfg.slices:
        problems.append("slices: empty; give at least one output slice")
    for i, sl in enumerate(cfg.slices or []):
        where = f"slices[{i}]"
        method = _method(sl.merge_method, f"{where}.merge_method", problems) if sl.merge_method else top
        if not sl.sources:
            problems.append(f"{where}.sources: empty; give at least one source")
        for j, src in enumerate(sl.sources):
            if src.layer_range is not None and not 0 <= src.layer_range[0] < src.layer_range[1]:
                problems.append(f"{where}.sources[{j}].layer_range {list(src.layer_range)}: needs 0 <= start < end")
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources if s.layer_range is not None}
        if len(lengths) > 1:
            problems.append(f"{where}: all sources of a slice must take the same number of layers (got {sorted(lengths)})")
        if method is None:
            continue
        base = cfg.slice_base(i) if method.base != "none" else None
        if method.base == "required" and not base:
            problems.append(f"{where}: merge_method '{method.name}' needs base_model")
        if base and base not in {s.model for s in sl.sources}:
            problems.append(f"{where}: base_model '{base}' is not one of the slice's sources (list it there with its layer_range)")
        merged = [(j, s) for j, s in enumerate(sl.sources) if s.model != base]
        problems += _count_problems(method, len(merged), f"{where}: ")
        problems += _slice_parameter_problems(cfg, method, i, merged)
    return problems


def _slice_parameter_problems(cfg: MergeConfig, method: MergeMethod, i: int, merged: list) -> list[str]:
    """Slice `i`'s parameters and its sources', and the required ones present at some level
    (the top-level ones `method` takes count)."""
    sl = cfg.slices[i]
    top = {k: v for k, v in cfg.parameters.items() if k in method.params}
    labels = [f"slices[{i}].sources[{j}] ({s.model}).parameters" for j, s in merged]
    problems = check_parameters(method, sl.parameters, [s.parameters for _, s in merged], model_labels=labels,
                                require=False, global_label=f"slices[{i}].parameters")[0]  # fmt: skip
    base = [(j, s) for j, s in enumerate(sl.sources) if all(s is not t for _, t in merged)]
    problems += check_parameters(method, {}, [s.parameters for _, s in base], require=False,
                                 model_labels=[f"slices[{i}].sources[{j}] ({s.model}).parameters" for j, s in base])[0]  # fmt: skip
    for name, p in method.params.items():
        if not p.required or name in sl.parameters or name in top:
            continue
        missing = [label for label, (_, s) in zip(labels, merged) if not p.per_model or name not in s.parameters]
        if missing:
            problems.append(f"slices[{i}]: parameter '{name}' of {method.name} has no value for {', '.join(missing)}")
    return problems


def _parameter_problems(cfg: MergeConfig, method: MergeMethod) -> list[str]:
    """The binder's problems with the top-level and per-model parameters (a base listed under
    `models` is checked too, though it is not merged)."""
    inputs = merged_models(cfg, method)
    labels = [f"models[{i}] ({e.model}).parameters" for i, e in enumerate(cfg.models)]
    merged = [(label, e.parameters) for label, e in zip(labels, cfg.models) if any(e is m for m in inputs)]
    skipped = [(label, e.parameters) for label, e in zip(labels, cfg.models) if not any(e is m for m in inputs)]
    problems, _ = check_parameters(method, cfg.parameters, [p for _, p in merged], model_labels=[label for label, _ in merged])
    if skipped:
        problems += check_parameters(method, {}, [p for _, p in skipped], model_labels=[label for label, _ in skipped], require=False)[0]
    return problems
