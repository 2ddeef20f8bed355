"""NearSwap (alchemonaut, QuartetAnemoi-70B-t0.0001), mergekit 0.1.5 semantics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import Tensor

from .registry import Bounds, elementwise, merge_method

Distance = Annotated[float, Bounds(warn_low=0, warn_why="a negative t gives the base everywhere")]


@merge_method("nearswap", paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001", base="required",
              max_models=1, chunked=elementwise)
def nearswap(base: Tensor, tensors: Sequence[Tensor], *, t: Distance) -> Tensor:
    """ω·θ₁ + (1 − ω)·θ₀ with ω = clamp(t / max(|θ₀ − θ₁|, 1e-6), 0, 1), elementwise.

    Entries within t of the base are taken from the other model whole; farther ones move by
    exactly t towards it; t ≤ 0 gives the base. In place in two buffers (θ₁'s copy and the
    difference's), with mergekit 0.1.5's roundings: t / x as torch evaluates a number over a
    tensor, reciprocal(x)·t; every operand order kept (which NaN a NaN-NaN operation returns)."""
    other = tensors[0]
    w = torch.sub(base, other).abs_().clamp_(min=1e-6).reciprocal_().mul_(t).clamp_(min=0, max=1)
    torch.mul(w, other, out=other)
    return other.add_(torch.sub(w.new_ones(()), w, out=w).mul_(base))
