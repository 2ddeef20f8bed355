"""Arcee Fusion: take the other model's changes only where they matter most (mergekit 0.1.5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .registry import merge_method

QUANTILE_SAMPLE = 1_000_000


def importance(p: Tensor, b: Tensor) -> Tensor:
    """I = |p − b| ⊙ KL(softmax(p) ‖ softmax(b)), the KL over the last dim (kept as size 1),
    each softmax plus 1e-8; a 1-D tensor is one distribution."""
    diff = (p - b).abs()
    P = torch.softmax(p, dim=-1) + 1e-8
    Q = torch.softmax(b, dim=-1) + 1e-8
    return diff * torch.sum(P * torch.log(P / Q), dim=-1, keepdim=True)


def fusion_threshold(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """q(½) + 1.5·(q(¾) − q(¼)), with q(x) = z[⌊x·(len − 1)⌋] of the sorted scores z (no
    interpolation); above 10⁶ entries z is a sample of 10⁶ drawn with replacement."""
    z = scores.reshape(-1)
    if z.numel() > QUANTILE_SAMPLE:
        z = z[torch.randint(z.numel(), (QUANTILE_SAMPLE,), device=z.device, generator=generator)]
    z = torch.sort(z).values
    q1, median, q3 = z[(torch.tensor([0.25, 0.5, 0.75]).to(z.device) * (z.numel() - 1)).long()]
    return median + 1.5 * (q3 - q1)


@merge_method("arcee_fusion", paper="https://arcee.ai", base="required", min_models=1, max_models=1)
def arcee_fusion(base: Tensor, tensors: Sequence[Tensor], *, generator: torch.Generator | None = None) -> Tensor:
    """θ₀ + (θ₁ − θ₀) ⊙ [I ≥ threshold], with the importance I of `importance` and the outlier
    threshold of `fusion_threshold` (so where ≥ ¾ of I is 0 every change is taken). No
    parameters; random (seeded per tensor) only on tensors above 10⁶ entries."""
    other = tensors[0]
    scores = importance(other, base)
    mask = (scores >= fusion_threshold(scores, generator)).float()
    return base + (other - base) * mask
