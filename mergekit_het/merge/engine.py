"""The merge engine: the only loop over tensor names.

For each tensor name, the inputs of every model are read ahead (`io.pieces`), moved to the
compute device, merged by the registered method with that tensor's parameters (arithmetic in
float32), cast to the output dtype and handed to an asynchronous writer. A large tensor is
read, merged and written in chunks when the method allows it (`MergeMethod.chunked`), so peak
memory is a chunk group, never a whole tensor of every model, let alone a whole model. The same loop serves files (`run_merge`) and in-memory state dicts
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import MergeConfig
from ..errors import ConfigError, TensorError
from ..io.resolve import check_reference, open_model
from ..io.pieces import Key, Pieces, Reader
from ..io.sources import StateDictSource, TensorSource
from ..runtime.files import check_output, staged_output
from ..io.writer import ShardedWriter, parse_size
from .memory import reuse_freed_memory
from ..methods import Float32Copies, get_method
from ..methods.registry import ChunkExtra, Chunks, as_compute_dtype, reads_chunks
from .side_files import copy_side_files, num_layers_of
from .plan import MergePlan, plan_merge

NanPolicy = Literal["error", "warn", "ignore"]


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
    progress: bool = True
    chunk_size: int | None = None  # elements per chunk of large tensors (None: default_chunk)
    cache_bytes: int = 128 * 2**20  # a chunked tensor group up to this size is read once per merge


def default_chunk(device: torch.device) -> int:
    """Elements per chunk: on a CPU 2^19 per compute thread (2 MiB of float32 each, so the
    arithmetic stays in cache; 1Mi on 2 cores) up to 4Mi (8 cores; on 16, 8Mi chunks were no
    faster and held 0.3 GiB more for 4x62M TIES), on a GPU 16Mi (64 MiB of float32)."""
    return 1 << 24 if device.type == "cuda" else min(1 << 22, (1 << 19) * max(1, torch.get_num_threads()))


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
    """Check the merged tensor in its output dtype (NaN/Inf in an input propagates through every
    method's arithmetic, even into trimmed or dropped entries: NaN·0 = NaN; a value beyond the
    output dtype's range, e.g. float16's 65504, becomes Inf there); only if it is not finite are
    the inputs checked, to name the model at fault, or the merge itself (e.g. Σw = 0)."""
    if policy == "ignore" or _is_finite(merged):
        return
    bad = [src.label for t, src in zip(raw, plan.sources) if not _is_finite(t.float())]
    if bad:
        msg = f"{name}: model {bad[0]} holds NaN or Inf values"
    else:
        msg = (f"{name}: {plan.method.name} produced NaN or Inf from finite inputs (weights summing to 0, or values"
               f" beyond the range of {str(merged.dtype).removeprefix('torch.')}?)")
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


def _float_inputs(plan: MergePlan, raw: list[Tensor]):
    """(base, tensors), arithmetic in float32 (the base converted, the models converted as the
    method reads them); None for non-float tensors."""
    if not raw[0].is_floating_point():
        return None
    if plan.base is not None:
        return as_compute_dtype(raw[0]), Float32Copies(raw[1:])
    return None, Float32Copies(raw)


@dataclass
class _Job:
    """One tensor name to merge: its pieces, the method's keywords for it, and the method's
    chunked form (None: the pieces are the whole tensor)."""

    pieces: Pieces
    kwargs: dict[str, Any]
    prepare: Callable[[Chunks], ChunkExtra] | None


class _Run:
    """One execution of a plan: the reader, the device, and how each tensor name is cut."""

    def __init__(self, plan: MergePlan, options: MergeOptions, reader: Reader, device: torch.device):
        self.plan, self.options, self.reader, self.device = plan, options, reader, device
        self.chunk = options.chunk_size or default_chunk(device)
        self.stats: dict[str, Any] = {}  # model statistics, once the method's passes have run

    def _pieces(self, name: str, ranges: list[tuple[int, int]], repeated: bool = False) -> Pieces:
        """The pieces of `name` cut at `ranges`; if `repeated` (several passes), kept between
        passes where they fit."""
        numel = ranges[-1][1]
        group_bytes = sum(s.meta(name)[1].itemsize for s in self.plan.sources) * numel
        cache = repeated and len(ranges) > 1 and (self.device.type == "cuda" or group_bytes <= self.options.cache_bytes)
        return Pieces(self.reader, name, ranges, self.device, self.options.prefetch, cache, self.plan.base is not None)

    def job(self, name: str) -> _Job:
        shape, dtype = self.plan.sources[0].meta(name)
        numel = math.prod(shape)
        public = {k: v for k, v in self.stats.items() if not k.startswith("_")}
        kwargs = self.plan.method.keywords(len(self.plan.models), {**self.plan.resolver.for_tensor(name), **public})
        form = self.plan.method.chunked
        prepare = None
        if form is not None and dtype.is_floating_point and numel > self.chunk:
            prepare = form(numel, kwargs)
        ranges = [(s, min(s + self.chunk, numel)) for s in range(0, numel, self.chunk)] if prepare else [(0, numel)]
        return _Job(self._pieces(name, ranges, prepare is not None and reads_chunks(prepare)), kwargs, prepare)

    def whole_groups(self) -> Iterator[tuple[str, list[Tensor]]]:
        """(name, raw tensors of every source, shaped) for every name, read ahead."""
        names = self.plan.names
        for i, name in enumerate(names):
            then = (names[i + 1], 0, math.prod(self.plan.sources[0].meta(names[i + 1])[0])) if i + 1 < len(names) else None
            shape = self.plan.sources[0].meta(name)[0]
            for _, _, raw in self._pieces(name, [(0, math.prod(shape))])(then):
                yield name, [t.view(shape) for t in raw]


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
    reader = Reader(plan.sources, options.prefetch, pin=device.type == "cuda")
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer:
            run = _Run(plan, options, reader, device)
            run.stats = _model_statistics(run)
            writes: deque[Future] = deque()
            bar = tqdm(total=len(plan.names), unit="tensor", desc="merging", disable=not options.progress)
            job = run.job(plan.names[0]) if plan.names else None
            for i in range(len(plan.names)):
                nxt = run.job(plan.names[i + 1]) if i + 1 < len(plan.names) else None
                for first, out, nbytes in _merge_tensor(run, job, nxt.pieces.first_key() if nxt else None, summary.warnings):
                    summary.bytes_read += nbytes
                    while len(writes) >= 2:
                        writes.popleft().result()
                    writes.append(writer.submit(sink, job.pieces.name, out, first))
                job = nxt  # the finished tensor's cached chunks are freed here
                summary.tensors += 1
                bar.update(1)
            for w in writes:
                w.result()
            bar.close()
    finally:
        reader.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _merge_tensor(run: _Run, job: _Job, then: Key | None, seen: list[str]) -> Iterator[tuple[int, Tensor, int]]:
    """Merge one tensor name piece by piece: (first flat element, merged piece, bytes read)."""
    plan, name, kwargs = run.plan, job.pieces.name, job.kwargs
    shape = plan.sources[0].meta(name)[0]
    extra = None
    if job.prepare is not None:
        try:
            extra = job.prepare(job.pieces.chunks)
        except (ValueError, RuntimeError) as exc:
            raise TensorError(f"{name}: {plan.method.name} failed: {exc}") from None
    if plan.method.uses_generator:
        kwargs["generator"] = _generator(run.options.seed, name, run.device)
    for first, stop, raw in job.pieces(then):
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
        try:
            merged = plan.method.fn(base, tensors, **kwargs, **(extra(first, stop) if extra else {}))
        except (ValueError, RuntimeError) as exc:
            raise TensorError(f"{name}: {plan.method.name} failed: {exc}") from None
        out = merged.to(plan.out_dtypes[name])
        _check_finite(out, raw, plan, name, run.options.nan_policy, seen)
        yield first, out, nbytes


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
