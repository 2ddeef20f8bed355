"""Weighted averaging of whole models (Model Soups, arXiv:2203.05482)."""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import PerModel, elementwise, merge_method


@merge_method("linear", paper="arXiv:2203.05482", base="none", chunked=elementwise)
def linear(base: None, tensors: list[Tensor], *, weight: PerModel, normalize: bool = True) -> Tensor:
    """Σᵢ wᵢθᵢ, divided by Σᵢ wᵢ if `normalize` (Σw = 0 is an error here; mergekit divides by 0).

    mergekit 0.1.5's order of operations, so float32 results equal it bit for bit: the weights
    as a float32 tensor (float64 for float64 inputs), each model added with one fused
    multiply-add (`addcmul`) into zeros, then one division by the float32 Σw. Weights scaled by
    c > 0 (or a single model) give the same tensor up to one rounding of wᵢθᵢ/Σw.
    FedAvg is this method with wᵢ = client example counts.
    """
    if normalize and sum(weight) == 0:
        raise ValueError("the weights sum to 0, so normalize cannot divide by them (set normalize: false)")
    first = tensors[0]
    acc = torch.float64 if first.dtype == torch.float64 else torch.float32  # bf16 inputs (mergekit's arithmetic) too
    w = torch.tensor(weight, dtype=acc, device=first.device)
    out = torch.zeros_like(first, dtype=acc)
    out.addcmul_(first, w[0])
    for i in range(1, len(tensors)):  # one float32 copy at a time
        out.addcmul_(tensors[i], w[i])
    return (out.div_(w.sum()) if normalize else out).to(first.dtype)
