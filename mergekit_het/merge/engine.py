"""The merge engine: the only loop over output tensors.

`execute` runs a `MergePlan` (every decision is made there): for each output tensor, the inputs
of every model are read ahead (`io.pieces`), moved to the compute device, merged by the method
with that tensor's keywords (arithmetic in float32), cast to the output dtype, checked for
NaN/Inf and handed to an asynchronous writer; a large tensor goes through this in chunks when the
plan says so, so peak memory is a chunk group, never a whole model. The same loop serves files
(`run_merge`: sharded safetensors, side files and model card in a staging folder moved into place)
and in-memory state dicts (`merge_state_dicts`, which federated and continual runners and
evaluation sweeps aggregate through).
"""

from __future__ import annotations

import importlib
import json
import math
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError, TensorError
from ..io.pieces import Key, Pieces, Reader
from ..io.resolve import check_reference, local_folder, open_model
from ..io.statistics import open_statistics
from ..io.sources import StateDictSource, TensorSource
from ..io.sizes import parse_size
from ..io.writer import AsyncWrites, ShardedWriter
from ..methods import Float32Copies, get_method
from ..methods.registry import WHOLE, TensorStats, as_compute_dtype
from ..runtime.device import resolve_device
from ..runtime.files import check_output, staged_output
from .binder import bind_parameters
from .config import MergeConfig
from .memory import reuse_freed_memory
from .plan import MergeOptions, MergePlan, TensorPlan, default_chunk, plan_merge
from .embeddings import align_slice_models, align_vocabularies
from .finite import check_finite
from .side_files import copy_side_files, num_layers_of
from .slices import as_models, donor_of, opened_models, plan_slices, set_layer_count
from .tokenizer import write_tokenizer

__all__ = ["MergeOptions", "MergeSummary", "default_chunk", "execute", "merge_state_dicts", "run_merge"]

