"""TIES sign election and disjoint mean (arXiv:2306.01708), mergekit 0.1 semantics."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Consensus = Literal["sum", "count"]


def elect_sign(weighted: list[Tensor], how: Consensus = "sum") -> Tensor:
    """Boolean tensor, True where the elected sign is +.

    "sum": sign of Σᵢ wᵢδᵢ (mass); "count": sign of Σᵢ sign(wᵢδᵢ) (majority vote).
    An exact tie (sum 0) elects + as mergekit does. Accumulates in model order, so the
    election equals mergekit's stacked sum bit for bit.
    """
    total = torch.zeros_like(weighted[0])
    for wd in weighted:
        total += wd if how == "sum" else wd.sign()
    return total >= 0


def disjoint_mean(
    weighted: list[Tensor], weights: list[float], positive: Tensor, normalize: bool
) -> Tensor:
    """Σᵢ wᵢδᵢ·aᵢ, divided (if `normalize`) by Σᵢ wᵢ·aᵢ, where aᵢ marks entries of model i whose
    sign agrees with the elected one (trimmed zeros never agree). A zero divisor becomes 1."""
    mixed = torch.zeros_like(weighted[0])
    divisor = torch.zeros_like(weighted[0])
    for wd, w in zip(weighted, weights):
        agree = torch.where(positive, wd > 0, wd < 0)
        mixed += wd * agree
        divisor += w * agree
    if not normalize:
        return mixed
    divisor[divisor == 0] = 1
    return mixed / divisor
