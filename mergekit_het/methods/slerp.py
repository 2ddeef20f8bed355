"""Spherical linear interpolation of two models (mergekit 0.1 `slerp`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .registry import merge_method

DOT_THRESHOLD = 0.9995
EPS = 1e-8


@merge_method("slerp", paper="https://en.wikipedia.org/wiki/Slerp", base="required", max_models=1)
def slerp(base: Tensor, tensors: list[Tensor], *, t: float) -> Tensor:
    """Interpolate from the base (t=0) to the other model (t=1) along the great circle.

    With v̂ = v/‖v‖ (flattened whole tensor; a norm below 1e-8 leaves v as is) and
    cos Ω = ⟨v̂₀, v̂₁⟩: if |cos Ω| > 0.9995 lerp (1−t)v₀ + t v₁; else
    sin((1−t)Ω)/sin Ω · v₀ + sin(tΩ)/sin Ω · v₁ on the unnormalized tensors.
    Computed in float32, as mergekit does (in numpy).
    """
    v0, v1 = base, tensors[0]
    n0, n1 = v0.norm(), v1.norm()
    u0 = v0 / n0 if n0 > EPS else v0
    u1 = v1 / n1 if n1 > EPS else v1
    dot = float((u0 * u1).sum())
    if abs(dot) > DOT_THRESHOLD:
        return torch.lerp(v0, v1, t)
    omega = math.acos(dot)
    sin_omega = math.sin(omega)
    s0 = math.sin((1 - t) * omega) / sin_omega
    s1 = math.sin(t * omega) / sin_omega
    return s0 * v0 + s1 * v1
