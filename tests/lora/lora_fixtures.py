"""Tiny fine-tuned / base pairs on disk whose task vector Δ = W_ft − W_base is chosen per tensor."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

LLAMA = dict(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1)  # fmt: skip


def low_rank(shape: tuple[int, ...], rank: int, g: torch.Generator, scale: float = 0.1) -> torch.Tensor:
    """A random [out, in] matrix of rank exactly `rank` (entries ~ `scale`)."""
    return scale * torch.randn(shape[0], rank, generator=g) @ torch.randn(rank, shape[1], generator=g) / rank**0.5


def save_pair(root: Path, model, delta: Callable[[str, torch.Tensor, torch.Generator], torch.Tensor], seed: int = 1) -> tuple[Path, Path]:
    """`model` saved as root/base; root/ft = base + delta(name, tensor, g) for every float tensor."""
    base, ft = root / "base", root / "ft"
    model.save_pretrained(base)
    shutil.copytree(base, ft)
    g = torch.Generator().manual_seed(seed)
    sd = load_file(base / "model.safetensors")
    out = {k: (v + delta(k, v, g)).to(v.dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(out, ft / "model.safetensors", metadata={"format": "pt"})
    return base, ft


def noise(name: str, w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A general (full-rank) Δ."""
    return 0.05 * torch.randn(w.shape, generator=g)


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**LLAMA, **overrides}))


def merged_state(base: Path, adapter: Path, cls) -> dict[str, torch.Tensor]:
    """peft's reading of the adapter: `PeftModel.from_pretrained(base).merge_and_unload()`."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(cls.from_pretrained(base), adapter).merge_and_unload()
    return {k: v.detach() for k, v in model.state_dict().items()}
