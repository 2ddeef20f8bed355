"""User-facing errors: one line that says what, where, got, expected."""


class MergekitHetError(Exception):
    """Bad input or configuration. The CLI prints the message on one line and exits 2."""


class ConfigError(MergekitHetError):
    """A configuration file or value is invalid (raised before any tensor is read)."""


class TensorError(MergekitHetError):
    """A tensor is missing, mis-shaped, of the wrong dtype, or holds NaN/Inf."""
