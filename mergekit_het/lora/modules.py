"""Which modules of a model an extracted adapter decomposes, saves whole, or leaves out.

The module tree comes from the fine-tuned model's `config.json`, instantiated on the meta device
(no weights read), as mergekit-extract-lora 0.1.5 does. For each module holding a `weight`
parameter, in `named_modules()` order (mergekit's rules):
1. an input/output embedding or `nn.Embedding`, without `embed_lora` and not excluded: its last
   name component joins `modules_to_save`;
2. its name or last component in `modules_to_save`: saved whole (every fine-tuned parameter and
   buffer of the module in the checkpoint: weight, bias, a BatchNorm's running statistics);
3. else, if it passes the regexes (any `include` matches by `re.search`, when given; no `exclude`):
   `nn.Linear`, `nn.Conv1d`, `nn.Conv2d` → LoRA; `nn.Embedding` → embedding LoRA (Δ transposed);
   any other type (norms, transformers' GPT-2 `Conv1D`) → saved whole and its last component
   added to `modules_to_save`, or left out with `skip_undecomposable`.
A tied weight absent from the checkpoint (`lm_head` tied to `embed_tokens`) is read under the name
it is tied to; a weight absent under every name is an error (the adapter would silently miss it):
architectures whose checkpoint names are not their module paths (transformers 5 renames some, ViT
for one, on load) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError, TensorError

Kind = Literal["lora", "embedding", "full"]
_DECOMPOSABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


@dataclass(frozen=True)
class Target:
    """One module of the adapter: its path, the checkpoint tensors it reads, how it is stored."""

    module: str
    tensors: dict[str, str]  # local name ("weight", "bias", ...) -> checkpoint name (a tied alias resolved)
    kind: Kind

    @property
    def weight(self) -> str:
        return self.tensors["weight"]

    @property
    def bias(self) -> str | None:
        return self.tensors.get("bias")


@dataclass
class TargetPlan:
    targets: list[Target]
    modules_to_save: list[str]
    architecture: str = ""
    notes: list[str] = field(default_factory=list)


def build_architecture(folder: Path, trust_remote_code: bool = False) -> nn.Module:
    """The model class named by `folder/config.json` (`architectures[0]`, else `AutoModel`), on meta."""
    import transformers

    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: no config.json; extract-lora needs the architecture to tell linear layers from norms and embeddings")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        with torch.device("meta"):
            return cls(config) if cls is not None else transformers.AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for unknown or custom architectures
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{folder / 'config.json'}: cannot build the architecture ({type(exc).__name__}: {first})") from None


def plan_targets(model: nn.Module, present: set[str], *, embed_lora: bool, save_modules: list[str],
                 include: list[str], exclude: list[str], skip_undecomposable: bool) -> TargetPlan:  # fmt: skip
    """Apply the rules of the module docstring to `model`; `present` is the checkpoint's tensor names."""
    aliases = _tied_names(model)
    embeddings = {id(m) for m in (_embeddings(model, "input"), _embeddings(model, "output")) if m is not None}
    plan = TargetPlan([], list(save_modules))
    missing = []
    for name, module in model.named_modules():
        local = [n for n, _ in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))]
        if "weight" not in local:
            continue
        found = {n: _checkpoint_name(f"{name}.{n}" if name else n, present, aliases) for n in local}
        tensors = {n: c for n, c in found.items() if c is not None}
        if "weight" not in tensors:
            missing.append(f"{name}.weight")
            continue
        lora_tensors = {n: c for n, c in tensors.items() if n in ("weight", "bias")}
        key = name.split(".")[-1]
        is_embedding = id(module) in embeddings or isinstance(module, nn.Embedding)
        if is_embedding and not embed_lora and not any(re.search(r, name) for r in exclude) and key not in plan.modules_to_save:
            plan.modules_to_save.append(key)
        if name in plan.modules_to_save or key in plan.modules_to_save:
            plan.targets.append(Target(name, tensors, "full"))
        elif (not include or any(re.search(r, name) for r in include)) and not any(re.search(r, name) for r in exclude):
            if isinstance(module, _DECOMPOSABLE):
                plan.targets.append(Target(name, lora_tensors, "embedding" if isinstance(module, nn.Embedding) else "lora"))
            elif skip_undecomposable:
                note = f"{key} ({type(module).__name__}) cannot be decomposed; skipped (--skip-undecomposable)"
                if note not in plan.notes:
                    plan.notes.append(note)
            else:
                plan.targets.append(Target(name, tensors, "full"))
                if key not in plan.modules_to_save:
                    plan.modules_to_save.append(key)
    if missing:
        raise TensorError(f"{missing[0]}: a weight of {type(model).__name__} that the checkpoint does not hold under that name "
                          f"({len(missing)} such); extract-lora needs checkpoint names equal to the module paths")  # fmt: skip
    return plan


def input_embedding_weight(model: nn.Module) -> str | None:
    """The parameter name of the model's input embedding matrix (for the vocabulary check)."""
    emb = _embeddings(model, "input")
    return next((f"{n}.weight" for n, m in model.named_modules() if m is emb), None) if emb is not None else None


def _embeddings(model: nn.Module, side: Literal["input", "output"]) -> nn.Module | None:
    """`get_input_embeddings()` / `get_output_embeddings()`, None where the model has none (ResNet)."""
    try:
        return getattr(model, f"get_{side}_embeddings")()
    except (AttributeError, NotImplementedError):
        return None


def _tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Parameter name -> every name of the same parameter object (tied weights share one)."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    return {n: names for names in by_id.values() for n in names}


def _checkpoint_name(name: str, present: set[str], aliases: dict[str, list[str]]) -> str | None:
    return next((n for n in [name, *aliases.get(name, [])] if n in present), None)
