"""Every merge method, through mergekit-yaml 0.1.5 and mergekit-het merge: are the outputs equal?

    bash bench/setup_mergekit.sh            # once (or any mergekit 0.1.5 venv: --mergekit-cmd)
    python bench/mergekit_equivalence.py    # ~6 min on 2 cores; exit 1 if a deterministic config differs
    python bench/mergekit_equivalence.py --configs nuslerp,ties --chunk-size 4096

Builds tiny Llama-shaped float32 checkpoints (base + 3 experts, 2 layers, hidden 64, vocab 512;
bench/make_checkpoints.py), writes one mergekit YAML per config below (each method, some with
gradients, filters or non-default options; three `slices:` configs), runs both CLIs in fresh processes and compares every
output tensor (bench/outputs.py): per config the max |Δ| and the number of differing elements.
Deterministic methods must be bit-exact in float32. Random methods (DARE, DELLA) draw their masks
from mergekit's global torch RNG in its execution order, ours from a generator seeded per tensor
name, so with the same --random-seed their masks differ: they are run and reported as "not
comparable" (their Δ is shown for information only).

With `--dtype bfloat16 --arithmetic config-dtype` every deterministic config must be bit-exact
too. mergekit 0.1.5 writes the dtype a method returns, and arcee_fusion (a float32 mask) and
ramplus_tl (a float32 λ) return float32 on bf16 inputs, where we write the config's dtype: those
are compared with mergekit's values rounded to it (verdict "bit-exact (rounded)"), and their
`out_dtype: float32` configs compare the files as written.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import default_mergekit_argv  # noqa: E402
from make_checkpoints import CheckpointSpec, Shape, make_checkpoints  # noqa: E402
from outputs import compare_outputs  # noqa: E402

BENCH = Path(__file__).resolve().parent
SHAPE = Shape(hidden=64, layers=2, intermediate=176, vocab=512, heads=4, kv_heads=2)  # 0.2M params
DEFAULT_MERGEKIT = "/tmp/mergekit-venv/bin/mergekit-yaml"  # the team's reference venv; else bench/compare.py's choice


@dataclass(frozen=True)
class Case:
    """One config: the method, which experts it merges (0 = the base), per-model and global parameters."""

    label: str
    method: str
    models: tuple[int, ...]
    base: bool = True
    model_params: tuple[dict, ...] = ()
    params: dict = field(default_factory=dict)
    random: bool = False
    slices: tuple[tuple[tuple[int, int, int, dict], ...], ...] = ()  # per slice: (model, start, end, parameters)
    out_dtype: str | None = None

    def config(self, folders: list[Path], dtype: str = "float32") -> dict:
        cfg: dict = {"merge_method": self.method, "dtype": dtype} | ({"out_dtype": self.out_dtype} if self.out_dtype else {})
        if self.base:
            cfg["base_model"] = str(folders[0])
        if self.slices:
            cfg["slices"] = [{"sources": [{"model": str(folders[i]), "layer_range": [a, b], **({"parameters": p} if p else {})}
                                          for i, a, b, p in sl]} for sl in self.slices]  # fmt: skip
            return cfg | ({"parameters": self.params} if self.params else {})
        params = self.model_params or tuple({} for _ in self.models)
        cfg["models"] = [{"model": str(folders[i]), **({"parameters": p} if p else {})} for i, p in zip(self.models, params)]
        if self.params:
            cfg["parameters"] = self.params
        return cfg


W3 = ({"weight": 0.5}, {"weight": 0.3}, {"weight": 0.7})
ATTN_GRADIENT = [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]
CASES = [
    Case("linear", "linear", (1, 2, 3), base=False, model_params=W3),
    Case("linear_no_normalize", "linear", (0, 1, 2), base=False, model_params=W3, params={"normalize": False}),
    Case("slerp_gradient", "slerp", (1,), params={"t": ATTN_GRADIENT}),
    Case("task_arithmetic", "task_arithmetic", (1, 2, 3), model_params=W3, params={"lambda": 0.8}),
    Case("ties", "ties", (1, 2, 3), model_params=W3, params={"density": 0.4}),
    Case("ties_gradient_density", "ties", (1, 2, 3), model_params=W3, params={"density": [0.2, 0.9], "normalize": False}),
    Case("breadcrumbs", "breadcrumbs", (1, 2, 3), model_params=W3, params={"density": 0.9, "gamma": 0.01}),
    Case("breadcrumbs_ties", "breadcrumbs_ties", (1, 2, 3), model_params=W3, params={"density": 0.8, "gamma": 0.05}),
    Case("dare_ties", "dare_ties", (1, 2, 3), model_params=W3, params={"density": 0.5}, random=True),
    Case("dare_linear", "dare_linear", (1, 2, 3), model_params=W3, params={"density": 0.5}, random=True),
    Case("della", "della", (1, 2, 3), model_params=W3, params={"density": 0.5, "epsilon": 0.1}, random=True),
    Case("della_linear", "della_linear", (1, 2, 3), model_params=W3, params={"density": 0.5, "epsilon": 0.1}, random=True),
    Case("model_stock", "model_stock", (1, 2, 3)),
    Case("model_stock_filter_wise", "model_stock", (1, 2, 3), params={"filter_wise": True}),
    Case("nuslerp", "nuslerp", (1, 2), model_params=({"weight": 1.0}, {"weight": 3.0})),
    Case("nuslerp_no_base_rows", "nuslerp", (1, 2), base=False, model_params=({"weight": 2.0}, {"weight": 1.0}),
         params={"nuslerp_flatten": False}),
    Case("nuslerp_columns", "nuslerp", (1, 2), model_params=({"weight": 1.0}, {"weight": 1.0}),
         params={"nuslerp_flatten": False, "nuslerp_row_wise": True}),
    Case("multislerp", "multislerp", (1, 2, 3), model_params=W3),
    Case("multislerp_no_base", "multislerp", (1, 2, 3), base=False, model_params=W3, params={"normalize_weights": False}),
    Case("karcher", "karcher", (1, 2, 3), base=False),
    Case("karcher_with_base", "karcher", (1, 2, 3), params={"max_iter": 20, "tol": 1e-6}),
    Case("sce", "sce", (1, 2, 3)),
    Case("sce_topk", "sce", (1, 2, 3), params={"select_topk": 0.3}),
    Case("nearswap", "nearswap", (1,), params={"t": 0.001}),
    Case("arcee_fusion", "arcee_fusion", (1,)),
    Case("arcee_fusion_out_float32", "arcee_fusion", (1,), out_dtype="float32"),  # mergekit's bf16 file dtype
    Case("ram", "ram", (1, 2, 3), params={"epsilon": 1e-3}),
    Case("ramplus_tl", "ramplus_tl", (1, 2, 3), params={"r": 0.5, "alpha": 0.3, "epsilon": 1e-3}),
    Case("ramplus_tl_out_float32", "ramplus_tl", (1, 2, 3), params={"r": 0.5, "alpha": 0.3, "epsilon": 1e-3},
         out_dtype="float32"),
    Case("passthrough", "passthrough", (2,), base=False),
    Case("passthrough_scale_gradient", "passthrough", (2,), base=False,
         params={"scale": [{"filter": "o_proj", "value": [0.0, 2.0]}, {"value": 1.0}]}),
    # configs as model cards write them: the base listed among the models, gradients of per-model
    # parameters with filters, mergekit options that change nothing (int8_mask)
    Case("task_arithmetic_base_listed", "task_arithmetic", (0, 1, 2), model_params=({"weight": 0.3}, {"weight": 1.0}, {"weight": 0.5})),
    Case("ties_int8_mask_lambda", "ties", (1, 2, 3), model_params=W3, params={"density": 0.5, "int8_mask": True, "lambda": 0.7}),
    Case("linear_weight_gradient_filter", "linear", (1, 2), base=False,
         model_params=({"weight": [{"filter": "mlp", "value": [0.2, 0.8]}, {"value": 0.5}]}, {"weight": 0.5})),
    Case("breadcrumbs_gamma_gradient", "breadcrumbs", (1, 2, 3), model_params=W3, params={"density": 0.9, "gamma": [0.01, 0.1]}),
    Case("nearswap_gradient", "nearswap", (1,), params={"t": [0.0001, 0.01]}),
    Case("multislerp_weight_gradient", "multislerp", (1, 2, 3),
         model_params=({"weight": [0.2, 0.8]}, {"weight": 0.5}, {"weight": 0.3})),
    Case("linear_global_weight", "linear", (1, 2, 3), base=False, model_params=({}, {"weight": 2.0}, {}), params={"weight": 0.5}),
    Case("ties_global_density_out_float16", "ties", (1, 2, 3), model_params=({"weight": 1.0}, {"weight": 0.5, "density": 0.2}, {"weight": 0.3}),
         params={"density": 0.6}, out_dtype="float16"),
    Case("model_stock_base_listed", "model_stock", (0, 1, 2, 3)),
    Case("slerp_model_card", "slerp", (), params={"t": [{"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
                                                      {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]}, {"value": 0.5}]},
         slices=(((0, 0, 2, {}), (1, 0, 2, {})),)),
    # slices (2-layer checkpoints): a frankenmerge with a repeated layer, and per-slice gradients and filters
    Case("slices_frankenmerge", "passthrough", (), base=False, slices=(((1, 0, 2, {}),), ((2, 1, 2, {}),), ((3, 0, 1, {}),))),
    Case("slices_linear_gradients", "linear", (), base=False, params={"normalize": False}, slices=(
        ((1, 0, 2, {"weight": [0.0, 1.0]}), (2, 0, 2, {"weight": 0.5})),
        ((3, 1, 2, {"weight": [0.5, 1.0]}), (0, 0, 1, {"weight": [{"filter": "layers.0.", "value": 2.0}, {"value": 0.0}]})))),
    Case("slices_ties_base", "ties", (), params={"density": 0.5}, slices=(
        ((0, 0, 1, {}), (1, 1, 2, {"weight": 0.7}), (2, 0, 1, {"weight": [0.2, 0.6]})),
        ((0, 1, 2, {}), (3, 0, 1, {"weight": 1.0}), (1, 1, 2, {"weight": 0.4})))),
]


def run(cmd: list[str], log: Path) -> float:
    """Run `cmd` (output to `log`); the wall time, or an error naming the log."""
    start = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-4:])
        raise RuntimeError(f"exit {rc}: {shlex.join(cmd)}\n{tail}")
    return time.perf_counter() - start


def compare_case(case: Case, folders: list[Path], tmp: Path, args: argparse.Namespace) -> dict:
    config = tmp / f"{case.label}.yml"
    config.write_text(yaml.safe_dump(case.config(folders, args.dtype), sort_keys=False))
    row = {"config": case.label, "method": case.method}
    seed = ["--random-seed", str(args.random_seed)] if case.random else []
    mk_cmd = [*shlex.split(args.mergekit_cmd), str(config), str(tmp / f"{case.label}.mk"), "--no-copy-tokenizer", *seed]
    het_cmd = [*shlex.split(args.het_cmd), "merge", str(config), str(tmp / f"{case.label}.het"), "--no-copy-tokenizer",
               "--quiet", "--seed", str(args.random_seed)]
    het_cmd += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
    het_cmd += ["--arithmetic", args.arithmetic]
    try:
        run(mk_cmd, tmp / f"{case.label}.mk.log")
        run(het_cmd, tmp / f"{case.label}.het.log")
    except RuntimeError as exc:
        return row | {"verdict": "FAILED", "error": str(exc)}
    mk_out = tmp / f"{case.label}.mk"
    diff = compare_outputs(mk_out, tmp / f"{case.label}.het")
    wider = widened_dtypes(diff.problems, args.dtype)
    if wider:  # mergekit wrote its promoted result dtype: compare its values rounded to the config's
        diff = compare_outputs(rounded_copy(mk_out, args.dtype), tmp / f"{case.label}.het")
        row["note"] = f"mergekit 0.1.5 wrote {'/'.join(sorted(wider))} (its result's promoted dtype), compared rounded to {args.dtype}"
    row |= {"tensors": diff.tensors, "elements": diff.elements, "differing": diff.differing, "max_abs": diff.max_abs,
            "where": diff.max_abs_tensor, "problems": diff.problems}
    if case.random:
        row["verdict"] = "not comparable (RNG)"
    else:
        row["verdict"] = "bit-exact" if diff.differing == 0 and not diff.problems else "DIFFERS"
        row["verdict"] += " (rounded)" if wider and row["verdict"] == "bit-exact" else ""
    return row


def widened_dtypes(problems: list[str], dtype: str) -> set[str]:
    """The dtypes mergekit wrote instead of the config's `dtype`, where every problem is such a
    dtype mismatch (mergekit 0.1.5 writes whatever dtype a method returns: arcee_fusion's float32
    mask and ramplus_tl's float32 λ promote a bf16 merge to float32); else empty."""
    want = f"torch.{dtype}"
    pairs = [p.split(": dtype ", 1)[1].split(" vs ") for p in problems if ": dtype " in p]
    if len(pairs) != len(problems) or any(ours != want for _, ours in pairs):
        return set()
    return {theirs.removeprefix("torch.") for theirs, _ in pairs}


def rounded_copy(folder: Path, dtype: str) -> Path:
    """`folder`'s safetensors with every float tensor rounded to `dtype` (round to nearest even,
    as a cast is), beside it."""
    out = folder.with_name(folder.name + "-rounded")
    out.mkdir(exist_ok=True)
    for path in sorted(folder.glob("*.safetensors")):
        tensors = load_file(path)
        save_file({k: t.to(getattr(torch, dtype)) if t.is_floating_point() else t for k, t in tensors.items()}, out / path.name)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        (out / index.name).write_text(index.read_text())
    return out


def print_table(rows: list[dict]) -> None:
    print("| config | method | tensors | elements | differing | max abs diff | verdict |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r['method']} | | | | | {r['verdict']} |")
            continue
        print(f"| {r['config']} | {r['method']} | {r['tensors']} | {r['elements']} | {r['differing']} | "
              f"{r['max_abs']:.3g} | {r['verdict']} |")
    for r in rows:
        if "error" in r:
            print(f"\n{r['config']}: {r['error']}")
        elif r["problems"] or r["verdict"] == "DIFFERS":
            print(f"\n{r['config']}: largest difference in {r['where']}; {'; '.join(r['problems'][:5])}")
    for r in rows:
        if "note" in r:
            print(f"\n{r['config']}: {r['note']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=BENCH / "_work" / "equivalence", help="checkpoints and outputs go here")
    default_mk = DEFAULT_MERGEKIT if Path(DEFAULT_MERGEKIT).exists() else shlex.join(default_mergekit_argv())
    ap.add_argument("--mergekit-cmd", default=default_mk, help=f"mergekit-yaml command (default {default_mk})")
    ap.add_argument("--het-cmd", default=f"{shlex.quote(sys.executable)} -m mergekit_het.cli",
                    help="mergekit-het command (default: this Python's -m mergekit_het.cli)")
    ap.add_argument("--configs", default=None, help="comma-separated config labels or methods (default all)")
    ap.add_argument("--random-seed", type=int, default=0, help="seed given to both tools for the random methods")
    ap.add_argument("--chunk-size", type=int, default=None, help="mergekit-het --chunk-size (exercise chunked forms)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="checkpoints and config dtype (default float32; bit-exact bf16 needs --arithmetic config-dtype)")
    ap.add_argument("--arithmetic", default="float32", choices=["float32", "config-dtype"], help="mergekit-het --arithmetic")
    args = ap.parse_args(argv)
    wanted = set(args.configs.split(",")) if args.configs else None
    cases = [c for c in CASES if wanted is None or c.label in wanted or c.method in wanted]
    folders = make_checkpoints(CheckpointSpec(shape=SHAPE, experts=3, dtype=args.dtype, shard_size="1GB"), args.work / f"ckpt-{args.dtype}")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for case in cases:
            rows.append(compare_case(case, folders, Path(tmp), args))
            print(f"{case.label}: {rows[-1]['verdict']}", file=sys.stderr, flush=True)
    print_table(rows)
    return 1 if any(r["verdict"] in ("DIFFERS", "FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
