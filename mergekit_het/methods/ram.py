"""RAM and RAM+ (tensor-local): Reinforced Agent Merging (arXiv:2601.13572), mergekit 0.1.5 semantics.

With τᵢ = θᵢ − θ₀ and aᵢ = |τᵢ| > ε (strict), c = Σᵢ aᵢ contributors per entry: an entry one
model changed (c = 1) keeps that change, one several changed (c > 1) gets their mean, and
changes of at most ε are dropped. RAM+ scales the unique changes of model i by
λᵢ = 1 + r·clamp(ρᵢ, 0, α), ρᵢ = #(shared entries of i) / max(#(unique entries of i), ε),
counted over the tensor ("TL": tensor-local statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from torch import Tensor

from .registry import WHOLE, Bounds, Chunks, Float32Copies, Prepare, TensorStats, as_compute_dtype, elementwise, merge_method
from .stacked import stack_models

Threshold = Annotated[float, Bounds(warn_low=0, warn_why="a negative epsilon counts every entry as changed")]


def _active(base: Tensor, tensors: Sequence[Tensor], epsilon: float) -> tuple[Tensor, Tensor, Tensor]:
    """(τ stacked and flattened with |τ| ≤ ε zeroed, the active masks a, the counts c), a and c
    as floats of τ's dtype (1/0 and small integers, exact): bool tensors are slow on CPUs."""
    deltas = stack_models(tensors)
    deltas -= base
    flat = deltas.view(len(tensors), -1)
    active = active_mask(flat, epsilon)
    return flat.mul_(active), active, active.sum(dim=0, keepdim=True)


def active_mask(flat: Tensor, epsilon: float) -> Tensor:
    """aᵢ = [|τᵢ| > ε] as 1.0/0.0 in τ's dtype (NaN is not active)."""
    magnitudes = flat.abs()
    return torch.gt(magnitudes, epsilon, out=magnitudes)


def _combine(base: Tensor, kept: Tensor, counts: Tensor, unique_scale: Tensor | None) -> Tensor:
    """θ₀ + Σᵢ (τᵢ·[c = 1]·sᵢ + τᵢ·[c > 1]/max(c, 1)), summed in model order.

    In float32/float64 one of the two terms is an exact 0 and τᵢ/1 = τᵢ, so each model adds
    (τᵢ/max(c, 1))·fᵢ with fᵢ = sᵢ where c = 1, else 1 (fᵢ = 1 + (sᵢ − 1)·[c = 1], exact for
    1 ≤ sᵢ ≤ 2): the same bits with a third of the full-size temporaries. bf16/fp16
    (`--arithmetic config-dtype`) take mergekit 0.1.5's two-term form, whose float32 λ
    promotes the unique part."""
    exact_factor = unique_scale is None or bool(((unique_scale >= 1) & (unique_scale <= 2)).all())
    if kept.dtype in (torch.float32, torch.float64) and exact_factor:
        divisor = counts.clamp(min=1)
        single = None if unique_scale is None else torch.eq(counts, 1, out=torch.empty_like(counts))
        for i in range(len(kept)):
            term = kept[i : i + 1].div_(divisor)
            if single is not None:
                term.mul_(single * (float(unique_scale[i]) - 1) + 1)
            if i:
                kept[:1].add_(term)
        return base + kept[0].view_as(base)
    unique = kept * (counts == 1)
    if unique_scale is not None:
        unique = unique * unique_scale.unsqueeze(-1)
    shared = kept * (counts > 1) / counts.clamp(min=1)
    return base + (unique + shared).sum(dim=0, keepdim=True).reshape_as(base)


@merge_method("ram", paper="arXiv:2601.13572", base="required", chunked=elementwise)
def ram(base: Tensor, tensors: Sequence[Tensor], *, epsilon: Threshold = 1e-5) -> Tensor:
    """RAM: unique changes kept, shared ones averaged over their contributors (module docstring)."""
    if not tensors:
        return base
    kept, _, counts = _active(base, tensors, epsilon)
    return _combine(base, kept, counts, None)


def overlap_counts(active: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per model, (#entries it shares with another model, #entries only it changed), int64; an
    active entry has c ≥ 1, so the shared ones are the active ones less the unique ones. The
    float masks are summed in float64: exact integers."""
    single = torch.eq(counts, 1, out=torch.empty_like(counts))
    unique = (active * single).sum(dim=1, dtype=torch.float64).long()
    return active.sum(dim=1, dtype=torch.float64).long() - unique, unique


def ramplus_tl_chunked(numel: int, kwargs: dict[str, Any]) -> Prepare:
    """RAM+ chunk by chunk: the overlap counts of the whole tensor are sums of the chunks'
    (integers, so exact), and with them the merge is elementwise: bit-identical to whole."""

    def prepare(chunks: Chunks) -> TensorStats:
        shared = unique = 0
        for _, base, tensors in chunks():  # the masks only: |τ| > ε on the stacked τ, no kept copy
            deltas = stack_models(Float32Copies(tensors))
            deltas -= as_compute_dtype(base)
            active = active_mask(deltas.view(len(tensors), -1), kwargs["epsilon"])
            s, u = overlap_counts(active, active.sum(dim=0, keepdim=True))
            shared, unique = shared + s, unique + u
        return TensorStats(tensor={"shared": shared, "unique": unique})

    return prepare


@merge_method("ramplus_tl", paper="arXiv:2601.13572", base="required", chunked=ramplus_tl_chunked)
def ramplus_tl(base: Tensor, tensors: Sequence[Tensor], *, r: float = 0.1, alpha: float = 0.2,
               epsilon: Threshold = 1e-5, stats: TensorStats = WHOLE) -> Tensor:  # fmt: skip
    """RAM+ with per-tensor overlap ratios ρᵢ scaling each model's unique changes (module
    docstring); chunked, the counts come from `stats.tensor` (`ramplus_tl_chunked`)."""
    if not tensors:
        return base
    kept, active, counts = _active(base, tensors, epsilon)
    if "unique" in stats.tensor:
        shared, unique = stats.tensor["shared"], stats.tensor["unique"]
    else:
        shared, unique = overlap_counts(active, counts)
    rho = shared / unique.clamp(min=epsilon)
    return _combine(base, kept, counts, 1 + r * rho.clamp(min=0, max=alpha))
