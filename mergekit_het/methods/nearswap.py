"""NearSwap (alchemonaut, QuartetAnemoi-70B-t0.0001), mergekit 0.1.5 semantics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from torch import Tensor

from .registry import Bounds, elementwise, merge_method

Distance = Annotated[float, Bounds(warn_low=0, warn_why="a negative t gives the base everywhere")]


@merge_method("nearswap", paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001", base="required",
              max_models=1, chunked=elementwise)
def nearswap(base: Tensor, tensors: Sequence[Tensor], *, t: Distance) -> Tensor:
    """ω·θ₁ + (1 − ω)·θ₀ with ω = clamp(t / max(|θ₀ − θ₁|, 1e-6), 0, 1), elementwise.

    Entries within t of the base are taken from the other model whole; farther ones move by
    exactly t towards it; t ≤ 0 gives the base."""
    other = tensors[0]
    w = (t / (base - other).abs_().clamp_(min=1e-6)).clamp_(min=0, max=1)
    return w * other + (1 - w) * base
