"""Merges weighted by per-model data statistics: RegMean (Jin et al., ICLR 2023,
arXiv:2212.09849; bloomberg/dataless-model-merging) and Fisher merging (Matena & Raffel,
NeurIPS 2022, arXiv:2111.09832; mmatena/model_merging), official semantics.

The engine hands each call the models' statistics tensors of the tensor being merged in
`stats.inputs[kind]` (one per model: `gram` Σ x xᵀ of the owning nn.Linear's inputs and
`gram_rows` their count, `fisher` Σ of per-example diagonal Fishers; `io/statistics.py`) and
Fisher's model-wide numbers in `stats.model` (`fisher_examples`, `fisher_norm`: one per model). Model
coefficients cᵢ = wᵢ/Σw (equal weights: the official default). Whole tensors; memory one tensor
group plus its statistics.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import Tensor

from .registry import WHOLE, Bounds, PerModel, TensorStats, merge_method

Unit = Annotated[float, Bounds(low=0, high=1, why="it scales the off-diagonal entries between 0 (none) and 1 (all)")]
Positive = Annotated[float, Bounds(low=0, why="it is a floor on Fisher values")]


def _coefficients(weight: list[float]) -> list[float]:
    total = sum(weight)
    if total == 0:
        raise ValueError("the weights sum to 0")
    return [w / total for w in weight]


def _weighted_mean(tensors: list[Tensor], coeffs: list[float]) -> Tensor:
    """Σᵢ cᵢθᵢ (Σ cᵢ = 1)."""
    out = tensors[0].mul_(coeffs[0])
    for t, c in zip(tensors[1:], coeffs[1:]):
        out.add_(t, alpha=c)
    return out


def _statistics(stats: TensorStats, kind: str, n_models: int) -> list[Tensor] | None:
    """The models' `kind` statistics of this tensor, None if no model has one (the method then
    averages); an error if only some have one."""
    given = stats.inputs.get(kind)
    if given is None or all(s is None for s in given):
        return None
    missing = [i for i, s in enumerate(given) if s is None]
    if missing or len(given) != n_models:
        raise ValueError(f"the {kind} statistics of model {missing[0] if missing else len(given)} lack this tensor")
    return [s.to(torch.float32 if s.is_floating_point() and s.dtype != torch.float64 else torch.float64, copy=True)
            for s in given]  # counts (int64) as float64: exact up to 2^53


def reduce_non_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """α·G + (1 − α)·diag(G): off-diagonal entries × α, diagonal unchanged (in place)."""
    if alpha != 1:
        diag = gram.diagonal().clone()
        gram.mul_(alpha).diagonal().copy_(diag)
    return gram


def regmean_solve(weights: list[Tensor], grams: list[Tensor]) -> Tensor:
    """W* with W*ᵀ = (Σᵢ Gᵢ)⁻¹ Σᵢ Gᵢ Wᵢᵀ for nn.Linear weights Wᵢ (out × in) and Grams Gᵢ
    (in × in): the minimiser of Σᵢ ‖X_i W ᵀ − X_i Wᵢᵀ‖² when Gᵢ = XᵢᵀXᵢ. Solved with
    `torch.linalg.solve` (the official code multiplies by `torch.inverse`: the same minimiser,
    less round-off); a singular Σ Gᵢ is an error: use `reduce_nondiag` < 1."""
    total = grams[0].clone()
    rhs = grams[0] @ weights[0].T
    for g, w in zip(grams[1:], weights[1:]):
        total += g
        rhs.addmm_(g, w.T)
    solution, info = torch.linalg.solve_ex(total, rhs)
    if int(info.max()) > 0:
        raise ValueError("the summed Gram matrix is singular (linearly dependent inputs); set reduce_nondiag below 1")
    return solution.T.contiguous()


@merge_method("regmean", paper="arXiv:2212.09849", base="none", statistics=("gram", "gram_rows"))
def regmean(base: None, tensors: list[Tensor], *, weight: PerModel = 1.0, reduce_nondiag: Unit = 1.0,
            gram: Literal["mean", "sum"] = "mean", stats: TensorStats = WHOLE) -> Tensor:  # fmt: skip
    """RegMean: a 2-D weight whose nn.Linear has Grams gets `regmean_solve` over
    G̃ᵢ = T·cᵢ·reduce(Gᵢ) (Gᵢ the mean Gram over model i's input rows, `gram: mean`, official; or
    the raw sum, `gram: sum`, which with least-squares experts gives the pooled least-squares
    fit); every other tensor (biases, norms, embeddings, weights without Grams) Σᵢ cᵢθᵢ.
    `reduce_nondiag` α scales the Grams' off-diagonal entries (official default 1 = off; its
    configs use 0.1 for RoBERTa/T5/DeBERTa, FusionBench 0.95 for CLIP). An input dimension that
    is 0 in every example of every model (a zero row and column of every Gᵢ; e.g. MiniLM's
    pooler sees two such features of the [CLS] state) leaves its weight column free: it gets
    Σᵢ cᵢ Wᵢ[:, j], the other columns are unchanged (the official `torch.inverse` fails there)."""
    coeffs = _coefficients(weight)
    grams = _statistics(stats, "gram", len(tensors))
    if grams is None:
        return _weighted_mean(list(tensors), coeffs)
    weights = list(tensors)
    if weights[0].dim() != 2 or grams[0].shape != (weights[0].shape[1],) * 2:
        raise ValueError(f"a Gram matrix of shape {tuple(grams[0].shape)} does not fit a weight of shape "
                         f"{tuple(weights[0].shape)} (in × in expected)")  # fmt: skip
    rows = _statistics(stats, "gram_rows", len(weights)) if gram == "mean" else None
    scaled = []
    for i, g in enumerate(grams):
        factor = len(weights) * coeffs[i] / (float(rows[i]) if rows else 1.0)
        scaled.append(reduce_non_diagonal(g.mul_(factor) if factor != 1 else g, reduce_nondiag))
    unused = torch.stack([g.diagonal() for g in scaled]).sum(0) == 0
    if unused.any():  # input dimensions that are 0 in every example of every model
        for i, g in enumerate(scaled):
            g.diagonal()[unused] = len(weights) * coeffs[i]
    return regmean_solve(weights, scaled)


@merge_method("fisher", paper="arXiv:2111.09832", base="none", statistics=("fisher",))
def fisher(base: None, tensors: list[Tensor], *, weight: PerModel = 1.0, normalize_fishers: bool = True,
           favor_target_model: bool = True, fisher_floor: Positive = 1e-6, stats: TensorStats = WHOLE) -> Tensor:  # fmt: skip
    """Fisher merging: θ* = Σⱼ λⱼ F̃ⱼ θⱼ / Σⱼ λⱼ F̃ⱼ elementwise, Fⱼ model j's mean diagonal Fisher,
    F̃ⱼ = max(Fⱼ, `fisher_floor`) for the first model only (`favor_target_model`, official
    default) or for all; λⱼ = cⱼ, divided by ‖Fⱼ‖₂ over all of model j's Fisher tensors if
    `normalize_fishers` (official default; a model whose Fisher is all zero keeps cⱼ). A tensor
    without Fishers (e.g. a classification head) gets the isotropic merge Σⱼ cⱼθⱼ."""
    coeffs = _coefficients(weight)
    fishers = _statistics(stats, "fisher", len(tensors))
    if fishers is None:
        return _weighted_mean(list(tensors), coeffs)
    counts, norms = stats.model.get("fisher_examples"), stats.model.get("fisher_norm")
    numerator = denominator = None
    for j, (theta, f) in enumerate(zip(tensors, fishers)):
        if counts:
            f.div_(counts[j])
        if not favor_target_model or j == 0:
            f.clamp_(min=fisher_floor)
        lam = coeffs[j] / norms[j] if normalize_fishers and norms and norms[j] > 0 else coeffs[j]
        f.mul_(lam)
        if numerator is None:
            numerator, denominator = theta.mul_(f), f
        else:
            numerator.addcmul_(theta, f)
            denominator += f
    return numerator.div_(denominator)
