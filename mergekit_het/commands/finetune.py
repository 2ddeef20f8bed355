"""`mergekit-het finetune CONFIG [key.sub=value ...]`: fine-tune one expert (see docs/finetune.md).

Multi-process: `accelerate launch [--cpu] --num_processes N -m mergekit_het.cli finetune CONFIG`
or the recipe `accelerate launch finetune/finetune.py CONFIG`; both run `mergekit_het.finetune`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("finetune", help="fine-tune an expert (dense, undertrained, TaLoS, LoRA)",
                       description="Fine-tune one expert from a YAML config; key.sub=value pairs override it.")  # fmt: skip
    p.add_argument("config", type=Path, help="fine-tuning YAML (model, protocol, mode, data, train, output, ...)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="e.g. train.max_steps=100 mode=talos")
    p.add_argument("--overwrite", action="store_true", help="replace output.dir if it exists")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of an interrupted run")
    p.add_argument("--output", type=Path, default=None, help="shortcut for output.dir=PATH")
    return p


def run(args: argparse.Namespace) -> int:
    from ..finetune import finetune, load_finetune_config

    overrides = list(args.overrides)
    if args.overwrite:
        overrides.append("output.overwrite=true")
    if args.resume:
        overrides.append("resume=true")
    if args.output is not None:
        overrides.append(f"output.dir={args.output}")
    finetune(load_finetune_config(args.config, overrides))
    return 0
