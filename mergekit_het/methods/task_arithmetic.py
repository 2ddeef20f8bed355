"""Task arithmetic, TIES, DARE, Breadcrumbs and DELLA: presets of one composition.

θ = θ₀ + λ · combine(wᵢ · sparsify(θᵢ − θ₀)), per tensor (mergekit 0.1 generalized task arithmetic):
1. δᵢ = θᵢ − θ₀, sparsified with model i's density (`sparsify.py`: top magnitude, random,
   outliers, DELLA's rank-based drop), optionally rescaled (`rescale_kept`);
2. weights applied before the sign election: wδᵢ = wᵢ·δᵢ;
3. with consensus (TIES): elect a sign per entry by mass, keep agreeing entries, divisor
   Σᵢ wᵢ·agreeᵢ (`consensus.py`); without: Σᵢ wδᵢ, divisor Σᵢ wᵢ (|divisor| < 1e-8 becomes 1);
4. divide by the divisor if `normalize`; multiply by λ; add θ₀.
Each preset below is that composition with its own sparsifier, consensus and defaults; its
signature is its schema. `int8_mask` is accepted for mergekit compatibility: it only changed
mergekit's mask dtype, results are identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .consensus import disjoint_mean, elect_sign
from .registry import WHOLE, Density, PerModel, Prepare, Share, TensorStats, as_compute_dtype, elementwise, merge_method
from .sparsify import RescaleNorm, della_prune, drop_outliers, keep_top_magnitude, random_drop, rescale_kept, top_magnitude_trims

Prune = Callable[[int, Tensor, float], Tensor]
"""`prune(i, δᵢ, density)`: model i's sparsified task vector (density < 1)."""


def _sparsifier(prune: Prune, density: list[float], rescale: bool, norm: RescaleNorm) -> Callable[[int, Tensor], Tensor]:
    """Model i's δᵢ pruned to its density and, if `rescale`, rescaled; δᵢ itself at density >= 1."""

    def apply(i: int, delta: Tensor) -> Tensor:
        if density[i] >= 1:
            return delta
        kept = prune(i, delta, density[i])
        return rescale_kept(delta, kept, density[i], norm) if rescale else kept

    return apply


def _merge(base: Tensor, tensors: list[Tensor], weight: list[float], sparsify: Callable[[int, Tensor], Tensor] | None,
           consensus: bool, normalize: bool, lambda_: float) -> Tensor:  # fmt: skip
    """θ₀ + λ · combine(wᵢ · sparsify(θᵢ − θ₀)) (steps 1-4 of the module docstring)."""
    if base.dtype in (torch.bfloat16, torch.float16):
        return _merge_reduced(base, tensors, weight, sparsify, consensus, normalize, lambda_)
    weighted = []
    for i, (t, w) in enumerate(zip(tensors, weight)):
        wd = t.sub_(base) if sparsify is None else sparsify(i, t.sub_(base))
        weighted.append(wd.mul_(w) if w != 1 else wd)
    if consensus:
        mixed = disjoint_mean(weighted, weight, elect_sign(weighted, "sum"), normalize)
    else:
        mixed = weighted[0]  # a new tensor (θᵢ − θ₀ is), so it can accumulate in place
        for wd in weighted[1:]:
            mixed += wd
        divisor = sum(weight)
        if normalize:
            mixed /= divisor if abs(divisor) >= 1e-8 else 1.0
    if lambda_ != 1:
        mixed *= lambda_
    return mixed.add_(base)


def _merge_reduced(base: Tensor, tensors: list[Tensor], weight: list[float], sparsify: Callable[[int, Tensor], Tensor] | None,
                   consensus: bool, normalize: bool, lambda_: float) -> Tensor:  # fmt: skip
    """`_merge` on bf16/fp16 inputs (`--arithmetic config-dtype`) in mergekit 0.1.5's roundings:
    the weights rounded to the dtype, each sum over the models (Σwᵢδᵢ, the sign election's mass,
    the agreeing Σwᵢδᵢ and Σwᵢ) accumulated in float32 and rounded once, as torch sums a stacked
    reduced-precision tensor; every other step in the dtype."""
    w = torch.tensor(weight, dtype=base.dtype, device=base.device)
    weighted = [(t.sub_(base) if sparsify is None else sparsify(i, t.sub_(base))).mul_(w[i]) for i, t in enumerate(tensors)]

    def total(parts) -> Tensor:
        acc = None
        for part in parts:
            acc = part.float() if acc is None else acc.add_(part)
        return acc.to(base.dtype)

    if consensus:
        majority = torch.where(total(weighted) >= 0, 1, -1).to(base.dtype)
        masks = [wd.sign() == majority for wd in weighted]
        mixed = total(wd * m for wd, m in zip(weighted, masks))
        divisor = total(m * w[i] for i, m in enumerate(masks))
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = total(weighted), w.sum()
        divisor = divisor if divisor.abs() >= 1e-8 else torch.ones_like(divisor)
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return mixed.add_(base)


@merge_method("task_arithmetic", paper="arXiv:2212.04089", chunked=elementwise, scale="lambda")
def task_arithmetic(base: Tensor, tensors: list[Tensor], *, weight: PerModel, normalize: bool = False,
                    rescale: bool = False, lambda_: float = 1.0, int8_mask: bool = False) -> Tensor:  # fmt: skip
    """θ₀ + λ·Σᵢ wᵢ(θᵢ − θ₀), divided by Σᵢ wᵢ if `normalize` (`rescale` has nothing to rescale)."""
    return _merge(base, tensors, weight, None, False, normalize, lambda_)


