"""Tokenized evaluation splits, built once and reused for every model of a comparison.

Texts are sorted by token length before batching (little padding); predictions are put back
in the split's original order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tasks import TaskSpec, load_split, num_labels_of


@dataclass
class EncodedSplit:
    """One split of one task, tokenized: `batches[k]` = (row indices, model inputs)."""

    task: str
    split: str
    num_labels: int
    labels: torch.Tensor  # (n,) long, original order
    batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]

    def __len__(self) -> int:
        return self.labels.numel()


def encode_split(
    task: TaskSpec,
    split: str,
    tokenizer,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    max_examples: int | None = None,
    seed: int = 0,
) -> EncodedSplit:
    """Load `split` of `task` (`tasks.load_split`), optionally keep a random subset of
    `max_examples` rows (fixed `seed`), and tokenize it into length-sorted padded batches."""
    ds = load_split(task, split)
    if max_examples is not None and max_examples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_examples))
    texts, labels = list(ds["text"]), torch.tensor(ds["label"], dtype=torch.long)
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        enc = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
        batches.append((torch.tensor(rows, dtype=torch.long), dict(enc)))
    return EncodedSplit(task.name, split, num_labels_of(task), labels, batches)
