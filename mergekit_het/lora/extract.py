"""A PEFT LoRA adapter extracted from a fine-tuned model and its base (`mergekit-het extract-lora`).

Per decomposed module (chosen as `modules.py` says), the task vector Δ = W_ft − W_base, in
float32 on the math device, is cut to rank r by a full SVD, Δ = U diag(S) Vᵀ:
    r = min(max_rank, len(S)), and r ≤ #(S > sv_epsilon) when sv_epsilon > 0;
    distribute_scale: A = diag(√S_r)·V_rᵀ, B = U_r·diag(√S_r);  otherwise A = diag(S_r)·V_rᵀ, B = U_r.
B·A is the best rank-r approximation (Eckart–Young): ‖Δ − B·A‖_F² = Σ_{i>r} S_i².
`lora_alpha` = r (peft's scale α/r = 1), so the adapter's model is W_base + B·A. Embeddings are
decomposed transposed (Δᵀ, [hidden, vocab]: `lora_embedding_A` [r, vocab], `lora_embedding_B`
[hidden, r]); conv weights [out, in, *k] as the matrix [out, in·∏k] (A → [r, in, *k], B →
[out, r, 1, …], peft's conv LoRA). A bias changed by fine-tuning is saved as Δbias in `lora_B.bias`
(with `lora_bias: true`, so peft loads it). Factors and biases are cast to the fine-tuned weight's dtype.

Modules saved whole hold the fine-tuned tensors under `base_model.model.<module>.<weight|bias|...>`.
Memory: one weight pair at a time plus the factors already computed (the adapter's own size); the
modules saved whole are read one at a time while the file is written. The output folder is staged
and moved into place only when complete.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError, TensorError
from ..io.lora import ADAPTER_CONFIG, adapter_base_model, is_lora_adapter
from ..io.resolve import local_folder, open_model
from ..io.sources import TensorSource
from ..io.writer import ShardedWriter
from ..runtime.device import resolve_device
from ..runtime.files import check_output, staged_output
from .modules import Target, TargetPlan, build_architecture, input_embedding_weight, plan_targets

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


@dataclass(frozen=True)
class ExtractOptions:
    """mergekit-extract-lora's options (same defaults) and this engine's."""

    max_rank: int = 128
    sv_epsilon: float = 0.0
    distribute_scale: bool = True
    embed_lora: bool = False
    save_modules: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_undecomposable: bool = False
    device: str = "cpu"
    threads: int | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    progress: bool = True
    write_card: bool = True


@dataclass(frozen=True)
class ExtractSummary:
    out: Path
    rank: int
    decomposed: int
    saved_whole: int
    seconds: float

    def __str__(self) -> str:
        return (f"wrote {self.out}: {self.decomposed} module(s) as LoRA (r ≤ {self.rank}), "
                f"{self.saved_whole} saved whole, in {self.seconds:.1f} s")  # fmt: skip


def low_rank_factors(delta: Tensor, max_rank: int, sv_epsilon: float = 0.0,
                     distribute_scale: bool = True) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(A [r, in], B [out, r]) with B·A the best rank-r approximation of the matrix `delta` [out, in]
    (float32 SVD on `delta`'s device; r and the scale split as in the module docstring)."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(max_rank, s.shape[0])
    if sv_epsilon > 0:
        r = min(r, int((s > sv_epsilon).sum()))
    if distribute_scale:
        root = s[:r].sqrt()
        return root[:, None] * vh[:r], u[:, :r] * root
    return s[:r, None] * vh[:r], u[:, :r]


def check_options(opts: ExtractOptions) -> None:
    """Every bad option, reported together in one line, before any file is opened."""
    problems = []
    if opts.max_rank < 1:
        problems.append(f"--max-rank must be at least 1, got {opts.max_rank}")
    if not opts.sv_epsilon >= 0:
        problems.append(f"--sv-epsilon must be ≥ 0, got {opts.sv_epsilon}")
    if opts.threads is not None and opts.threads < 1:
        problems.append(f"--num-threads must be at least 1, got {opts.threads}")
    for flag, patterns in (("--include-regex", opts.include), ("--exclude-regex", opts.exclude)):
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                problems.append(f"{flag} '{p}' is not a valid regular expression ({exc})")
    if problems:
        raise ConfigError("; ".join(problems))


def extract_lora(model: str, base: str, out: Path, opts: ExtractOptions = ExtractOptions()) -> ExtractSummary:
    """Write the adapter of `model` over `base` (references as `open_model` takes them) to `out`."""
    start = time.perf_counter()
    check_options(opts)
    device = resolve_device(opts.device, "--device")
    out = Path(out)
    check_output(out, opts.overwrite)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    ft_src = open_model(model, allow_pickle=opts.allow_pickle)
    try:
        base_src = open_model(base, allow_pickle=opts.allow_pickle)
        try:
            plan = _plan(model, ft_src, base_src, opts)
            with staged_output(out, opts.overwrite) as staging:
                ranks = _write_adapter(staging, plan, ft_src, base_src, opts, device)
                (staging / ADAPTER_CONFIG).write_text(json.dumps(_adapter_config(base, plan, ranks), indent=2) + "\n")
                if opts.write_card:
                    (staging / "README.md").write_text(_card(model, base, max(ranks.values(), default=0)))
        finally:
            base_src.close()
    finally:
        ft_src.close()
    full = sum(t.kind == "full" for t in plan.targets)
    return ExtractSummary(out, max(ranks.values(), default=0), len(ranks), full, time.perf_counter() - start)


def _plan(model: str, ft: TensorSource, base: TensorSource, opts: ExtractOptions) -> TargetPlan:
    """The targets, with every decomposed tensor checked against the base (names and shapes)."""
    arch = build_architecture(_config_folder(model), opts.trust_remote_code)
    present = set(ft.names())
    embed_lora = opts.embed_lora
    emb = input_embedding_weight(arch)
    resized = embed_lora and emb in present and emb in set(base.names()) and ft.meta(emb)[0] != base.meta(emb)[0]
    embed_lora = embed_lora and not resized  # mergekit's rule: a resized vocabulary is saved whole
    plan = plan_targets(arch, present, embed_lora=embed_lora, save_modules=list(opts.save_modules),
                        include=list(opts.include), exclude=list(opts.exclude),
                        skip_undecomposable=opts.skip_undecomposable)  # fmt: skip
    plan.architecture = type(arch).__name__
    if resized:
        plan.notes.append(f"{emb}: vocabulary {ft.meta(emb)[0][0]} vs the base's {base.meta(emb)[0][0]}; embeddings saved whole, not --embed-lora")
    if not plan.targets:
        raise ConfigError(f"{model}: no module of the architecture matches a tensor of the checkpoint (or the regexes exclude all)")
    if any(t.kind == "embedding" for t in plan.targets) and any(t.kind == "lora" and t.bias for t in plan.targets):
        raise ConfigError("--embed-lora on a model whose linear layers have biases: peft cannot load a bias delta "
                          "(lora_bias) in an adapter with embedding LoRA; drop --embed-lora (embeddings saved whole)")  # fmt: skip
    base_names = set(base.names())
    for t in plan.targets:
        if t.kind == "full":
            continue
        for name in filter(None, (t.weight, t.bias)):
            if name not in base_names:
                raise TensorError(f"{name}: in the fine-tuned model but not in the base {base.label}; exclude it with -e")
            if ft.meta(name)[0] != base.meta(name)[0]:
                raise TensorError(f"{name}: fine-tuned shape {ft.meta(name)[0]}, base {base.meta(name)[0]}; "
                                  "save it whole with --save-module or exclude it with -e")  # fmt: skip
    return plan


def _config_folder(ref: str) -> Path:
    """Where the fine-tuned model's config.json is: MODEL of `MODEL+ADAPTER`, or an adapter's base."""
    if "+" in ref and not Path(ref).exists():
        ref = ref.split("+", 1)[0]
    path = local_folder(ref)
    over = adapter_base_model(path) if path.is_dir() and is_lora_adapter(path) else None
    return _config_folder(over) if over else path


def _write_adapter(folder: Path, plan: TargetPlan, ft: TensorSource, base: TensorSource,
                   opts: ExtractOptions, device: torch.device) -> dict[str, int]:  # fmt: skip
    """Decompose, then write `adapter_model.safetensors` in `folder`; returns {module: rank}."""
    bar = tqdm(total=len(plan.targets), unit="module", desc="extract-lora", disable=not opts.progress)
    factors: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    empty = []  # rank 0: every singular value ≤ sv_epsilon
    for t in plan.targets:
        if t.kind != "full":
            tensors = _decompose(t, ft, base, opts, device)
            if tensors:
                factors.update(tensors)
                ranks[t.module] = next(iter(tensors.values())).shape[0]
            else:
                empty.append(t.module)
            bar.update()
    if not ranks:
        bar.close()
        why = f"every one has rank 0 under --sv-epsilon {opts.sv_epsilon}" if empty else "the regexes and --save-module leave none"
        raise ConfigError(f"no module to decompose ({why}); peft cannot load an adapter of rank 0")
    if empty:
        plan.notes.append(f"{len(empty)} module(s) with no singular value above --sv-epsilon left out, e.g. {empty[0]}")
    full = [t for t in plan.targets if t.kind == "full"]
    entries = [(n, v.dtype, tuple(v.shape)) for n, v in factors.items()]
    for t in full:
        for local, src in t.tensors.items():
            shape, dtype = ft.meta(src)
            entries.append((f"{PREFIX}{t.module}.{local}", dtype, shape))
    writer = ShardedWriter(folder, entries, max_shard_size=1 << 62)  # one file, as peft expects
    try:
        # Flat: ShardedWriter's byte view fails on a 0-d tensor (BatchNorm's num_batches_tracked)
        # and on a size-1 last dim with a stride (a rank-1 B cut from LAPACK's column-major U).
        for name, value in factors.items():
            writer.write(name, value.reshape(-1))
        for t in full:
            for local, src in t.tensors.items():
                writer.write(f"{PREFIX}{t.module}.{local}", ft.read(src).reshape(-1))
            bar.update()
        writer.finish()
    finally:
        writer.close()
        bar.close()
    (folder / writer.files[0]).rename(folder / ADAPTER_WEIGHTS)
    for note in plan.notes:
        tqdm.write(f"note: {note}", file=sys.stderr)
    return ranks


def _decompose(t: Target, ft: TensorSource, base: TensorSource, opts: ExtractOptions,
               device: torch.device) -> dict[str, Tensor]:  # fmt: skip
    """The adapter tensors of one decomposed module (empty when its rank comes out 0)."""
    dtype = ft.meta(t.weight)[1]
    delta = ft.read(t.weight).to(device, torch.float32) - base.read(t.weight).to(device, torch.float32)
    if not torch.isfinite(delta).all():
        raise TensorError(f"{t.weight}: the fine-tuned model or the base holds NaN/Inf")
    if t.kind == "embedding":
        delta = delta.T
    a, b = low_rank_factors(delta.reshape(delta.shape[0], -1), opts.max_rank, opts.sv_epsilon, opts.distribute_scale)
    r = a.shape[0]
    if r == 0:
        return {}
    a, b = a.reshape(r, *delta.shape[1:]), b.reshape(*b.shape, *[1] * (delta.dim() - 2))
    kind, suffix = ("lora_embedding", "") if t.kind == "embedding" else ("lora", ".weight")
    out = {f"{PREFIX}{t.module}.{kind}_A{suffix}": a, f"{PREFIX}{t.module}.{kind}_B{suffix}": b}
    if t.bias and t.kind == "lora":
        out[f"{PREFIX}{t.module}.lora_B.bias"] = ft.read(t.bias).float() - base.read(t.bias).float()
    return {n: v.to(dtype).cpu() for n, v in out.items()}


def _adapter_config(base: str, plan: TargetPlan, ranks: dict[str, int]) -> dict:
    """mergekit-extract-lora's `adapter_config.json`: r = lora_alpha = the largest rank, the
    others in rank_pattern = alpha_pattern (scale 1 everywhere)."""
    r = max(ranks.values(), default=0)
    pattern = {m: k for m, k in ranks.items() if k != r}
    has_bias = any(t.bias and t.kind == "lora" and t.module in ranks for t in plan.targets)
    return {
        "base_model_name_or_path": base,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if plan.architecture.endswith("ForCausalLM") else None,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": pattern,
        "target_modules": sorted({m.split(".")[-1] for m in ranks}),
        "modules_to_save": plan.modules_to_save,
        "lora_bias": bool(has_bias),
        "use_rslora": False,
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }


def _card(model: str, base: str, rank: int) -> str:
    return (f"---\nbase_model: {base}\nlibrary_name: peft\ntags:\n- mergekit-het\n- lora\n- extracted\n---\n\n"
            f"# LoRA extracted from {model}\n\nA rank-{rank} LoRA adapter: the truncated SVD of the difference "
            f"between `{model}` and its base `{base}`, made with `mergekit-het extract-lora`.\n")  # fmt: skip
