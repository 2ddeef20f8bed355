"""Model Stock (Jang et al., arXiv:2403.19522), mergekit 0.1 semantics."""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import merge_method


@merge_method("model_stock", paper="arXiv:2403.19522", base="required", min_models=2)
def model_stock(base: Tensor, tensors: list[Tensor], *, filter_wise: bool = False) -> Tensor:
    """t·mean(θᵢ) + (1 − t)·θ₀ with t = N cos θ / (1 + (N − 1) cos θ).

    cos θ is the mean over pairs i < j of the cosine between offsets θᵢ − θ₀ (each clamped to
    [−1, 1], norms product floored at 1e-6); with `filter_wise`, per row (1-D tensors are one row).
    """
    shape = base.shape
    rows = (lambda x: x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)) if filter_wise else (
        lambda x: x.reshape(1, -1)
    )
    offsets = [rows(t - base) for t in tensors]
    cos_sum = torch.zeros(offsets[0].shape[0], 1, dtype=base.dtype, device=base.device)
    pairs = 0
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            a, b = offsets[i], offsets[j]
            dot = (a * b).sum(dim=1, keepdim=True)
            norms = (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True)).clamp_min(1e-6)
            cos_sum += (dot / norms).clamp(-1, 1)
            pairs += 1
    cos = cos_sum / pairs
    n = len(tensors)
    t = n * cos / (1 + (n - 1) * cos)
    mean = torch.stack([rows(x) for x in tensors]).mean(dim=0)
    return (t * mean + (1 - t) * rows(base)).reshape(shape)
