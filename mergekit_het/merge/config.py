"""mergekit's YAML merge configuration, validated up front, and per-tensor parameter values.

Accepted keys (mergekit 0.1 schema): `merge_method`, `models` (each `model` + `parameters`),
`base_model`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source`, and `slices` where one
slice takes every source's full layer range (the common slerp form; it is the same as `models`).
Every problem found is reported at once, before any tensor is read.

Parameter values follow mergekit: a scalar; a list of numbers = a *gradient* interpolated over
layer depth t ∈ [0, 1] (non-layer tensors take t = 0, i.e. the first value); a list of
`{filter, value}` where the first entry whose filter is empty, "*" or a substring of the tensor
name gives the value. Lookup order: the model's own `parameters`, then the top-level
`parameters`, then the method's default.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Mapping

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError
from ..methods import MergeMethod, Param, get_method
from ..runtime.yaml_config import read_yaml_mapping

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64,
}  # fmt: skip
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
    problems += _check_params(method, cfg.parameters, "parameters", per_model_only=False)
    for i, entry in enumerate(cfg.models):
        problems += _check_params(method, entry.parameters, f"models[{i}] ({entry.model}).parameters", per_model_only=True)
    for name, p in method.per_model_params.items():
        if p.required and name not in cfg.parameters:
            missing = [e.model for e in inputs if name not in e.parameters]
            if missing:
                problems.append(f"parameter '{name}' is required for every model; missing for {', '.join(missing)}")
    for name, p in method.global_params.items():
        if p.required and name not in cfg.parameters:
            problems.append(f"parameter '{name}' is required by merge_method '{method.name}'")
    return problems


def _check_params(method: MergeMethod, given: Mapping[str, Any], where: str, per_model_only: bool) -> list[str]:
    problems = []
    for key, spec in given.items():
        param = method.params.get(key)
        if param is None:
            allowed = ", ".join(method.params) or "none"
            problems.append(f"{where}: '{key}' is not a parameter of {method.name} (it takes {allowed})")
        elif per_model_only and not param.per_model:
            problems.append(f"{where}: '{key}' is a global parameter of {method.name}; set it in the top-level parameters")
        else:
            problems += [f"{where}.{key}: {p}" for p in _check_value(param, spec)]
    return problems


def _leaf_values(spec: Any) -> list[Any]:
    if isinstance(spec, list) and spec and all(isinstance(x, Mapping) for x in spec):
        return [v for item in spec for v in _leaf_values(item.get("value"))]
    if isinstance(spec, list):
        return list(spec)
    return [spec]


def _check_value(param: Param, spec: Any) -> list[str]:
    if isinstance(spec, list) and spec and all(isinstance(x, Mapping) for x in spec):
        bad = [set(x) - {"filter", "value"} for x in spec if set(x) - {"filter", "value"} or "value" not in x]
        if bad:
            return ["each conditional entry needs 'value' and at most 'filter'"]
    hint = param.annotation
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    for v in _leaf_values(spec):
        if v is None:
            continue
        if typing.get_origin(base) is typing.Literal:
            if v not in typing.get_args(base):
                return [f"{v!r} is not one of {', '.join(map(repr, typing.get_args(base)))}"]
        elif base is bool:
            if not isinstance(v, bool):
                return [f"expected true/false, got {v!r}"]
        elif base in (float, int) and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return [f"expected a number, got {v!r}"]
    return []


# ---- per-tensor resolution -------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_position(tensor_name: str, num_layers: int | None) -> float:
    """mergekit's t: layer i of n gets i/(n−1) (1 if n == 1); non-layer tensors get 0."""
    m = _LAYER.search(tensor_name)
    if m is None or not num_layers:
        return 0.0
    return 1.0 if num_layers == 1 else int(m.group(1)) / (num_layers - 1)


def evaluate(spec: Any, tensor_name: str, t: float) -> Any:
    """Value of a parameter spec for one tensor at layer position t (None falls through)."""
    if isinstance(spec, list) and spec and all(isinstance(x, Mapping) for x in spec):
        for cond in spec:
            f = cond.get("filter")
            if f in (None, "", "*") or f in tensor_name:
                return evaluate(cond["value"], tensor_name, t)
        return None
    if isinstance(spec, list):
        if not spec:
            return None
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in spec):
            scaled = t * (len(spec) - 1)
            i0 = int(scaled)
            i1 = min(len(spec) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * spec[i0] + frac * spec[i1]
        return spec[int(t * (len(spec) - 1))]
    return spec


class ParameterResolver:
    """Per-tensor parameter values for a method, from global and per-model specs."""

    def __init__(self, method: MergeMethod, global_specs: Mapping[str, Any], model_specs: list[Mapping[str, Any]], num_layers: int | None):
        self.method = method
        self.global_specs = dict(global_specs)
        self.model_specs = [dict(s) for s in model_specs]
        self.num_layers = num_layers

    def for_tensor(self, name: str) -> dict[str, Any]:
        t = layer_position(name, self.num_layers)
        out: dict[str, Any] = {}
        for key, p in self.method.params.items():
            if p.per_model:
                out[key] = [self._value(key, p, name, t, specs) for specs in self.model_specs]
            else:
                out[key] = self._value(key, p, name, t, {})
        return out

    def _value(self, key: str, p: Param, name: str, t: float, own: Mapping[str, Any]) -> Any:
        for specs in (own, self.global_specs):
            if key in specs:
                value = evaluate(specs[key], name, t)
                if value is not None:
                    return value
        if p.required:
            raise ConfigError(f"parameter '{key}' has no value for tensor {name}")
        return p.default
