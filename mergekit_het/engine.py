"""The merge engine: the only loop over tensor names.

For each tensor name, the inputs of every model are read (ahead of time, by a prefetch
thread pool), moved to the compute device in float32, merged by the registered method with
that tensor's parameters, cast to the output dtype and handed to an asynchronous writer.
Peak memory is a few tensor groups (prefetch depth x models, plus the writer queue), never a
whole model. The same loop serves files (`run_merge`) and in-memory state dicts
(`merge_state_dicts`), so federated and continual runners aggregate through it too.
"""

from __future__ import annotations

import json
import math
import time
import warnings
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import MergeConfig, ParameterResolver
from .errors import ConfigError, TensorError
from .io.resolve import check_reference, open_model
from .io.sources import StateDictSource, TensorSource
from .atomic import check_output, staged_output
from .io.writer import ShardedWriter, parse_size
from .memory import reuse_freed_memory
from .methods import Float32Copies, MergeMethod, get_method
from .methods.registry import ChunkExtra, Chunks
from .output_files import copy_side_files, num_layers_of

NanPolicy = Literal["error", "warn", "ignore"]


@dataclass
class MergeOptions:
    """How to run a merge (not what to merge: that is the `MergeConfig`)."""

    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    prefetch: int = 1  # tensor names read ahead of the one being merged
    max_shard_size: str | int = "5GB"
    overwrite: bool = False
    allow_pickle: bool = False
    nan_policy: NanPolicy = "error"
    seed: int = 0
    copy_tokenizer: bool = True
    progress: bool = True
    chunk_size: int | None = None  # elements per chunk of large tensors (None: default_chunk)
    cache_bytes: int = 128 * 2**20  # a chunked tensor group up to this size is read once per merge


def default_chunk(device: torch.device) -> int:
    """Elements per chunk: on a CPU 2^19 per compute thread (2 MiB of float32 each, so the
    arithmetic stays in cache; 1Mi on 2 cores), on a GPU 16Mi (64 MiB of float32)."""
    return 1 << 24 if device.type == "cuda" else (1 << 19) * max(1, torch.get_num_threads())
DEFAULT_PREFETCH = {"cpu": 1, "cuda": 4}
"""Pieces read ahead: on a GPU, reading from the page cache is the bottleneck, so several threads."""


@dataclass
class MergeSummary:
    tensors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    out: Path | None = None
    state: dict[str, Tensor] | None = None
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = f" -> {self.out}" if self.out else ""
        return (
            f"merged {self.tensors} tensors: read {_size(self.bytes_read)}, "
            f"wrote {_size(self.bytes_written)} in {self.seconds:.2f} s{where}"
        )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


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


