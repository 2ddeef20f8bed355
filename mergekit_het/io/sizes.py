"""Byte sizes as users write them (`--max-shard-size 5GB`), without importing torch: the CLI
checks them while parsing its arguments."""

from __future__ import annotations

from ..errors import ConfigError


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000, '500MiB' -> 524_288_000, ints pass through (bytes)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = text.strip().upper()
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    if unit not in units or not num:
        raise ConfigError(f"size '{text}' is not understood; use e.g. 5GB, 500MB, 2GiB")
    return int(float(num) * units[unit])
