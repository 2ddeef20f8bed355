"""Arguments shared by the YAML-driven runner commands (finetune, federated, continual).

One convention for all three: the output folder is `--output DIR` (= `output.dir=DIR`); a run
interrupted in that folder (its hidden `.DIR.partial` work folder holds saved state) resumes
automatically, printing `runtime.resume.resume_message` ("resuming from round 3 of PATH ...");
`--restart` discards the saved state and starts over; `--overwrite` replaces a finished output.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(p: argparse.ArgumentParser, config_help: str, overrides_example: str) -> None:
    """CONFIG, `key.sub=value` overrides, `--output DIR` and `--overwrite`."""
    p.add_argument("config", type=Path, help=config_help)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help=f"config overrides, e.g. {overrides_example}")
    p.add_argument("--output", type=Path, default=None, metavar="DIR", help="output folder (same as output.dir=DIR)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if a finished run is there")


def add_resume_arguments(p: argparse.ArgumentParser, *aliases: str, config_change: bool = True) -> None:
    """`--restart` (and its `aliases`, kept for old scripts) and, with `config_change`,
    `--allow-config-change`."""
    p.add_argument("--restart", *aliases, dest="restart", action="store_true",
                   help="start over, discarding the saved state of an interrupted run in the output folder "
                   "(by default such a run resumes)" + (f"; {', '.join(aliases)}: an accepted old name" if aliases else ""))  # fmt: skip
    if config_change:
        p.add_argument("--allow-config-change", action="store_true",
                       help="resume even though keys that change the result (seed, lr, data, ...) differ from the "
                       "interrupted run's config")  # fmt: skip


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's overrides, with `--output`, `--overwrite`, `--restart` and
    `--allow-config-change` turned into config keys (after the user's, so the flags win)."""
    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"output.dir={args.output}")
    if args.overwrite:
        overrides.append("output.overwrite=true")
    if getattr(args, "restart", False):
        overrides.append("resume=false")
    if getattr(args, "allow_config_change", False):
        overrides.append("allow_config_change=true")
    return overrides
