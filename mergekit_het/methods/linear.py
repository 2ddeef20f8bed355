"""Weighted averaging of whole models (Model Soups, arXiv:2203.05482)."""

from __future__ import annotations

from torch import Tensor

from .registry import PerModel, merge_method


@merge_method("linear", paper="arXiv:2203.05482", base="none")
def linear(base: None, tensors: list[Tensor], *, weight: PerModel, normalize: bool = True) -> Tensor:
    """Σᵢ wᵢθᵢ, divided by Σᵢ wᵢ if `normalize` (mergekit 0.1: no guard against Σw = 0).

    FedAvg is this method with wᵢ = client i's example count.
    """
    out = tensors[0] * weight[0]
    for t, w in zip(tensors[1:], weight[1:]):
        out.add_(t, alpha=w)
    if normalize:
        out /= sum(weight)
    return out
