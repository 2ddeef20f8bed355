"""Tiny Llama checkpoints for the slices tests (built in tmp_path, loadable with from_pretrained)."""

from pathlib import Path

import pytest
import torch


def save_tiny_llama(path: Path, seed: int, layers: int = 4, tie: bool = False) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # every tensor distinct (norm weights too), so a misplaced layer cannot pass
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llamas(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llamas")
    return {name: save_tiny_llama(root / name, seed) for seed, name in enumerate(["A", "B", "C"])}
