"""One job of the merge-quality pipeline, in its own process, through the library.

    python bench/merge_quality/jobs.py finetune CONFIG [key.sub=value ...]
    python bench/merge_quality/jobs.py compare CONFIG OUT [key.sub=value ...]

`finetune` is `mergekit-het finetune CONFIG ...` and `compare` is `mergekit-het eval --config
CONFIG --out OUT --overwrite --set ...`, minus the CLI's parser, which imports every command's
dependencies (the Hub upload's HTTP client among them) even where only training is wanted.
Bad input exits 2 with a one-line message, as the CLI does.
"""

from __future__ import annotations

import sys

from mergekit_het.errors import MergekitHetError


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("finetune", "compare") or (argv[0] == "compare" and len(argv) < 3):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[0] == "finetune":
            from mergekit_het.finetune import finetune, load_finetune_config

            finetune(load_finetune_config(argv[1], argv[2:]))
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
