"""One job of the merge-quality pipeline, in its own process, through the library.

    python bench/merge_quality/jobs.py finetune CONFIG [key.sub=value ...]
    python bench/merge_quality/jobs.py compare CONFIG OUT [key.sub=value ...]
    python bench/merge_quality/jobs.py stats EXPERT TASKFILE TASK EXAMPLES BATCH MAXLEN [fisher]

`finetune` is `mergekit-het finetune CONFIG ...` and `compare` is `mergekit-het eval --config
CONFIG --out OUT --overwrite --set ...` and `stats` is `mergekit-het stats EXPERT --tasks TASKFILE
--task TASK --examples N --batch-size B --max-length L [--fisher]`, minus the CLI's parser, which imports every command's
dependencies (the Hub upload's HTTP client among them) even where only training is wanted.
Bad input exits 2 with a one-line message, as the CLI does.
"""

from __future__ import annotations

import sys

from mergekit_het.errors import MergekitHetError


def main(argv: list[str]) -> int:
    needs = {"finetune": 2, "compare": 3, "stats": 7}
    if not argv or argv[0] not in needs or len(argv) < needs[argv[0]]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[0] == "finetune":
            from mergekit_het.finetune import finetune, load_finetune_config

            finetune(load_finetune_config(argv[1], argv[2:]))
        elif argv[0] == "stats":
            from mergekit_het.data.tasks import load_task_file
            from mergekit_het.finetune.statistics import expert_statistics

            (task,) = load_task_file(argv[2], [argv[3]])
            expert_statistics(argv[1], task, examples=int(argv[4]), batch_size=int(argv[5]), max_length=int(argv[6]),
                              fisher="fisher" in argv[7:])  # fmt: skip
        else:
            from mergekit_het.evaluate.config import load_compare_config
            from mergekit_het.evaluate.experiment import run_comparison
            from mergekit_het.evaluate.report import write_comparison

            write_comparison(run_comparison(load_compare_config(argv[1], argv[3:])), argv[2], overwrite=True)
    except MergekitHetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
