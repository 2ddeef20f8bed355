"""Fine-tune one expert for merging: dense, undertrained, TaLoS (sparse) or LoRA.

The recipe it runs, readable top to bottom (setup, explicit loop, save), is
`mergekit_het/finetune/recipe.py`; `mergekit-het finetune` runs the same one. Launch with any of:

    python finetune/finetune.py finetune/configs/minilm_frozen_head_dense.yaml
    python finetune/finetune.py finetune/configs/minilm_frozen_head_talos.yaml data.task=wordnet_pos \\
        output.dir=experts/wordnet_pos_talos train.max_steps=200
    accelerate launch --cpu --num_processes 2 finetune/finetune.py CONFIG [key.sub=value ...]
    accelerate launch --num_processes 4 finetune/finetune.py CONFIG        # 4 GPUs
    mergekit-het finetune CONFIG [--overwrite] [--restart] [key.sub=value ...]

The same flags are accepted here (`--output DIR`, `--overwrite`, `--restart`, `--quiet`, `--verbose`,
...); an interrupted run resumes by itself. Exit status 2 with a one-line message on bad input
(checked before training starts).
"""

import argparse
import sys

from mergekit_het.cli import add_common_options
from mergekit_het.commands import finetune as command
from mergekit_het.errors import MergekitHetError
from mergekit_het.runtime.logs import no_progress_bars, set_verbose


def main(argv: list[str]) -> int:
    """Same arguments as `mergekit-het finetune`, without importing the other CLI commands."""
    parser = argparse.ArgumentParser(prog="finetune/finetune.py")
    add_common_options(command.add_parser(parser.add_subparsers(dest="command", required=True)))
    args = parser.parse_args(["finetune", *argv])
    set_verbose(args.verbose)
    try:
        with no_progress_bars(args.quiet):
            return command.run(args)
    except MergekitHetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