def _generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """A generator seeded by (seed, tensor name): random methods give the same result whatever
    the order, thread or prefetch depth."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return g


def _is_finite(t: Tensor) -> bool:
    """NaN and ±Inf propagate to min/max: one reduction pass, no temporary tensor."""
    if t.numel() == 0:
        return True
    lo, hi = t.aminmax()
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _check_finite(merged: Tensor, raw: list[Tensor], plan: MergePlan, name: str, policy: NanPolicy, seen: list[str]) -> None:
    """Check the merged tensor (NaN/Inf in an input propagates through every method's
    arithmetic, even into trimmed or dropped entries: NaN·0 = NaN); only if it is not finite are
    the inputs checked, to name the model at fault, or the merge itself (e.g. Σw = 0)."""
    if policy == "ignore" or _is_finite(merged):
        return
    bad = [src.label for t, src in zip(raw, plan.sources) if not _is_finite(t.float())]
    if bad:
        msg = f"{name}: model {bad[0]} holds NaN or Inf values"
    else:
        msg = f"{name}: {plan.method.name} produced NaN or Inf from finite inputs (weights summing to 0?)"
    if policy == "error":
        raise TensorError(msg + " (pass --nan-policy warn to merge anyway)")
    seen.append(msg)
    warnings.warn(msg, stacklevel=2)


def _device(options: MergeOptions) -> torch.device:
    reuse_freed_memory()
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    if options.threads:
        torch.set_num_threads(options.threads)
    return device


Key = tuple[str, int, int]  # (tensor name, first flat element, end)


class _Reader:
    """Reads pieces (name, start, stop) of every source, on a thread pool ahead of use."""

    def __init__(self, sources: list[TensorSource], workers: int, pin: bool):
        self._sources = sources
        self._pin = pin
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") if workers else None
        self._ahead: dict[Key, Future] = {}

    def _read(self, key: Key) -> list[Tensor]:
        name, start, stop = key
        return [s.read_range(name, start, stop, pin_memory=self._pin) for s in self._sources]

    def prefetch(self, key: Key) -> None:
        if self._pool is not None and key not in self._ahead:
            self._ahead[key] = self._pool.submit(self._read, key)

    def take(self, key: Key) -> list[Tensor]:
        fut = self._ahead.pop(key, None)
        return fut.result() if fut is not None else self._read(key)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class _Pieces:
    """The pieces of one tensor name, in flat order, on the compute device: the whole tensor,
    or chunks of a large one. Iterating again is a new pass: the chunks are kept from the first
    pass when they fit `cache_bytes` (always on a GPU, where device memory holds a few tensor
    groups), else read again (from the page cache)."""

    def __init__(self, reader: _Reader, name: str, ranges: list[tuple[int, int]], device: torch.device,
                 depth: int, cache: bool, has_base: bool):  # fmt: skip
        self.name, self.ranges, self._has_base = name, ranges, has_base
        self._reader, self._device, self._depth, self._cache_ok = reader, device, depth, cache
        self._cache: list[tuple[int, int, list[Tensor]]] | None = None

    def first_key(self) -> Key:
        return (self.name, *self.ranges[0])

    def __call__(self, then: Key | None = None) -> Iterator[tuple[int, int, list[Tensor]]]:
        """One pass: (start, stop, raw tensors of every source); prefetches `then` near the end."""
        if self._cache is not None:
            if then is not None:
                self._reader.prefetch(then)
            yield from self._cache
            return
        keys = [(self.name, *r) for r in self.ranges] + ([then] if then is not None else [])
        kept = [] if self._cache_ok else None
        for i in range(len(self.ranges)):
            for ahead in keys[i + 1 : i + 1 + self._depth]:
                self._reader.prefetch(ahead)
            raw = [t.to(self._device, non_blocking=True) for t in self._reader.take(keys[i])]
            item = (*self.ranges[i], raw)
            if kept is not None:
                kept.append(item)
            yield item
        if kept is not None:
            self._cache = kept

    def chunks(self) -> Iterator[tuple[int, Tensor | None, list[Tensor]]]:
        """A statistics pass in the form `ChunkedForm` methods read: (start, base, models)."""
        for start, _, raw in self():
            yield (start, raw[0], raw[1:]) if self._has_base else (start, None, raw)


def _as_float(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _float_inputs(plan: MergePlan, raw: list[Tensor]):
    """(base, tensors), arithmetic in float32 (the base converted, the models converted as the
    method reads them); None for non-float tensors."""
    if not raw[0].is_floating_point():
        return None
    if plan.base is not None:
        return _as_float(raw[0]), Float32Copies(raw[1:])
    return None, Float32Copies(raw)


class _Run:
    """One execution of a plan: the reader, the device, and how each tensor name is cut."""

    def __init__(self, plan: MergePlan, options: MergeOptions, reader: _Reader, device: torch.device):
        self.plan, self.options, self.reader, self.device = plan, options, reader, device
        self.chunk = options.chunk_size or default_chunk(device)
        self.depth = options.prefetch

    def pieces(self, name: str, whole: bool = False) -> _Pieces:
        shape, dtype = self.plan.sources[0].meta(name)
        numel = math.prod(shape)
        ranges = [(0, numel)]
        if not whole and dtype.is_floating_point and numel > self.chunk and self.prepare(name, numel) is not None:
            ranges = [(s, min(s + self.chunk, numel)) for s in range(0, numel, self.chunk)]
        group_bytes = sum(s.meta(name)[1].itemsize for s in self.plan.sources) * numel
        cache = len(ranges) > 1 and (self.device.type == "cuda" or group_bytes <= self.options.cache_bytes)
        return _Pieces(self.reader, name, ranges, self.device, self.depth, cache, self.plan.base is not None)

    def kwargs(self, name: str, stats: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in stats.items() if not k.startswith("_")}
        return self.plan.method.keywords(len(self.plan.models), {**self.plan.resolver.for_tensor(name), **public})

    def prepare(self, name: str, numel: int) -> Callable[[Chunks], ChunkExtra] | None:
        """The method's chunked form for this tensor, or None if it needs the whole tensor."""
        form = self.plan.method.chunked
        return form(numel, self.kwargs(name, {})) if form is not None else None

    def whole_groups(self) -> Iterator[tuple[str, list[Tensor]]]:
        """(name, raw tensors of every source, shaped) for every name, read ahead."""
        all_pieces = [self.pieces(n, whole=True) for n in self.plan.names]
        for i, pieces in enumerate(all_pieces):
            then = all_pieces[i + 1].first_key() if i + 1 < len(all_pieces) else None
            shape = self.plan.sources[0].meta(pieces.name)[0]
            for _, _, raw in pieces(then):
                yield pieces.name, [t.view(shape) for t in raw]


