"""`mergekit-het federated CONFIG [key.sub=value ...]`: federated learning as repeated merging."""

from __future__ import annotations

import argparse
from pathlib import Path

from .runner_args import add_config_arguments, config_overrides


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "federated", help="federated fine-tuning; the merge engine aggregates client models each round",
        description="Federated learning (FedAvg/FedAvgM/FedProx/GHBM/Fed3R) on a HF checkpoint; every round "
        "the clients' models are merged by a registered merge method. Resumes an interrupted run.",
    )
    add_config_arguments(p, "federated YAML config (see docs/federated.md)", "rounds=5 ghbm.tau=10")
    p.add_argument("--no-resume", action="store_true", help="start over even if an interrupted run is found")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though keys that change the result (seed, lr, partition, ...) differ from the "
                   "interrupted run's config")  # fmt: skip
    p.add_argument("--flower", type=Path, default=None, metavar="APP",
                   help="run through Flower's simulation engine with this Flower App (federated/flower_app) instead "
                   "of the native loop; exits non-zero if the Flower run fails")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ..federated import load_federated_config, run_federated

    overrides = config_overrides(args)
    if args.no_resume:
        overrides.append("resume=false")
    if args.allow_config_change:
        overrides.append("allow_config_change=true")
    cfg = load_federated_config(args.config, overrides)
    if args.flower is not None:
        from ..federated.flower_cli import run_simulation

        run_id = run_simulation(args.flower, args.config, overrides, cfg.partition.num_clients)
        print(f"federated (Flower run {run_id}): {cfg.rounds} rounds -> {cfg.output.dir}/flower_history.json")
        return 0
    result = run_federated(cfg, progress=not args.quiet)
    last = next((h for h in reversed(result.history) if "accuracy" in h), None)
    acc = f", final accuracy {last['accuracy']:.4f}" if last else ""
    print(f"federated: {len(result.history) - 1} rounds{acc} -> {cfg.output.dir}")
    return 0
