"""Arguments shared by the YAML-driven runner commands (finetune, federated, continual)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(p: argparse.ArgumentParser, config_help: str, overrides_example: str) -> None:
    """CONFIG, `key.sub=value` overrides, `--output DIR` and `--overwrite`."""
    p.add_argument("config", type=Path, help=config_help)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help=f"config overrides, e.g. {overrides_example}")
    p.add_argument("--output", type=Path, default=None, help="output folder (same as output.dir=PATH)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's overrides, with `--output` / `--overwrite` turned into config keys."""
    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"output.dir={args.output}")
    if args.overwrite:
        overrides.append("output.overwrite=true")
    return overrides
