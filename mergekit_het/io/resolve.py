"""Turn a model reference from a config into a tensor source.

A reference is a local path (folder or `.safetensors` file), `MODEL+ADAPTER` (a LoRA adapter
over a model, mergekit's syntax), a PEFT adapter folder alone (over the base it names, or the
merge's base model), a folder holding `task_vector.safetensors` (θ₀ + τ over the merge's base
model), or a Hub repo id (downloaded with `huggingface_hub`; needs network access).
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from ..errors import ConfigError
from .lora import adapter_base_model, is_lora_adapter, lora_source
from .paths import member
from ..runtime.names import SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE
from .sources import DerivedSource, PickleModel, SafetensorsModel, TensorSource, has_model_weights

TASK_VECTOR_FILE = "task_vector.safetensors"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "1_Pooling/*"]


def is_hub_id(ref: str) -> bool:
    """`ref` has the shape of a Hub repo id, `namespace/name` (not `./x` or `../x`, which are
    relative paths)."""
    return bool(_REPO_ID.match(ref)) and not ref.startswith((".", "/"))


def local_folder(ref: str) -> Path:
    """A local path for `ref`, downloading Hub repos (configs and safetensors only)."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if is_hub_id(ref):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(ref, allow_patterns=_MODEL_FILES))
        except Exception as exc:  # offline, gated, missing: all one message
            raise ConfigError(f"model '{ref}' is not a local path and could not be fetched from the Hub ({type(exc).__name__})") from None
    raise ConfigError(f"model path {ref} does not exist")


def check_reference(ref: str) -> None:
    """Fail early on a missing local path (Hub ids are resolved when opened)."""
    for part in ref.split("+"):
        if not Path(part).expanduser().exists() and not is_hub_id(part):
            raise ConfigError(f"model path {part} does not exist")


def open_model(ref: str, *, base: str | None = None, allow_pickle: bool = False) -> TensorSource:
    """Open `ref` lazily (headers only); `base` is the merge's base model reference."""
    if "+" in ref and not Path(ref).exists():
        model, adapter = ref.split("+", 1)
        return lora_source(local_folder(adapter), open_model(model, allow_pickle=allow_pickle))
    path = local_folder(ref)
    if path.is_dir() and is_lora_adapter(path):
        over = adapter_base_model(path) or base
        if not over or over == ref:
            raise ConfigError(f"{path}: LoRA adapter names no base model; set base_model or write MODEL+{ref}")
        return lora_source(path, open_model(over, allow_pickle=allow_pickle))
    if path.is_dir() and (path / TASK_VECTOR_FILE).is_file() and not has_model_weights(path):
        if not base:
            raise ConfigError(f"{path}: holds only a task vector; the merge needs base_model to add it to")
        return _task_vector_source(member(path, TASK_VECTOR_FILE, "task vector"), open_model(base, allow_pickle=allow_pickle))
    if path.is_file() or (path / SAFETENSORS_SINGLE_FILE).is_file() or (path / SAFETENSORS_INDEX_FILE).is_file():
        return SafetensorsModel(path)
    if has_model_weights(path):
        if not allow_pickle:
            raise ConfigError(
                f"{path} holds only pickle (.bin) weights, which can run code when loaded; "
                "pass --allow-pickle if you trust it, or convert it to safetensors"
            )
        return PickleModel(path)
    raise ConfigError(f"{path}: no model weights (model.safetensors, an index, an adapter or a task vector)")


def _task_vector_source(file: Path, base: TensorSource) -> DerivedSource:
    """θ₀ + τ, with τ read lazily from `file` (tensors it lacks equal the base)."""
    tau = SafetensorsModel(file)
    names = set(tau.names())

    def transform(name: str, w: Tensor) -> Tensor | None:
        return w.float() + tau.read(name).float() if name in names else None

    return DerivedSource(base, transform, label=f"{base.label}+{file}", owned=(tau,))
