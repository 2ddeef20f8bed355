"""`mergekit-het federated CONFIG [key.sub=value ...]`: federated learning as repeated merging."""

from __future__ import annotations

import argparse

from .runner_args import add_config_arguments, config_overrides


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "federated", help="federated fine-tuning; the merge engine aggregates client models each round",
        description="Federated learning (FedAvg/FedAvgM/FedProx/GHBM/Fed3R) on a HF checkpoint; every round "
        "the clients' models are merged by a registered merge method. Resumes an interrupted run.",
    )
    add_config_arguments(p, "federated YAML config (see docs/federated.md)", "rounds=5 ghbm.tau=10")
    p.add_argument("--no-resume", action="store_true", help="start over even if an interrupted run is found")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ..federated import load_federated_config, run_federated

    overrides = config_overrides(args)
    if args.no_resume:
        overrides.append("resume=false")
    cfg = load_federated_config(args.config, overrides)
    result = run_federated(cfg, progress=not args.quiet)
    last = next((h for h in reversed(result.history) if "accuracy" in h), None)
    acc = f", final accuracy {last['accuracy']:.4f}" if last else ""
    print(f"federated: {len(result.history) - 1} rounds{acc} -> {cfg.output.dir}")
    return 0
