"""Option types for the command line: a bad value is one argparse error line naming the option."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..io.sizes import parse_size


def positive_int(text: str) -> int:
    """An integer ≥ 1 (threads, chunk size)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer ≥ 0 (prefetch depth)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text[:40]}' is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is below {low}")
    return value


def byte_size(text: str) -> str:
    """A size such as 5GB, 500MB, 2GiB or a byte count, above 0 (kept as text for the engine)."""
    try:
        ok = parse_size(text) > 0
    except (ConfigError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"'{text[:40]}' is not a size; use e.g. 5GB, 500MB, 2GiB")
    return text


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N (whether the device exists is checked when the run starts)."""
    from ..runtime.device import device_spec_problem

    problem = device_spec_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def shard_size(text: str) -> int:
    """mergekit's `--out-shard-size`: bytes, with K/M/B meaning ×10³/10⁶/10⁹ (`5B` = 5 GB);
    our sizes (5GB, 500MiB) are accepted too."""
    factors = {"K": 10**3, "M": 10**6, "B": 10**9}
    s = text.strip().upper()
    try:
        value = int(float(s[:-1]) * factors[s[-1]])
    except (KeyError, IndexError, ValueError, OverflowError):  # not mergekit's form: ours
        try:
            value = parse_size(text)
        except (ConfigError, ValueError, OverflowError):
            value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text[:40]}' is not a size; use e.g. 5B (mergekit: 5·10⁹ bytes), 500M, 5GB")
    return value


Compat = list[tuple[str, bool, str]]
"""mergekit flags that mean nothing for a command: (flag, takes a value, why, in one clause)."""


def add_compat_flags(parser: argparse.ArgumentParser, flags: Compat, title: str) -> argparse._ArgumentGroup:
    """Accept each flag of `flags` (hidden from --help; see `compat_notes`); returns their group."""
    group = parser.add_argument_group(title)
    for flag, value, _ in flags:
        dest = "compat_" + flag.lstrip("-").replace("-", "_")
        if value:
            group.add_argument(flag, dest=dest, default=None, help=argparse.SUPPRESS)
        else:
            group.add_argument(flag, dest=dest, action="store_const", const=flag, default=None, help=argparse.SUPPRESS)
    return group


def compat_given(args: argparse.Namespace, flag: str) -> bool:
    """Whether the compatibility flag `flag` (registered by `add_compat_flags`) was given."""
    return getattr(args, "compat_" + flag.lstrip("-").replace("-", "_")) is not None


def compat_notes(args: argparse.Namespace, flags: Compat) -> list[str]:
    """One line per compatibility flag given: 'note: FLAG has no effect here: WHY'."""
    return [f"note: {flag} has no effect here: {why}" for flag, _, why in flags if compat_given(args, flag)]
