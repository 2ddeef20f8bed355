"""Resuming a run: one convention for every runner, and only with the config that produced its
saved state.

A run interrupted in its output folder (saved state in the hidden `.NAME.partial` work folder)
resumes by itself, saying so in one line (`resume_message`: "resuming from round 3 of PATH
(--restart starts over)"); `--restart` (config key `resume: false`) starts over.

A resumed run continues the saved steps or rounds; if a key that alters the result (seed,
learning rate, partition, …) changed in between, the finished output would mix two configs and
its `config.yaml` would misdescribe the earlier part. `check_resume` names every such key; a
runner whose saved state holds no config keeps it in `RUN_CONFIG` (`record_config`,
`check_recorded_config`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .files import atomic_write_text

RUN_CONFIG = "run_config.json"  # in a work folder: the config the saved state was made with
RESTART = "--restart"


def resume_message(unit: str, done: int, work: str | Path) -> str:
    """The line a runner prints when it resumes: 'resuming from step 40 of PATH (--restart starts over)'."""
    return f"resuming from {unit} {done} of {work} ({RESTART} starts over)"


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


def changed_keys(a: Mapping[str, Any], b: Mapping[str, Any], free: Collection[str]) -> list[str]:
    """Dotted keys of two `flat_keys` configs whose value differs (or exists on one side only),
    except `free` ones and their sub-keys."""
    return sorted(
        k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...) and not any(k == f or k.startswith(f"{f}.") for f in free)
    )


def check_resume(saved: Mapping[str, Any], new: Mapping[str, Any], free: Collection[str], where: str, flag: str) -> None:
    """ConfigError naming the changed keys (with old → new values) unless there are none."""
    a, b = flat_keys(saved), flat_keys(new)
    keys = changed_keys(a, b, free)
    if keys:
        diffs = ", ".join(f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys)
        raise ConfigError(
            f"{where} was started with a different config ({diffs}); resuming would mix two runs. "
            f"Restore those keys, start over with {RESTART}, or pass {flag} to continue anyway"
        )


def record_config(work: Path, config: Mapping[str, Any]) -> None:
    """Keep `config` (JSON-able) in `work` as the config of the run being started there (written
    atomically: a kill leaves the old file or the new one)."""
    atomic_write_text(work / RUN_CONFIG, json.dumps(config, indent=1, sort_keys=True, default=str) + "\n")


def check_recorded_config(work: Path, config: Mapping[str, Any], free: Collection[str], flag: str) -> None:
    """`check_resume` against the config recorded in `work` (nothing to check if none is)."""
    saved = work / RUN_CONFIG
    if saved.is_file():
        check_resume(json.loads(saved.read_text()), json.loads(json.dumps(config, default=str)), free,
                     f"the interrupted run in {work}", flag)  # fmt: skip
