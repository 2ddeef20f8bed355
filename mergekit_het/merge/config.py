"""mergekit's YAML merge configuration, validated up front.

Accepted keys (mergekit 0.1 schema): `merge_method`, `models` (each `model` + `parameters`),
`base_model`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source`, and `slices` where one
slice takes every source's full layer range (the common slerp form; it is the same as `models`).
Every problem found is reported at once, before any tensor is read; parameters are checked by
the binder (`binder.py`: names, placement, types, ranges, gradients and filters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError
from ..methods import MergeMethod, get_method
from ..runtime.device import DTYPES
from ..runtime.yaml_config import read_yaml_mapping
from .binder import check_parameters
TOP_LEVEL_KEYS = ("merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, Any] = {}


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int] | None = None
    parameters: dict[str, Any] = {}


class _Slice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[_Source]


class MergeConfig(BaseModel):
    """A merge as mergekit's YAML describes it (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    models: list[ModelEntry] = []
    slices: list[_Slice] | None = None
    base_model: str | None = None
    parameters: dict[str, Any] = {}
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None

    @property
    def method(self) -> MergeMethod:
        return get_method(self.merge_method)

    def inputs(self) -> list[ModelEntry]:
        """The models merged against the base: `models` without the base model itself
        (for methods that take a base; mergekit skips it there)."""
        if self.method.base == "none":
            return list(self.models)
        return [m for m in self.models if m.model != self.base_model]

    def torch_dtype(self, key: str = "dtype") -> torch.dtype | None:
        value = getattr(self, key)
        return None if value is None else DTYPES[value]


def load_merge_config(source: str | Path | Mapping[str, Any]) -> MergeConfig:
    """Parse and validate a mergekit YAML file (or an already-parsed mapping)."""
    where = "config"
    if not isinstance(source, Mapping):
        where = str(source)
        source = read_yaml_mapping(source)
    unknown = [k for k in source if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    try:
        cfg = MergeConfig(**source)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{where}: {'; '.join(problems)}") from None
    cfg = _slices_to_models(cfg, where)
    problems = validate(cfg)
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)}")
    return cfg


def _slices_to_models(cfg: MergeConfig, where: str) -> MergeConfig:
    if cfg.slices is None:
        return cfg
    if cfg.models:
        raise ConfigError(f"{where}: give either 'models' or 'slices', not both")
    if len(cfg.slices) != 1 or len({s.layer_range for s in cfg.slices[0].sources}) > 1 or any(
        s.layer_range is not None and s.layer_range[0] != 0 for s in cfg.slices[0].sources
    ):
        raise ConfigError(
            f"{where}: only one slice taking the same full layer range from every source is supported "
            "(layer stacking/frankenmerges are not); rewrite it as 'models'"
        )
    models = [ModelEntry(model=s.model, parameters=s.parameters) for s in cfg.slices[0].sources]
    return cfg.model_copy(update={"slices": None, "models": models})


def validate(cfg: MergeConfig) -> list[str]:
    """Every problem with the config, without touching the file system."""
    try:
        method = cfg.method
    except ConfigError as exc:
        return [str(exc)]
    problems: list[str] = []
    for key in ("dtype", "out_dtype"):
        value = getattr(cfg, key)
        if value is not None and value not in DTYPES:
            problems.append(f"{key} '{value}' is unknown; choose one of {', '.join(DTYPES)}")
    if cfg.tokenizer_source not in (None, "base") and cfg.tokenizer_source not in {m.model for m in cfg.models}:
        problems.append(
            f"tokenizer_source '{cfg.tokenizer_source}' must be 'base' or one of the models ('union' is not supported)"
        )
    if method.base == "required" and not cfg.base_model:
        problems.append(f"merge_method '{method.name}' needs base_model")
    if method.base == "none" and cfg.base_model and cfg.base_model not in {m.model for m in cfg.models}:
        problems.append(f"merge_method '{method.name}' takes no base_model; list '{cfg.base_model}' under models instead")
    inputs = cfg.inputs()
    if len(inputs) < method.min_models:
        problems.append(f"merge_method '{method.name}' needs at least {method.min_models} model(s) besides the base, got {len(inputs)}")
    if method.max_models is not None and len(inputs) > method.max_models:
        problems.append(f"merge_method '{method.name}' takes at most {method.max_models} model(s) besides the base, got {len(inputs)}")
    problems += _parameter_problems(cfg, method)
    return problems


def _parameter_problems(cfg: MergeConfig, method: MergeMethod) -> list[str]:
    """The binder's problems with the top-level and per-model parameters (a base listed under
    `models` is checked too, though it is not merged)."""
    inputs = cfg.inputs()
    labels = [f"models[{i}] ({e.model}).parameters" for i, e in enumerate(cfg.models)]
    merged = [(label, e.parameters) for label, e in zip(labels, cfg.models) if any(e is m for m in inputs)]
    skipped = [(label, e.parameters) for label, e in zip(labels, cfg.models) if not any(e is m for m in inputs)]
    problems, _ = check_parameters(method, cfg.parameters, [p for _, p in merged], model_labels=[label for label, _ in merged])
    if skipped:
        problems += check_parameters(method, {}, [p for _, p in skipped], model_labels=[label for label, _ in skipped], require=False)[0]
    return problems
