"""The one evaluation loop: logits batch by batch, summed correct / count / cross-entropy,
and the prediction of every row in the rows' original order.

For classification each row counts once; for a causal LM (`causal_lm=True`) every next-token
position with a label other than -100 counts once (logits[:, :-1] against labels[:, 1:]).

```python
with eval_mode(model):
    totals = evaluate_batches(lambda b: model(**b).logits, eval_batches(rows, tok, 64, device=dev))
totals.accuracy, totals.mean_loss, totals.preds      # preds[i] is row i's predicted class
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .batching import Batch, eval_batches, length_order


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` for the block, then back to the training mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class EvalTotals:
    """Sums over the evaluated rows (or tokens): `sums` = (correct, count, cross-entropy), float64.

    `preds` / `labels` hold one entry per row, at the row's index (classification only; -1
    where a row was not evaluated, e.g. another process's share)."""

    sums: torch.Tensor
    preds: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.sums[1])

    @property
    def accuracy(self) -> float:
        """correct / count (0 when nothing was counted)."""
        return float(self.sums[0]) / max(float(self.sums[1]), 1.0)

    @property
    def mean_loss(self) -> float:
        """Σ cross-entropy / count: the mean loss per row (per token for a causal LM)."""
        return float(self.sums[2]) / max(float(self.sums[1]), 1.0)


@torch.no_grad()
def evaluate_batches(
    logits_fn: Callable[[Batch], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, Batch]],
    *,
    num_rows: int | None = None,
    causal_lm: bool = False,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> EvalTotals:
    """Run `logits_fn` on each batch without its `labels` and add up correct predictions,
    counted rows/tokens and Σ cross-entropy(logits, labels) (batches without labels count
    nothing but still predict). With `num_rows` (classification), row i's prediction and label
    land at index i. `reduce` sums the totals across processes (e.g. accelerate's all-reduce);
    the totals live on `device` (default: where the logits are). The caller sets eval mode
    (`eval_mode`) and autocast."""
    sums = None if device is None else torch.zeros(3, dtype=torch.float64, device=device)
    preds = labels_out = None
    if num_rows is not None and not causal_lm:
        preds = torch.full((num_rows,), -1, dtype=torch.long)
        labels_out = torch.full((num_rows,), -1, dtype=torch.long)
    for idx, batch in batches:
        inputs = dict(batch)
        labels = inputs.pop("labels", None)
        logits = logits_fn(inputs).float()
        if sums is None:
            sums = torch.zeros(3, dtype=torch.float64, device=logits.device)
        if preds is not None:
            preds[idx] = logits.argmax(-1).cpu()
        if labels is None:
            continue
        if labels_out is not None:
            labels_out[idx] = labels.cpu()
        if causal_lm:
            logits, labels = logits[:, :-1], labels[:, 1:]
        valid = labels != -100
        logits, labels = logits[valid], labels[valid]
        sums += torch.stack([
            (logits.argmax(-1) == labels).sum().double(),
            torch.tensor(float(labels.numel()), device=sums.device, dtype=torch.float64),
            nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
        ])  # fmt: skip
    if sums is None:
        sums = torch.zeros(3, dtype=torch.float64)
    if reduce is not None:
        sums = reduce(sums)
    return EvalTotals(sums, preds, labels_out)


def evaluate_classifier(
    model: nn.Module, rows: Sequence[dict], tokenizer, batch_size: int, *, device: str | torch.device | None = None
) -> EvalTotals:
    """A classifier (HF call convention: `model(**inputs).logits`) on tokenized rows with labels,
    in length-sorted batches, eval mode, on `device` (default: the model's)."""
    device = device or next(model.parameters()).device
    with eval_mode(model):
        batches = eval_batches(rows, tokenizer, batch_size, order=length_order(rows), device=device)
        return evaluate_batches(lambda b: model(**b).logits, batches, num_rows=len(rows), device=device)
