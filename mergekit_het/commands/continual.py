"""`mergekit-het continual CONFIG [key.sub=value ...]`: continual learning as repeated merging."""

from __future__ import annotations

import argparse

from .runner_args import add_config_arguments, config_overrides


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "continual", help="continual learning over a stream of tasks / class splits (merge, EWC, SCROLL)",
        description="Learn a stream of experiences; after each, merge the new expert into the running model "
        "with a registered merge method (or fine-tune sequentially with EWC, or update SCROLL's ridge); "
        "writes the accuracy matrix, average accuracy, forgetting and backward transfer.",
    )
    add_config_arguments(p, "continual YAML config (see docs/continual.md)", "strategy=merge merge.method=ties")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ..continual import load_continual_config, run_continual

    overrides = config_overrides(args)
    cfg = load_continual_config(args.config, overrides)
    result = run_continual(cfg, progress=not args.quiet)
    s = result.summary
    print(f"continual ({cfg.strategy}): average accuracy {s['average_accuracy']:.4f}, forgetting "
          f"{s['forgetting']:.4f}, BWT {s['backward_transfer']:.4f} -> {cfg.output.dir}")  # fmt: skip
    return 0
