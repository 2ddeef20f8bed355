"""Helpers for finetune tests: tiny on-disk models (random-init BERT / GPT-2, word-level tokenizer) and a synthetic task."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]
NUM_LABELS = 3


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def make_bert(folder: Path, num_labels: int | None = None, seed: int = 0) -> Path:
    """A 2-layer hidden-32 BERT saved as a base model (AutoModel names) or with a classification head."""
    from transformers import AutoModel, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    if num_labels is None:
        model = AutoModel.from_config(cfg)
    else:
        cfg.num_labels = num_labels
        model = BertForSequenceClassification(cfg)
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def make_gpt2(folder: Path, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(VOCAB), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, eos_token_id=3,
                     bos_token_id=2)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def synthetic_rows(n: int, seed: int, num_labels: int = NUM_LABELS, noise_words: tuple[int, int] = (3, 8)) -> list[tuple[str, int]]:
    """Class c is signalled by words w{5c}..w{5c+4}; the rest are noise words w20..w59
    (between noise_words[0] and noise_words[1] - 1 of them)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        c = rng.randrange(num_labels)
        words = [f"w{rng.randrange(20, 60)}" for _ in range(rng.randrange(*noise_words))]
        words.insert(rng.randrange(len(words) + 1), f"w{5 * c + rng.randrange(5)}")
        rows.append((" ".join(words), c))
    return rows


def write_task(folder: Path, sizes=(96, 32, 32), name: str = "toy", num_labels: int = NUM_LABELS,
               noise_words: tuple[int, int] = (3, 8)) -> Path:  # fmt: skip
    """CSV splits + a task file; returns the task file path."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in zip(("train", "validation", "test"), sizes, (0, 1, 2)):
        lines = ["text,label"] + [f"{t},{y}" for t, y in synthetic_rows(n, seed, num_labels, noise_words)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    task_file = folder / "tasks.yaml"
    task_file.write_text(yaml.safe_dump({"tasks": [{"name": name, "dir": ".", "num_labels": num_labels}]}))
    return task_file


@contextmanager
def interrupted_at_step(n: int) -> Iterator[None]:
    """Inside the block the recipe's `train_step` raises KeyboardInterrupt (a Ctrl-C) on its
    n-th call; the real one is back afterwards."""
    from mergekit_het.finetune import recipe

    real, calls = recipe.train_step, []

    def step(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kw)

    recipe.train_step = step
    try:
        yield
    finally:
        recipe.train_step = real
