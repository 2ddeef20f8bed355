"""`mergekit-het finetune CONFIG [key.sub=value ...]`: fine-tune one expert (see docs/finetune.md).

Multi-process: `accelerate launch [--cpu] --num_processes N -m mergekit_het.cli finetune CONFIG`
or `accelerate launch finetune/finetune.py CONFIG`; both run the recipe of
`mergekit_het/finetune/recipe.py`.
"""

from __future__ import annotations

import argparse

from .runner_args import add_config_arguments, config_overrides


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("finetune", help="fine-tune an expert (dense, undertrained, TaLoS, LoRA)",
                       description="Fine-tune one expert from a YAML config; key.sub=value pairs override it.")  # fmt: skip
    add_config_arguments(p, "fine-tuning YAML (model, protocol, mode, data, train, output, ...)",
                         "train.max_steps=100 mode=talos")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of an interrupted run")
    return p


def run(args: argparse.Namespace) -> int:
    from ..finetune import finetune, load_finetune_config

    overrides = config_overrides(args)
    if args.resume:
        overrides.append("resume=true")
    finetune(load_finetune_config(args.config, overrides))
    return 0
