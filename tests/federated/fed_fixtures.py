"""Helpers for federated/continual tests: a tiny random BERT on disk and a synthetic task."""

from __future__ import annotations

import random
from pathlib import Path

import torch
import yaml

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]
NUM_LABELS = 4


def make_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer hidden-32 BERT (no dropout) with a word-level tokenizer, saved as a base model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModel, BertConfig, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    AutoModel.from_config(cfg).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    return folder


def synthetic_rows(n: int, seed: int, num_labels: int = NUM_LABELS) -> list[tuple[str, int]]:
    """Class c is signalled by words w{5c}..w{5c+4}; the rest are noise words w20..w59."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        c = rng.randrange(num_labels)
        words = [f"w{rng.randrange(20, 60)}" for _ in range(rng.randrange(2, 6))]
        words.insert(rng.randrange(len(words) + 1), f"w{5 * c + rng.randrange(5)}")
        rows.append((" ".join(words), c))
    return rows


def write_task(folder: Path, sizes=(80, 24, 24), name: str = "toy") -> Path:
    """CSV splits + a task file; returns the task file path."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in zip(("train", "validation", "test"), sizes, (0, 1, 2)):
        lines = ["text,label"] + [f"{t},{y}" for t, y in synthetic_rows(n, seed)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    task_file = folder / "tasks.yaml"
    task_file.write_text(yaml.safe_dump({"tasks": [{"name": name, "dir": ".", "num_labels": NUM_LABELS}]}))
    return task_file
