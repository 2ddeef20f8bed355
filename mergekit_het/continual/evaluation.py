"""Class-incremental and task-incremental accuracy of one classifier over all classes.

After step t the model gives logits z(x) ∈ R^C over every class of the pool (unseen ones too).

- class-incremental (no task identity at test time): ŷ = argmax_{c ∈ S_t} z_c(x), S_t = the
  classes of experiences 0..t; R_CI[t][j] = accuracy of ŷ on experience j's eval examples;
- task-incremental (experience identity given): ŷ = argmax_{c ∈ C_j} z_c(x) for an example of
  experience j (C_j its classes); R_TI[t][j] its accuracy.
`final_accuracy` is the class-incremental accuracy on the whole eval pool after the last step
(every class counts as often as it has eval examples, whatever the schedule's cut).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..runtime.batching import eval_batches, length_order
from ..runtime.evaluation import eval_mode
from .stream import Schedule


@torch.no_grad()
def pool_logits(model: nn.Module, rows: Sequence[dict], tokenizer, batch_size: int, device) -> torch.Tensor:
    """Logits (n, C) float32 on the CPU, row i at index i (length-sorted batches, eval mode)."""
    out: torch.Tensor | None = None
    with eval_mode(model):
        for idx, batch in eval_batches(rows, tokenizer, batch_size, order=length_order(rows), device=device):
            batch.pop("labels", None)
            logits = model(**batch).logits.float().cpu()
            if out is None:
                out = torch.empty(len(rows), logits.shape[1])
            out[idx] = logits
    return out


def restricted_argmax(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """argmax over the given global classes only, as global class ids."""
    cls = torch.as_tensor(list(classes), dtype=torch.long)
    return cls[logits[:, cls].argmax(dim=-1)]


def accuracy_rows(logits: torch.Tensor, labels: torch.Tensor, schedule: Schedule, t: int) -> tuple[list[float], list[float]]:
    """(R_CI[t][0..t], R_TI[t][0..t]) from the eval pool's logits after step t."""
    seen = schedule.seen(t)
    ci, ti = [], []
    for exp in schedule.experiences[: t + 1]:
        idx = torch.as_tensor(exp.eval, dtype=torch.long)
        y = labels[idx]
        ci.append((restricted_argmax(logits[idx], seen) == y).double().mean().item())
        ti.append((restricted_argmax(logits[idx], exp.classes) == y).double().mean().item())
    return ci, ti


def final_accuracy(logits: torch.Tensor, labels: torch.Tensor, schedule: Schedule) -> float:
    """Class-incremental accuracy on every eval example of the stream after the last step."""
    idx = torch.as_tensor([i for e in schedule.experiences for i in e.eval], dtype=torch.long)
    seen = schedule.seen(len(schedule.experiences) - 1)
    return (restricted_argmax(logits[idx], seen) == labels[idx]).double().mean().item()
