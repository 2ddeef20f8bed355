"""Resuming a run only with the config that produced its saved state.

A resumed run continues the saved rounds; if a key that alters the result (seed, learning
rate, partition, …) changed in between, the finished output would mix two configs and its
`config.yaml` would misdescribe the earlier rounds. `check_resume` names every such key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ..errors import ConfigError


def flat_keys(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"client.lr": 0.05, ...}: nested mappings joined by dots, other values (lists too) as leaves."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_keys(value, f"{name}."))
        else:
            out[name] = value
    return out


def changed_keys(saved: Mapping[str, Any], new: Mapping[str, Any], free: Collection[str]) -> list[str]:
    """Dotted keys whose value differs (or exists on one side only), except `free` ones and
    their sub-keys."""
    a, b = flat_keys(saved), flat_keys(new)
    return sorted(
        k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...) and not any(k == f or k.startswith(f"{f}.") for f in free)
    )


def check_resume(saved: Mapping[str, Any], new: Mapping[str, Any], free: Collection[str], where: str, flag: str) -> None:
    """ConfigError naming the changed keys (with old → new values) unless there are none."""
    keys = changed_keys(saved, new, free)
    if keys:
        a, b = flat_keys(saved), flat_keys(new)
        diffs = ", ".join(f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys)
        raise ConfigError(
            f"{where} was started with a different config ({diffs}); resuming would mix two runs. "
            f"Restore those keys, start over with --no-resume, or pass {flag} to continue anyway"
        )
