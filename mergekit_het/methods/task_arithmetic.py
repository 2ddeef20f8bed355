"""Generalized task arithmetic: task arithmetic, TIES, DARE, Breadcrumbs and DELLA as presets.

θ = θ₀ + λ · combine(sparsify(wᵢ(θᵢ − θ₀)))  with, per tensor (mergekit 0.1 `GTATask`):
1. δᵢ = θᵢ − θ₀, sparsified with model i's density (none / magnitude / random / outliers / della);
2. weights applied before the sign election: wδᵢ = wᵢ·δᵢ;
3. consensus (TIES): elect a sign per entry, keep agreeing entries, divisor Σᵢ wᵢ·agreeᵢ;
   no consensus: Σᵢ wδᵢ, divisor Σᵢ wᵢ (|divisor| < 1e-8 becomes 1);
4. divide by the divisor if `normalize`; multiply by λ; add θ₀.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from .consensus import Consensus, disjoint_mean, elect_sign
from .registry import ChunkExtra, Chunks, PerModel, as_compute_dtype, elementwise, merge_method
from .sparsify import (
    RescaleNorm,
    Trim,
    della_prune,
    drop_outliers,
    keep_top_magnitude,
    random_drop,
    rescale_kept,
    top_magnitude_trims,
)

Sparsifier = Literal["none", "magnitude", "random", "outliers", "della"]


def _sparsify(
    delta: Tensor,
    how: Sparsifier,
    density: float,
    gamma: float,
    epsilon: float,
    rescale: bool,
    rescale_norm: RescaleNorm,
    generator: torch.Generator | None,
    trim: Trim | None,
    start: int,
) -> Tensor:
    if how == "none" or density >= 1:
        return delta
    if how == "magnitude":
        kept = keep_top_magnitude(delta, density, trim, start)
    elif how == "random":
        kept = random_drop(delta, density, generator=generator)
    elif how == "outliers":
        kept = drop_outliers(delta, density, gamma)
    else:
        kept = della_prune(delta, density, epsilon, generator=generator)
    return rescale_kept(delta, kept, density, rescale_norm) if rescale else kept


def generalized_task_arithmetic(
    base: Tensor,
    tensors: list[Tensor],
    *,
    weight: PerModel,
    density: PerModel = 1.0,
    gamma: PerModel = 0.01,
    epsilon: PerModel = 0.15,
    normalize: bool = False,
    rescale: bool = False,
    rescale_norm: RescaleNorm = "l1",
    lambda_: float = 1.0,
    int8_mask: bool = False,
    sparsify: Sparsifier = "none",
    consensus: Consensus | None = None,
    generator: torch.Generator | None = None,
    trims: list[Trim | None] | None = None,
    start: int = 0,
) -> Tensor:
    """θ₀ + λ·mix(wᵢ·sparsify(θᵢ − θ₀)); see the module docstring.

    `rescale` rescales sparsified deltas (`rescale_norm` "l1" = mergekit 0.1, "density" = the
    DARE paper's 1/density). `int8_mask` is accepted for mergekit compatibility: it only changed
    mergekit's mask dtype, results are identical. `trims`/`start` are computed by the engine
    (`_chunked`) when it merges a large tensor chunk by chunk."""
    weighted = []
    for i, (t, w, d, g, e) in enumerate(zip(tensors, weight, density, gamma, epsilon)):
        trim = trims[i] if trims is not None else None
        wd = _sparsify(t.sub_(base), sparsify, d, g, e, rescale, rescale_norm, generator, trim, start)
        weighted.append(wd.mul_(w) if w != 1 else wd)
    if consensus is not None:
        mixed = disjoint_mean(weighted, weight, elect_sign(weighted, consensus), normalize)
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


def _chunked(numel: int, kwargs: dict[str, Any]) -> Callable[[Chunks], ChunkExtra] | None:
    """Chunk by chunk: without sparsification the method is elementwise; magnitude trimming
    (TIES) is, once each model's `Trim` of the whole tensor is known (two passes over the
    chunks, see `top_magnitude_trims`). Random and rank-based sparsifiers, and L1 rescaling,
    need the whole tensor."""
    if kwargs["sparsify"] == "none":
        return elementwise(numel, kwargs)
    if kwargs["sparsify"] != "magnitude" or kwargs["rescale"]:
        return None

    def prepare(chunks: Chunks) -> ChunkExtra:
        def magnitudes(stride: int):
            for offset, base, tensors in chunks():
                first = -offset % stride
                b = as_compute_dtype(base[first::stride])
                yield offset, [(as_compute_dtype(t[first::stride]) - b).abs_() for t in tensors]

        trims = top_magnitude_trims(magnitudes, numel, kwargs["density"])
        return lambda start, stop: {"trims": trims, "start": start}

    return prepare


_IRRELEVANT: dict[str, tuple[str, ...]] = {
    "none": ("density", "gamma", "epsilon", "rescale_norm"),
    "magnitude": ("gamma", "epsilon"),
    "random": ("gamma", "epsilon"),
    "outliers": ("epsilon",),
    "della": ("gamma",),
}


def _preset(name: str, paper: str, sparsify: Sparsifier, consensus: Consensus | None, **defaults) -> None:
    """Register generalized task arithmetic as `name`; parameters its sparsifier ignores are fixed."""
    fn_defaults = {p.name: p.default for p in inspect.signature(generalized_task_arithmetic).parameters.values()}
    fixed = {k: fn_defaults[k] for k in _IRRELEVANT[sparsify]}
    fixed.update(sparsify=sparsify, consensus=consensus)
    merge_method(name, paper=paper, fixed=fixed, defaults=defaults, chunked=_chunked, computed=("trims", "start"))(
        generalized_task_arithmetic
    )


_preset("task_arithmetic", "arXiv:2212.04089", "none", None)
_preset("ties", "arXiv:2306.01708", "magnitude", "sum", normalize=True)
_preset("dare_ties", "arXiv:2311.03099", "random", "sum", rescale=True)
_preset("dare_linear", "arXiv:2311.03099", "random", None, rescale=True)
_preset("breadcrumbs", "arXiv:2312.06795", "outliers", None)
_preset("breadcrumbs_ties", "arXiv:2312.06795", "outliers", "sum")
_preset("della", "arXiv:2406.11617", "della", "sum", normalize=True, rescale=True)
_preset("della_linear", "arXiv:2406.11617", "della", None, rescale=True)
