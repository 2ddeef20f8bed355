"""FusionBench's merge algorithms and mergekit-het's on the same tiny model: are the tensors equal?

    python -m venv /tmp/fb-venv && /tmp/fb-venv/bin/pip install torch==2.13.0 \
        && /tmp/fb-venv/bin/pip install -c <(echo torch==2.13.0) fusion-bench     # once (0.2.33 tested)
    python bench/fusionbench_equivalence.py [--arch bert|llama] [--fb-python /tmp/fb-venv/bin/python]

Builds a tiny transformers model from its config (BERT sequence classifier, 3 labels, or a
Llama-shaped causal LM; float32), a base and 3 experts θᵢ = θ₀ + τᵢ (τᵢ dense Gaussian noise plus
a rank-2 part, so singular spectra are not flat), and, for RegMean and Fisher, each expert's
statistics on its own random token data, computed once here: the Gram Σ x xᵀ of every nn.Linear's
input rows (forward hooks, padding-free) and the exact diagonal Fisher Σₓ Σ_y p(y|x)(∂ log p(y|x)/∂θ)²
(over the labels, or the vocabulary at the last position). Both sides get the same numbers in
their own formats: ours `<weight>.gram` / `.gram_rows` / `.fisher` / `fisher_examples` sums,
FusionBench's per-module mean Grams and per-parameter mean Fishers (through its `get_regmean_weights`
/ `get_fisher_weights` hooks, which its data loaders would otherwise fill). FusionBench runs in
its own virtual environment, in a subprocess (this same file with `--fusionbench-side`), through
its algorithm classes (`TaskArithmeticAlgorithm`, `TiesMergingAlgorithm`,
`TaskSingularVectorMerging`, `ISO_C_Merge`, `ISO_CTS_Merge`, `RegMeanAlgorithm`,
`FisherMergingAlgorithm`) on a `BaseModelPool`; tensors go through safetensors files. Ours run
through `mergekit_het.merge_state_dicts`. Prints, per job, the max |Δ| over every tensor, the
number of elements that differ at all and by more than the tolerance, and a verdict; then the
parameters of each side (FusionBench's config defaults beside ours). Exit 1 if a job that should
agree does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

EXPERTS = 3
EXAMPLES, SEQ = 64, 16  # per expert; ≥ hidden rows for the pooler/classifier Grams (one row per example)


@dataclass(frozen=True)
class Job:
    """One comparison: FusionBench's algorithm class with `fb` kwargs, ours `method` with `ours`."""

    name: str
    fb_class: str
    fb: dict
    method: str
    ours: dict
    agree: bool = True  # False: the two sides differ by design (`note` says how)
    float64: bool = True  # False: ours cannot merge float64 inputs with this method (`note` says why)
    agree_where: float = 0.0  # > 0: also compare where every model's mean Fisher is at least this
    note: str = ""
    defaults: str = ""


