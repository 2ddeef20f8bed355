"""`mergekit-het` command line: one sub-command per module in `mergekit_het.commands`.

One error path for every command: bad input (`MergekitHetError`), a bad option value and an OS
error (disk full, read-only or missing folder, permission) are each one line on stderr and exit
code 2; Ctrl-C exits 130 and SIGTERM 143, after the same cleanup (no staging folder is left; a
fine-tuning or federated run keeps its resumable `.NAME.partial` work folder). Anything else is a
bug: one line, exit 1. `--debug` (or MERGEKIT_HET_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import atexit
import difflib
import importlib
import os
import re
import sys
import threading
import warnings
from typing import NoReturn

from . import __version__
from .errors import MergekitHetError, excerpt
from .runtime.files import Terminated, terminate_as_interrupt
from .runtime.logs import no_progress_bars, set_verbose

# Each name is a module `mergekit_het.commands.<name>` with `add_parser(subparsers)` and `run(args)`.
COMMANDS: list[str] = ["merge", "push", "eval", "finetune", "quickstart", "federated", "continual", "extract_lora", "stats"]
MAX_MESSAGE = 1000  # characters of an error line
MAX_WORD = 300  # a longer path or value is shown as an excerpt
_LONG_WORD = re.compile(rf"\S{{{MAX_WORD + 1},}}")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the option and the problem, with the closest
    known name for a misspelt option or command), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {one_line(message + self._suggestion(message))} (see {self.prog} --help)\n")

    def _suggestion(self, message: str) -> str:
        choice = re.match(r"argument .*: invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            return did_you_mean(choice[1], re.findall(r"'([^']*)'", choice[2]))
        return ""

    def unknown_arguments(self, extra: list[str]) -> NoReturn:
        """The error for arguments no option of this parser takes: a misspelt option gets the
        closest one, an override written as an option (`--train.max_steps=5`) its right form."""
        word = extra[0]
        name = word.split("=", 1)[0]
        options = [o for o in self._option_string_actions if o.startswith("--")] if name.startswith("--") else []
        hint = did_you_mean(name, options)
        override_like = name.startswith("--") and ("." in name or "=" in word and not hint)
        if override_like and any(a.dest == "overrides" for a in self._actions):
            self.error(f"unknown option '{word}': config overrides are written without dashes, as {word[2:]}")
        self.error(f"unrecognized argument{'s' if len(extra) > 1 else ''}: {' '.join(extra)}{hint}")


def did_you_mean(word: str, known: list[str]) -> str:
    """"; did you mean 'X'?" for the closest of `known` to `word` (difflib), else ""."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def add_common_options(p: argparse.ArgumentParser) -> None:
    """--quiet, --verbose and --debug on a sub-command (a command's own --quiet is kept: merge
    and extract-lora have mergekit's --quiet/--no-quiet)."""
    if "--quiet" not in p._option_string_actions:
        p.add_argument("--quiet", action="store_true", default=False, help="no progress bars (results and errors only)")
    p.add_argument("--verbose", action="store_true", default=False,
                   help="let third-party logs and progress bars through (transformers, datasets, huggingface_hub)")  # fmt: skip
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mergekit-het",
        description="Merge, fine-tune, evaluate and run federated/continual learning on HF checkpoints.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"mergekit-het {__version__}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="the sub-command (COMMAND --help: its options)")
    for name in COMMANDS:
        module = importlib.import_module(f"mergekit_het.commands.{name}")
        p = module.add_parser(sub)
        add_common_options(p)
        p.set_defaults(_run=module.run, _parser=p, _omp_wait=getattr(module, "OMP_WAIT_POLICY", None),
                       _quick_exit=getattr(module, "QUICK_EXIT", False))  # fmt: skip
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with unknown arguments reported by the sub-command they were given to."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        args._parser.unknown_arguments(extra)
    return args


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
    """Run the command line `argv` (default: sys.argv[1:]); its exit code."""
    return _execute(parse_args(argv))


def entry() -> NoReturn:
    """The console script: `main` in a process of its own. After a command that declares
    `QUICK_EXIT` (merge), once the atexit handlers have run and stdout/stderr are flushed (every
    file it wrote is closed by then), the process exits without the interpreter's teardown of
    every module: torch's takes 0.3-0.7 s, a tenth of a 1.1B passthrough stack's merge."""
    args = parse_args(None)
    rc = _execute(args)
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if args._quick_exit and all(t.daemon for t in others):
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


def _execute(args: argparse.Namespace) -> int:
    if args._omp_wait and "torch" not in sys.modules:  # read once, when torch loads its OpenMP runtime
        os.environ.setdefault("OMP_WAIT_POLICY", args._omp_wait)
    debug = args.debug or os.environ.get("MERGEKIT_HET_DEBUG", "") not in ("", "0")
    formatter = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    set_verbose(args.verbose)
    try:
        with terminate_as_interrupt(), no_progress_bars(bool(args.quiet)):
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
        set_verbose(False)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' hook)
    return f"warning: {one_line(message)}\n"


if __name__ == "__main__":
    entry()
