"""`mergekit-het push OUT_DIR REPO_ID`: upload a merged model or an expert to the Hugging Face Hub.

    mergekit-het push out/merged alice/minilm-ties --private --commit-message "ties, density 0.5"
    mergekit-het push out/merged alice/minilm-ties --dry-run      # list what would be uploaded
    mergekit-het push experts/pos alice/pos --exclude "checkpoint-*/*" --include "*.json" --include "*.safetensors"

An expert's task_vector.safetensors (as large as the model) stays home unless --task-vector is
given or an --include pattern matches it. A failed push changes no local file; it prints the
`mergekit-het push` command that resumes it.

The token comes from HF_TOKEN or the credential store (`hf auth login`); the endpoint from HF_ENDPOINT.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_hub_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `push` and `merge --push-to-hub`."""
    group = parser.add_argument_group("Hugging Face Hub")
    group.add_argument("--private", action="store_true", help="create the repository as private (if it is new)")
    group.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created if missing; default main)")
    group.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to a branch")
    group.add_argument("--commit-message", metavar="TEXT", help="commit message (default: 'Upload <folder> with mergekit-het')")
    group.add_argument("--include", action="append", metavar="GLOB",
                       help="upload only files matching this pattern (repeatable; HfApi allow_patterns)")  # fmt: skip
    group.add_argument("--exclude", action="append", metavar="GLOB",
                       help="leave out files matching this pattern (repeatable; HfApi ignore_patterns)")  # fmt: skip
    group.add_argument("--task-vector", action="store_true",
                       help="also upload an expert's task_vector.safetensors (left out by default)")  # fmt: skip


def hub_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of `push_folder` from the options of `add_hub_options`."""
    return {"private": args.private, "revision": args.revision, "create_pr": args.create_pr,
            "commit_message": args.commit_message, "include": args.include, "exclude": args.exclude,
            "task_vector": args.task_vector}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push",
        help="upload a model folder (merge or expert) with its model card to the Hugging Face Hub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="model folder to upload")
    parser.add_argument("repo_id", metavar="REPO_ID", help="target model repository, 'owner/name' (or 'name' for your own)")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded and stop")
    add_hub_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..hub.upload import push_folder  # the upload stack is imported only when used

    print(push_folder(args.out_dir, args.repo_id, dry_run=args.dry_run, **hub_options(args)))
    return 0
