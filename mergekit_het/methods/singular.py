"""Merges in the singular bases of the task matrices: TSV-M (Gargiulo et al., CVPR 2025,
arXiv:2412.00081) and Iso-C / Iso-CTS (Marczak et al., ICML 2025, arXiv:2502.04959), with the
semantics of the official code (AntoAndGar/task_singular_vectors, danielm1405/iso-merging).

Per tensor, τᵢ = cᵢ·(θᵢ − θ₀) with cᵢ = T·wᵢ/Σw (1 for equal weights, the official methods):
- a 2-D tensor (any matrix: attention and MLP weights, embeddings, LM head; the official code
  SVD-merges every 2-D tensor, ViT positional embeddings included) is merged in singular space;
- every other tensor (biases, norms, 1-D and 3-D+ tensors) gets the mean of the τᵢ;
- θ = θ₀ + α·τ_M, α multiplying the averaged tensors too. The papers choose α on validation
  (grid 0.1, 0.2, …, 3.0); 1.0 is the default here.
The official code also averages CLIP's 2-D `text_projection`; set `svd: false` for such a
tensor (`svd: [{filter: text_projection, value: false}, {value: true}]`).

P(M) = U Vᵀ from the thin SVD of M is the polar factor (nearest matrix with orthonormal columns
or rows). All SVDs run on the tensors' device: LAPACK's in float32 (float64 inputs: float64) on
the CPU, on a GPU from a float64 Gram eigendecomposition (`gram_svd`); whole tensors, memory a
few copies of one tensor group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import Tensor

from .registry import Bounds, PerModel, merge_method

Fraction = Annotated[float, Bounds(low=0, high=1, why="it is a fraction of the singular directions")]


class TaskVectors(Sequence[Tensor]):
    """τᵢ = cᵢ·(θᵢ − θ₀), cᵢ = T·wᵢ/Σw, made anew at each access from the engine's float32 copies,
    so a method walking them holds one task vector at a time (memory: the base, one τ and the
    method's factors, not T copies)."""

    def __init__(self, base: Tensor, tensors: Sequence[Tensor], weight: list[float]):
        total = sum(weight)
        if total == 0:
            raise ValueError("the weights sum to 0")
        self._base, self._tensors = base, tensors
        self._scale = [len(weight) * w / total for w in weight]

    def __len__(self) -> int:
        return len(self._tensors)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        t = self._tensors[i].sub_(self._base)
        return t if self._scale[i] == 1 else t.mul_(self._scale[i])


def _sum(deltas: Sequence[Tensor]) -> Tensor:
    """Σᵢ τᵢ, accumulated into a copy of τ₀ (one τ at a time; the τᵢ stay as they are)."""
    out = deltas[0].clone()
    for i in range(1, len(deltas)):
        out += deltas[i]
    return out


def _mean(deltas: Sequence[Tensor]) -> Tensor:
    return _sum(deltas).div_(len(deltas))


def gram_svd(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD M = U diag(s) Vᵀ (s descending) from the eigendecomposition of the small side's
    Gram matrix in float64: MᵀM = V diag(s²) Vᵀ, U = M V diag(1/s) (or MMᵀ for a wide M).
    float64 keeps s accurate to float32 rounding down to ~1e-6 of the largest; directions with
    s² ≤ k·ε₆₄·s₁² (the null space, where the SVD's U and V are arbitrary completions) get zero
    columns, so a polar factor built from them is 0 there. Why: on a GPU cuSOLVER's SVD drivers
    are 8x slower than `eigh` here (H200, 2048×2048: 217 ms default Jacobi, 28 ms this route) and
    the default is less accurate (reconstruction 6e-4 vs 3e-6 of max |M|; bench/svd_routes.py)."""
    x = m.double()
    wide = x.shape[0] < x.shape[1]
    w, q = torch.linalg.eigh(x @ x.T if wide else x.T @ x)
    w, q = w.flip(0), q.flip(1)  # descending
    s = w.clamp_min(0).sqrt()
    kept = w > w[0].clamp_min(0) * (w.numel() * torch.finfo(torch.float64).eps)
    inv = torch.where(kept, 1 / torch.where(kept, s, 1), 0)
    if wide:
        u, vh = q * kept, (q.T @ x) * inv[:, None]
    else:
        u, vh = (x @ q) * inv, q.T * kept[:, None]
    return u.to(m.dtype), s.to(m.dtype), vh.to(m.dtype)


def thin_svd(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The thin SVD of `m`: `gram_svd` on a GPU, LAPACK's (`torch.linalg.svd`) on the CPU."""
    return gram_svd(m) if m.is_cuda else torch.linalg.svd(m, full_matrices=False)


def polar(m: Tensor) -> Tensor:
    """P(M) = U Vᵀ of the thin SVD M = U diag(s) Vᵀ."""
    u, _, vh = thin_svd(m)
    return u @ vh


def _finish(base: Tensor, merged: Tensor, alpha: float) -> Tensor:
    return merged.mul_(alpha).add_(base) if alpha != 1 else merged.add_(base)


def tsv_matrix(deltas: Sequence[Tensor]) -> Tensor:
    """TSV-M of one m×n matrix: each τᵢ keeps its top r = int(k·(1/T)) singular triplets
    (k = min(m, n)) in slots [i·r, (i+1)·r) of Û, ŝ, V̂ (slots T·r … k−1 stay zero when T ∤ k);
    τ_M = P(Û) diag(ŝ) P(V̂)."""
    tasks = len(deltas)
    for i in range(tasks):
        d = deltas[i]
        if i == 0:
            m, n = d.shape
            k = min(m, n)
            r = int(k * (1 / tasks))
            u_hat, s_hat, v_hat = d.new_zeros(m, k), d.new_zeros(k), d.new_zeros(k, n)
        u, s, vh = thin_svd(d)
        u_hat[:, i * r : (i + 1) * r] = u[:, :r]
        s_hat[i * r : (i + 1) * r] = s[:r]
        v_hat[i * r : (i + 1) * r] = vh[:r]
        del d, u, s, vh  # one task's factors at a time
    return (polar(u_hat) * s_hat) @ polar(v_hat)


@merge_method("tsv", scale="alpha", paper="arXiv:2412.00081", min_models=1)
def tsv(base: Tensor, tensors: list[Tensor], *, weight: PerModel = 1.0, alpha: float = 1.0, svd: bool = True) -> Tensor:
    """TSV-M (Task Singular Vectors: Merge): θ₀ + α·τ_M, τ_M = `tsv_matrix` of the task
    vectors for a 2-D tensor (if `svd`), their mean otherwise. One task gives task arithmetic
    at α; tasks with disjoint singular subspaces (within the r-per-task budget) their exact sum."""
    deltas = TaskVectors(base, tensors, weight)
    merged = tsv_matrix(deltas) if svd and base.dim() == 2 else _mean(deltas)
    return _finish(base, merged, alpha)


def iso_c_matrix(total: Tensor) -> Tensor:
    """Iso-C of Σ = Σᵢ τᵢ: s̄·U Vᵀ, s̄ the mean of all k singular values of Σ (a flat spectrum)."""
    u, s, vh = thin_svd(total)
    return (u @ vh).mul_(s.mean())


def iso_cts_split(k: int, tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(k_c, n): the common directions and each task's own directions, k_c + T·n = k.
    k_c = int(k·f); S = round((k − k_c)/T)·T (Python's round, half to even); k_c = k − S; n = S/T."""
    common = int(k * common_space_fraction)
    task_slots = round((k - common) / tasks) * tasks
    if task_slots > k:
        raise ValueError(f"common_space_fraction {common_space_fraction} leaves {task_slots} task directions "
                         f"for {tasks} tasks but the matrix has only {k}; raise it")  # fmt: skip
    return k - task_slots, task_slots // tasks


def iso_cts_matrix(deltas: Sequence[Tensor], common_space_fraction: float) -> Tensor:
    """Iso-CTS of one matrix: the top k_c left/right singular directions of Σᵢ τᵢ (common
    space), then each τᵢ with the common left subspace projected out, Wᵢ = τᵢ − U_c U_cᵀ τᵢ,
    gives its top n triplets; slots: the task blocks first, the common block last.
    τ_M = s̄·P(U_slots) P(V_slots), s̄ the mean of all k slot values."""
    total = _sum(deltas)
    m, n_cols = total.shape
    k = min(m, n_cols)
    k_c, n = iso_cts_split(k, len(deltas), common_space_fraction)
    u, s, vh = thin_svd(total)
    del total
    u_c, s_c, v_c = u[:, :k_c], s[:k_c], vh[:k_c]
    if n == 0:
        return (u_c @ v_c).mul_(s_c.mean())
    us, ss, vs = [], [], []
    for i in range(len(deltas)):
        d = deltas[i]
        w = d.sub_(u_c @ (u_c.T @ d))
        uw, sw, vw = thin_svd(w)
        us.append(uw[:, :n].clone()), ss.append(sw[:n].clone()), vs.append(vw[:n].clone())  # not views of whole factors
        del d, w, uw, sw, vw
    u_slots = torch.cat([*us, u_c], dim=1)
    v_slots = torch.cat([*vs, v_c], dim=0)
    s_bar = torch.cat([*ss, s_c]).mean()
    return (polar(u_slots) @ polar(v_slots)).mul_(s_bar)


@merge_method("iso_c", scale="alpha", paper="arXiv:2502.04959", min_models=1)
def iso_c(base: Tensor, tensors: list[Tensor], *, weight: PerModel = 1.0, alpha: float = 1.0, svd: bool = True) -> Tensor:
    """Iso-C (isotropic merging in the common subspace): θ₀ + α·τ_M, τ_M = `iso_c_matrix` of the
    task-arithmetic sum Σᵢ τᵢ (unscaled) for a 2-D tensor (if `svd`), the mean of the τᵢ otherwise."""
    deltas = TaskVectors(base, tensors, weight)
    if svd and base.dim() == 2:
        return _finish(base, iso_c_matrix(_sum(deltas)), alpha)
    return _finish(base, _mean(deltas), alpha)


@merge_method("iso_cts", scale="alpha", paper="arXiv:2502.04959", min_models=1)
def iso_cts(base: Tensor, tensors: list[Tensor], *, weight: PerModel = 1.0, alpha: float = 1.0,
            common_space_fraction: Fraction = 0.8, svd: bool = True) -> Tensor:  # fmt: skip
    """Iso-CTS (isotropic merging in common and task-specific subspaces): θ₀ + α·τ_M,
    τ_M = `iso_cts_matrix` for a 2-D tensor (if `svd`), the mean of the τᵢ otherwise. Where
    (k − k_c)/T rounds to 0 (e.g. k = 16, T = 8) it is Iso-C."""
    deltas = TaskVectors(base, tensors, weight)
    if svd and base.dim() == 2:
        return _finish(base, iso_cts_matrix(deltas, common_space_fraction), alpha)
    return _finish(base, _mean(deltas), alpha)
