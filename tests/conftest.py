"""Shared fixtures: tiny random-init Hugging Face models written to disk."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


# Tests run with --import-mode=importlib (test files in different folders may share a name);
# fixture modules next to the tests (`fed_fixtures`, `fake_hub`, ...) are imported by name.
_TESTS = Path(__file__).parent
for _p in [_TESTS.parent, *sorted(d for d in _TESTS.iterdir() if d.is_dir() and not d.name.startswith("_"))]:
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kw = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              max_position_embeddings=32)  # fmt: skip
    kw.update(overrides)
    return BertConfig(**kw)


def save_tiny_bert(path: Path, seed: int = 0, dtype=torch.float32, **config) -> Path:
    """A random-init BertModel saved with save_pretrained (single model.safetensors)."""
    from transformers import BertModel

    torch.manual_seed(seed)
    model = BertModel(tiny_bert_config(**config)).to(dtype)
    model.save_pretrained(path)
    return path


def perturb(src: Path, dst: Path, seed: int, scale: float = 0.05) -> Path:
    """A copy of model `src` with a seeded random task vector added to every float tensor."""
    import shutil

    shutil.copytree(src, dst)
    sd = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    out = {k: (v + scale * torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture
def tiny_models(tmp_path: Path) -> dict[str, Path]:
    """A base BertModel and three experts derived from it."""
    base = save_tiny_bert(tmp_path / "base")
    return {"base": base, **{f"e{i}": perturb(base, tmp_path / f"e{i}", seed=i + 1) for i in range(3)}}
