"""`mergekit-het stats EXPERT --tasks TASKFILE --task NAME [--examples N]`: the merge statistics
of an expert (Gram matrices for `regmean`, diagonal Fisher for `fisher`), written beside it as
`merge_stats.safetensors` (see mergekit_het/finetune/statistics.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("stats", help="compute an expert's merge statistics (RegMean Grams, Fisher)",
                       description="Gram matrices of every nn.Linear's inputs and/or the diagonal Fisher of an expert "
                                   "on N examples of its task, saved as EXPERT/merge_stats.safetensors.")  # fmt: skip
    p.add_argument("expert", type=Path, help="expert folder (frozen-head or sequence-classifier)")
    p.add_argument("--tasks", type=Path, required=True, help="YAML task file")
    p.add_argument("--task", required=True, help="the expert's task in that file")
    p.add_argument("--examples", type=int, default=256, help="examples drawn from the split (default 256)")
    p.add_argument("--split", default="train", help="split to draw them from (default train)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward pass (default 16)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example, longer ones truncated (default 128)")
    p.add_argument("--fisher", action="store_true", help="also compute the diagonal Fisher (C backward passes per example)")
    p.add_argument("--no-gram", action="store_true", help="skip the Gram matrices")
    p.add_argument("--mask-padding", action="store_true", help="leave padded token rows out of the Grams (official: kept)")
    p.add_argument("--seed", type=int, default=0, help="seed of the example draw")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..data.tasks import load_task_file
    from ..errors import ConfigError
    from ..finetune.statistics import expert_statistics

    problems = []  # every problem of the arguments at once, before the expert is loaded
    if args.examples < 1 or args.batch_size < 1:
        problems.append("--examples and --batch-size must be at least 1")
    if not Path(args.expert).is_dir():
        problems.append(f"expert '{args.expert}' is not a folder (the statistics are written beside the expert)")
    try:
        (task,) = load_task_file(args.tasks, [args.task])
    except ConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
    path = expert_statistics(args.expert, task, examples=args.examples, split=args.split, batch_size=args.batch_size,
                             max_length=args.max_length, device=args.device, gram=not args.no_gram, fisher=args.fisher,
                             mask_padding=args.mask_padding, seed=args.seed)  # fmt: skip
    print(f"wrote {path}")
    return 0
