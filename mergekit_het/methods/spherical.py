"""Interpolation on the hypersphere beyond two-model slerp (mergekit 0.1.5 semantics):
`nuslerp` (two models, optionally as task vectors, per row or column), `multislerp`
(barycentric, one tangent-space step) and `karcher` (iterated Riemannian mean).

Every step follows mergekit 0.1.5's order of operations, so float32 results match it bit
for bit on the same device (ALGORITHMS.md §1.4, §1.6; addendum §10.0, §10.2). Tensors larger
than a chunk are merged from their Gram matrix (`gram`, one pass over the chunks): every norm
and dot product these methods take is a function of it, so each becomes an elementwise
combination of the inputs, equal to the whole-tensor form up to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .registry import WHOLE, Chunks, PerModel, Prepare, TensorStats, as_compute_dtype, compute_dtype, merge_method
from .stacked import stack_models


GRAM_BLOCK = 4096


def gram(chunks: Chunks, *, base_as_model: bool = False) -> Tensor:
    """G = X Xᵀ over the flat chunks of one tensor: rows xᵢ = θᵢ − θ₀ (the difference in the
    arithmetic dtype, as the merge pass forms it; θᵢ without a base), or with `base_as_model`
    the θᵢ and the base as one more row, last. Every norm and dot product of the spherical
    methods is a function of G. Products summed over blocks of `GRAM_BLOCK` entries in the
    arithmetic dtype (one batched matmul), the blocks' sums in float64: relative error ~1e-7,
    that of one float32 whole-tensor dot product, at a quarter of a float64 pass's time."""
    total = None
    for _, base, tensors in chunks():
        b = None if base is None else as_compute_dtype(base).reshape(-1)
        extra = b is not None and base_as_model
        numel, dtype = tensors[0].numel(), compute_dtype(tensors[0])
        padded = -(-numel // GRAM_BLOCK) * GRAM_BLOCK
        x = torch.empty((len(tensors) + extra, padded), dtype=dtype, device=tensors[0].device)
        x[:, numel:] = 0
        for i, t in enumerate(tensors):  # one buffer filled row by row, no stacked copies
            row, offset = x[i, :numel], b is not None and not extra
            if compute_dtype(t) == dtype:  # converted straight into the row (exact), then θᵢ − θ₀ there
                row.copy_(t.reshape(-1))
                if offset:
                    row.sub_(b)
            elif offset:  # another stored dtype: its copy's arithmetic, one rounding into the row
                torch.sub(as_compute_dtype(t).reshape(-1), b, out=row)
            else:
                row.copy_(as_compute_dtype(t).reshape(-1))
        if extra:
            x[-1, :numel] = b
        blocks = x.view(len(x), -1, GRAM_BLOCK).transpose(0, 1)
        part = torch.bmm(blocks, blocks.transpose(1, 2)).double().sum(0)
        total = part if total is None else total.add_(part)
    return total


def gram_form(base_as_model: bool = False) -> Prepare:
    """The `Prepare` of a method run on whole-tensor Gram statistics (`TensorStats.tensor['gram']`)."""
    return lambda chunks: TensorStats(tensor={"gram": gram(chunks, base_as_model=base_as_model)})


def combine(coefficients: Sequence[float], tensors: Sequence[Tensor]) -> Tensor:
    """Σᵢ cᵢ·xᵢ in model order (the xᵢ as the method reads them; coefficients rounded to their dtype)."""
    out = tensors[0].mul_(coefficients[0])
    for c, x in zip(coefficients[1:], tensors[1:]):
        out.add_(x, alpha=c)
    return out


def _slerp_rows(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """Slerp each vector along the last dimension of `v0`, `v1` from v0 (t = 0) to v1 (t = 1).

    û = v/max(‖v‖, 1e-7); cos θ = clamp(⟨û₀, û₁⟩, −1, 1); where 1 − cos²θ ≤ 1e-16 (colinear)
    lerp (1−t)v₀ + t v₁, else (sin((1−t)θ) v₀ + sin(tθ) v₁) / sin θ, on the unnormalized v.
    """
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= 1e-8**2
    theta = torch.acos(torch.where(colinear, 0, cos))  # θ = 0 keeps the unused branch finite
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * v0 + t * v1, spherical)


def nuslerp_vectors(t: float, v0: Tensor, v1: Tensor, *, flatten: bool, along_dim0: bool) -> Tensor:
    """Slerp of two tensors: as single vectors (`flatten`), else vector by vector — along dim 0
    (each column W[:, j] of a matrix) if `along_dim0`, else along the last dim (each row)."""
    if flatten:
        return _slerp_rows(t, v0.reshape(-1), v1.reshape(-1)).reshape(v0.shape)
    if along_dim0:
        return _slerp_rows(t, v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1).reshape(v0.shape)
    return _slerp_rows(t, v0, v1)


def nuslerp_chunked(numel: int, kwargs: dict[str, Any]) -> Prepare | None:
    """Flattened nuslerp chunk by chunk: once ‖v₀‖, ‖v₁‖ and ⟨v₀, v₁⟩ of the whole tensor are
    known (one Gram pass), the slerp is elementwise. Per row or column it needs whole tensors:
    the engine's chunks are flat element ranges, not rows."""
    return gram_form() if kwargs["nuslerp_flatten"] else None


@merge_method("nuslerp", paper="https://github.com/arcee-ai/mergekit", base="optional", min_models=2, max_models=2,
              chunked=nuslerp_chunked)
def nuslerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weight: PerModel,
    nuslerp_row_wise: bool = False,
    nuslerp_flatten: bool = True,
    stats: TensorStats = WHOLE,
) -> Tensor:
    """Slerp between the two models at t = w₂/(w₁ + w₂) (t = ½ if |w₁ + w₂| < 1e-6).

    With a base: θ₀ + slerp(θ₁ − θ₀, θ₂ − θ₀), i.e. the task vectors are interpolated.
    `nuslerp_flatten` (default) treats each tensor as one vector; without it, each row is one
    vector, or with `nuslerp_row_wise` each column (mergekit 0.1.5's naming: vectors along dim 0).
    Chunked (`stats.tensor['gram']`): cos θ = G₀₁/(max(√G₀₀, 1e-7)·max(√G₁₁, 1e-7)) from the
    float64 Gram matrix, then the same elementwise step; equal to the whole-tensor result up to
    float32 rounding of the norms and dot product.
    """
    total = weight[0] + weight[1]
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    v0, v1 = tensors[0], tensors[1]
    if base is not None:
        v0, v1 = v0.sub_(base), v1.sub_(base)
    if "gram" in stats.tensor:
        mixed = _slerp_from_gram(t, v0, v1, stats.tensor["gram"])
    else:
        mixed = nuslerp_vectors(t, v0, v1, flatten=nuslerp_flatten, along_dim0=nuslerp_row_wise)
    return mixed if base is None else base + mixed