def ties_chunked(numel: int, kwargs: dict[str, Any]) -> Prepare | None:
    """TIES chunk by chunk: once each model's `Trim` of the whole tensor is known (two passes
    over the chunks, see `top_magnitude_trims`), trimming a chunk is elementwise. L1 rescaling
    needs the whole tensor."""
    if kwargs["rescale"]:
        return None

    def prepare(chunks) -> TensorStats:
        def magnitudes(stride: int):
            for offset, base, tensors in chunks():
                first = -offset % stride
                b = as_compute_dtype(base[first::stride])
                yield offset, [(as_compute_dtype(t[first::stride]) - b).abs_() for t in tensors]

        return TensorStats(trims=tuple(top_magnitude_trims(magnitudes, numel, kwargs["density"])))

    return prepare


def _top_magnitude(stats: TensorStats) -> Prune:
    """TIES's trim: model i's whole-tensor `Trim` where the engine computed it (chunks), else its own."""
    trims = stats.trims
    return lambda i, delta, d: keep_top_magnitude(delta, d, trims[i] if trims else None, stats.start)


@merge_method("ties", paper="arXiv:2306.01708", chunked=ties_chunked, scale="lambda")
def ties(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: Density = 1.0, normalize: bool = True,
         rescale: bool = False, rescale_norm: RescaleNorm = "l1", lambda_: float = 1.0, int8_mask: bool = False,
         stats: TensorStats = WHOLE) -> Tensor:  # fmt: skip
    """TIES: keep each δᵢ's top-`density` magnitudes, elect signs by mass, disjoint mean."""
    sparsify = _sparsifier(_top_magnitude(stats), density, rescale, rescale_norm)
    return _merge(base, tensors, weight, sparsify, True, normalize, lambda_)


def _random(generator: torch.Generator | None) -> Prune:
    return lambda i, delta, d: random_drop(delta, d, generator=generator)


@merge_method("dare_ties", paper="arXiv:2311.03099", scale="lambda")
def dare_ties(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: Density = 1.0, normalize: bool = False,
              rescale: bool = True, rescale_norm: RescaleNorm = "l1", lambda_: float = 1.0, int8_mask: bool = False,
              generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """DARE drop (keep each entry with probability `density`), rescaled, then TIES's consensus."""
    sparsify = _sparsifier(_random(generator), density, rescale, rescale_norm)
    return _merge(base, tensors, weight, sparsify, True, normalize, lambda_)


@merge_method("dare_linear", paper="arXiv:2311.03099", scale="lambda")
def dare_linear(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: Density = 1.0, normalize: bool = False,
                rescale: bool = True, rescale_norm: RescaleNorm = "l1", lambda_: float = 1.0, int8_mask: bool = False,
                generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """DARE drop, rescaled, then the weighted sum of task arithmetic."""
    sparsify = _sparsifier(_random(generator), density, rescale, rescale_norm)
    return _merge(base, tensors, weight, sparsify, False, normalize, lambda_)


def _outliers(gamma: list[float]) -> Prune:
    return lambda i, delta, d: drop_outliers(delta, d, gamma[i])


@merge_method("breadcrumbs", paper="arXiv:2312.06795", scale="lambda")
def breadcrumbs(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: Density = 1.0, gamma: Share = 0.01,
                normalize: bool = False, rescale: bool = False, rescale_norm: RescaleNorm = "l1", lambda_: float = 1.0,
                int8_mask: bool = False) -> Tensor:  # fmt: skip
    """Model Breadcrumbs: drop the smallest and the top-`gamma` |δ|, then the weighted sum."""
    sparsify = _sparsifier(_outliers(gamma), density, rescale, rescale_norm)
    return _merge(base, tensors, weight, sparsify, False, normalize, lambda_)


@merge_method("breadcrumbs_ties", paper="arXiv:2312.06795", scale="lambda")
def breadcrumbs_ties(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: Density = 1.0, gamma: Share = 0.01,
                     normalize: bool = False, rescale: bool = False, rescale_norm: RescaleNorm = "l1",
                     lambda_: float = 1.0, int8_mask: bool = False) -> Tensor:  # fmt: skip
    """Model Breadcrumbs' drop, then TIES's consensus."""
    sparsify = _sparsifier(_outliers(gamma), density, rescale, rescale_norm)
    return _merge(base, tensors, weight, sparsify, True, normalize, lambda_)


def _della(epsilon: list[float], generator: torch.Generator | None) -> Prune:
    return lambda i, delta, d: della_prune(delta, d, epsilon[i], generator=generator)


@merge_method("della", paper="arXiv:2406.11617", scale="lambda")
def della(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: Density = 1.0, epsilon: Share = 0.15,
          normalize: bool = True, rescale: bool = True, rescale_norm: RescaleNorm = "l1", lambda_: float = 1.0,
          int8_mask: bool = False, generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """DELLA's MagPrune (keep-probability rising with magnitude rank), rescaled, then TIES's consensus."""
    sparsify = _sparsifier(_della(epsilon, generator), density, rescale, rescale_norm)
    return _merge(base, tensors, weight, sparsify, True, normalize, lambda_)


@merge_method("della_linear", paper="arXiv:2406.11617", scale="lambda")
def della_linear(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: Density = 1.0, epsilon: Share = 0.15,
                 normalize: bool = False, rescale: bool = True, rescale_norm: RescaleNorm = "l1", lambda_: float = 1.0,
                 int8_mask: bool = False, generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """DELLA's MagPrune, rescaled, then the weighted sum."""
    sparsify = _sparsifier(_della(epsilon, generator), density, rescale, rescale_norm)
    return _merge(base, tensors, weight, sparsify, False, normalize, lambda_)
