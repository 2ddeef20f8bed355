"""Round checkpoints: everything a killed run needs to continue exactly where it stopped.

After every completed round the folder `<work>/state` holds the global model, the server
momentum buffer, the GHBM queue and momentum, the client-sampler RNG state, the round number
and the history. It is written as `state.new`, then swapped in by renames, so a crash at any
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

State = dict[str, torch.Tensor]
SEP = "::"  # separates a group prefix from a tensor name in the flat files


@dataclass
class RoundState:
    round: int  # rounds completed
    global_state: State
    server: State = field(default_factory=dict)
    ghbm: dict[str, State] = field(default_factory=dict)
    rng: torch.Tensor | None = None  # client-sampler generator state (uint8)
    history: list[dict[str, Any]] = field(default_factory=list)


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
    save_file(_flatten({"server": st.server, **st.ghbm}) or {"_empty": torch.zeros(0)}, str(new / "optim.safetensors"))
    if st.rng is not None:
        save_file({"rng": st.rng}, str(new / "rng.safetensors"))
    (new / "meta.json").write_text(json.dumps({"round": st.round, "history": st.history}, indent=1))
    if cur.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(cur, old)
    os.replace(new, cur)
    shutil.rmtree(old, ignore_errors=True)


def load_state(work: Path) -> RoundState | None:
    """The last complete round state under `work`, or None if there is none."""
    for folder in (work / "state", work / "state.old"):
        if (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text())
            groups = _unflatten({k: v for k, v in load_file(str(folder / "optim.safetensors")).items() if k != "_empty"})
            rng_file = folder / "rng.safetensors"
            return RoundState(
                round=int(meta["round"]),
                global_state=load_file(str(folder / "global.safetensors")),
                server=groups.pop("server", {}),
                ghbm=groups,
                rng=load_file(str(rng_file))["rng"] if rng_file.is_file() else None,
                history=meta["history"],
            )
    return None
