"""`mergekit-het continual CONFIG [key.sub=value ...] [--reduced]`: the continual suite of one setting."""

from __future__ import annotations

import argparse

from .runner_args import add_config_arguments, add_resume_arguments, config_overrides


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "continual", help="continual learning: strategies x seeded schedules of a stream (table, matrices, plots)",
        description="Run every configured strategy (finetune, ewc, replay, merge, scroll, joint, federated) on "
        "every seeded schedule of one stream built from the task file; writes results.json, table.md "
        "(class- and task-incremental accuracy, forgetting, BWT: mean ± std over schedules) and plots. "
        "Resumes an interrupted suite from its finished runs.",
    )
    add_config_arguments(p, "continual YAML config (see docs/continual.md)", "stream.schedules=5 device=cuda")
    add_resume_arguments(p)
    p.add_argument("--reduced", action="store_true", help="apply the config's `reduced:` overrides (a tiny budget, for a CPU check)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ..continual import load_continual_config, run_continual

    cfg = load_continual_config(args.config, config_overrides(args), reduced=args.reduced)
    suite = run_continual(cfg, progress=not args.quiet)
    print(suite.report["markdown"], end="")
    print(f"-> {cfg.output.dir}")
    return 0
