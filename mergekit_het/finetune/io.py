"""Writing experts: HF folder (safetensors) + `expert.json`, atomic publication, task vectors, masks.

An expert folder: the weights (or a LoRA adapter), the tokenizer, `head.safetensors` (frozen
head), `talos_mask.safetensors` (TaLoS), `task_vector.safetensors` (if asked) and `expert.json`.

A frozen-head expert holds the ENCODER under the pretrained checkpoint's own tensor names (a
`bert.` prefix is added or removed to match, tensors the model does not produce such as
`embeddings.position_ids` are copied from the base), so the merge engine merges it against the
base directly, plus `head.safetensors`. Everything is written under a hidden work folder
`.<name>.partial` beside the output (`runtime.files.work_dir`) and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..io.paths import weight_files
from ..models.classifier import PooledClassifier
from ..models.encoder import HEAD_FILE
from ..runtime import files as atomic
from ..runtime.files import work_dir  # noqa: F401 -- the runners' work folder, used as io.work_dir
from ..runtime.logs import quiet_third_party
from ..runtime.names import SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE
from .config import FinetuneConfig

EXPERT_FILE = "expert.json"
TASK_VECTOR_FILE = "task_vector.safetensors"
MASK_FILE = "talos_mask.safetensors"


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse early (before any work) to replace an existing output unless `overwrite`."""
    atomic.check_output(out, overwrite, atomic.RUNNER_HINT)


def publish(src: Path, out: Path, overwrite: bool, work: Path) -> None:
    """Rename the finished folder `src` to `out`, replacing an existing `out` only if allowed;
    then remove the work folder `work` (`runtime.files.publish_run`)."""
    atomic.publish_run(src, out, overwrite, work, atomic.RUNNER_HINT)


def _base_files(base: str | Path) -> list[Path]:
    """The safetensors shards of a local base folder (none for a Hub id or a pickle checkpoint)."""
    return weight_files(Path(base), SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE)


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
    """`data` as indented JSON (non-JSON values such as paths written with str), atomically."""
    atomic.atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _masks_by_saved_name(model, masks, cfg: FinetuneConfig) -> dict[str, torch.Tensor]:
    """TaLoS masks keyed like the saved expert's tensors (the base checkpoint's names)."""
    if isinstance(model, PooledClassifier):
        stripped = {n.removeprefix("encoder."): m for n, m in masks.items()}
        return align_to_base(stripped, cfg.model, model.encoder.base_model_prefix, fill=False)
    return align_to_base(masks, cfg.model, model.base_model_prefix, fill=False)


def save_expert(model, cfg: FinetuneConfig, tokenizer, folder: Path, info: dict, masks=None, head_file=None) -> None:
    """Write one expert folder: weights (or a LoRA adapter), tokenizer, head, mask, expert.json."""
    with quiet_third_party():
        _save_expert(model, cfg, tokenizer, folder, info, masks, head_file)


def _save_expert(model, cfg: FinetuneConfig, tokenizer, folder: Path, info: dict, masks, head_file) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    net = model.encoder if isinstance(model, PooledClassifier) else model
    if cfg.mode == "lora":
        net.save_pretrained(folder)  # adapter_config.json + adapter_model.safetensors
    else:
        prefix = getattr(net, "base_model_prefix", "")
        if isinstance(model, PooledClassifier):  # encoder under the base checkpoint's names
            state = align_to_base(net.state_dict(), cfg.model, prefix)
            save_state_dict(state, folder)
            net.config.save_pretrained(folder)
        else:
            net.save_pretrained(folder)
            state = align_to_base(net.state_dict(), cfg.model, prefix, fill=False)
        if cfg.output.save_task_vector:
            save_task_vector(state, cfg.model, folder / TASK_VECTOR_FILE)
    tokenizer.save_pretrained(folder)
    if head_file is not None:
        shutil.copyfile(head_file, folder / HEAD_FILE)
    if masks is not None:
        save_masks(_masks_by_saved_name(model, masks, cfg), folder / MASK_FILE, {"sparsity": str(cfg.talos.sparsity)})
    write_json(folder / EXPERT_FILE, info)


def expert_info(cfg: FinetuneConfig, task: str, num_labels: int, train_examples: int, step: int,
                trainable_fraction: float | None, metrics: dict, world: int) -> dict:
    """The content of `expert.json`: what was trained, from what, how far, with what result."""
    return {
        "format": "mergekit-het expert v1",
        "base_model": str(Path(cfg.model).resolve()) if Path(cfg.model).is_dir() else cfg.model,
        "protocol": cfg.protocol,
        "mode": cfg.mode,
        "task": {"name": task, "task_file": str(cfg.data.task_file), "num_labels": num_labels,
                 "train_examples": train_examples},
        "steps": step,
        "max_steps": cfg.train.max_steps,
        "budget_fraction": cfg.train.budget_fraction,
        "sparsity": None if trainable_fraction is None
        else {"requested": cfg.talos.sparsity, "trainable_fraction": trainable_fraction},
        "seed": cfg.train.seed,
        "processes": world,
        "metrics": metrics,
        "config": json.loads(cfg.model_dump_json()),
    }  # fmt: skip
