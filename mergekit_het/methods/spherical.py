"""Interpolation on the hypersphere beyond two-model slerp (mergekit 0.1.5 semantics):
`nuslerp` (two models, optionally as task vectors, per row or column), `multislerp`
(barycentric, one tangent-space step) and `karcher` (iterated Riemannian mean).

Every step follows mergekit 0.1.5's order of operations, so float32 results match it bit
for bit on the same device (ALGORITHMS.md §1.4, §1.6; addendum §10.0, §10.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .registry import PerModel, merge_method
from .stacked import stack_models


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


@merge_method("nuslerp", paper="https://github.com/arcee-ai/mergekit", base="optional", min_models=2, max_models=2)
def nuslerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weight: PerModel,
    nuslerp_row_wise: bool = False,
    nuslerp_flatten: bool = True,
) -> Tensor:
    """Slerp between the two models at t = w₂/(w₁ + w₂) (t = ½ if |w₁ + w₂| < 1e-6).

    With a base: θ₀ + slerp(θ₁ − θ₀, θ₂ − θ₀), i.e. the task vectors are interpolated.
    `nuslerp_flatten` (default) treats each tensor as one vector; without it, each row is one
    vector, or with `nuslerp_row_wise` each column (mergekit 0.1.5's naming: vectors along dim 0).
    """
    total = weight[0] + weight[1]
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    v0, v1 = tensors[0], tensors[1]
    if base is None:
        return nuslerp_vectors(t, v0, v1, flatten=nuslerp_flatten, along_dim0=nuslerp_row_wise)
    mixed = nuslerp_vectors(t, v0.sub_(base), v1.sub_(base), flatten=nuslerp_flatten, along_dim0=nuslerp_row_wise)
    return base + mixed


@merge_method("multislerp", paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea", base="optional")
def multislerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weight: PerModel,
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """Barycentric interpolation on the hypersphere: one exponential-map step from the mean.

    xᵢ = θᵢ − θ₀ (θᵢ without a base), flattened; w ← w/Σw if `normalize_weights` (no guard);
    uᵢ = xᵢ/(‖xᵢ‖ + eps); m = Σ wᵢuᵢ, m̂ = m/‖m‖; T = Σ wᵢ(uᵢ − ⟨uᵢ, m̂⟩m̂); τ = ‖T‖ + eps;
    result = (Σ wᵢ‖xᵢ‖)·(m̂ cos τ + T sin τ/τ) (+ θ₀). One model: returned unchanged (no base
    added). ‖m‖ < eps: with two models the linear w₁x₁ + w₂x₂ (+ θ₀), else an error.
    """
    if len(tensors) == 1:
        return tensors[0]
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


def karcher_mean(tensors: Sequence[Tensor], alphas: Sequence[float], max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """Weighted Karcher (Fréchet) mean on the unit sphere, rescaled by the mean norm.

    nᵢ = ‖θᵢ‖, uᵢ = θᵢ/nᵢ; inputs with nᵢ ≤ tol are dropped and α renormalized over the rest.
    u starts at the normalized Σ αᵢuᵢ (u₁ if that is below tol), then up to `max_iter` times:
    T = Σ αᵢ θᵢ/sin θᵢ (uᵢ − cos θᵢ u) over θᵢ = acos⟨u, uᵢ⟩ ≥ tol; stop if ‖T‖ < tol;
    u ← cos‖T‖ u + sin‖T‖ T/‖T‖, renormalized. Output (Σ αᵢnᵢ)·u (all inputs, original α).
    """
    if len(tensors) == 1:
        return tensors[0]
    norms = [torch.linalg.vector_norm(x) for x in tensors]
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
    u_norm = torch.linalg.vector_norm(u)
    u = kept[0].clone() if u_norm.item() < tol else u / u_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(u)
        for a, unit in zip(coeffs, kept):
            cos = torch.clamp(torch.dot(u.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (unit - cos * u)
        step = torch.linalg.vector_norm(tangent)
        if step.item() < tol:
            break
        u = torch.cos(step) * u + torch.sin(step) * (tangent / step)
        u_norm = torch.linalg.vector_norm(u)
        if u_norm.item() > tol:
            u = u / u_norm
    return sum(a * n for a, n in zip(alphas, norms)) * u


@merge_method("karcher", paper="arXiv:2603.04972", base="optional")
def karcher(base: Tensor | None, tensors: Sequence[Tensor], *, max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """The Karcher mean of all inputs with equal weights 1/n (see `karcher_mean`). mergekit 0.1.5
    ignores the base policy: a `base_model` is one more input, after the models (where mergekit
    appends a base missing from `models`; a base listed among them moves last here, which can
    change the result by float rounding only)."""
    inputs = list(tensors) + ([base] if base is not None else [])
    return karcher_mean(inputs, [1.0 / len(inputs)] * len(inputs), max_iter=max_iter, tol=tol)
