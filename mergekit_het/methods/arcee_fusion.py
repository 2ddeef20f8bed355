"""Arcee Fusion: take the other model's changes only where they matter most (mergekit 0.1.5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .registry import merge_method

QUANTILE_SAMPLE = 1_000_000
_NUMPY_SORTS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def importance(p: Tensor, b: Tensor) -> Tensor:
    """I = |p − b| ⊙ KL(softmax(p) ‖ softmax(b)), the KL over the last dim (kept as size 1),
    each softmax plus 1e-8; a 1-D tensor is one distribution."""
    return (p - b).abs_().mul_(_kl(p, b))


def _kl(p: Tensor, b: Tensor) -> Tensor:
    """Σ P·log(P/Q) over the last dim (kept), P = softmax(p) + 1e-8, Q = softmax(b) + 1e-8: the
    plain form's operations and operand orders, in place in the two softmax buffers."""
    P = torch.softmax(p, dim=-1).add_(1e-8)
    Q = torch.softmax(b, dim=-1).add_(1e-8)
    log = torch.div(P, Q, out=Q).log_()
    return torch.sum(torch.mul(P, log, out=log), dim=-1, keepdim=True)


def _sorted(z: Tensor) -> Tensor:
    """`torch.sort(z).values` (NaN last). On a CPU numpy's sort, ~25x faster on 10⁶ float32
    here (2 cores: 4 ms vs 114 ms), bf16 sorted as its exact float32 values; equal values
    (0 and −0) may come in another order, which no quantile's value tells apart."""
    if z.device.type != "cpu" or z.dtype not in _NUMPY_SORTS:
        return torch.sort(z).values
    values = z.float() if z.dtype == torch.bfloat16 else z
    return torch.from_numpy(np.sort(values.numpy())).to(z.dtype)


def fusion_threshold(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """q(½) + 1.5·(q(¾) − q(¼)), with q(x) = z[⌊x·(len − 1)⌋] of the sorted scores z (no
    interpolation); above 10⁶ entries z is a sample of 10⁶ drawn with replacement."""
    z = scores.reshape(-1)
    if z.numel() > QUANTILE_SAMPLE:
        z = z[torch.randint(z.numel(), (QUANTILE_SAMPLE,), device=z.device, generator=generator)]
    z = _sorted(z)
    q1, median, q3 = z[(torch.tensor([0.25, 0.5, 0.75]).to(z.device) * (z.numel() - 1)).long()]
    return median + 1.5 * (q3 - q1)


@merge_method("arcee_fusion", paper="https://arcee.ai", base="required", min_models=1, max_models=1)
def arcee_fusion(base: Tensor, tensors: Sequence[Tensor], *, generator: torch.Generator | None = None) -> Tensor:
    """θ₀ + (θ₁ − θ₀) ⊙ [I ≥ threshold], with the importance I of `importance` and the outlier
    threshold of `fusion_threshold` (so where ≥ ¾ of I is 0 every change is taken). No
    parameters; random (seeded per tensor) only on tensors above 10⁶ entries.
    In place where the plain form made temporaries (δ = θ₁ − θ₀ formed once, in θ₁'s copy):
    peak memory ~4 full-size tensors (base, θ₁, two softmaxes) where the plain form held ~8."""
    delta = tensors[0]  # a copy this function owns: θ₁, then δ in place
    kl = _kl(delta, base)
    delta.sub_(base)
    scores = delta.abs().mul_(kl)
    mask = scores >= fusion_threshold(scores, generator)
    del scores
    if delta.dtype in (torch.float32, torch.float64):
        return torch.add(base, delta.mul_(mask), out=delta)
    return base + delta * mask.float()  # bf16/fp16 arithmetic: mergekit's float32 mask promotes the sum to float32
