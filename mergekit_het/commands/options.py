"""Option types for the command line: a bad value is one argparse error line naming the option."""

from __future__ import annotations

import argparse

from ..errors import ConfigError


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
    from ..io.writer import parse_size

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