def _slerp_from_gram(t: float, v0: Tensor, v1: Tensor, g: Tensor) -> Tensor:
    """`_slerp_rows` of two flat vectors (or matching chunks of them) whose Gram matrix is `g`."""
    n0, n1 = (math.sqrt(max(float(g[i, i]), 0.0)) for i in (0, 1))
    cos = torch.tensor(float(g[0, 1]) / (max(n0, 1e-7) * max(n1, 1e-7)), dtype=v0.dtype).clamp(-1, 1)
    if (1 - cos.square()) <= 1e-8**2:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(cos)
    return (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)


def multislerp_chunked(numel: int, kwargs: dict[str, Any]) -> Prepare:
    """multislerp chunk by chunk: every norm and dot product it takes is a function of the Gram
    matrix of the xᵢ (one pass), after which the result is a fixed combination of the xᵢ."""
    return gram_form()


@merge_method("multislerp", paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea", base="optional",
              chunked=multislerp_chunked)
def multislerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weight: PerModel,
    normalize_weights: bool = True,
    eps: float = 1e-8,
    stats: TensorStats = WHOLE,
) -> Tensor:
    """Barycentric interpolation on the hypersphere: one exponential-map step from the mean.

    xᵢ = θᵢ − θ₀ (θᵢ without a base), flattened; w ← w/Σw if `normalize_weights` (no guard);
    uᵢ = xᵢ/(‖xᵢ‖ + eps); m = Σ wᵢuᵢ, m̂ = m/‖m‖; T = Σ wᵢ(uᵢ − ⟨uᵢ, m̂⟩m̂); τ = ‖T‖ + eps;
    result = (Σ wᵢ‖xᵢ‖)·(m̂ cos τ + T sin τ/τ) (+ θ₀). One model: returned unchanged (no base
    added). ‖m‖ < eps: with two models the linear w₁x₁ + w₂x₂ (+ θ₀), else an error.

    T vanishes in exact arithmetic (Σ wᵢ⟨uᵢ, m̂⟩ = ⟨m, m̂⟩ = ‖m‖, so T = m − ‖m‖m̂ = 0: the
    tangent at the mean's own direction), so the result is (Σ wᵢ‖xᵢ‖)·m̂ up to rounding. The
    chunked form (`stats.tensor['gram']`) computes exactly that, Σᵢ cᵢxᵢ with
    cᵢ = (Σⱼ wⱼ‖xⱼ‖)·wᵢ/((‖xᵢ‖ + eps)·‖m‖), ‖m‖² = Σᵢⱼ wᵢwⱼGᵢⱼ/((‖xᵢ‖ + eps)(‖xⱼ‖ + eps)),
    from the float64 Gram matrix G: equal to the whole-tensor form up to float32 rounding.
    """
    if len(tensors) == 1:
        return tensors[0]
    if "gram" in stats.tensor:
        out = _multislerp_from_gram(base, tensors, weight, normalize_weights, eps, stats.tensor["gram"])
        return out if base is None else out.add_(base)
    x = stack_models(tensors)
    if base is not None:
        x -= base
    flat = x.view(len(tensors), -1)
    w = torch.tensor(weight, dtype=x.dtype, device=x.device)
    if normalize_weights:
        w = w / w.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = mean.norm()
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ValueError("multislerp: the weighted mean of the unit vectors is zero (antipodal inputs whose "
                             "weights balance out); change the weights")
        out = x[0] * w[0] + x[1] * w[1]
    else:
        mean = mean / mean_norm
        tangents = units - (units * mean).sum(-1, keepdim=True) * mean
        step = (tangents * w.view(-1, 1)).sum(0)
        tau = step.norm() + eps
        out = (mean * torch.cos(tau) + step * (torch.sin(tau) / tau)) * (norms.squeeze(-1) * w).sum()
        out = out.view(x.shape[1:])
    return out if base is None else out + base


