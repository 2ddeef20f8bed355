"""Binding parameters to a merge method's schema (its signature), and their per-tensor values.

One binder for every caller: YAML merge configs, `merge_state_dicts`, federated and continual
aggregation settings, evaluation sweeps. `bind_parameters` checks everything before any tensor
is read and raises one `ConfigError` listing every problem:
- a name the method does not take (with a did-you-mean when one is close);
- a global parameter given per model (per-model ones may be given globally: they apply to all);
- a value of the wrong type, NaN or ±Inf, or outside the range that has a meaning (a `Bounds`
  in the signature, e.g. density ≤ 0);
- a required parameter with no value.
A value mergekit 0.1.5 accepts although it is a no-op or an extrapolation (TIES density 1.5,
slerp t = 5) is accepted with one `ParameterWarning` naming the parameter.

Values follow mergekit: a scalar; a list of numbers = a *gradient* interpolated over layer depth
t ∈ [0, 1] (non-layer tensors take t = 0, i.e. the first value); a list of `{filter, value}`
where the first entry whose filter is empty, "*" or a substring of the tensor name gives the
value. Precedence: the model's own value, then the global one, then the method's default.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..methods import MergeMethod, Param, get_method


class ParameterWarning(UserWarning):
    """A parameter value mergekit accepts but that does nothing or extrapolates."""


@dataclass(frozen=True)
class Binding:
    """A method's parameters, checked: `for_tensor(name)` gives the function's keywords.
    `fallback_specs` is a lower level of global settings (a slice's `global_specs` fall back to
    the top-level `parameters`: mergekit's source > slice > top level > default)."""

    method: MergeMethod
    global_specs: Mapping[str, Any]
    model_specs: Sequence[Mapping[str, Any]]
    num_layers: int | None = None
    fallback_specs: Mapping[str, Any] | None = None

    def for_tensor(self, name: str, t: float | None = None, source_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Keyword arguments (Python names: `lambda_`) for tensor `name`: per-model parameters as
        one value per model, globals as one value (model → global → fallback → default). `t` is
        the layer position (default: from `name` and `num_layers`); `source_names` the tensor's
        name in each model, which per-model filters match (mergekit: shared parameters see the
        output name, per-input ones their input's own name; they differ when slices renumber)."""
        t = layer_position(name, self.num_layers) if t is None else t
        names = list(source_names) if source_names is not None else [name] * len(self.model_specs)
        out: dict[str, Any] = {}
        for key, p in self.method.params.items():
            if p.per_model:
                out[p.kwarg] = [self._value(p, own_name, t, specs) for own_name, specs in zip(names, self.model_specs)]
            else:
                out[p.kwarg] = self._value(p, name, t, {})
        return out

    def _value(self, p: Param, name: str, t: float, own: Mapping[str, Any]) -> Any:
        for specs in (own, self.global_specs, self.fallback_specs or {}):
            if p.name in specs:
                value = evaluate(specs[p.name], name, t)
                if value is not None:
                    return value
        if p.required:
            raise ConfigError(f"parameter '{p.name}' has no value for tensor {name}")
        return p.default


def bind_parameters(
    method: str | MergeMethod,
    global_params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] = (),
    where: str = "parameters",
    *,
    model_labels: Sequence[str] | None = None,
    num_layers: int | None = None,
    require: bool = True,
    fallback: Mapping[str, Any] | None = None,
) -> Binding:
    """Check `global_params` and each model's `model_params` against `method`'s schema; raise one
    `ConfigError` ("`where`: problem; problem") listing every problem, warn once per odd
    parameter, and return the `Binding`. `model_labels` name each model's dict in messages
    (default `model_parameters[i]`); `require=False` skips the check that required parameters
    have values (for a caller that supplies some itself, e.g. FedAvg's weights). `fallback`:
    global settings of a lower level (`Binding.fallback_specs`), checked where they came from."""
    method = get_method(method) if isinstance(method, str) else method
    global_params, model_params = dict(global_params or {}), [dict(m) for m in model_params]
    problems, odd = check_parameters(method, global_params, model_params, model_labels=model_labels, require=require)
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)}")
    warn_odd(odd, where)
    return Binding(method, global_params, model_params, num_layers, dict(fallback) if fallback else None)


def warn_odd(odd: list[str], where: str) -> None:
    for message in odd:
        warnings.warn(f"{where}: {message}", ParameterWarning, stacklevel=3)


