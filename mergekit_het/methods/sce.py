"""SCE: select, calculate, erase (FuseChat, arXiv:2408.07990), mergekit 0.1.5 semantics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from torch import Tensor

from .registry import WHOLE, Bounds, Chunks, Prepare, TensorStats, elementwise, merge_method
from .spherical import gram
from .stacked import stack_models

TopShare = Annotated[float, Bounds(warn_low=0, warn_high=1, warn_why="it is a share of the entries, outside [0, 1]")]


def top_variance_mask(deltas: Tensor, select_topk: float) -> Tensor:
    """1 on the k = int(#{v ≠ 0}·select_topk) entries of largest population variance v across
    the models (`deltas` stacked on dim 0), 0 elsewhere: one mask shared by every model.
    select_topk ≤ 0 keeps nothing, ≥ 1 everything; ties in v fall as `torch.topk` orders them."""
    if select_topk <= 0:
        return torch.zeros_like(deltas[0])
    if select_topk >= 1:
        return torch.ones_like(deltas[0])
    var = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * select_topk)
    mask = torch.zeros_like(var)
    if k > 0:
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def mean_square_weights(deltas: Tensor, mean_squares: Tensor | None = None) -> Tensor:
    """ωᵢ = mean(τᵢ²) / Σⱼ mean(τⱼ²) per model (1/n each if the sum is below 1e-6), shaped to
    broadcast against the stacked `deltas`; `mean_squares`: the mean(τᵢ²) of the whole tensors
    when `deltas` is a chunk of them."""
    w = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1) if mean_squares is None else mean_squares
    total = torch.sum(w).item()
    w = torch.ones_like(w) / w.shape[0] if abs(total) < 1e-6 else w / total
    return w.view(-1, *([1] * (deltas.dim() - 1)))


def sce_chunked(numel: int, kwargs: dict[str, Any]) -> Prepare | None:
    """SCE chunk by chunk without selection (`select_topk` ≥ 1, the default, or ≤ 0): one pass
    sums each τᵢ² over the chunks (the diagonal of `spherical.gram`), giving the whole tensor's
    mean squares (at select_topk ≤ 0 every τᵢ is erased: elementwise, exact); the rest is
    elementwise. Equal to the whole-tensor result up to the rounding of those means (the whole
    form's float32 mean). A selection (0 < select_topk < 1) takes the top-k of the variance with
    `torch.topk`'s order among ties: whole tensors."""
    topk = kwargs["select_topk"]
    if topk <= 0:
        return elementwise(numel, kwargs)
    if topk < 1:
        return None

    def prepare(chunks: Chunks) -> TensorStats:
        return TensorStats(tensor={"mean_squares": (gram(chunks).diagonal() / numel).float()})

    return prepare


def majority_sign(deltas: Tensor) -> Tensor:
    """+1 where Σᵢ τᵢ ≥ 0, else −1 (TIES's mass election, + on a tie), the sum reduced over the
    stacked dim 0 as mergekit does: in float32 that is the model-order sum, in bf16 one rounding
    of a float32 accumulation (a running bf16 sum can flip a near-zero vote)."""
    total = deltas.sum(dim=0)
    return torch.ge(total, 0, out=torch.empty_like(total)).mul_(2).sub_(1)  # a float result, no bool tensor


def agreement(deltas: Tensor, dtype: torch.dtype) -> Tensor:
    """aᵢ = 1 where sign(τᵢ) equals `majority_sign`, else 0, in `dtype`: τᵢ·m > 0 with m = ±1
    (exact), so zeros and NaN never agree. Written as floats, no bool tensor (4x faster here)."""
    product = torch.mul(deltas, majority_sign(deltas))
    return torch.gt(product, 0, out=product if dtype == product.dtype else torch.empty_like(product, dtype=dtype))


@merge_method("sce", paper="arXiv:2408.07990", base="required", chunked=sce_chunked)
def sce(base: Tensor, tensors: Sequence[Tensor], *, select_topk: TopShare = 1.0, int8_mask: bool = False,
        stats: TensorStats = WHOLE) -> Tensor:  # fmt: skip
    """θ₀ + Σᵢ ωᵢaᵢτᵢ / max(Σᵢ ωᵢaᵢ, 1e-6), elementwise, with τᵢ = θᵢ − θ₀:

    1. select: if `select_topk` < 1, zero every τᵢ outside the top-variance entries
       (`top_variance_mask`);
    2. calculate: ωᵢ from the mean squares of the selected τᵢ (`mean_square_weights`);
    3. erase: aᵢ = 1 where sign(τᵢ) equals the sign of Σⱼ τⱼ (+ on a tie; zeros never agree;
       `agreement`).
    No per-model weights. `int8_mask` only changed mergekit's mask dtype: results are identical.
    Chunked, the mean squares of step 2 come from `stats.tensor` (`sce_chunked`).
    """
    if not tensors:
        return base
    deltas = stack_models(tensors)
    deltas -= base
    if select_topk < 1:
        deltas *= top_variance_mask(deltas, select_topk)
    omega = mean_square_weights(deltas, stats.tensor.get("mean_squares"))
    agree = agreement(deltas, omega.dtype)  # in ω's dtype, as ω·[bool] is
    weights = torch.mul(omega, agree, out=agree)
    mixed = torch.mul(deltas, weights, out=deltas).sum(dim=0)
    return torch.add(base, mixed.div_(torch.sum(weights, dim=0).clamp_(min=1e-6)), out=mixed)