TIES_FB = {"scaling_factor": 0.3, "threshold": 20, "remove_keys": []}
JOBS = [
    Job("task_arithmetic", "TaskArithmeticAlgorithm", {"scaling_factor": 0.3}, "task_arithmetic", {"lambda": 0.3},
        defaults="FB scaling_factor 0.3 | ours lambda 1.0, weight per model"),
    Job("ties, sum", "TiesMergingAlgorithm", {**TIES_FB, "merge_func": "sum"}, "ties_paper",
        {"density": 0.2, "lambda": 0.3, "normalize": False}, float64=False,
        note="float32 only: ties_paper's threshold search views float32 bits, float64 inputs fail (a known gap)",
        defaults="FB scaling_factor 0.3, threshold 20 (% kept, whole model), merge_func sum | "
                 "ours ties_paper density 0.2, lambda 1.0, normalize true (= merge_func mean)"),
    Job("ties, mean", "TiesMergingAlgorithm", {**TIES_FB, "merge_func": "mean"}, "ties_paper",
        {"density": 0.2, "lambda": 0.3, "normalize": True}, float64=False),
    Job("ties (mergekit's, per tensor)", "TiesMergingAlgorithm", {**TIES_FB, "threshold": 40, "merge_func": "mean"},
        "ties", {"density": 0.4, "lambda": 0.3}, agree=False,
        note="by design: mergekit's ties keeps the top 40% of each tensor, FusionBench (and ties_paper) of the whole "
             "model (40%, not 20%: mergekit's refuses a density that keeps no entry of the 3-element classifier bias)"),
    Job("tsv", "TaskSingularVectorMerging", {"alpha": 1.0}, "tsv", {"alpha": 1.0},
        defaults="FB alpha 1 (config; None = 1), exclude_keys none (the official code also averages CLIP's "
                 "text_projection) | ours alpha 1.0, svd true (svd: false per tensor by filter)"),
    Job("iso_c", "ISO_C_Merge", {"scaling_factor": 1.0}, "iso_c", {"alpha": 1.0},
        defaults="FB scaling_factor 1.0 | ours alpha 1.0"),
    Job("iso_cts", "ISO_CTS_Merge", {"scaling_factor": 1.0, "common_space_fraction": 0.8}, "iso_cts",
        {"alpha": 1.0, "common_space_fraction": 0.8},
        defaults="FB scaling_factor 1.0, common_space_fraction 0.8 | ours alpha 1.0, common_space_fraction 0.8"),
    Job("iso_cts, f = 0.5", "ISO_CTS_Merge", {"scaling_factor": 1.0, "common_space_fraction": 0.5}, "iso_cts",
        {"alpha": 1.0, "common_space_fraction": 0.5}),
    Job("regmean, α = 1", "RegMeanAlgorithm", {"reduce_non_diagonal_ratio": 1.0}, "regmean", {"reduce_nondiag": 1.0},
        defaults="FB reduce_non_diagonal_ratio 0.1 (regmean.yaml; 0.95 CLIP, 0.6 GPT-2), mean Grams | "
                 "ours reduce_nondiag 1.0 (official), gram mean"),
    Job("regmean, α = 0.1", "RegMeanAlgorithm", {"reduce_non_diagonal_ratio": 0.1}, "regmean", {"reduce_nondiag": 0.1}),
    Job("fisher, each side's defaults", "FisherMergingAlgorithm",
        {"normalize_fisher_weight": True, "minimal_fisher_weight": 1e-6}, "fisher", {}, agree=False, agree_where=1e-3,
        note="by design: FB adds 1e-6 to every model's Fisher (MergeLM), ours floors model 0's at 1e-6 (official); "
             "this tiny model's Fishers are mostly near or below 1e-6, so the floors decide much of the merge",
        defaults="FB normalize_fisher_weight true, minimal_fisher_weight 1e-6 added to all | ours normalize_fishers "
                 "true, fisher_floor 1e-6 as max() on model 0 only (favor_target_model true)"),
    Job("fisher, no floor", "FisherMergingAlgorithm", {"normalize_fisher_weight": True, "minimal_fisher_weight": 0.0},
        "fisher", {"fisher_floor": 0.0, "favor_target_model": False}),
    Job("fisher, unnormalized", "FisherMergingAlgorithm", {"normalize_fisher_weight": False, "minimal_fisher_weight": 0.0},
        "fisher", {"fisher_floor": 0.0, "favor_target_model": False, "normalize_fishers": False}),
]  # fmt: skip


def build_model(config: dict) -> torch.nn.Module:
    """The tiny model of `config` ({"arch": ..., transformers config fields})."""
    fields = {k: v for k, v in config.items() if k != "arch"}
    if config["arch"] == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(**fields))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))


def model_config(arch: str) -> dict:
    if arch == "bert":
        return {"arch": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 48, "max_position_embeddings": SEQ, "num_labels": 3, "attn_implementation": "eager",
                "pad_token_id": None}  # no padding row: its Fisher would be 0 in every model  # fmt: skip
    return {"arch": "llama", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 48, "max_position_embeddings": SEQ,
            "tie_word_embeddings": False, "attn_implementation": "eager"}  # fmt: skip


def _last(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1] if logits.dim() == 3 else logits  # a causal LM: the token after the sequence


