"""Tokenized rows to padded batches: the one batching path of fine-tuning, federated and
continual training and evaluation.

A *row* is one tokenized example (`input_ids`, `attention_mask`[, `token_type_ids`][, `labels`]).
`eval_batches` yields `(indices, batch)`: the row indices in the batch and the padded tensors,
so a caller can put per-row results back in the rows' original order.

```python
rows = tokenize(dataset, tokenizer, max_length=64)                  # list of dicts
for idx, batch in eval_batches(rows, tokenizer, 32, order=length_order(rows), device=dev):
    logits = model(**encoder_inputs(batch)).logits
```
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from .logs import quiet_third_party

ENCODER_KEYS = ("input_ids", "attention_mask", "token_type_ids")
Batch = dict[str, torch.Tensor]


def encoder_inputs(batch: Mapping[str, torch.Tensor]) -> Batch:
    """The keys of `batch` an HF encoder takes (`ENCODER_KEYS`); labels and the rest dropped."""
    return {k: batch[k] for k in ENCODER_KEYS if k in batch}


def to_device(batch: Mapping[str, torch.Tensor], device: str | torch.device | None) -> Batch:
    """Every tensor of `batch` on `device` (unchanged when None)."""
    return dict(batch) if device is None else {k: v.to(device) for k, v in batch.items()}


def tokenize(ds, tokenizer, max_length: int, causal_lm: bool = False) -> list[dict]:
    """Batched tokenization of a `datasets.Dataset` (`text`, `label`) into a list of rows (fast
    to index); classification rows keep `labels`, causal LM trains on the text itself."""

    def fn(rows):
        enc = tokenizer(rows["text"], truncation=True, max_length=max_length)
        if not causal_lm:
            enc["labels"] = rows["label"]
        return enc

    with quiet_third_party():
        return ds.map(fn, batched=True, remove_columns=ds.column_names, desc="tokenize").to_list()


def collate(rows: Sequence[dict], tokenizer, causal_lm: bool = False) -> Batch:
    """Pad rows to the longest one; for causal LM, labels = input_ids with padding set to -100."""
    batch = tokenizer.pad(list(rows), return_tensors="pt")
    if causal_lm:
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
    return dict(batch)


def length_order(rows: Sequence[dict]) -> list[int]:
    """Row indices sorted by token count (stable: equal lengths keep their order), so that
    batches of neighbours carry little padding."""
    return sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))


def eval_batches(
    rows: Sequence[dict],
    tokenizer,
    batch_size: int,
    *,
    order: Sequence[int] | None = None,
    rank: int = 0,
    world: int = 1,
    causal_lm: bool = False,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, Batch]]:
    """`(indices, batch)` over this process's share `order[rank::world]` of the rows (`order`
    defaults to 0..n-1), `batch_size` at a time; the last batch may be smaller. Every row of
    the share appears exactly once, in `order`."""
    share = list(range(len(rows)) if order is None else order)[rank::world]
    for i in range(0, len(share), batch_size):
        idx = share[i : i + batch_size]
        batch = collate([rows[j] for j in idx], tokenizer, causal_lm)
        yield torch.tensor(idx, dtype=torch.long), to_device(batch, device)
