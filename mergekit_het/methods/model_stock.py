"""Model Stock (Jang et al., arXiv:2403.19522), mergekit 0.1.5 semantics."""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import merge_method


@merge_method("model_stock", paper="arXiv:2403.19522", base="required", min_models=2)
def model_stock(base: Tensor, tensors: list[Tensor], *, filter_wise: bool = False) -> Tensor:
    """t·mean(θᵢ) + (1 − t)·θ₀ with t = N cos θ / (1 + (N − 1) cos θ) (t = 0, the base, where
    |1 + (N − 1) cos θ| < 1e-6).

    cos θ is the mean over pairs i < j of the cosine between offsets θᵢ − θ₀ (each clamped to
    [−1, 1], norms product floored at 1e-6); with `filter_wise`, per vector along the last dim
    (rows of a matrix; a 1-D tensor is one vector).
    mergekit 0.1.5's order of operations, so float32 results equal it bit for bit.
    """
    shape = base.shape
    models = list(tensors)
    if not filter_wise:
        base, models = base.reshape(-1), [x.reshape(-1) for x in models]
    elif base.dim() == 1:
        base, models = base.unsqueeze(0), [x.unsqueeze(0) for x in models]
    offsets = [x - base for x in models]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(models)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, (n * cos) / torch.where(singular, 1.0, denominator))
    mean = sum(models) / n
    return (t * mean + (1 - t) * base).reshape(shape)
