"""A merge plan: every per-tensor decision, made before any tensor is read.

`plan_merge` checks every source against the reference (base, else first model: same names,
shapes, dtypes) and decides, for each output tensor, in one `TensorPlan`: which tensor of which
source it reads (`reads`; one name per source today, the layer ranges of mergekit's `slices`
tomorrow), its output dtype, the method's keywords for it (the bound parameters at its layer
depth), and its chunked form (whole, or flat chunks with the method's statistics pass and
whether the chunks are kept between passes). The engine only executes these decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import ConfigError, TensorError
from ..io.statistics import model_statistics, stats_key
from ..io.sources import TensorSource
from ..methods import MergeMethod
from ..methods.registry import Prepare, reads_chunks
from .binder import Binding

NanPolicy = Literal["error", "warn", "ignore"]
Arithmetic = Literal["float32", "config-dtype"]


@dataclass
class MergeOptions:
    """How to run a merge (not what to merge: that is the `MergeConfig`)."""

    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    prefetch: int = 1  # pieces read ahead, one reader thread each (on an H100, 1 was as fast as 4 and held 0.26 GiB less)
    max_shard_size: str | int = "5GB"
    overwrite: bool = False
    allow_pickle: bool = False
    nan_policy: NanPolicy = "error"
    seed: int = 0
    copy_tokenizer: bool = True
    unsafe_truncate_embeddings: bool = False  # token-indexed tensors of differing sizes: keep the first rows (else an error)
    write_card: bool = True  # README.md and mergekit_config.yml beside the shards
    arithmetic: Arithmetic = "float32"  # float32, or the config's dtype as mergekit 0.1.5 computes (bit-exact with it)
    progress: bool = True
    chunk_size: int | None = None  # elements per chunk of large tensors (None: default_chunk)
    cache_bytes: int = 128 * 2**20  # a chunked tensor group up to this size is read once per merge


def default_chunk(device: torch.device) -> int:
    """Elements per chunk: on a CPU 2^19 per compute thread (2 MiB of float32 each, so the
    arithmetic stays in cache; 1Mi on 2 cores) up to 4Mi (8 cores; on 16, 8Mi chunks were no
    faster and held 0.3 GiB more for 4x62M TIES), on a GPU 16Mi (64 MiB of float32)."""
    return 1 << 24 if device.type == "cuda" else min(1 << 22, (1 << 19) * max(1, torch.get_num_threads()))


Read = tuple[TensorSource, str]
"""One input of an output tensor: a source and the name of the tensor it reads there."""


@dataclass(frozen=True, eq=False)
class TensorPlan:
    """Every decision about one output tensor (see the module docstring)."""

    name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    reads: tuple[Read, ...]  # the base's first (if the method takes one), then each model's
    kwargs: dict[str, Any]  # the method's keywords for this tensor
    ranges: tuple[tuple[int, int], ...]  # flat pieces: ((0, numel),) whole, else chunks
    prepare: Prepare | None  # the chunked form's statistics pass (None: a whole tensor)
    keep_chunks: bool  # the statistics pass reads the chunks and they fit: keep them for the merge pass
    stat_reads: tuple[tuple[str, tuple[Read | None, ...]], ...] = ()  # per statistics kind, each model's read (None: absent)
    has_base: bool = False  # the first read is the base's
    method: MergeMethod | None = None  # the method merging it (a slice's own; None: the plan's)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def labels(self) -> list[str]:
        return [src.label for src, _ in self.reads]


@dataclass
class MergePlan:
    """The method, the opened sources and one `TensorPlan` per output tensor; nothing read."""

    method: MergeMethod
    base: TensorSource | None
    models: list[TensorSource]
    tensors: list[TensorPlan]
    model_stats: dict[str, list[float]] = field(default_factory=dict)  # per-model counts of the statistics files
    input_dtype: torch.dtype | None = None  # the config's `dtype` (every input cast to it), if set

    @property
    def sources(self) -> list[TensorSource]:
        return ([self.base] if self.base is not None else []) + self.models


def plan_merge(
    method: MergeMethod,
    base: TensorSource | None,
    models: list[TensorSource],
    binding: Binding,
    options: MergeOptions,
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
    statistics: list[TensorSource] | None = None,
) -> MergePlan:
    """Check the sources (headers only) and plan every tensor: chunks of `options.chunk_size`
    (or `default_chunk(device)`) elements, kept between passes up to `options.cache_bytes` of
    raw inputs (always on a GPU); for a method with `statistics`, each model's statistics
    source (`statistics[i]`, `io.statistics`) gives the tensors read beside each weight."""
    sources = ([base] if base is not None else []) + models
    _check_sources(sources, compute_dtype)
    model_stats = _statistics_counts(method, models, statistics)
    stat_names = [(src, set(src.names())) for src in statistics or []] if method.statistics else []
    chunk = options.chunk_size or default_chunk(device)
    tensors = []
    for name in sources[0].names():
        shape, dtype = sources[0].meta(name)
        out = (out_dtype or compute_dtype or dtype) if dtype.is_floating_point else dtype
        reads = tuple((src, name) for src in sources)
        stat_reads = tuple((kind, _stat_reads(name, kind, stat_names)) for kind in method.statistics)
        tensors.append(plan_tensor(method, name, shape, dtype, out, reads, binding.for_tensor(name), options, device, chunk,
                                   base is not None, stat_reads))  # fmt: skip
    return MergePlan(method, base, models, tensors, model_stats, compute_dtype)


def plan_tensor(method: MergeMethod, name: str, shape: tuple[int, ...], dtype: torch.dtype, out: torch.dtype,
                reads: tuple[Read, ...], kwargs: dict[str, Any], options: MergeOptions, device: torch.device, chunk: int,
                has_base: bool, stat_reads: tuple = ()) -> TensorPlan:  # fmt: skip
    """One output tensor's plan: whole, or chunks of `chunk` elements when the method has a
    chunked form, kept between passes when the group fits `options.cache_bytes` (or on a GPU)."""
    numel = math.prod(shape)
    form = method.chunked
    chunked = form is not None and dtype.is_floating_point and numel > chunk and options.arithmetic == "float32"
    prepare = form(numel, kwargs) if chunked else None  # mergekit's arithmetic: whole tensors, as it computes
    ranges = tuple((s, min(s + chunk, numel)) for s in range(0, numel, chunk)) if prepare else ((0, numel),)
    group_bytes = sum(src.meta(n)[1].itemsize for src, n in reads) * numel
    keep = (prepare is not None and reads_chunks(prepare) and len(ranges) > 1
            and (device.type == "cuda" or group_bytes <= options.cache_bytes))  # fmt: skip
    return TensorPlan(name, shape, out, reads, kwargs, ranges, prepare, keep, stat_reads, has_base, method)


def _statistics_counts(method: MergeMethod, models: list[TensorSource], statistics: list[TensorSource] | None) -> dict[str, list[float]]:
    """The models' statistics counts (and Fisher norms), one list entry per model."""
    if not method.statistics:
        return {}
    if statistics is None or len(statistics) != len(models):
        raise ConfigError(f"merge_method '{method.name}' needs the {'/'.join(method.statistics)} statistics of every model "
                          f"(merge_stats.safetensors beside each; `mergekit-het stats`)")  # fmt: skip
    per_model = [model_statistics(src, method.statistics) for src in statistics]
    return {k: [m[k] for m in per_model] for k in per_model[0]} if per_model else {}


def _stat_reads(name: str, kind: str, stat_names: list[tuple[TensorSource, set[str]]]) -> tuple[Read | None, ...]:
    key = stats_key(name, kind)
    return tuple((src, key) if key in names else None for src, names in stat_names)


def _check_sources(sources: list[TensorSource], compute_dtype: torch.dtype | None) -> None:
    """Every source has every tensor of the reference (the first) with the same shape, and the
    same floating dtype unless `dtype:` casts them all."""
    ref = sources[0]
    names = ref.names()
    for src in sources[1:]:
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
