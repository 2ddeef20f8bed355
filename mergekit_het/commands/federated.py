"""`mergekit-het federated CONFIG [key.sub=value ...]`: federated learning as repeated merging."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .runner_args import add_config_arguments, add_resume_arguments, config_overrides


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "federated", help="federated fine-tuning; the merge engine aggregates client models each round",
        description="Federated learning (FedAvg/FedAvgM/FedProx/GHBM/Fed3R) on a HF checkpoint; every round "
        "the clients' models are merged by a registered merge method. An interrupted run in the output folder "
        "resumes (--restart starts over).",
    )
    add_config_arguments(p, "federated YAML config (see docs/federated.md)", "rounds=5 ghbm.tau=10")
    add_resume_arguments(p, "--no-resume")
    p.add_argument("--flower", type=Path, default=None, metavar="APP",
                   help="run through Flower's simulation engine with this Flower App (federated/flower_app) instead "
                   "of the native loop; exits non-zero if the Flower run fails")  # fmt: skip
    p.add_argument("--flower-deployment", action="store_true",
                   help="with --flower: Flower's deployment mode on this machine, a SuperLink and one SuperNode per "
                   "client as separate processes on loopback, all stopped at the end (docs/federated.md)")  # fmt: skip
    p.add_argument("--flower-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="with --flower: give up on a run that has not ended after this long (default 3600)")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    from ..federated import load_federated_config, run_federated

    overrides = config_overrides(args)
    cfg = load_federated_config(args.config, overrides)
    if args.flower_deployment and args.flower is None:
        raise ConfigError("--flower-deployment needs --flower APP (e.g. --flower federated/flower_app)")
    if args.flower is not None:
        return _run_flower(args, cfg, overrides)
    result = run_federated(cfg, progress=not args.quiet)
    last = next((h for h in reversed(result.history) if "accuracy" in h), None)
    acc = f", final accuracy {last['accuracy']:.4f}" if last else ""
    print(f"federated: {len(result.history) - 1} rounds{acc} -> {cfg.output.dir}")
    return 0


def _run_flower(args: argparse.Namespace, cfg, overrides: list[str]) -> int:  # noqa: ANN001 (FederatedConfig)
    from ..federated.flower_cli import run_deployment, run_simulation

    clients = cfg.partition.num_clients
    if args.flower_deployment:
        folder = Path(cfg.output.dir).parent / f".{Path(cfg.output.dir).name}.flower"
        run_id = run_deployment(args.flower, args.config, overrides, clients, folder, args.flower_timeout)
        how = f"Flower deployment run {run_id}, 1 SuperLink + {clients} SuperNodes, logs in {folder}"
    else:
        run_id = run_simulation(args.flower, args.config, overrides, clients, timeout=args.flower_timeout)
        how = f"Flower run {run_id}"
    print(f"federated ({how}): {cfg.rounds} rounds -> {cfg.output.dir}/flower_history.json, flower_model.safetensors")
    return 0