def _multislerp_from_gram(base: Tensor | None, tensors: Sequence[Tensor], weight: Sequence[float], normalize: bool,
                          eps: float, g: Tensor) -> Tensor:  # fmt: skip
    """(Σ wᵢ‖xᵢ‖)·m/‖m‖ of matching chunks of the xᵢ from their Gram matrix `g` (see `multislerp`);
    the coefficients from the k×k `g` in float64 on the CPU, whatever device the chunks are on."""
    g = g.cpu()
    w = torch.tensor(weight, dtype=torch.float64)
    if normalize:
        w = w / w.sum()
    norms = g.diagonal().clamp(min=0).sqrt()
    inv = w / (norms + eps)  # m = Σ invᵢ xᵢ
    mean_norm = math.sqrt(max(float(inv @ g @ inv), 0.0))
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ValueError("multislerp: the weighted mean of the unit vectors is zero (antipodal inputs whose "
                             "weights balance out); change the weights")
        coefficients = w.tolist()
    else:
        coefficients = (inv * (float(norms @ w) / mean_norm)).tolist()
    xs = [t if base is None else t.sub_(base) for t in tensors]
    return combine(coefficients, xs)


def karcher_mean(tensors: Sequence[Tensor], alphas: Sequence[float], max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """Weighted Karcher (Fréchet) mean on the unit sphere, rescaled by the mean norm.

    nᵢ = ‖θᵢ‖, uᵢ = θᵢ/nᵢ; inputs with nᵢ ≤ tol are dropped and α renormalized over the rest.
    u starts at the normalized Σ αᵢuᵢ (u₁ if that is below tol), then up to `max_iter` times:
    T = Σ αᵢ θᵢ/sin θᵢ (uᵢ − cos θᵢ u) over θᵢ = acos⟨u, uᵢ⟩ ≥ tol; stop if ‖T‖ < tol;
    u ← cos‖T‖ u + sin‖T‖ T/‖T‖, renormalized. Output (Σ αᵢnᵢ)·u (all inputs, original α).

    Every norm is taken in float32 (float64 for float64 inputs), the vectors stay in the input
    dtype: on bf16 inputs (`--arithmetic config-dtype`) the roundings are mergekit 0.1.5's.
    Streamed, see `karcher_coefficients`.
    """
    if len(tensors) == 1:
        return tensors[0]
    wide = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32

    def norm(x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x.to(wide))

    norms = [norm(x) for x in tensors]
    units = [torch.zeros_like(x) if n.item() == 0.0 else x / n for x, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum(x * 0 for x in tensors)
    alpha_sum = sum(alphas[i] for i in valid)
    coeffs = [alphas[i] / alpha_sum for i in valid]
    kept = [units[i] for i in valid]
    u = torch.zeros_like(kept[0])
    for a, unit in zip(coeffs, kept):
        u += a * unit
    u_norm = norm(u)
    u = kept[0].clone() if u_norm.item() < tol else u / u_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(u)
        for a, unit in zip(coeffs, kept):
            cos = torch.clamp(torch.dot(u.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (unit - cos * u)
        step = norm(tangent)
        if step.item() < tol:
            break
        u = torch.cos(step) * u + torch.sin(step) * (tangent / step)
        u_norm = norm(u)
        if u_norm.item() > tol:
            u = u / u_norm
    return sum(a * n for a, n in zip(alphas, norms)) * u


def karcher_coefficients(g: Tensor, alphas: Sequence[float], max_iter: int = 10, tol: float = 1e-5) -> list[float]:
    """`karcher_mean` as coefficients cᵢ of the inputs (result Σ cᵢθᵢ), from their Gram matrix.

    Every iterate u is a combination Σ βᵢuᵢ of the unit inputs, and so is each tangent T: the
    iteration runs on β, with ⟨u, uᵢ⟩ = (Uβ)ᵢ and ‖T‖² = γᵀUγ over U = Gᵢⱼ/(nᵢnⱼ), in float64,
    the same steps, branches and stopping rule as `karcher_mean`; cᵢ = (Σ αⱼnⱼ)·βᵢ/nᵢ. Equal
    to `karcher_mean` up to rounding (float32 dot products there, float64 here), which can move
    the iteration that meets `tol` by one: differences stay far below `tol` relative. Runs on
    the CPU (a k×k matrix), whatever device `g` was summed on.
    """
    g = g.cpu()
    norms = g.diagonal().clamp(min=0).sqrt()
    valid = [i for i in range(len(alphas)) if float(norms[i]) > tol]
    if not valid:
        return [0.0] * len(alphas)
    idx = torch.tensor(valid)
    n = norms[idx]
    units = g[idx][:, idx] / torch.outer(n, n)  # the Gram matrix of the kept unit vectors
    coeffs = torch.tensor([alphas[i] for i in valid], dtype=torch.float64)
    coeffs = coeffs / coeffs.sum()

    def length(b: Tensor) -> float:
        return math.sqrt(max(float(b @ units @ b), 0.0))

    beta, u_norm = coeffs.clone(), length(coeffs)
    beta = torch.eye(len(valid), dtype=torch.float64)[0] if u_norm < tol else beta / u_norm
    for _ in range(max_iter):
        cos = (units @ beta).clamp(-1, 1)
        theta = torch.arccos(cos)
        moving = theta >= tol
        k = torch.where(moving, coeffs * theta / torch.sin(torch.where(moving, theta, 1.0)), 0.0)
        tangent = k - (k * cos).sum() * beta  # Σ kᵢ(eᵢ − cosᵢβ)
        step = length(tangent)
        if step < tol:
            break
        beta = math.cos(step) * beta + math.sin(step) * (tangent / step)
        u_norm = length(beta)
        if u_norm > tol:
            beta = beta / u_norm
    scale = float(sum(a * float(m) for a, m in zip(alphas, norms)))
    out = [0.0] * len(alphas)
    for j, i in enumerate(valid):
        out[i] = scale * float(beta[j]) / float(n[j])
    return out


def karcher_chunked(numel: int, kwargs: dict[str, Any]) -> Prepare:
    """karcher chunk by chunk: one Gram pass over the inputs (the base as one more), the
    iteration on coefficients (`karcher_coefficients`), then an elementwise combination."""
    return gram_form(base_as_model=True)


@merge_method("karcher", paper="arXiv:2603.04972", base="optional", chunked=karcher_chunked)
def karcher(base: Tensor | None, tensors: Sequence[Tensor], *, max_iter: int = 10, tol: float = 1e-5,
            stats: TensorStats = WHOLE) -> Tensor:  # fmt: skip
    """The Karcher mean of all inputs with equal weights 1/n (see `karcher_mean`). mergekit 0.1.5
    ignores the base policy: a `base_model` is one more input, after the models (where mergekit
    appends a base missing from `models`; a base listed among them moves last here, which can
    change the result by float rounding only). Chunked (`stats.tensor['gram']`): the combination
    of `karcher_coefficients`."""
    inputs = list(tensors) + ([base] if base is not None else [])
    alphas = [1.0 / len(inputs)] * len(inputs)
    if len(inputs) == 1 or "gram" not in stats.tensor:
        return karcher_mean(inputs, alphas, max_iter=max_iter, tol=tol)
    return combine(karcher_coefficients(stats.tensor["gram"], alphas, max_iter, tol), inputs)