def _model_statistics(run: _Run) -> dict[str, Any]:
    """Run the method's model passes (full streaming reads each) and collect their outputs."""
    plan, stats = run.plan, {}
    for i, mp in enumerate(plan.method.passes):
        state = mp.start(len(plan.models))
        bar = tqdm(total=len(plan.names), unit="tensor", desc=f"model pass {i + 1}/{len(plan.method.passes)}", disable=not run.options.progress)
        for name, raw in run.whole_groups():
            inputs = _float_inputs(plan, raw)
            if inputs is not None:
                try:
                    mp.update(state, *inputs, {**plan.resolver.for_tensor(name), **stats})
                except ValueError as exc:
                    raise TensorError(f"{name}: {plan.method.name} failed: {exc}") from None
            bar.update(1)
        bar.close()
        stats.update(mp.finish(state))
    return stats


def execute(plan: MergePlan, sink: Callable[..., None], options: MergeOptions) -> MergeSummary:
    """Run the plan: read ahead, merge on `options.device`, write through
    `sink(name, tensor, start)` (`start`: the first flat element of a chunk, 0 for a whole tensor)."""
    device = _device(options)
    summary = MergeSummary()
    start = time.perf_counter()
    if options.prefetch is None:
        options = replace(options, prefetch=DEFAULT_PREFETCH.get(device.type, 1))
    reader = _Reader(plan.sources, options.prefetch, pin=device.type == "cuda")
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer:
            run = _Run(plan, options, reader, device)
            stats = _model_statistics(run)
            writes: deque[Future] = deque()
            bar = tqdm(total=len(plan.names), unit="tensor", desc="merging", disable=not options.progress)
            upcoming = [run.pieces(n) for n in plan.names]
            for i, pieces in enumerate(upcoming):
                then = upcoming[i + 1].first_key() if i + 1 < len(upcoming) else None
                for first, out, nbytes in _merge_tensor(run, pieces, then, stats, summary.warnings):
                    summary.bytes_read += nbytes
                    while len(writes) >= 2:
                        writes.popleft().result()
                    writes.append(writer.submit(sink, pieces.name, out, first))
                upcoming[i] = None  # free its cached chunks
                summary.tensors += 1
                bar.update(1)
            for w in writes:
                w.result()
            bar.close()
    finally:
        reader.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _merge_tensor(run: _Run, pieces: _Pieces, then: Key | None, stats: dict[str, Any],
                  seen: list[str]) -> Iterator[tuple[int, Tensor, int]]:  # fmt: skip
    """Merge one tensor name piece by piece: (first flat element, merged piece, bytes read)."""
    plan, name = run.plan, pieces.name
    shape = plan.sources[0].meta(name)[0]
    kwargs = run.kwargs(name, stats)
    extra = None
    if len(pieces.ranges) > 1:
        try:
            extra = run.prepare(name, math.prod(shape))(pieces.chunks)
        except (ValueError, RuntimeError) as exc:
            raise TensorError(f"{name}: {plan.method.name} failed: {exc}") from None
    for first, stop, raw in pieces(then):
        if extra is None:
            raw = [t.view(shape) for t in raw]
        nbytes = sum(t.numel() * t.element_size() for t in raw)
        inputs = _float_inputs(plan, raw)
        if inputs is None:
            if any(not torch.equal(raw[0], t) for t in raw[1:]):
                raise TensorError(f"{name}: non-float tensor differs between models; it cannot be merged")
            yield first, raw[0], nbytes
            continue
        base, tensors = inputs
        gen = _generator(run.options.seed, name, run.device) if plan.method.uses_generator else None
        if gen is not None:
            kwargs["generator"] = gen
        try:
            merged = plan.method.fn(base, tensors, **kwargs, **(extra(first, stop) if extra else {}))
        except (ValueError, RuntimeError) as exc:
            raise TensorError(f"{name}: {plan.method.name} failed: {exc}") from None
        _check_finite(merged, raw, plan, name, run.options.nan_policy, seen)
        yield first, merged.to(plan.out_dtypes[name]), nbytes


