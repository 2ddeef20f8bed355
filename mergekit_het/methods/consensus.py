"""TIES sign election and disjoint mean (arXiv:2306.01708), mergekit 0.1 semantics."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Consensus = Literal["sum", "count"]


def elect_sign(weighted: list[Tensor], how: Consensus = "sum", tie: float = 1.0) -> Tensor:
    """The elected sign per entry: +1, −1, or `tie` (−1, 0 or +1) where the vote is exactly 0.

    "sum": sign of Σᵢ wᵢδᵢ (mass); "count": sign of Σᵢ sign(wᵢδᵢ) (majority vote). mergekit
    elects + on a tie (tie=1); the TIES paper uses the model-wide majority sign. Accumulates in
    model order, so the election equals mergekit's stacked sum bit for bit. Float arithmetic
    only: sign(sign(v) + tie/2) maps a zero vote to `tie` (boolean masks are slow on CPUs).
    """
    if tie not in (-1, 0, 1):
        raise ValueError(f"the sign of a tied vote must be -1, 0 or 1, got {tie}")
    total = weighted[0].clone() if how == "sum" else weighted[0].sign()
    for wd in weighted[1:]:
        total += wd if how == "sum" else wd.sign()
    sign = total.sign_()
    return sign.add_(tie / 2).sign_() if tie else sign


def disjoint_mean(weighted: list[Tensor], weights: list[float], sign: Tensor, normalize: bool) -> Tensor:
    """Σᵢ wᵢδᵢ·aᵢ, divided (if `normalize`) by Σᵢ wᵢ·aᵢ, where aᵢ marks entries of model i whose
    sign equals the elected one (trimmed zeros never agree). A zero divisor becomes 1.
    Consumes `weighted` (its tensors are overwritten)."""
    # In the elected direction: wδ·sign is positive exactly where model i agrees, so its
    # positive part is the agreeing magnitude and sign() of that is the 0/1 agreement mask.
    mixed = divisor = None
    for wd, w in zip(weighted, weights):
        agreeing = wd.mul_(sign).clamp_(min=0)
        if mixed is None:
            mixed, divisor = agreeing.clone(), agreeing.sign_().mul_(w)
        else:
            mixed += agreeing
            divisor.add_(agreeing.sign_(), alpha=w)
    mixed *= sign
    if not normalize:
        return mixed
    # d + (1 - |sign d|) is d where d != 0 and 1 where d == 0
    return mixed.div_(divisor.add_(divisor.sign().abs_().neg_().add_(1)))
