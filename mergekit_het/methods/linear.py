"""Weighted averaging of whole models (Model Soups, arXiv:2203.05482)."""

from __future__ import annotations

from torch import Tensor

from .registry import PerModel, elementwise, merge_method


@merge_method("linear", paper="arXiv:2203.05482", base="none", chunked=elementwise)
def linear(base: None, tensors: list[Tensor], *, weight: PerModel, normalize: bool = True) -> Tensor:
    """Σᵢ wᵢθᵢ, divided by Σᵢ wᵢ if `normalize` (Σw = 0 is an error here; mergekit divides by 0).

    The weights are normalized before the sum (Σᵢ (wᵢ/Σw)·θᵢ), so a single model, or
    weights scaled by any c > 0, give exactly the same tensor; equal to mergekit's
    (Σᵢ wᵢθᵢ)/Σw up to float rounding. FedAvg is this method with wᵢ = client example counts.
    """
    total = sum(weight) if normalize else 1.0
    if total == 0:
        raise ValueError("the weights sum to 0, so normalize cannot divide by them (set normalize: false)")
    coeffs = [w / total for w in weight]
    out = None
    for t, c in zip(tensors, coeffs):  # one float32 copy at a time, owned: scaled in place
        out = t.mul_(c) if out is None else out.add_(t, alpha=c)
    return out