class _StateSink:
    """Collects merged tensors in a CPU state dict, assembling chunked ones."""

    def __init__(self, plan: MergePlan):
        self.state: dict[str, Tensor] = {}
        self._shapes = {n: plan.sources[0].meta(n)[0] for n in plan.names}

    def write(self, name: str, t: Tensor, start: int = 0) -> None:
        shape = self._shapes[name]
        if start == 0 and t.numel() == math.prod(shape):
            self.state[name] = t.cpu().view(shape)
            return
        if name not in self.state:
            self.state[name] = torch.empty(shape, dtype=t.dtype)
        self.state[name].view(-1)[start : start + t.numel()].copy_(t)


# ---- entry points ---------------------------------------------------------------------


def run_merge(
    cfg: MergeConfig,
    out: str | Path | None,
    options: MergeOptions | None = None,
    config_text: str | None = None,
    finalize: Callable[[Path], None] | None = None,
) -> MergeSummary:
    """Merge as `cfg` says into the folder `out` (atomically), or in memory if `out` is None.

    `finalize(staging_folder)` may add files (a model card) before the folder is moved into place.
    """
    options = options or MergeOptions()
    refs = [m.model for m in cfg.inputs()] + ([cfg.base_model] if cfg.base_model else [])
    for ref in refs:
        check_reference(ref)
    if out is not None:
        check_output(Path(out), options.overwrite)
    max_shard = parse_size(options.max_shard_size)
    base_ref = cfg.base_model if cfg.method.base != "none" else None
    opened: list[TensorSource] = []
    try:
        base = open_model(base_ref, allow_pickle=options.allow_pickle) if base_ref else None
        opened += [base] if base else []
        models = []
        for entry in cfg.inputs():
            models.append(open_model(entry.model, base=cfg.base_model, allow_pickle=options.allow_pickle))
            opened.append(models[-1])
        layers_from = base_ref or cfg.models[0].model
        plan = plan_merge(
            cfg.method, base, models, cfg.parameters, [e.parameters for e in cfg.inputs()],
            num_layers_of(layers_from), cfg.torch_dtype("dtype"), cfg.torch_dtype("out_dtype"),
        )  # fmt: skip
        if out is None:
            sink = _StateSink(plan)
            summary = execute(plan, sink.write, options)
            summary.state = sink.state
            return summary
        out = Path(out)
        with staged_output(out, options.overwrite) as staging:
            entries = [(n, plan.out_dtypes[n], plan.sources[0].meta(n)[0]) for n in plan.names]
            writer = ShardedWriter(staging, entries, max_shard, metadata={"merged_by": "mergekit-het"})
            try:
                summary = execute(plan, writer.write, options)
                writer.finish()
            finally:
                writer.close()
            summary.bytes_written = writer.bytes_written
            side_from = layers_from
            if cfg.tokenizer_source not in (None, "base"):
                side_from = cfg.tokenizer_source
            copy_side_files(side_from, staging, plan.out_dtypes, copy_tokenizer=options.copy_tokenizer)
            (staging / "mergekit_config.yml").write_text(config_text or json.dumps(cfg.model_dump(exclude_none=True), indent=2))
            if finalize is not None:
                finalize(staging)
        summary.out = out
        return summary
    finally:
        for src in opened:
            src.close()


def merge_state_dicts(
    method: str,
    models: list[Mapping[str, Tensor]],
    base: Mapping[str, Tensor] | None = None,
    parameters: Mapping[str, Any] | None = None,
    model_parameters: list[Mapping[str, Any]] | None = None,
    *,
    device: str = "cpu",
    seed: int = 0,
    num_layers: int | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Merge in-memory state dicts with a registered method (same engine and semantics as files).

    Arithmetic runs in float32 on `device`; outputs keep the base's (else first model's) dtypes
    and live on the CPU.
    """
    m = get_method(method)
    if m.base == "required" and base is None:
        raise ConfigError(f"merge_method '{method}' needs a base state dict")
    model_parameters = list(model_parameters or [{} for _ in models])
    if len(model_parameters) != len(models):
        raise ConfigError(f"{len(models)} models but {len(model_parameters)} model_parameters entries")
    sources = [StateDictSource(sd, f"model[{i}]") for i, sd in enumerate(models)]
    base_src = StateDictSource(base, "base") if base is not None and m.base != "none" else None
    plan = plan_merge(m, base_src, sources, dict(parameters or {}), model_parameters, num_layers)
    sink = _StateSink(plan)
    execute(plan, sink.write, MergeOptions(device=device, seed=seed, prefetch=0, progress=progress))
    return sink.state
