"""The merge engine: the only loop over tensor names.

For each tensor name, the inputs of every model are read (ahead of time, by a prefetch
thread pool), moved to the compute device in float32, merged by the registered method with
that tensor's parameters, cast to the output dtype and handed to an asynchronous writer.
Peak memory is a few tensor groups (prefetch depth x models, plus the writer queue), never a
whole model. The same loop serves files (`run_merge`) and in-memory state dicts
(`merge_state_dicts`), so federated and continual runners aggregate through it too.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
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
from .methods import MergeMethod, get_method
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


def _stream(plan: MergePlan, readers: ThreadPoolExecutor, depth: int, pin: bool) -> Iterator[tuple[str, list[Tensor]]]:
    """Yield (name, raw tensors of every source) in plan order, reading `depth` names ahead."""
    sources = plan.sources

    def read_group(name: str) -> list[Tensor]:
        return [s.read(name, pin_memory=pin) for s in sources]

    names = iter(plan.names)
    ahead: deque[tuple[str, Future]] = deque((n, readers.submit(read_group, n)) for n in itertools.islice(names, depth + 1))
    while ahead:
        name, fut = ahead.popleft()
        nxt = next(names, None)
        if nxt is not None:
            ahead.append((nxt, readers.submit(read_group, nxt)))
        yield name, fut.result()


class _Upcast(Sequence[Tensor]):
    """The models' tensors, kept in their stored dtype and handed out in float32 one at a time,
    so a method that walks them holds one float32 copy at a time, not one per model."""

    def __init__(self, tensors: list[Tensor]):
        self._tensors = tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [_as_float(t) for t in self._tensors[i]]
        return _as_float(self._tensors[i])


def _as_float(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _float_inputs(plan: MergePlan, raw: list[Tensor], device: torch.device):
    """(base, tensors) on `device`, arithmetic in float32 (the base converted, the models
    converted as the method reads them); None for non-float tensors."""
    if not raw[0].is_floating_point():
        return None
    inputs = [t.to(device, non_blocking=True) for t in raw]
    if plan.base is not None:
        return _as_float(inputs[0]), _Upcast(inputs[1:])
    return None, _Upcast(inputs)


def _model_statistics(plan: MergePlan, readers: ThreadPoolExecutor, device: torch.device, options: MergeOptions) -> dict[str, Any]:
    """Run the method's model passes (full streaming reads each) and collect their outputs."""
    stats: dict[str, Any] = {}
    for i, mp in enumerate(plan.method.passes):
        state = mp.start(len(plan.models))
        bar = tqdm(total=len(plan.names), unit="tensor", desc=f"model pass {i + 1}/{len(plan.method.passes)}", disable=not options.progress)
        for name, raw in _stream(plan, readers, options.prefetch, device.type == "cuda"):
            inputs = _float_inputs(plan, raw, device)
            if inputs is not None:
                try:
                    mp.update(state, *inputs, {**plan.resolver.for_tensor(name), **stats})
                except ValueError as exc:
                    raise TensorError(f"{name}: {plan.method.name} failed: {exc}") from None
            bar.update(1)
        bar.close()
        stats.update(mp.finish(state))
    return stats


def execute(plan: MergePlan, sink, options: MergeOptions) -> MergeSummary:
    """Run the plan: read ahead, merge on `options.device`, write through `sink(name, tensor)`."""
    device = _device(options)
    summary = MergeSummary()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, options.prefetch), thread_name_prefix="read") as readers, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer:  # fmt: skip
        stats = _model_statistics(plan, readers, device, options)
        writes: deque[Future] = deque()
        bar = tqdm(total=len(plan.names), unit="tensor", desc="merging", disable=not options.progress)
        for name, raw in _stream(plan, readers, options.prefetch, device.type == "cuda"):
            summary.bytes_read += sum(t.numel() * t.element_size() for t in raw)
            out = _merge_one(plan, name, raw, device, options, summary.warnings, stats)
            while len(writes) >= 2:
                writes.popleft().result()
            writes.append(writer.submit(sink, name, out))
            summary.tensors += 1
            bar.update(1)
        for w in writes:
            w.result()
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _merge_one(plan: MergePlan, name: str, raw: list[Tensor], device: torch.device, options: MergeOptions,
               seen: list[str], stats: dict[str, Any]) -> Tensor:  # fmt: skip
    inputs = _float_inputs(plan, raw, device)
    if inputs is None:
        if any(not torch.equal(raw[0], t) for t in raw[1:]):
            raise TensorError(f"{name}: non-float tensor differs between models; it cannot be merged")
        return raw[0]
    base, tensors = inputs
    gen = _generator(options.seed, name, device) if plan.method.uses_generator else None
    try:
        public = {k: v for k, v in stats.items() if not k.startswith("_")}
        merged = plan.method(base, tensors, generator=gen, **plan.resolver.for_tensor(name), **public)
    except (ValueError, RuntimeError) as exc:
        raise TensorError(f"{name}: {plan.method.name} failed: {exc}") from None
    _check_finite(merged, raw, plan, name, options.nan_policy, seen)
    return merged.to(plan.out_dtypes[name])


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
            state: dict[str, Tensor] = {}
            summary = execute(plan, state.__setitem__, options)
            summary.state = state
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
    state: dict[str, Tensor] = {}

    def keep(name: str, t: Tensor) -> None:
        state[name] = t.cpu() if t.device.type != "cpu" else t

    execute(plan, keep, MergeOptions(device=device, seed=seed, prefetch=0, progress=progress))
    return state
