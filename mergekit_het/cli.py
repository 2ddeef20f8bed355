"""`mergekit-het` command line: one sub-command per module in `mergekit_het.commands`.

One error path for every command: bad input (`MergekitHetError`), a bad option value and an OS
error (disk full, read-only or missing folder, permission) are each one line on stderr and exit
code 2; Ctrl-C exits 130 and SIGTERM 143, after the same cleanup (no staging folder is left; a
fine-tuning or federated run keeps its resumable `.NAME.partial` work folder). Anything else is a
bug: one line, exit 1. `--debug` (or MERGEKIT_HET_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings
from typing import NoReturn

from . import __version__
from .errors import MergekitHetError, excerpt
from .runtime.files import Terminated, terminate_as_interrupt

# Each name is a module `mergekit_het.commands.<name>` with `add_parser(subparsers)` and `run(args)`.
COMMANDS: list[str] = ["merge", "push", "eval", "finetune", "quickstart", "federated", "continual", "extract_lora", "stats"]
MAX_MESSAGE = 1000  # characters of an error line
MAX_WORD = 300  # a longer path or value is shown as an excerpt
_LONG_WORD = re.compile(rf"\S{{{MAX_WORD + 1},}}")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the option and the problem), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mergekit-het",
        description="Merge, fine-tune, evaluate and run federated/continual learning on HF checkpoints.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"mergekit-het {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mergekit_het.commands.{name}")
        p = module.add_parser(sub)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
        p.set_defaults(_run=module.run)
    return parser


def one_line(message: object) -> str:
    """`message` on one line of at most MAX_MESSAGE characters, any run of over MAX_WORD
    non-blank characters (a huge value echoed back) cut to an excerpt."""
    text = " | ".join(line.strip() for line in str(message).splitlines() if line.strip())
    text = _LONG_WORD.sub(lambda m: f"{m[0][:60]}…({len(m[0])} characters)", text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def describe_os_error(exc: OSError) -> str:
    """`PATH: reason` for an OS error (disk full, permission, read-only file system, ...)."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or type(exc).__name__
    return f"{where}: {reason}" if where else f"{reason} (errno {exc.errno})" if exc.errno else reason


_STOPPED = "no unfinished output was left (a fine-tuning or federated run keeps its resumable .partial folder)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("MERGEKIT_HET_DEBUG", "") not in ("", "0")
    formatter = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        with terminate_as_interrupt():
            return int(args._run(args) or 0)
    except (MergekitHetError, OSError) as exc:
        if debug:
            raise
        text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        print(f"error: {one_line(text)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"terminated; {_STOPPED}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"interrupted; {_STOPPED}", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {excerpt(str(exc), 200)}); "
              "please report it, with the traceback that --debug shows", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        warnings.formatwarning = formatter


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' hook)
    return f"warning: {one_line(message)}\n"


if __name__ == "__main__":
    sys.exit(main())