def check_parameters(
    method: MergeMethod,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
    *,
    model_labels: Sequence[str] | None = None,
    require: bool = True,
    global_label: str = "parameters",
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of binding these parameters, without raising: every problem of the
    docstring of this module, and one warning per parameter with an odd value."""
    labels = list(model_labels or [f"model_parameters[{i}]" for i in range(len(model_params))])
    problems, odd = _check_dict(method, global_params, global_label, per_model_only=False)
    for label, given in zip(labels, model_params):
        more, more_odd = _check_dict(method, given, label, per_model_only=True)
        problems += more
        odd += more_odd
    if require:
        for name, p in method.per_model_params.items():
            missing = [label for label, given in zip(labels, model_params) if p.required and name not in global_params and name not in given]
            if missing:
                problems.append(f"parameter '{name}' is required for every model; missing for {', '.join(missing)}")
        for name, p in method.global_params.items():
            if p.required and name not in global_params:
                problems.append(f"parameter '{name}' is required by merge_method '{method.name}'")
    once: dict[str, str] = {}  # one warning per parameter, the first place it is odd
    for key, message in odd:
        once.setdefault(key, message)
    return problems, list(once.values())


def _check_dict(method: MergeMethod, given: Mapping[str, Any], label: str, per_model_only: bool
                ) -> tuple[list[str], list[tuple[str, str]]]:  # fmt: skip
    """(problems, [(parameter, warning)]) of one dict of parameters (the global one or a model's)."""
    problems: list[str] = []
    odd: list[tuple[str, str]] = []
    for key, spec in given.items():
        param = method.params.get(key)
        if param is None:
            close = difflib.get_close_matches(str(key), method.params, n=1, cutoff=0.7)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            allowed = ", ".join(method.params) or "none"
            problems.append(f"{label}: '{key}' is not a parameter of {method.name}{hint} (it takes {allowed})")
        elif per_model_only and not param.per_model:
            problems.append(f"{label}: '{key}' is a global parameter of {method.name}; set it in the top-level parameters")
        else:
            bad, warn = _check_value(param, spec)
            problems += [f"{label}.{key}: {p}" for p in bad]
            odd += [(key, f"{label}.{key}: {w}") for w in warn]
    return problems, odd


def _is_conditional(spec: Any) -> bool:
    return isinstance(spec, list) and bool(spec) and all(isinstance(x, Mapping) for x in spec)


def _leaf_values(spec: Any) -> list[Any]:
    if _is_conditional(spec):
        return [v for item in spec for v in _leaf_values(item.get("value"))]
    if isinstance(spec, list):
        return list(spec)
    return [spec]


def _excerpt(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(param: Param, spec: Any) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one parameter's value spec: its shape, then each leaf value's type
    and range (the first problem found; one warning for the first odd value)."""
    if _is_conditional(spec):
        if any(set(x) - {"filter", "value"} or "value" not in x for x in spec):
            return ["each conditional entry needs 'value' and at most 'filter'"], []
    kind, warned = param.kind, []
    for v in _leaf_values(spec):
        if v is None:
            continue
        if typing.get_origin(kind) is typing.Literal:
            if v not in typing.get_args(kind):
                return [f"{_excerpt(v)} is not one of {', '.join(map(repr, typing.get_args(kind)))}"], []
        elif kind is bool:
            if not isinstance(v, bool):
                return [f"expected true/false, got {_excerpt(v)}"], []
        elif kind in (float, int):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return [f"expected a number, got {_excerpt(v)}"], []
            if not math.isfinite(v):
                return [f"{v} is not a finite number"], []
            bounds = param.bounds
            if bounds is not None and bounds.refuses(v):
                return [f"{v} is out of range: {bounds.why}"], []
            if bounds is not None and bounds.warns(v) and not warned:
                warned.append(f"{v} is accepted (as mergekit does), but {bounds.warn_why}")
    return [], warned


# ---- per-tensor values ------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_position(tensor_name: str, num_layers: int | None) -> float:
    """mergekit's t: layer i of n gets i/(n−1) (1 if n == 1); non-layer tensors get 0."""
    m = _LAYER.search(tensor_name)
    if m is None or not num_layers:
        return 0.0
    return 1.0 if num_layers == 1 else int(m.group(1)) / (num_layers - 1)


def evaluate(spec: Any, tensor_name: str, t: float) -> Any:
    """Value of a parameter spec for one tensor at layer position t (None falls through)."""
    if _is_conditional(spec):
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