def statistics(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours-format sums: Σ x xᵀ of every nn.Linear's input rows (float64 accumulation) and the exact
    diagonal Fisher Σₓ Σ_y p(y|x) g_y², g_y = ∂ log p(y|x)/∂θ, by `torch.func` (vmap of jacrev)."""
    grams: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(name: str):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]

        return record

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def log_probs(p: dict, x: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = torch.func.functional_call(model, p, args=(), kwargs={k: v[None] for k, v in x.items()}).logits
        return torch.log_softmax(_last(logits)[0], -1)

    fisher = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    per_example = torch.func.vmap(torch.func.jacrev(log_probs), in_dims=(None, 0))
    for start in range(0, EXAMPLES, 16):
        x = {k: v[start : start + 16] for k, v in batch.items()}
        jac = per_example(params, x)  # name -> (examples, classes, *shape)
        prob = torch.func.vmap(log_probs, in_dims=(None, 0))(params, x).exp().double()
        for n, j in jac.items():
            fisher[n] += torch.einsum("ec,ec...->...", prob, j.double().square())
    out = {f"{n}.weight.gram": g.float() for n, g in grams.items()}
    out |= {f"{n}.weight.gram_rows": torch.tensor(rows[n]) for n in grams}
    out |= {f"{n}.fisher": f.float() for n, f in fisher.items()}
    out["fisher_examples"] = torch.tensor(EXAMPLES)
    return out


def _rank2(shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    a, b = torch.randn(shape[0], 2, generator=gen), torch.randn(2, shape[1], generator=gen)
    return 0.05 * (a @ b) / 2


def make_inputs(work: Path, arch: str, seed: int) -> None:
    """Write config.json, base / expert{i} weights, ours stats{i} and FusionBench's fb_stats{i}."""
    torch.manual_seed(seed)
    config = model_config(arch)
    (work / "config.json").write_text(json.dumps(config))
    base = build_model(config).eval()
    base_sd = {k: v.contiguous() for k, v in base.state_dict().items()}
    save_file(base_sd, str(work / "base.safetensors"))
    gen = torch.Generator().manual_seed(seed + 1)
    for i in range(EXPERTS):
        sd = {}
        for k, v in base_sd.items():
            tau = 0.02 * torch.randn(v.shape, generator=gen)
            sd[k] = v + (tau + _rank2(v.shape, gen) if v.dim() == 2 else tau)
        save_file(sd, str(work / f"expert{i}.safetensors"))
        expert = build_model(config).eval()
        expert.load_state_dict(sd)
        vocab = config["vocab_size"]  # each expert's data favours its own third of the vocabulary, all tokens occur
        odds = 1 + 4 * (torch.arange(vocab) * EXPERTS // vocab == i).double()
        batch = {"input_ids": torch.multinomial(odds, EXAMPLES * SEQ, True, generator=gen).view(EXAMPLES, SEQ)}
        if arch == "bert":
            batch["token_type_ids"] = torch.randint(0, 2, (EXAMPLES, SEQ), generator=gen)
        ours = statistics(expert, batch)
        save_file(ours, str(work / f"stats{i}.safetensors"))
        fb = {}
        for k, v in ours.items():
            if k.endswith(".weight.gram"):
                fb["gram:" + k.removesuffix(".weight.gram")] = v / float(ours[k + "_rows"])
            elif k.endswith(".fisher"):
                fb["fisher:" + k.removesuffix(".fisher")] = v / float(ours["fisher_examples"])
        save_file(fb, str(work / f"fb_stats{i}.safetensors"))


DTYPES = {"float32": (torch.float32, 1e-5), "float64": (torch.float64, 1e-9)}  # dtype, absolute tolerance


def load(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A safetensors file with its floating tensors in `dtype` (counts stay int64)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def _slug(job: Job, dtype: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in job.name) + "." + dtype


def fusionbench_side(work: Path) -> None:
    """Run every job through FusionBench's algorithm classes (in FusionBench's venv), in each dtype."""
    import fusion_bench.method as fbm
    from fusion_bench.method.fisher_merging.fisher_merging import FisherMergingAlgorithm
    from fusion_bench.method.regmean.regmean import RegMeanAlgorithm
    from fusion_bench.modelpool import BaseModelPool

    config = json.loads((work / "config.json").read_text())
    stats: list[dict] = []

    def given(kind: str, name: str) -> dict:
        return {k.split(":", 1)[1]: v for k, v in stats[int(name.removeprefix("expert"))].items() if k.startswith(kind)}

    class Pool(BaseModelPool):
        def load_train_dataset(self, dataset_name, *args, **kwargs):
            return None  # the statistics are given, no data loader runs

    class GivenGrams(RegMeanAlgorithm):
        def get_regmean_weights(self, model_name, model, train_dataset, linear_modules_to_merge):
            return given("gram:", model_name)

    class GivenFishers(FisherMergingAlgorithm):
        def get_fisher_weights(self, model_name, model, train_dataset, param_names_to_merge):
            return given("fisher:", model_name)

    for dtype_name, (dtype, _) in DTYPES.items():
        stats[:] = [load(work / f"fb_stats{i}.safetensors", dtype) for i in range(EXPERTS)]
        for job in JOBS:
            models = {}
            for name in ["_pretrained_", *(f"expert{i}" for i in range(EXPERTS))]:
                models[name] = build_model(config).to(dtype).eval()
                models[name].load_state_dict(load(work / f"{'base' if name == '_pretrained_' else name}.safetensors", dtype))
            if job.fb_class == "RegMeanAlgorithm":
                algo = GivenGrams(num_regmean_examples=EXAMPLES, exclude_param_names_regex=[], weight_transpose=True, **job.fb)
            elif job.fb_class == "FisherMergingAlgorithm":
                algo = GivenFishers(num_fisher_examples=EXAMPLES, exclude_param_names_regex=[], **job.fb)
            else:
                algo = getattr(fbm, job.fb_class)(**job.fb)
            with torch.no_grad():
                merged = algo.run(Pool(models)).state_dict()
            save_file({k: v.contiguous() for k, v in merged.items()}, str(work / f"fb_{_slug(job, dtype_name)}.safetensors"))


def ours(work: Path, job: Job, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our merge of the same inputs (float64 inputs are merged in float64)."""
    from mergekit_het.merge.engine import merge_state_dicts

    base = load(work / "base.safetensors", dtype)
    experts = [load(work / f"expert{i}.safetensors", dtype) for i in range(EXPERTS)]
    stats = [load(work / f"stats{i}.safetensors", dtype) for i in range(EXPERTS)]
    per_model = [{"weight": 1.0} for _ in experts]
    return merge_state_dicts(job.method, experts, base, job.ours, per_model, statistics=stats)


@dataclass
class Result:
    max_diff: float = 0.0
    differing: int = 0
    above_tol: int = 0
    numel: int = 0
    worst: str = ""
    problems: list[str] = field(default_factory=list)


def fisher_at_least(work: Path, floor: float) -> dict[str, torch.Tensor]:
    """Per tensor, where every model's mean Fisher is ≥ `floor` (both floors are then negligible)."""
    stats = [load_file(str(work / f"fb_stats{i}.safetensors")) for i in range(EXPERTS)]
    return {k.removeprefix("fisher:"): torch.stack([s[k] for s in stats]).amin(0) >= floor
            for k in stats[0] if k.startswith("fisher:")}  # fmt: skip


def compare(theirs: dict[str, torch.Tensor], mine: dict[str, torch.Tensor], tol: float,
            where: dict[str, torch.Tensor] | None = None) -> Result:  # fmt: skip
    """Differences over every tensor (or, with `where`, over its selected elements)."""
    r = Result()
    if set(theirs) != set(mine):
        r.problems.append(f"tensor names differ: {sorted(set(theirs) ^ set(mine))[:4]}")
    for name in sorted(set(theirs) & set(mine)):
        d = (theirs[name].double() - mine[name].double()).abs()
        if where is not None:
            d = d[where[name]] if bool(where[name].any()) else d.new_zeros(0)
        if not bool(torch.isfinite(d).all()):
            r.problems.append(f"{name}: not finite")
        r.numel += d.numel()
        if d.numel() == 0:
            continue
        r.differing += int((d != 0).sum())
        r.above_tol += int((d > tol).sum())
        if float(d.max()) > r.max_diff:
            r.max_diff, r.worst = float(d.max()), name
    return r


def verdict(job: Job, r32: Result, r64: Result | None) -> str:
    """identical / round-off / float32 round-off only (float64 within its tolerance) / by design / DIFFERS."""
    r64 = r64 or r32  # a float32-only job is judged on float32
    if r32.problems or r64.problems:
        return "ERROR: " + "; ".join(r32.problems + r64.problems)[:200]
    if r32.differing == 0 and r64.differing == 0:
        return "identical"
    if r32.above_tol == 0 and r64.above_tol == 0:
        return "equal (round-off)"
    if r64.above_tol == 0:
        return f"equal in float64; float32 round-off (worst {r32.worst})"
    return "differs by design (note)" if not job.agree else f"DIFFERS (worst {r64.worst})"


def report(work: Path, arch: str) -> bool:
    """Print the table and the parameters; True if every job that should agree does."""
    ok = True
    tols = ", ".join(f"{k} {t:g}" for k, (_, t) in DTYPES.items())
    print(f"\nFusionBench vs mergekit-het, tiny {arch} (CPU), base + {EXPERTS} experts; tolerance (abs): {tols}\n")
    print("| job | FusionBench | mergekit-het | max abs diff f32 | f64 | elements != f32 (of N) | > tol f32 | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for job in JOBS:
        r32, r64 = (compare(load(work / f"fb_{_slug(job, n)}.safetensors", d), ours(work, job, d), t)
                    if job.float64 or d != torch.float64 else None for n, (d, t) in DTYPES.items())  # fmt: skip
        v = verdict(job, r32, r64)
        ok &= not (job.agree and v.startswith(("DIFFERS", "ERROR")))
        fb_args = ", ".join(f"{k}={v}" for k, v in job.fb.items() if k != "remove_keys")
        our_args = ", ".join(f"{k}={v}" for k, v in job.ours.items())
        print(f"| {job.name} | {job.fb_class}({fb_args}) | {job.method}({our_args}) | {r32.max_diff:.3g} | "
              f"{f'{r64.max_diff:.3g}' if r64 else '—'} | {r32.differing} of {r32.numel} | {r32.above_tol} | {v} |")  # fmt: skip
    print("\nNotes:")
    for job in JOBS:
        if job.note:
            print(f"- {job.name}: {job.note}")
        if job.agree_where:
            d, tol = DTYPES["float32"]
            r = compare(load(work / f"fb_{_slug(job, 'float32')}.safetensors", d), ours(work, job, d), tol,
                        fisher_at_least(work, job.agree_where))  # fmt: skip
            print(f"  where every model's mean Fisher is >= {job.agree_where:g} ({r.numel} elements): "
                  f"max abs diff {r.max_diff:.3g}, {r.above_tol} above {tol:g}")
    print("- every job: both sides treat the same tensors alike (TSV/Iso: every 2-D tensor, embeddings and head "
          "included, SVD-merged, the rest averaged; RegMean: each nn.Linear weight with a Gram solved, the rest "
          "averaged; Fisher: every parameter Fisher-weighted), so every tensor is compared")
    print("\nDefaults (FusionBench config | ours):")
    for job in JOBS:
        if job.defaults:
            print(f"- {job.method}: {job.defaults}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("bert", "llama"), default="bert")
    ap.add_argument("--fb-python", default="/tmp/fb-venv/bin/python", help="python of the venv with fusion-bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="folder for the exchanged files (default: a temporary one)")
    ap.add_argument("--fusionbench-side", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fusionbench_side:
        return fusionbench_side(args.fusionbench_side)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        make_inputs(work, args.arch, args.seed)
        done = subprocess.run([args.fb_python, __file__, "--fusionbench-side", str(work)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"FusionBench side failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        ok = report(work, args.arch)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
