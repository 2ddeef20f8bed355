"""Tokenized evaluation splits, built once and reused for every model of a comparison.

Rows are sorted by token length before batching (little padding, `runtime.batching`);
predictions are put back in the split's original order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tasks import TaskSpec, load_split, num_labels_of
from ..runtime.batching import Batch, eval_batches, length_order, tokenize
from ..runtime.logs import quiet_third_party


@dataclass
class EncodedSplit:
    """One split of one task, tokenized: `batches[k]` = (row indices, padded inputs with labels)."""

    task: str
    split: str
    num_labels: int
    labels: torch.Tensor  # (n,) long, original order
    batches: list[tuple[torch.Tensor, Batch]]

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
    with quiet_third_party():
        ds = load_split(task, split)
    if max_examples is not None and max_examples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_examples))
    rows = tokenize(ds, tokenizer, max_length)
    batches = list(eval_batches(rows, tokenizer, batch_size, order=length_order(rows)))
    return EncodedSplit(task.name, split, num_labels_of(task), torch.tensor(ds["label"], dtype=torch.long), batches)
