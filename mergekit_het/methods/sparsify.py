"""Sparsifiers for task vectors (mergekit 0.1 `sparsify.py` semantics unless stated).

All take one delta tensor and return a tensor of the same shape; none mutates its input. At
density >= 1 (and `Trim.apply` at a zero threshold, `rescale_kept` when a norm is ~0) they return
their input itself, not a copy: a caller that writes into the result owns the input too.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

RescaleNorm = Literal["l1", "density"]


ARGSORT_TIES = 256
ARGSORT_MAX = 1 << 24  # the argsort tie-break holds 16 bytes per entry: only up to 2^24 entries
_EXACT_MAX = 1 << 16  # up to this many entries, select with one kthvalue call
_SAMPLE = (1 << 12, 1 << 16)  # sample size bounds (numel / 64 in between) to bracket larger ones

Magnitudes = Callable[[int], Iterator[tuple[int, list[Tensor]]]]
"""`magnitudes(stride)` yields, chunk by chunk in flat order, (offset, [|δᵢ| of every model]);
with stride > 1 only the entries at flat indices divisible by `stride` (for sampling)."""


@dataclass(frozen=True)
class Trim:
    """Which entries top-k magnitude trimming keeps: |δ| > threshold, and |δ| == threshold
    except the flat indices in `dropped` (sorted), so exactly k entries are kept."""

    threshold: float
    dropped: Tensor

    def apply(self, delta: Tensor, start: int = 0) -> Tensor:
        """`delta` (the flat slice of δ that begins at flat index `start`, or all of δ) with the
        trimmed entries zeroed. One `hardshrink` (|x| > λ) with λ the float just below the
        threshold, i.e. |x| >= threshold: boolean masks are slow on CPUs."""
        if self.threshold == 0:
            return delta
        t = torch.tensor(self.threshold, dtype=delta.dtype)
        below = float(torch.nextafter(t, torch.zeros_like(t)))
        out = torch.nn.functional.hardshrink(delta, below)
        if self.dropped.numel():
            bounds = torch.tensor([start, start + delta.numel()], device=self.dropped.device)
            lo, hi = torch.searchsorted(self.dropped, bounds).tolist()
            if hi > lo:
                out.view(-1)[self.dropped[lo:hi] - start] = 0
        return out


def keep_top_magnitude(delta: Tensor, density: float, trim: Trim | None = None, start: int = 0) -> Tensor:
    """Keep exactly k = floor(density * numel) entries of largest |delta|, zero the rest.

    Per tensor, as mergekit 0.1 (the TIES paper trims over the whole model: `ties_paper`).
    `trim` (from `top_magnitude_trims` over the whole tensor) lets the engine apply this to a
    flat slice that begins at `start`; without it `delta` is the whole tensor.
    density >= 1 returns `delta` itself. A bf16/fp16 `delta` (mergekit's arithmetic) is trimmed
    as mergekit 0.1.5 does it: the first k of a descending argsort of |δ| in float32.
    """
    if density >= 1:
        return delta
    k = int(density * delta.numel())
    if trim is None and delta.dtype in (torch.bfloat16, torch.float16) and k > 0:
        # `--arithmetic config-dtype`: mergekit 0.1.5's own selection, ties in its argsort order
        keep = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
        keep[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
        return delta * keep.reshape_as(delta)
    if trim is None:
        flat = delta.reshape(-1)
        (trim,) = top_magnitude_trims(lambda stride: iter([(0, [flat[::stride].abs()])]), flat.numel(), [density])
    return trim.apply(delta, start)


def top_magnitude_trims(magnitudes: Magnitudes, numel: int, densities: Sequence[float]) -> list[Trim | None]:
    """Per model, the `Trim` keeping its k = floor(density·numel) largest |δ| (None: density >= 1).

    Exact selection without a sort. Up to 2^16 entries: `kthvalue`. Larger tensors, possibly
    streamed in chunks: (1) a strided sample of numel/64 (within 2^12..2^16) |δ| brackets the
    k-th largest value between two sample order statistics; (2) one pass counts the entries
    above the bracket and keeps those inside it (1.5-6% of the tensor) with their indices; the
    k-th largest is then a `kthvalue` inside the bracket (a bracket that missed is widened and
    the pass repeated). Both are exact; the second is 4x faster than `kthvalue` from 2^20 on.
    Entries tied at the threshold: mergekit keeps whichever its `argsort(descending=True)` puts
    first, an order torch does not specify. When at most `ARGSORT_TIES` entries tie, the same
    argsort call (one more pass) picks them here too, so float32 merges equal mergekit's bit for
    bit; a larger tie group (typical of bf16 inputs, where mergekit's bf16 arithmetic differs
    anyway), or a tensor of more than `ARGSORT_MAX` entries (the argsort would hold 16 bytes per
    entry), keeps the lowest indices. Ties at 0 are all kept: a kept 0 changes no result.
    """
    active = [i for i, d in enumerate(densities) if d < 1]
    ks = {i: int(densities[i] * numel) for i in active}
    for i, k in ks.items():
        if k <= 0:
            raise ValueError(f"density {densities[i]} keeps no entry of a tensor with {numel} elements")
    trims: list[Trim | None] = [None] * len(densities)
    if not active:
        return trims
    if numel <= _EXACT_MAX:
        mags = [torch.cat(parts) for parts in zip(*(m for _, m in magnitudes(1)))]
        idx = torch.arange(numel, device=mags[0].device)
        for i in active:
            threshold = mags[i].kthvalue(numel - ks[i] + 1).values
            trims[i] = _resolve_ties(magnitudes, numel, i, ks[i], threshold, int((mags[i] > threshold).sum()), mags[i], idx)
        return trims
    stride = max(1, numel // min(max(numel // 64, _SAMPLE[0]), _SAMPLE[1]))
    samples = [torch.cat(parts) for parts in zip(*(m for _, m in magnitudes(stride)))]
    brackets = {i: _bracket(samples[i], ks[i] / numel) for i in active}
    while brackets:
        found = _band_pass(magnitudes, numel, brackets)
        for i, (above, vals, idx) in found.items():
            k, (lo, hi) = ks[i], brackets[i]
            if above >= k:  # the k-th largest lies above the bracket
                brackets[i] = (lo, float("inf"))
            elif above + vals.numel() < k and lo > 0:  # ... or below it
                brackets[i] = (0.0, hi)
            else:
                del brackets[i]
                if above + vals.numel() < k:  # fewer finite entries than k (NaN): keep all
                    trims[i] = Trim(0.0, idx[:0])
                    continue
                threshold = vals.kthvalue(vals.numel() - (k - above) + 1).values
                trims[i] = _resolve_ties(magnitudes, numel, i, k, threshold, above + int((vals > threshold).sum()), vals, idx)
    return trims


def _bracket(sample: Tensor, q: float) -> tuple[float, float]:
    """Values (lo, hi) of a sample around its q-quantile from the top, ±(4σ + 8) ranks."""
    m = sample.numel()
    margin = 4 * math.sqrt(m * q * (1 - q)) + 8
    hi_rank, lo_rank = math.floor(q * m - margin), math.ceil(q * m + margin)  # ranks from the top, 0-based
    hi = float(sample.kthvalue(m - hi_rank).values) if hi_rank >= 0 else float("inf")
    lo = float(sample.kthvalue(m - lo_rank).values) if lo_rank < m else 0.0
    return lo, hi


def _band_pass(magnitudes: Magnitudes, numel: int, brackets: dict[int, tuple[float, float]]) -> dict[int, tuple[int, Tensor, Tensor]]:
    """Per model: how many |δ| lie above its bracket, and the values and flat indices inside it
    (int32 indices where they fit: the bracket of bf16 inputs can hold large tie groups)."""
    index_dtype = torch.int32 if numel < 2**31 else torch.int64
    above = {i: 0 for i in brackets}
    vals: dict[int, list[Tensor]] = {i: [] for i in brackets}
    idx: dict[int, list[Tensor]] = {i: [] for i in brackets}
    threads = torch.get_num_threads()
    for offset, mags in magnitudes(1):
        # numpy's band on one thread per model beats torch's on all threads up to ~4 threads per model
        numpy_band = mags[0].device.type == "cpu" and threads < 4 * len(brackets)
        band = _band_numpy if numpy_band else _band_torch
        workers = min(len(brackets), threads) if numpy_band else 1
        found = _map(lambda i: band(mags[i], *brackets[i], offset, index_dtype), list(brackets), workers)
        for i, (n, v, where) in zip(brackets, found):
            above[i] += n
            vals[i].append(v)
            idx[i].append(where)
    return {i: (int(above[i]), torch.cat(vals[i]), torch.cat(idx[i])) for i in brackets}


Band = tuple[int | Tensor, Tensor, Tensor]
"""(#entries > hi, the entries in [lo, hi], their flat indices + offset) of one 1-D |δ| chunk."""


def _band_numpy(mag: Tensor, lo: float, hi: float, offset: int, index_dtype: torch.dtype) -> Band:
    """The `Band` of a CPU tensor through numpy (no copy): its comparisons and `flatnonzero` take
    2-3 ms per 2^20 entries on one core where torch's boolean masks and `nonzero` take 9 ms (4.5
    on two), and they release the GIL, so the models' bands run in parallel threads (`_map`).
    With many cores torch's parallel ops win (16 cores, 3 models: 4x270M TIES 7.1 s vs 8.8 s)."""
    m = mag.numpy()
    lo_, hi_ = m.dtype.type(lo), m.dtype.type(hi)
    inside = m >= lo_
    inside &= m <= hi_
    where = np.flatnonzero(inside)
    vals = m[where]
    where = where.astype(np.int32 if index_dtype == torch.int32 else np.int64)
    where += offset
    return int(np.count_nonzero(m > hi_)), torch.from_numpy(vals), torch.from_numpy(where)


def _band_torch(mag: Tensor, lo: float, hi: float, offset: int, index_dtype: torch.dtype) -> Band:
    """The `Band` through torch (a GPU, or many CPU cores); the count stays a device tensor (no
    synchronization per chunk on a GPU)."""
    where = ((mag >= lo) & (mag <= hi)).nonzero().squeeze(1)
    return torch.count_nonzero(mag > hi), mag[where], (where + offset).to(index_dtype)


def _map(fn: Callable[[int], Band], items: list[int], workers: int) -> list[Band]:
    """`fn` over `items`, on `workers` threads (here, if fewer than 2)."""
    if workers < 2:
        return [fn(i) for i in items]
    return list(_pool(workers).map(fn, items))


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="band")


def _resolve_ties(magnitudes: Magnitudes, numel: int, model: int, k: int, threshold: Tensor, greater: int,
                  vals: Tensor, idx: Tensor) -> Trim:  # fmt: skip
    """The `Trim` at `threshold` given `greater` entries above it; `vals`/`idx` hold every entry
    equal to it (and maybe others) with its flat index."""
    ties = idx[vals == threshold].long()
    surplus = greater + ties.numel() - k
    t = float(threshold)
    if surplus <= 0 or t == 0:
        return Trim(t, ties[:0])
    if ties.numel() > ARGSORT_TIES or numel > ARGSORT_MAX:
        return Trim(t, ties[ties.numel() - surplus :])
    mag = torch.cat([m[model] for _, m in magnitudes(1)])
    in_top = torch.zeros(mag.numel(), dtype=torch.bool, device=mag.device)
    in_top[torch.argsort(mag, descending=True)[:k]] = True  # mergekit's sparsify.magnitude
    return Trim(t, ties[~in_top[ties]])


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
