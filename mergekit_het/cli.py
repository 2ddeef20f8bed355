"""`mergekit-het` command line: one sub-command per module in `mergekit_het.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import MergekitHetError

# Each name is a module `mergekit_het.commands.<name>` with `add_parser(subparsers)` and `run(args)`.
COMMANDS: list[str] = ["merge", "push", "eval", "finetune", "quickstart", "federated", "continual", "extract_lora"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergekit-het",
        description="Merge, fine-tune, evaluate and run federated/continual learning on HF checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mergekit_het.commands.{name}")
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MergekitHetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
