"""A merge plan: every source opened and checked against the reference, nothing read yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .config import ParameterResolver
from ..errors import TensorError
from ..io.sources import TensorSource
from ..methods import MergeMethod


@dataclass
class MergePlan:
    """Everything checked and opened, nothing read: the sources and per-tensor decisions."""

    method: MergeMethod
    base: TensorSource | None
    models: list[TensorSource]
    resolver: ParameterResolver
    names: list[str]
    out_dtypes: dict[str, torch.dtype]

    @property
    def sources(self) -> list[TensorSource]:
        return ([self.base] if self.base is not None else []) + self.models

    def close(self) -> None:
        for s in self.sources:
            s.close()


def plan_merge(
    method: MergeMethod,
    base: TensorSource | None,
    models: list[TensorSource],
    global_params: Mapping[str, Any],
    model_params: list[Mapping[str, Any]],
    num_layers: int | None,
    compute_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> MergePlan:
    """Check that every model has every tensor of the reference (base, else first model) with
    the same shape and dtype; decide each output dtype. Reads headers only."""
    ref = base if base is not None else models[0]
    names = ref.names()
    for src in ([base] if base is not None else []) + models:
        if src is ref:
            continue
        have = set(src.names())
        for name in names:
            if name not in have:
                raise TensorError(f"{name}: missing from model {src.label} (present in {ref.label})")
            shape, dtype = src.meta(name)
            ref_shape, ref_dtype = ref.meta(name)
            if shape != ref_shape:
                raise TensorError(f"{name}: model {src.label} has shape {shape}, {ref.label} has {ref_shape}")
            if dtype != ref_dtype and compute_dtype is None and dtype.is_floating_point:
                raise TensorError(
                    f"{name}: model {src.label} is {dtype}, {ref.label} is {ref_dtype}; set dtype: in the config to cast all inputs"
                )
    out_dtypes = {}
    for name in names:
        dtype = ref.meta(name)[1]
        out_dtypes[name] = (out_dtype or compute_dtype or dtype) if dtype.is_floating_point else dtype
    resolver = ParameterResolver(method, global_params, model_params, num_layers)
    return MergePlan(method, base, models, resolver, names, out_dtypes)
