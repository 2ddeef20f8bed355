"""The models' tensors as one stacked tensor, for methods whose reductions run across models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .registry import Float32Copies


def stack_models(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors as one (n, ...) tensor, filled one float32 copy at a time (peak: the stack
    plus one copy, where `torch.stack` of a `Float32Copies` would hold every copy twice); from a
    `Float32Copies`, each stored tensor converted straight into its row (the same values: one
    rounding at most, to the stack's dtype)."""
    if isinstance(tensors, Float32Copies):
        row, dtype = tensors.stored, tensors.copy_dtype(0)
    else:
        row, dtype = tensors.__getitem__, None
    first = row(0)
    out = torch.empty((len(tensors), *first.shape), dtype=dtype or first.dtype, device=first.device)
    out[0] = first
    for i in range(1, len(tensors)):
        out[i] = row(i)
    return out
