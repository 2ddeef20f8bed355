"""Model Stock (Jang et al., arXiv:2403.19522), mergekit 0.1.5 semantics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .registry import WHOLE, Prepare, TensorStats, merge_method
from .spherical import gram_form


def stock_ratio(norms: Sequence[Tensor], dots: dict[tuple[int, int], Tensor]) -> Tensor:
    """t = N cos θ / (1 + (N − 1) cos θ) (0 where |1 + (N − 1) cos θ| < 1e-6), cos θ the mean
    over pairs i < j of clamp(dots[i, j] / max(‖τᵢ‖·‖τⱼ‖, 1e-6), −1, 1); the last dim kept
    (size 1) to broadcast against the tensors. mergekit 0.1.5's operations, in their order."""
    n = len(norms)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    cosines = [(dots[i, j] / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1) for i, j in pairs]
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    return torch.where(singular, 0.0, (n * cos) / torch.where(singular, 1.0, denominator))


def _whole_ratio(base: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """`stock_ratio` of vectors along the last dim of `base` and the models (their offsets
    θᵢ − θ₀ formed in place in each model's copy; each norm taken once)."""
    offsets = [x.sub_(base) for x in tensors]
    norms = [torch.norm(a, dim=-1) for a in offsets]
    dots = {(i, j): (a * offsets[j]).sum(dim=-1) for i, a in enumerate(offsets) for j in range(i + 1, len(offsets))}
    return stock_ratio(norms, dots)


def _gram_ratio(g: Tensor, dtype: torch.dtype) -> Tensor:
    """`stock_ratio` of whole flattened offsets from their float64 Gram matrix G: ‖τᵢ‖ = √Gᵢᵢ
    and τᵢ·τⱼ = Gᵢⱼ, each rounded once to the arithmetic dtype (where the whole form's float32
    reductions round their partial sums), then the same float32 steps."""
    n = len(g)
    norms = [g[i, i].sqrt().to(dtype) for i in range(n)]
    return stock_ratio(norms, {(i, j): g[i, j].to(dtype) for i in range(n) for j in range(i + 1, n)})


def model_stock_chunked(numel: int, kwargs: dict[str, Any]) -> Prepare | None:
    """Flattened Model Stock chunk by chunk: one Gram pass over the chunks (`spherical.gram`,
    the offsets' norms and dot products summed in float64) gives t, then the merge is
    elementwise. Equal to the whole-tensor result up to the float32 rounding of t (the whole
    form's float32 norms and dot products are rounded sums too). `filter_wise` (per row) needs
    whole tensors: the engine's chunks are flat element ranges, not rows."""
    return None if kwargs["filter_wise"] else gram_form()


@merge_method("model_stock", paper="arXiv:2403.19522", base="required", min_models=2, chunked=model_stock_chunked)
def model_stock(base: Tensor, tensors: Sequence[Tensor], *, filter_wise: bool = False,
                stats: TensorStats = WHOLE) -> Tensor:  # fmt: skip
    """t·mean(θᵢ) + (1 − t)·θ₀ with t of `stock_ratio`, cos θ between the offsets θᵢ − θ₀:
    of the whole flattened tensors, or with `filter_wise` per vector along the last dim (rows of
    a matrix; a 1-D tensor is one vector). mean(θᵢ) = (θ₁ + … + θ_N)/N, summed in model order.
    mergekit 0.1.5's order of operations, so float32 results equal it bit for bit; chunked, t
    comes from `stats.tensor['gram']` (`model_stock_chunked`)."""
    shape = base.shape
    if "gram" in stats.tensor:
        t = _gram_ratio(stats.tensor["gram"], base.dtype)
    elif filter_wise:
        rows = base if base.dim() > 1 else base.unsqueeze(0)
        t = _whole_ratio(rows, [x.reshape(rows.shape) for x in tensors])
    else:
        t = _whole_ratio(base.reshape(-1), [x.reshape(-1) for x in tensors])
    total = tensors[0].add_(0)  # Python's sum starts at 0: 0 + θ₁ (−0 becomes +0), in θ₁'s copy
    for i in range(1, len(tensors)):
        total += tensors[i]
    mean = total.div_(len(tensors)).view(*t.shape[:-1], -1)
    return torch.mul(t, mean, out=mean).add_((1 - t) * base.reshape(mean.shape)).reshape(shape)
