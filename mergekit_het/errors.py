"""User-facing errors: one line that says what, where, got, expected."""

import reprlib
from typing import Any

_REPR = reprlib.Repr()  # bounded repr (keyword arguments to Repr need Python 3.12)
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 4, 4, 60, 60, 40


class MergekitHetError(Exception):
    """Bad input or configuration. The CLI prints the message on one line and exits 2."""


class ConfigError(MergekitHetError):
    """A configuration file or value is invalid (raised before any tensor is read)."""


class TensorError(MergekitHetError):
    """A tensor is missing, mis-shaped, of the wrong dtype, or holds NaN/Inf."""


def excerpt(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters, so an error never echoes a huge value back."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
