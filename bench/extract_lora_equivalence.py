"""mergekit-extract-lora 0.1.5 and mergekit-het extract-lora on the same pair: are the adapters equal?

    bash bench/setup_mergekit.sh                 # once (or any mergekit 0.1.5 venv: --mergekit-cmd)
    python bench/extract_lora_equivalence.py     # ~1 min on 2 cores; exit 1 if an adapter differs

Builds a tiny Llama-shaped float32 base and one fine-tuned model (bench/make_checkpoints.py: 2
layers, hidden 64, vocab 512; Δ = dense noise + sparse spikes, full rank), runs both CLIs in fresh
processes for each case below and compares, per adapter tensor, the reconstructed update B·A
(singular vectors have a sign freedom, so products are compared, not factors) and every tensor
saved whole; plus the adapter_config.json fields (r, lora_alpha, rank_pattern, target_modules as
a set, modules_to_save). Prints per tensor the max |Δ| and per case the overall max.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_checkpoints import CheckpointSpec, Shape, make_checkpoints  # noqa: E402

BENCH = Path(__file__).resolve().parent
SHAPE = Shape(hidden=64, layers=2, intermediate=176, vocab=512, heads=4, kv_heads=2)
DEFAULT_MERGEKIT = "/tmp/mergekit-venv/bin/mergekit-extract-lora"
CASES: dict[str, list[str]] = {
    "max_rank_16": ["--max-rank", "16"],
    "no_distribute_scale": ["--max-rank", "8", "--no-distribute-scale"],
    "sv_epsilon": ["--max-rank", "64", "--sv-epsilon", "0.2"],  # ranks vary by module: rank_pattern in use
    "embed_lora": ["--max-rank", "32", "--embed-lora"],
    "include_exclude": ["--max-rank", "4", "-i", "self_attn", "-e", "layers\\.1\\."],
}  # not --save-module: mergekit 0.1.5 crashes on it ('tuple' object has no attribute 'append')
CONFIG_KEYS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "modules_to_save", "task_type")


def updates(folder: Path) -> dict[str, torch.Tensor]:
    """Every module's update from an adapter: B·A for LoRA pairs (in float64), other tensors as saved."""
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for name, t in tensors.items():
        for a_key, b_key in ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B")):
            if name.endswith(a_key):
                b = tensors[name.removesuffix(a_key) + b_key]
                out[name.removesuffix(a_key) + " B·A"] = b.double().flatten(1) @ t.double().flatten(1)
        if "lora_A" not in name and "lora_B.weight" not in name and "lora_embedding" not in name:
            out[name] = t.double()
    return out


def compare(mk: Path, het: Path, per_tensor: bool) -> float:
    """Print the differences of two adapters; return the overall max |Δ| (inf if their keys differ)."""
    a, b = updates(mk), updates(het)
    if set(a) != set(b):
        print(f"  tensors only in mergekit's: {sorted(set(a) - set(b))[:5]}; only in ours: {sorted(set(b) - set(a))[:5]}")
        return float("inf")
    worst = 0.0
    for name in sorted(a):
        if a[name].shape != b[name].shape:
            print(f"  {name}: shape {tuple(a[name].shape)} vs {tuple(b[name].shape)}")
            return float("inf")
        d = (a[name] - b[name]).abs().max().item() if a[name].numel() else 0.0
        worst = max(worst, d)
        if per_tensor:
            print(f"  {name.removeprefix('base_model.model.'):55s} {tuple(a[name].shape)!s:>12} max|Δ| {d:.3g}")
    ca, cb = (json.loads((f / "adapter_config.json").read_text()) for f in (mk, het))
    for key in CONFIG_KEYS:
        if ca.get(key) != cb.get(key):
            print(f"  adapter_config {key}: mergekit {ca.get(key)!r}, ours {cb.get(key)!r}")
    raw_a, raw_b = (load_file(f / "adapter_model.safetensors") for f in (mk, het))
    same = sum(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)
    print(f"  raw tensors (factors included) bit-identical: {same} of {len(raw_a)}")
    ranks = sorted(set(ca["rank_pattern"].values()) | {ca["r"]})
    print(f"  r {ca['r']}, ranks {ranks[0]}..{ranks[-1]}, {len(ca['rank_pattern'])} module(s) in rank_pattern")
    if set(ca["target_modules"]) != set(cb["target_modules"]):
        print(f"  adapter_config target_modules: mergekit {sorted(ca['target_modules'])}, ours {sorted(cb['target_modules'])}")
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=BENCH / "_work" / "extract_lora", help="checkpoints and outputs go here")
    ap.add_argument("--mergekit-cmd", default=DEFAULT_MERGEKIT, help=f"mergekit-extract-lora (default {DEFAULT_MERGEKIT})")
    ap.add_argument("--het-cmd", default=f"{shlex.quote(sys.executable)} -m mergekit_het.cli",
                    help="mergekit-het command (default: this Python's -m mergekit_het.cli)")  # fmt: skip
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="checkpoint dtype (mergekit subtracts in it, we in float32: only float32 can be bit-exact)")  # fmt: skip
    ap.add_argument("--per-tensor", action=argparse.BooleanOptionalAction, default=True, help="one line per tensor")
    args = ap.parse_args(argv)
    spec = CheckpointSpec(shape=SHAPE, experts=1, dtype=args.dtype, dense_std=0.02)
    base, ft = make_checkpoints(spec, args.work / f"ckpt-{args.dtype}")
    args.work.mkdir(parents=True, exist_ok=True)
    verdicts = {}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for label, flags in CASES.items():
            if args.cases and label not in args.cases.split(","):
                continue
            mk, het = Path(tmp) / f"{label}.mk", Path(tmp) / f"{label}.het"
            common = ["--model", str(ft), "--base-model", str(base), *flags]
            for cmd in ([*shlex.split(args.mergekit_cmd), *common, "--out-path", str(mk)],
                        [*shlex.split(args.het_cmd), "extract-lora", *common, "--out-path", str(het), "--quiet"]):  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{label}: exit {done.returncode}: {shlex.join(cmd)}\n{done.stderr[-800:]}")
                    return 1
            print(f"{label} ({' '.join(flags)}):")
            verdicts[label] = compare(mk, het, args.per_tensor)
            print(f"  overall max|Δ| {verdicts[label]:.3g}\n")
    print("| case | overall max abs diff of B·A and saved tensors |\n|---|---:|")
    for label, worst in verdicts.items():
        print(f"| {label} | {worst:.3g} |")
    return 0 if all(w == 0.0 for w in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
