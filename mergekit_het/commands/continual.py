"""`mergekit-het continual CONFIG [key.sub=value ...]`: continual learning as repeated merging."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "continual", help="continual learning over a stream of tasks / class splits (merge, EWC, SCROLL)",
        description="Learn a stream of experiences; after each, merge the new expert into the running model "
        "with a registered merge method (or fine-tune sequentially with EWC, or update SCROLL's ridge); "
        "writes the accuracy matrix, average accuracy, forgetting and backward transfer.",
    )
    p.add_argument("config", type=Path, help="continual YAML config (see docs/continual.md)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. strategy=merge merge.method=ties")
    p.add_argument("--output", type=Path, help="output folder (same as output.dir=...)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ..continual import load_continual_config, run_continual

    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"output.dir={args.output}")
    if args.overwrite:
        overrides.append("output.overwrite=true")
    cfg = load_continual_config(args.config, overrides)
    result = run_continual(cfg, progress=not args.quiet)
    s = result.summary
    print(f"continual ({cfg.strategy}): average accuracy {s['average_accuracy']:.4f}, forgetting "
          f"{s['forgetting']:.4f}, BWT {s['backward_transfer']:.4f} -> {cfg.output.dir}")  # fmt: skip
    return 0
