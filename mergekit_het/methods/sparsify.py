"""Sparsifiers for task vectors (mergekit 0.1 `sparsify.py` semantics unless stated).

All take one delta tensor and return a new tensor of the same shape; none mutates its input.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

RescaleNorm = Literal["l1", "density"]


_RADIX_MIN = 1 << 20
ARGSORT_TIES = 256


def keep_top_magnitude(delta: Tensor, density: float) -> Tensor:
    """Keep exactly k = floor(density * numel) entries of largest |delta|, zero the rest.

    Per tensor, as mergekit 0.1 (the TIES paper trims over the whole model: `ties_paper`).
    The threshold comes from a selection, not a sort. Entries tied at the threshold: mergekit
    keeps whichever its `argsort(descending=True)` puts first, an order torch does not specify.
    When at most `ARGSORT_TIES` entries tie, the same argsort call picks them here too, so
    float32 merges equal mergekit's bit for bit; a larger tie group (typical of bf16 inputs,
    where mergekit's bf16 arithmetic differs anyway) keeps the lowest indices instead of paying
    for a full sort. density >= 1 returns `delta` itself.
    """
    if density >= 1:
        return delta
    n = delta.numel()
    k = int(density * n)
    if k <= 0:
        raise ValueError(f"density {density} keeps no entry of a tensor with {n} elements")
    mag = delta.abs().reshape(-1)
    threshold, at_or_above = _kth_largest(mag, k)
    keep = mag >= threshold
    surplus = at_or_above - k
    if 0 < surplus and int((mag == threshold).sum()) <= ARGSORT_TIES:
        keep = torch.zeros_like(keep)
        keep[torch.argsort(mag, descending=True)[:k]] = True
    elif surplus > 0:
        ties = torch.nonzero(mag == threshold).reshape(-1)
        keep[ties[ties.numel() - surplus :]] = False
    return delta * keep.view_as(delta)


def _kth_largest(values: Tensor, k: int) -> tuple[Tensor, int]:
    """The k-th largest entry of a flat non-negative tensor, exactly, without sorting, and how
    many entries are >= it.

    float32: two-pass radix select on the IEEE bit pattern (for non-negative floats the
    integer order of the bits is the numeric order): a histogram of the upper 16 bits finds
    the bucket holding the k-th largest, a histogram of the lower 16 bits inside it the value.
    Other dtypes, and small tensors (where the 2^16-bin histograms cost more than they save),
    use `kthvalue`.
    """
    if values.dtype != torch.float32 or values.numel() < _RADIX_MIN:
        threshold = values.kthvalue(values.numel() - k + 1).values
        return threshold, int((values >= threshold).sum())
    bits = values.view(torch.int32)
    high = bits >> 16
    bucket, above, _ = _select_bucket(torch.bincount(high, minlength=1 << 15), k)
    low = bits[high == bucket] & 0xFFFF
    value, above_in_bucket, equal = _select_bucket(torch.bincount(low, minlength=1 << 16), k - above)
    threshold = torch.tensor((bucket << 16) | value, dtype=torch.int32, device=values.device).view(torch.float32)
    return threshold, above + above_in_bucket + equal


def _select_bucket(counts: Tensor, k: int) -> tuple[int, int, int]:
    """Bucket holding the k-th largest item, how many items lie above it, how many in it."""
    from_top = counts.flip(0).cumsum(0)
    i = int(torch.searchsorted(from_top, torch.tensor([k], device=counts.device)))
    above = int(from_top[i - 1]) if i > 0 else 0
    bucket = counts.numel() - 1 - i
    return bucket, above, int(counts[bucket])


def random_drop(delta: Tensor, density: float, *, generator: torch.Generator | None = None) -> Tensor:
    """DARE (arXiv:2311.03099): keep each entry with probability `density`, zero the rest."""
    if density >= 1:
        return delta
    return delta * torch.bernoulli(torch.full_like(delta, density), generator=generator)


def rescale_kept(original: Tensor, kept: Tensor, density: float, norm: RescaleNorm) -> Tensor:
    """Undo the shrinkage of sparsification.

    norm="l1" (mergekit >= 0.1.0, every sparsifier): ``kept * ‖δ‖₁/‖kept‖₁`` so the tensor's L1
    norm is preserved (skipped if either norm < 1e-7).
    norm="density" (the DARE paper and mergekit 0.0.x): ``kept / density``, unbiased in expectation.
    """
    if density >= 1:
        return kept
    if norm == "density":
        return kept / density
    norm_in, norm_kept = original.abs().sum(), kept.abs().sum()
    if norm_in < 1e-7 or norm_kept < 1e-7:
        return kept
    return kept * (norm_in / norm_kept)


def drop_outliers(delta: Tensor, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs (arXiv:2312.06795): drop the smallest and the top-`gamma` largest |δ|.

    N = numel, keep = floor(density*N), n_top = floor(gamma*N), n_bot = N - keep - n_top
    (if negative, n_top shrinks by the deficit). Keeps sorted positions [n_bot, N - n_top).
    Deliberate fix of mergekit 0.1.x: when n_top == 0 mergekit's slice `[n_bot:-0]` is empty
    and zeroes the whole tensor; here nothing is dropped from the top instead.
    """
    if density >= 1:
        return delta
    n = delta.numel()
    n_keep = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - n_keep - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    order = delta.abs().flatten().argsort()
    keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
    keep[order[n_bot : n - n_top]] = True
    return delta * keep.view_as(delta)


def della_prune(
    delta: Tensor, density: float, epsilon: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """DELLA MagPrune (arXiv:2406.11617): per row, keep-probability rises linearly with rank.

    p = (density - ε) + 2ε · rank_norm, rank_norm in [0, 1] from smallest to largest |δ| of
    the row; 1-D tensors are one row.
    """
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(f"della needs 0 < density-epsilon and density+epsilon < 1, got {density}±{epsilon}")
    rows = delta.reshape(1, -1) if delta.dim() == 1 else delta.reshape(delta.shape[0], -1)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(rows.dtype)
    span = (ranks.max(dim=1, keepdim=True).values - ranks.min(dim=1, keepdim=True).values).clamp_min(1)
    rank_norm = ((ranks - ranks.min(dim=1, keepdim=True).values) / span).clamp(0, 1)
    probs = (density - epsilon) + 2 * epsilon * rank_norm
    mask = torch.bernoulli(probs, generator=generator)
    return (rows * mask).reshape(delta.shape)
