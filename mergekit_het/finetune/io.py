"""Writing experts: HF folder (safetensors) + `expert.json`, atomic publication, task vectors, masks.

A frozen-head expert holds the ENCODER under the pretrained checkpoint's own tensor names (a
`bert.` prefix is added or removed to match, tensors the model does not produce such as
`embeddings.position_ids` are copied from the base), so the merge engine merges it against the
base directly, plus `head.safetensors`. Everything is written under a hidden work folder
`.<name>.partial` beside the output and renamed into place when complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..runtime import files as atomic
from ..errors import ConfigError

HINT = "--overwrite (output.overwrite=true)"

EXPERT_FILE = "expert.json"
TASK_VECTOR_FILE = "task_vector.safetensors"
MASK_FILE = "talos_mask.safetensors"


def work_dir(out: Path) -> Path:
    """Hidden sibling folder holding checkpoints and the expert being written."""
    return out.parent / f".{out.name}.partial"


def check_output(out: Path, overwrite: bool) -> None:
    atomic.check_output(out, overwrite, HINT)


def publish(src: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder `src` to `out`, replacing an existing `out` only if allowed."""
    atomic.publish(src, out, overwrite, HINT)


def _base_files(base: str | Path) -> list[Path]:
    base = Path(base)
    index = base / "model.safetensors.index.json"
    if index.is_file():
        return sorted({base / f for f in json.loads(index.read_text())["weight_map"].values()})
    single = base / "model.safetensors"
    return [single] if single.is_file() else []


def base_tensors(base: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a local safetensors checkpoint, one shard open at a time."""
    for file in _base_files(base):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def base_names(base: str | Path) -> list[str]:
    names: list[str] = []
    for file in _base_files(base):
        with safe_open(str(file), "pt") as f:
            names.extend(f.keys())
    return names


def align_to_base(
    state: Mapping[str, torch.Tensor], base: str | Path, prefix: str, fill: bool = True
) -> dict[str, torch.Tensor]:
    """Rename `state` to the base checkpoint's names (adding or stripping `prefix.`) and, with
    `fill`, add base tensors the model does not produce. Unchanged if the base is not local
    safetensors."""
    names = set(base_names(base)) if Path(base).is_dir() else set()
    if not names:
        return dict(state)
    out = {}
    for name, t in state.items():
        for cand in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")):
            if cand in names:
                out[cand] = t
                break
        else:
            out[name] = t
    missing = names - set(out) if fill else set()
    if missing:
        for name, t in base_tensors(base):
            if name in missing:
                out[name] = t
    return out


def save_state_dict(state: Mapping[str, torch.Tensor], folder: Path) -> None:
    """Safetensors shards + index via huggingface_hub (shared tensors are de-duplicated)."""
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()}, folder)


def save_task_vector(state: Mapping[str, torch.Tensor], base: str | Path, path: Path) -> None:
    """Write τ = θ − θ0 (float32) for every tensor of `state` the base has under the same name."""
    if not _base_files(base):
        raise ConfigError(f"save_task_vector needs a local safetensors base checkpoint; {base} has none")
    out = {}
    for name, t0 in base_tensors(base):
        if name in state and state[name].shape == t0.shape and t0.is_floating_point():
            out[name] = state[name].detach().float().cpu() - t0.float()
    save_file(out, str(path))


def save_masks(masks: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.to(torch.uint8).contiguous().cpu() for k, v in masks.items()}, str(path), metadata=metadata)


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.bool() for k, v in load_file(str(path)).items()}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_expert_info(folder: str | Path) -> dict:
    """The `expert.json` of an expert folder."""
    path = Path(folder) / EXPERT_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} has no {EXPERT_FILE}; it was not written by mergekit-het finetune")
    return json.loads(path.read_text())
