"""Round checkpoints: everything a killed run needs to continue exactly where it stopped.

After every `checkpoint_every` completed rounds the folder `<work>/state` holds the global
model, the strategy's state (client-sampler RNG, server momentum, GHBM queue), the round
number, the history and the run's config. It is written as `state.new` (every file and the
folder fsync'd), then swapped in by renames (the parent fsync'd after each), so a crash at any
moment leaves either the previous or the new complete state (`state.old` is the fallback).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..runtime.files import fsync_dir, fsync_tree

State = dict[str, torch.Tensor]
SEP = "::"  # separates a group name from a tensor name in the flat file
EMPTY = "_empty"  # safetensors cannot write an empty file


@dataclass
class RoundState:
    round: int  # rounds completed
    global_state: State
    strategy: dict[str, State] = field(default_factory=dict)  # `FedAvg.state_dict()`
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # the run's config (JSON form)


def _flatten(groups: dict[str, State]) -> State:
    return {f"{g}{SEP}{k}": v.contiguous().cpu() for g, sd in groups.items() for k, v in sd.items()}


def _unflatten(flat: State) -> dict[str, State]:
    out: dict[str, State] = {}
    for key, v in flat.items():
        g, _, k = key.partition(SEP)
        out.setdefault(g, {})[k] = v
    return out


def save_state(work: Path, st: RoundState) -> None:
    new, cur, old = work / "state.new", work / "state", work / "state.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    save_file({k: v.contiguous().cpu() for k, v in st.global_state.items()}, str(new / "global.safetensors"))
    save_file(_flatten(st.strategy) or {EMPTY: torch.zeros(0)}, str(new / "strategy.safetensors"))
    (new / "meta.json").write_text(json.dumps({"round": st.round, "history": st.history}, indent=1))
    (new / "config.json").write_text(json.dumps(st.config, indent=1))
    fsync_tree(new)
    if cur.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(cur, old)
        fsync_dir(work)
    os.replace(new, cur)
    fsync_dir(work)
    shutil.rmtree(old, ignore_errors=True)


def load_state(work: Path) -> RoundState | None:
    """The last complete round state under `work`, or None if there is none."""
    for folder in (work / "state", work / "state.old"):
        if (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text())
            flat = {k: v for k, v in load_file(str(folder / "strategy.safetensors")).items() if k != EMPTY}
            return RoundState(
                round=int(meta["round"]),
                global_state=load_file(str(folder / "global.safetensors")),
                strategy=_unflatten(flat),
                history=meta["history"],
                config=json.loads((folder / "config.json").read_text()),
            )
    return None
