"""Spherical linear interpolation of two models (mergekit 0.1.5 `slerp`)."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from .registry import Bounds, as_compute_dtype, merge_method

Position = Annotated[float, Bounds(warn_low=0, warn_high=1, warn_why="t outside [0, 1] extrapolates beyond the two models")]

DOT_THRESHOLD = 0.9995
EPS = 1e-8
NORM_CHUNK = 1 << 20  # mergekit 0.1.5 sums norms and dot products over chunks of 2^20 entries


def _chunked_norm(v: Tensor) -> Tensor:
    """‖v‖ of a (1, n) tensor as the norm of the 2^20-entry chunks' norms (1 where ≤ 1e-8)."""
    parts = [torch.linalg.vector_norm(v[:, s : s + NORM_CHUNK], dim=1, keepdim=True) for s in range(0, v.shape[1], NORM_CHUNK)]
    norm = torch.linalg.vector_norm(torch.stack(parts), dim=0)
    return torch.where(norm > EPS, norm, 1)


@merge_method("slerp", paper="https://en.wikipedia.org/wiki/Slerp", base="required", max_models=1)
def slerp(base: Tensor, tensors: list[Tensor], *, t: Position) -> Tensor:
    """Interpolate from the base (t=0) to the other model (t=1) along the great circle.

    With v̂ = v/‖v‖ (flattened whole tensor; a norm ≤ 1e-8 counts as 1) and
    cos Ω = clamp(⟨v̂₀, v̂₁⟩, −1, 1): if |cos Ω| > 0.9995 lerp (1−t)v₀ + t v₁; else
    sin((1−t)Ω)/sin Ω · v₀ + sin(tΩ)/sin Ω · v₁ on the unnormalized tensors.
    In float32 (float64 for float64 inputs) with mergekit 0.1.5's order of operations (t, the
    coefficients and the chunked norms and dot in the compute dtype), so results equal it bit for bit.
    """
    v0, v1 = as_compute_dtype(base).reshape(1, -1), as_compute_dtype(tensors[0]).reshape(1, -1)  # bf16 inputs too
    tt = torch.tensor([[t]], dtype=v0.dtype, device=v0.device)
    if v0.shape[1] == 0:
        return ((1 - tt) * v0 + tt * v1).reshape(base.shape).to(base.dtype)
    n0, n1 = _chunked_norm(v0), _chunked_norm(v1)
    starts = range(0, v0.shape[1], NORM_CHUNK)
    parts = [((v0[:, s : s + NORM_CHUNK] / n0) * (v1[:, s : s + NORM_CHUNK] / n1)).sum(dim=1, keepdim=True) for s in starts]
    dot = torch.stack(parts).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))  # θ = 0 keeps the unused branch finite
    sin_theta = torch.sin(theta)
    c0 = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    c1 = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    return (c0 * v0 + c1 * v1).reshape(base.shape).to(base.dtype)
