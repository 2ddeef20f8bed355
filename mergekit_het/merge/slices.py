"""mergekit's `slices:`: output layers stacked from layer ranges of the sources (frankenmerges).

Planning follows mergekit 0.1.5 (`plan.py`: `plan_module`, `plan_slice`): the tensors before the
layers (embeddings) are merged from the first slice's sources with its base and parameters at
t = 0; then each slice, in order, adds L = end − start output layers, renumbered densely (output
layer k of the merge is layer `start + j` of each source, j = k − the slice's first output
layer), its parameters evaluated at the position t = j / (L − 1) within the slice (t = 1 for a
one-layer slice); the tensors after the layers (final norm, lm_head, pooler) come from the last
slice's sources at t = 0. Which tensors are layers is the architecture's layer table
(`architectures.py`). Each output tensor is one `TensorPlan` reading one tensor of each of its
slice's sources, so memory stays one tensor group whatever the number of layers.

A config of one slice whose sources all take every layer, with no slice-level base, parameters
or method, is a `models:` merge (`as_models`): it merges any architecture, table or not.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ConfigError, TensorError
from ..io.paths import read_member_json
from ..io.resolve import open_model
from ..io.sources import TensorSource
from ..methods import MergeMethod
from .architectures import Family, TensorRole, family_of, role
from .binder import Binding, bind_parameters
from .config import MergeConfig, ModelEntry, SliceSource
from .plan import MergeOptions, MergePlan, TensorPlan, default_chunk, plan_tensor
from .side_files import model_dir, num_layers_of


def as_models(cfg: MergeConfig) -> MergeConfig:
    """`cfg` as a `models:` config when its slices say no more than one (see the module
    docstring); else `cfg` itself."""
    if cfg.slices is None or len(cfg.slices) != 1:
        return cfg
    sl = cfg.slices[0]
    if sl.base_model or sl.parameters or sl.merge_method:
        return cfg
    if any(s.layer_range is not None and tuple(s.layer_range) != (0, num_layers_of(s.model)) for s in sl.sources):
        return cfg
    models = [ModelEntry(model=s.model, parameters=s.parameters) for s in sl.sources]
    return cfg.model_copy(update={"slices": None, "models": models})


@dataclass
class _Model:
    """One opened source model: its tensors' roles and its layers' tensor names."""

    source: TensorSource
    family: Family
    roles: dict[str, TensorRole]
    layers: int

    @classmethod
    def open(cls, ref: str, base: str | None, allow_pickle: bool) -> "_Model":
        source = open_model(ref, base=base, allow_pickle=allow_pickle)
        try:
            family = family_of(model_dir(ref), ref)
            roles = {name: role(family, name, ref) for name in source.names()}
        except BaseException:
            source.close()
            raise
        layers = 1 + max((r.index for r in roles.values() if r.kind == "layer"), default=-1)
        return cls(source, family, roles, layers)


@contextmanager
def opened_models(cfg: MergeConfig, allow_pickle: bool) -> Iterator[dict[str, _Model]]:
    """Every model of the slices, opened once (headers only); closed on exit."""
    models: dict[str, _Model] = {}
    try:
        for ref in cfg.referenced_models():
            models[ref] = _Model.open(ref, cfg.base_model, allow_pickle)
        yield models
    finally:
        for m in models.values():
            m.source.close()


@dataclass
class _Slice:
    """One output slice, resolved: its method, binding and sources (base first if it takes one)."""

    method: MergeMethod
    binding: Binding
    sources: list[tuple[_Model, int]]  # (model, first source layer)
    has_base: bool
    length: int


def _resolve(cfg: MergeConfig, models: dict[str, _Model]) -> list[_Slice]:
    """Each slice's sources with their ranges checked against the models, and its parameters bound."""
    out = []
    for i, sl in enumerate(cfg.slices):
        method = cfg.slice_method(i)
        if method.passes or method.statistics:
            raise ConfigError(f"slices[{i}]: merge_method '{method.name}' reads whole models (passes or statistics); "
                              "it cannot be used with slices")  # fmt: skip
        base = cfg.slice_base(i) if method.base != "none" else None
        ordered = sorted(enumerate(sl.sources), key=lambda js: js[1].model != base)  # the base first (stable)
        ranges = [(j, s, _range(s, models[s.model], i, j)) for j, s in ordered]
        lengths = {b - a for _, _, (a, b) in ranges}
        if len(lengths) != 1:
            raise ConfigError(f"slices[{i}]: all sources of a slice must take the same number of layers (got {sorted(lengths)})")
        merged = [(j, s) for j, s, _ in ranges if s.model != base]
        top = {k: v for k, v in cfg.parameters.items() if k in method.params}
        binding = bind_parameters(method, sl.parameters, [s.parameters for _, s in merged], f"slices[{i}]",
                                  model_labels=[f"slices[{i}].sources[{j}] ({s.model}).parameters" for j, s in merged],
                                  require=False, fallback=top)  # fmt: skip
        sources = [(models[s.model], a) for _, s, (a, _) in ranges]
        out.append(_Slice(method, binding, sources, base is not None, lengths.pop()))
    return out