Sink = Callable[[str, Tensor, int], None]
"""`sink(name, tensor, start)`: store a merged tensor, or its flat elements from `start` on."""


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
class _Run:
    """One execution of a plan: its reader, device and options, and the warnings raised."""

    plan: MergePlan
    options: MergeOptions
    reader: Reader
    device: torch.device
    seen: list[str]

    def arithmetic_dtype(self, raw: list[Tensor]) -> torch.dtype | None:
        """None (float32 arithmetic), or with `arithmetic='config-dtype'` mergekit's: the config's
        `dtype`, else the inputs' promoted dtype."""
        if self.options.arithmetic != "config-dtype" or not raw[0].is_floating_point():
            return None
        if self.plan.input_dtype is not None:
            return self.plan.input_dtype
        dtype = raw[0].dtype
        for t in raw[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        return dtype

    def pieces(self, tp: TensorPlan, whole: bool = False) -> Pieces:
        ranges = ((0, tp.numel),) if whole else tp.ranges
        keep = tp.keep_chunks and not whole
        return Pieces(self.reader, tp.reads, ranges, self.device, self.options.prefetch, keep, tp.has_base)


def execute(plan: MergePlan, sink: Sink, options: MergeOptions, device: torch.device) -> MergeSummary:
    """Run the plan: model passes of the method (if any), then every output tensor read ahead,
    merged on `device` and written through `sink`."""
    summary = MergeSummary()
    start = time.perf_counter()
    with Reader(options.prefetch, pin=device.type == "cuda") as reader, AsyncWrites(sink) as writes:
        run = _Run(plan, options, reader, device, summary.warnings)
        model = {**_model_statistics(run), **plan.model_stats}
        tensors = plan.tensors
        for i, tp in enumerate(tqdm(tensors, unit="tensor", desc="merging", disable=not options.progress)):
            then = _first_key(tensors[i + 1]) if i + 1 < len(tensors) else None
            for first, out, nbytes in _merge_tensor(run, tp, model, then):
                summary.bytes_read += nbytes
                writes.put(tp.name, out, first)
            summary.tensors += 1
    summary.seconds = time.perf_counter() - start
    return summary


def _first_key(tp: TensorPlan) -> Key:
    return (tp.reads, *tp.ranges[0])


def _model_statistics(run: _Run) -> dict[str, Any]:
    """Run the method's model passes (a full streaming read of every tensor each) and collect
    their outputs, the `TensorStats.model` of every call."""
    plan, model = run.plan, {}
    tensors = plan.tensors
    for i, mp in enumerate(plan.method.passes):
        state = mp.start(len(plan.models))
        desc = f"model pass {i + 1}/{len(plan.method.passes)}"
        for j, tp in enumerate(tqdm(tensors, unit="tensor", desc=desc, disable=not run.options.progress)):
            then = (tensors[j + 1].reads, 0, tensors[j + 1].numel) if j + 1 < len(tensors) else None
            for _, _, raw in run.pieces(tp, whole=True)(then):
                inputs = _float_inputs(tp.has_base, [t.view(tp.shape) for t in raw], run.arithmetic_dtype(raw))
                if inputs is not None:
                    try:
                        mp.update(state, *inputs, tp.kwargs, model)
                    except ValueError as exc:
                        raise TensorError(f"{tp.name}: {plan.method.name} failed: {exc}") from None
        model.update(mp.finish(state))
    return model


def _merge_tensor(run: _Run, tp: TensorPlan, model: Mapping[str, Any], then: Key | None) -> Iterator[tuple[int, Tensor, int]]:
    """Merge one output tensor piece by piece: (first flat element, merged piece, bytes read)."""
    method, pieces = tp.method or run.plan.method, run.pieces(tp)
    stats = TensorStats(model=model) if model else WHOLE
    if tp.prepare is not None:
        try:
            stats = replace(tp.prepare(pieces.chunks), model=model)
        except (ValueError, RuntimeError) as exc:
            raise TensorError(f"{tp.name}: {method.name} failed: {exc}") from None
    if tp.stat_reads:
        stats = replace(stats, inputs=_read_statistics(tp, run.device))
    generator = _generator(run.options.seed, tp.name, run.device) if "generator" in method.takes else None
    for first, _, raw in pieces(then):
        if tp.prepare is None:
            raw = [t.view(tp.shape) for t in raw]
        nbytes = sum(t.numel() * t.element_size() for t in raw)
        inputs = _float_inputs(tp.has_base, raw, run.arithmetic_dtype(raw))
        if inputs is None:
            if any(not torch.equal(raw[0], t) for t in raw[1:]):
                raise TensorError(f"{tp.name}: non-float tensor differs between models; it cannot be merged")
            yield first, raw[0], nbytes
            continue
        context = method.context(generator, replace(stats, start=first) if first else stats)
        try:
            merged = method.fn(*inputs, **tp.kwargs, **context)
        except (ValueError, RuntimeError) as exc:
            raise TensorError(f"{tp.name}: {method.name} failed: {exc}") from None
        out = merged.to(tp.out_dtype)
        check_finite(out, raw, tp, method.name, run.options.nan_policy, run.seen)
        yield first, out, nbytes


def _read_statistics(tp: TensorPlan, device: torch.device) -> dict[str, tuple[Tensor | None, ...]]:
    """Each model's statistics tensors of `tp` (whole, on `device`, floats in float32, counts as
    stored; None where absent)."""
    def read(r):
        t = r[0].read(r[1])
        return (as_compute_dtype(t) if t.is_floating_point() else t).to(device)

    return {kind: tuple(None if r is None else read(r) for r in reads) for kind, reads in tp.stat_reads}


def _float_inputs(has_base: bool, raw: list[Tensor], dtype: torch.dtype | None) -> tuple[Tensor | None, Float32Copies] | None:
    """(base, tensors), arithmetic in float32, or in `dtype` if given (the base converted, the
    models converted as the method reads them); None for non-float tensors."""
    if not raw[0].is_floating_point():
        return None
    if has_base:
        return as_compute_dtype(raw[0], dtype), Float32Copies(raw[1:], dtype)
    return None, Float32Copies(raw, dtype)


def _generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """A generator seeded by (seed, tensor name): random methods give the same result whatever
    the order, thread or prefetch depth."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return g


class _StateSink:
    """Collects merged tensors in a CPU state dict, assembling chunked ones."""

    def __init__(self, plan: MergePlan):
        self.state: dict[str, Tensor] = {}
        self._shapes = {tp.name: tp.shape for tp in plan.tensors}

    def write(self, name: str, t: Tensor, start: int = 0) -> None:
        shape = self._shapes[name]
        if start == 0 and t.numel() == math.prod(shape):
            self.state[name] = t.cpu().view(shape)
            return
        if name not in self.state:
            self.state[name] = torch.empty(shape, dtype=t.dtype)
        self.state[name].view(-1)[start : start + t.numel()].copy_(t)


def _device(options: MergeOptions) -> torch.device:
    reuse_freed_memory()  # before any reader or writer thread allocates (one malloc arena)
    device = resolve_device(options.device, "device")
    if options.threads:
        torch.set_num_threads(options.threads)
    return device


# ---- entry points ---------------------------------------------------------------------


def run_merge(
    cfg: MergeConfig,
    out: str | Path | None,
    options: MergeOptions | None = None,
    config_text: str | None = None,
    finalize: Callable[[Path], None] | None = None,
) -> MergeSummary:
    """Merge as `cfg` says into the folder `out` (atomically: shards, side files, the config as
    `mergekit_config.yml` (`config_text` verbatim if given) and the model card), or in memory
    if `out` is None (`summary.state`). `finalize(staging_folder)` may add files before the
    folder is moved into place."""
    options = options or MergeOptions()
    cfg = as_models(cfg)
    for ref in cfg.referenced_models():
        check_reference(ref)
    if out is not None:
        check_output(Path(out), options.overwrite)
    max_shard = parse_size(options.max_shard_size)
    device = _device(options)
    if out is not None:  # the model card's huggingface_hub stack (0.3 s of imports) loads while the merge runs
        threading.Thread(target=importlib.import_module, args=("mergekit_het.hub.card",), daemon=True).start()
    with _planned(cfg, options, device) as (plan, donor, vocab, layers):
        if not plan.tensors:
            raise TensorError(f"{donor}: no tensors to merge (the checkpoint or its index is empty)")
        if out is None:
            sink = _StateSink(plan)
            summary = execute(plan, sink.write, options, device)
            summary.state = sink.state
            return summary
        out = Path(out)
        with staged_output(out, options.overwrite) as staging:
            summary = _write_shards(plan, staging, options, device, max_shard)
            copy_side_files(donor, staging, {tp.name: tp.out_dtype for tp in plan.tensors}, copy_tokenizer=options.copy_tokenizer)
            if layers is not None:
                set_layer_count(staging, donor, layers)
            write_tokenizer(vocab, cfg, staging, cfg.base_model or donor, options.copy_tokenizer)
            if options.write_card:
                _write_config_and_card(cfg, staging, out.name, config_text)
            if finalize is not None:
                finalize(staging)
        summary.out = out
        return summary


@contextmanager
def _planned(cfg: MergeConfig, options: MergeOptions, device: torch.device) -> Iterator[tuple[MergePlan, str, Any, int | None]]:
    """(plan, donor of the side files, output vocabulary, output layer count) of `cfg` over its
    opened sources (closed on exit); the layer count only for `slices:` (None: the donor's)."""
    if cfg.slices is not None:
        with opened_models(cfg, options.allow_pickle) as models:
            vocab = align_slice_models(cfg, models, donor_of(cfg), options, cfg.torch_dtype("dtype"))
            plan, layers = plan_slices(cfg, models, options, device)
            yield plan, donor_of(cfg), vocab, layers
        return
    base_ref = cfg.base_model if cfg.method.base != "none" else None
    layers_from = base_ref or cfg.models[0].model
    inputs = cfg.inputs()
    binding = bind_parameters(cfg.method, cfg.parameters, [e.parameters for e in inputs], "merge config",
                              model_labels=[f"models[{cfg.models.index(e)}] ({e.model}).parameters" for e in inputs],
                              num_layers=num_layers_of(layers_from))  # fmt: skip
    with _opened(cfg, base_ref, options.allow_pickle) as (base, models, statistics):
        base, models, vocab = align_vocabularies(cfg, base_ref, base, models, options, cfg.torch_dtype("dtype"))
        plan = plan_merge(cfg.method, base, models, binding, options, device, cfg.torch_dtype("dtype"),
                          cfg.torch_dtype("out_dtype"), statistics)  # fmt: skip
        yield plan, layers_from, vocab, None


@contextmanager
def _opened(cfg: MergeConfig, base_ref: str | None, allow_pickle: bool) -> Iterator[tuple[TensorSource | None, list[TensorSource], list[TensorSource] | None]]:
    """The base (None for a method without one), the models and, for a method with
    `statistics`, each model's statistics file, opened lazily; closed on exit."""
    opened: list[TensorSource] = []
    try:
        base = open_model(base_ref, allow_pickle=allow_pickle) if base_ref else None
        opened += [base] if base else []
        models, statistics = [], []
        for entry in cfg.inputs():
            models.append(open_model(entry.model, base=cfg.base_model, allow_pickle=allow_pickle))
            opened.append(models[-1])
            if cfg.method.statistics:
                statistics.append(open_statistics(local_folder(entry.model), cfg.method.statistics, entry.model))
                opened.append(statistics[-1])
        yield base, models, (statistics if cfg.method.statistics else None)
    finally:
        for src in opened:
            src.close()


def _write_shards(plan: MergePlan, folder: Path, options: MergeOptions, device: torch.device, max_shard: int) -> MergeSummary:
    entries = [(tp.name, tp.out_dtype, tp.shape) for tp in plan.tensors]
    writer = ShardedWriter(folder, entries, max_shard, metadata={"merged_by": "mergekit-het"})
    try:
        summary = execute(plan, writer.write, options, device)
        writer.finish()
    finally:
        writer.close()
    summary.bytes_written = writer.bytes_written
    return summary


def _write_config_and_card(cfg: MergeConfig, folder: Path, title: str, config_text: str | None) -> None:
    """`mergekit_config.yml` (the text as given, else the validated config) and the model card
    `README.md`, titled `title` (the output's name, not the staging folder's)."""
    from ..hub.card import write_merge_card  # huggingface_hub is imported only when writing

    config = cfg.model_dump(exclude_none=True)
    text = config_text or json.dumps(config, indent=2)
    (folder / "mergekit_config.yml").write_text(text)
    write_merge_card(folder, text, config, cfg.base_model, cfg.referenced_models(), cfg.merge_method, title=title)


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
    statistics: list[Mapping[str, Tensor]] | None = None,
) -> dict[str, Tensor]:
    """Merge in-memory state dicts with a registered method (same binder, engine and semantics
    as files): every parameter is checked against the method's schema (`binder.py`; one
    `ConfigError` lists every problem). Arithmetic runs in float32 on `device`; outputs keep
    the base's (else first model's) dtypes and live on the CPU. `statistics`: each model's
    merge statistics (`io/statistics.py` names), for methods that read them (regmean, fisher)."""
    m = get_method(method)
    if m.base == "required" and base is None:
        raise ConfigError(f"merge_method '{method}' needs a base state dict")
    model_parameters = list(model_parameters or [{} for _ in models])
    if len(model_parameters) != len(models):
        raise ConfigError(f"{len(models)} models but {len(model_parameters)} model_parameters entries")
    binding = bind_parameters(m, parameters, model_parameters, "merge_state_dicts", num_layers=num_layers)
    sources = [StateDictSource(sd, f"model[{i}]") for i, sd in enumerate(models)]
    base_src = StateDictSource(base, "base") if base is not None and m.base != "none" else None
    options = MergeOptions(device=device, seed=seed, prefetch=0, progress=progress)
    dev = _device(options)
    stats = [open_statistics(st, m.statistics, f"model[{i}]") for i, st in enumerate(statistics)] if statistics and m.statistics else None
    plan = plan_merge(m, base_src, sources, binding, options, dev, statistics=stats)
    sink = _StateSink(plan)
    execute(plan, sink.write, options, dev)
    return sink.state
