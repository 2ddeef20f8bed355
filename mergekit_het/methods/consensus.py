"""TIES sign election and disjoint mean (arXiv:2306.01708), mergekit 0.1 semantics."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Consensus = Literal["sum", "count"]


def elect_sign(weighted: list[Tensor], how: Consensus = "sum", tie: float | Tensor = 1.0) -> Tensor:
    """The elected sign per entry: +1, −1, or `tie` where the vote is exactly 0.

    "sum": sign of Σᵢ wᵢδᵢ (mass); "count": sign of Σᵢ sign(wᵢδᵢ) (majority vote). mergekit
    elects + on a tie (tie=1); the TIES paper uses the model-wide majority sign. Accumulates in
    model order, so the election equals mergekit's stacked sum bit for bit.
    """
    total = torch.zeros_like(weighted[0])
    for wd in weighted:
        total += wd if how == "sum" else wd.sign()
    sign = total.sign_()
    return sign.masked_fill_(sign == 0, tie) if tie != 0 else sign


def disjoint_mean(weighted: list[Tensor], weights: list[float], sign: Tensor, normalize: bool) -> Tensor:
    """Σᵢ wᵢδᵢ·aᵢ, divided (if `normalize`) by Σᵢ wᵢ·aᵢ, where aᵢ marks entries of model i whose
    sign equals the elected one (trimmed zeros never agree). A zero divisor becomes 1."""
    mixed = torch.zeros_like(weighted[0])
    divisor = torch.zeros_like(weighted[0])
    for wd, w in zip(weighted, weights):
        agree = (wd * sign) > 0
        mixed += wd.masked_fill(~agree, 0.0)
        divisor.add_(agree, alpha=w)
    if not normalize:
        return mixed
    divisor[divisor == 0] = 1
    return mixed / divisor