def _range(src: SliceSource, model: _Model, i: int, j: int) -> tuple[int, int]:
    start, end = src.layer_range if src.layer_range is not None else (0, model.layers)
    if end > model.layers:
        raise ConfigError(f"slices[{i}].sources[{j}].layer_range [{start}, {end}]: {src.model} has {model.layers} layers")
    return start, end


def plan_slices(cfg: MergeConfig, models: dict[str, _Model], options: MergeOptions, device: torch.device) -> tuple[MergePlan, int]:
    """The plan of a `slices:` merge (see the module docstring) and its number of output layers."""
    slices = _resolve(cfg, models)
    compute, out_dtype = cfg.torch_dtype("dtype"), cfg.torch_dtype("out_dtype")
    chunk = options.chunk_size or default_chunk(device)
    tensors: list[TensorPlan] = []

    def add(sl: _Slice, out_name: str, names: list[str], t: float) -> None:
        for (m, _), n in zip(sl.sources, names):
            if n not in m.roles:
                raise TensorError(f"{n}: missing from model {m.source.label} (needed for output tensor {out_name})")
        reads = tuple((m.source, n) for (m, _), n in zip(sl.sources, names))
        shape, dtype = _checked_meta(reads, compute)
        kwargs = sl.binding.for_tensor(out_name, t, names[1:] if sl.has_base else names)
        out = (out_dtype or compute or dtype) if dtype.is_floating_point else dtype
        tensors.append(plan_tensor(sl.method, out_name, shape, dtype, out, reads, kwargs, options, device, chunk, sl.has_base))

    first, last = slices[0].sources[0][0], slices[-1].sources[0][0]
    for name, r in first.roles.items():
        if r.kind == "pre":
            add(slices[0], name, [name] * len(slices[0].sources), 0.0)
    counter = 0
    for sl in slices:
        ref, ref_start = sl.sources[0]
        for j in range(sl.length):
            t = j / (sl.length - 1) if sl.length > 1 else 1.0
            for r in (r for n, r in ref.roles.items() if r.kind == "layer" and r.index == ref_start + j):
                add(sl, r.at(counter), [r.at(start + j) for _, start in sl.sources], t)
            counter += 1
    for name, r in last.roles.items():
        if r.kind == "post":
            add(slices[-1], name, [name] * len(slices[-1].sources), 0.0)
    sources = list(dict.fromkeys(m.source for sl in slices for m, _ in sl.sources))
    return MergePlan(cfg.method, None, sources, tensors, input_dtype=compute), counter


def _checked_meta(reads: tuple, compute: torch.dtype | None) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of the first read; every other read must have that shape (and dtype,
    unless `dtype:` casts them all)."""
    (ref, ref_name), *rest = reads
    shape, dtype = ref.meta(ref_name)
    for src, name in rest:
        other_shape, other_dtype = src.meta(name)
        if other_shape != shape:
            raise TensorError(f"{name}: model {src.label} has shape {other_shape}, {ref.label}'s {ref_name} has {shape}")
        if other_dtype != dtype and compute is None and dtype.is_floating_point:
            raise TensorError(f"{name}: model {src.label} is {other_dtype}, {ref.label} is {dtype}; "
                              "set dtype: in the config to cast all inputs")  # fmt: skip
    return shape, dtype


def set_layer_count(folder: Path, donor: str, layers: int) -> None:
    """Write the output's layer count into its config.json (under the donor family's key)."""
    cfg = read_member_json(folder, "config.json")
    if cfg is None:
        return
    key = family_of(model_dir(donor), donor).layers_key
    target = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) and key in cfg["text_config"] else cfg
    target[key] = layers
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def donor_of(cfg: MergeConfig) -> str:
    """The model whose config and tokenizer the output takes: the base model, else the first
    slice's first source (mergekit 0.1.5 picks one in hash order; we pick a fixed one)."""
    return cfg.base_model or cfg.slices[0].sources[0].model

