"""TIES-Merging exactly as the paper's code (Yadav et al., arXiv:2306.01708), as `ties_paper`.

It differs from mergekit's `ties` in two places, both model-wide and so computed by streaming
passes over every tensor before the merge:
1. Trim over the WHOLE model, per task vector: with d entries in all (float tensors), keep
   |τ| ≥ the (⌊density·d⌋ + 1)-th largest |τ| (the paper's `kthvalue(|τ|, d − ⌊density·d⌋)`;
   entries tied at the threshold are all kept). mergekit trims each tensor to exactly
   ⌊density·n⌋ entries.
2. Where the elected mass Σᵢ wᵢτ̂ᵢ is exactly 0, the sign is the model-wide majority
   sign(Σ γ) instead of +.
Then the disjoint mean, × λ, added to θ₀ (per-model weights, default 1, weight the vote and the
mean as in mergekit; the paper has none). `density` must be one number per model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .consensus import disjoint_mean, elect_sign
from .registry import WHOLE, Density, ModelPass, PerModel, TensorStats, merge_method

_HIGH, _LOW = 1 << 15, 1 << 16


def _trimmed(base: Tensor, tensors: list[Tensor], threshold: list[float], weight: list[float]) -> list[Tensor]:
    out = []
    for t, thr, w in zip(tensors, threshold, weight):
        delta = t - base
        kept = delta * (_magnitude(delta) >= thr)  # a product, so NaN/Inf propagate to the engine's check
        out.append(kept.mul_(w) if w != 1 else kept)
    return out


def _magnitude(delta: Tensor) -> Tensor:
    """|τ| in float32, whose bit patterns order like the values (the threshold search counts
    them): exact for float32/bf16/fp16 inputs; float64 ones are ranked by their float32 rounding."""
    return delta.abs().to(torch.float32)


def _bits(base: Tensor, t: Tensor) -> Tensor:
    return _magnitude(t - base).reshape(-1).view(torch.int32)


def _count_start(n: int) -> dict[str, Any]:
    return {"hist": None, "numel": 0, "density": None}


def _count_update(state: dict, base: Tensor, tensors: list[Tensor], p: dict, model: Mapping[str, Any]) -> None:
    if state["hist"] is None:
        state["hist"] = [torch.zeros(_HIGH, dtype=torch.int64, device=base.device) for _ in tensors]
        state["density"] = list(p["density"])
    if list(p["density"]) != state["density"]:
        raise ValueError("ties_paper needs one density per model for the whole model (no gradients or filters)")
    state["numel"] += base.numel()
    for hist, t in zip(state["hist"], tensors):
        hist += torch.bincount(_bits(base, t) >> 16, minlength=_HIGH)


def _from_top(counts: Tensor, k: int) -> tuple[int, int]:
    """Bucket holding the k-th largest item and how many items lie above it."""
    cum = counts.flip(0).cumsum(0)
    i = int(torch.searchsorted(cum, torch.tensor([k], device=counts.device)))
    return counts.numel() - 1 - i, (int(cum[i - 1]) if i > 0 else 0)


def _count_finish(state: dict) -> dict[str, Any]:
    ks = [min(int(d * state["numel"]) + 1, state["numel"]) for d in state["density"]]
    return {"bucket": [_from_top(h, k) + (k,) for h, k in zip(state["hist"], ks)]}


def _refine_start(n: int) -> dict[str, Any]:
    return {"hist": None, "buckets": None}


def _refine_update(state: dict, base: Tensor, tensors: list[Tensor], p: dict, model: Mapping[str, Any]) -> None:
    if state["hist"] is None:
        state["hist"] = [torch.zeros(_LOW, dtype=torch.int64, device=base.device) for _ in tensors]
        state["buckets"] = model["bucket"]
    for hist, t, (bucket, _, _) in zip(state["hist"], tensors, state["buckets"]):
        bits = _bits(base, t)
        hist += torch.bincount(bits[(bits >> 16) == bucket] & 0xFFFF, minlength=_LOW)


def _refine_finish(state: dict) -> dict[str, Any]:
    thresholds = []
    for hist, (bucket, above, k) in zip(state["hist"], state["buckets"]):
        low, _ = _from_top(hist, k - above)
        bits = torch.tensor((bucket << 16) | low, dtype=torch.int32)
        thresholds.append(float(bits.view(torch.float32)))
    return {"threshold": thresholds}


def _majority_start(n: int) -> dict[str, Any]:
    return {"total": 0.0}


def _majority_update(state: dict, base: Tensor, tensors: list[Tensor], p: dict, model: Mapping[str, Any]) -> None:
    kept = _trimmed(base, tensors, model["threshold"], p["weight"])
    state["total"] += float(elect_sign(kept, "sum", tie=0.0).sum())


def _majority_finish(state: dict) -> dict[str, Any]:
    return {"majority": float(torch.tensor(state["total"]).sign())}


PASSES = (
    ModelPass(_count_start, _count_update, _count_finish),
    ModelPass(_refine_start, _refine_update, _refine_finish),
    ModelPass(_majority_start, _majority_update, _majority_finish),
)


@merge_method("ties_paper", paper="arXiv:2306.01708", base="required", passes=PASSES)
def ties_paper(
    base: Tensor,
    tensors: list[Tensor],
    *,
    weight: PerModel = 1.0,
    density: Density = 0.2,
    normalize: bool = True,
    lambda_: float = 1.0,
    stats: TensorStats = WHOLE,
) -> Tensor:
    """θ₀ + λ · disjoint-mean of the model-wide-trimmed task vectors (see the module docstring);
    `stats.model` holds the passes' `threshold` (per model) and `majority` sign."""
    kept = _trimmed(base, tensors, stats.model["threshold"], weight)
    mixed = disjoint_mean(kept, weight, elect_sign(kept, "sum", tie=stats.model["majority"]), normalize)
    if lambda_ != 1:
        mixed *= lambda_
    return base + mixed
