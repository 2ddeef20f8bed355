"""`mergekit-het finetune CONFIG [key.sub=value ...]`: fine-tune one expert (see docs/finetune.md).

A run interrupted in the output folder (a checkpoint in its `.NAME.partial` work folder, saved
every `train.checkpoint_every` steps) resumes from its latest checkpoint, printing "resuming from
step N of PATH"; `--restart` starts over. A resume with other result-changing keys than the
interrupted run's is refused (`--allow-config-change` resumes anyway).

Multi-process: `accelerate launch [--cpu] --num_processes N -m mergekit_het.cli finetune CONFIG`
or `accelerate launch finetune/finetune.py CONFIG`; both run the recipe of
`mergekit_het/finetune/recipe.py`.
"""

from __future__ import annotations

import argparse
import json

from .runner_args import add_config_arguments, add_resume_arguments, config_overrides

# Keys a resume may change: how often it logs, evaluates, checkpoints; not what it computes.
RESUME_FREE_KEYS = ("resume", "output.overwrite", "train.log_every", "train.eval_every", "train.checkpoint_every",
                    "train.eval_batch_size")  # fmt: skip


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("finetune", help="fine-tune an expert (dense, undertrained, TaLoS, LoRA)",
                       description="Fine-tune one expert from a YAML config; key.sub=value pairs override it. An "
                                   "interrupted run in the output folder resumes (--restart starts over).")  # fmt: skip
    add_config_arguments(p, "fine-tuning YAML (model, protocol, mode, data, train, output, ...)",
                         "train.max_steps=100 mode=talos")  # fmt: skip
    add_resume_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="accepted for old scripts (no effect: an interrupted run resumes without it)")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    from ..finetune import load_finetune_config
    from ..finetune.recipe import FinetuneRecipe
    from ..finetune.steps import CHECKPOINTS
    from ..runtime.files import work_dir
    from ..runtime.resume import RUN_CONFIG, check_recorded_config, record_config

    overrides = config_overrides(args)
    out = load_finetune_config(args.config, overrides).output.dir
    saved = not args.restart and any((work_dir(out) / CHECKPOINTS).glob("step_*"))
    cfg = load_finetune_config(args.config, [f"resume={str(saved).lower()}", *overrides])
    recipe = FinetuneRecipe(cfg)
    config = json.loads(cfg.model_dump_json())
    if saved and not args.allow_config_change:
        check_recorded_config(recipe.work, config, RESUME_FREE_KEYS, "--allow-config-change")
    recipe.setup()  # a resume prints runtime.resume.resume_message
    if recipe.accelerator.is_main_process and not (recipe.work / RUN_CONFIG).is_file():  # fresh starts have none
        record_config(recipe.work, config)
    recipe.train()
    recipe.save()
    return 0
