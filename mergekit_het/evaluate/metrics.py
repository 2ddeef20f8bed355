"""Metrics on predictions and on tables of accuracies (pure functions, no models).

- accuracy, macro-F1 of one prediction vector;
- normalized accuracy of a merge (Ilharco et al., "Editing Models with Task Arithmetic",
  arXiv:2212.04089, as computed in tangent_task_arithmetic `add_normalized_accuracy`):
  mean over tasks t of acc(merged, t) / acc(expert_t, t);
- the cross-task matrix normalized by the base model: M[i, j] = acc(θ0 + α τ_i, j) / acc(θ0, j);
- weight-disentanglement error (Ortiz-Jimenez et al., arXiv:2305.12827) from prediction vectors;
- continual-learning summaries of an accuracy matrix R[i, j] = accuracy on task j after step i:
  average accuracy, forgetting (Chaudhry et al., arXiv:1801.10112), backward transfer
  (Lopez-Paz & Ranzato, arXiv:1706.08840).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import MergekitHetError


def _as_long(x: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long).flatten()


def _check_pair(preds: torch.Tensor, labels: torch.Tensor) -> None:
    if preds.numel() != labels.numel():
        raise MergekitHetError(f"got {preds.numel()} predictions for {labels.numel()} labels")
    if labels.numel() == 0:
        raise MergekitHetError("cannot score an empty split (0 labels)")


def accuracy(preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Fraction of predictions equal to their label."""
    p, y = _as_long(preds), _as_long(labels)
    _check_pair(p, y)
    return (p == y).double().mean().item()


def macro_f1(preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Unweighted mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c).

    Classes are those occurring in `labels` or `preds` (scikit-learn's `f1_score(average="macro")`).
    """
    p, y = _as_long(preds), _as_long(labels)
    _check_pair(p, y)
    classes = torch.unique(torch.cat([p, y]))
    tp = torch.stack([((p == c) & (y == c)).sum() for c in classes]).double()
    n_pred = torch.stack([(p == c).sum() for c in classes]).double()
    n_true = torch.stack([(y == c).sum() for c in classes]).double()
    return (2 * tp / (n_pred + n_true)).mean().item()


def normalized_accuracy(merged: Sequence[float], finetuned: Sequence[float]) -> float:
    """Mean over tasks of merged[t] / finetuned[t] (task-arithmetic normalized accuracy)."""
    if len(merged) != len(finetuned) or not merged:
        raise MergekitHetError(
            f"normalized accuracy needs one expert accuracy per task; got {len(merged)} merged "
            f"and {len(finetuned)} expert accuracies"
        )
    if any(f <= 0 for f in finetuned):
        raise MergekitHetError(f"expert accuracies must be > 0 to normalize by; got {list(finetuned)}")
    return sum(m / f for m, f in zip(merged, finetuned)) / len(merged)


def normalize_columns(matrix: Sequence[Sequence[float]], reference: Sequence[float]) -> list[list[float]]:
    """M[i][j] / reference[j]: the cross-task matrix normalized by the base model's accuracy on j."""
    if any(r <= 0 for r in reference):
        raise MergekitHetError(f"reference accuracies must be > 0 to normalize by; got {list(reference)}")
    if any(len(row) != len(reference) for row in matrix):
        raise MergekitHetError(f"every matrix row needs {len(reference)} entries, one per reference task")
    return [[v / r for v, r in zip(row, reference)] for row in matrix]


def disagreement(a: Sequence[int] | torch.Tensor, b: Sequence[int] | torch.Tensor) -> float:
    """Fraction of inputs on which two prediction vectors differ: E_x 1[a(x) ≠ b(x)]."""
    pa, pb = _as_long(a), _as_long(b)
    _check_pair(pa, pb)
    return (pa != pb).double().mean().item()


def disentanglement_error(
    single: Sequence[torch.Tensor], joint: Sequence[torch.Tensor]
) -> float:
    """ξ(α1, α2) = Σ_t E_{x∼D_t} 1[f(x; θ0 + α_t τ_t) ≠ f(x; θ0 + α1 τ1 + α2 τ2)].

    `single[t]` are the predictions of θ0 + α_t τ_t on task t's inputs, `joint[t]` those of the
    combined model on the same inputs.
    """
    if len(single) != len(joint):
        raise MergekitHetError(f"got {len(single)} single-task and {len(joint)} joint prediction sets")
    return sum(disagreement(s, j) for s, j in zip(single, joint))


def _square(r: Sequence[Sequence[float]]) -> torch.Tensor:
    m = torch.as_tensor(r, dtype=torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise MergekitHetError(f"accuracy matrix must be T x T (step x task); got shape {tuple(m.shape)}")
    return m


def average_accuracy(r: Sequence[Sequence[float]]) -> float:
    """Mean accuracy over all tasks after the last step: (1/T) Σ_j R[T-1, j]."""
    return _square(r)[-1].mean().item()


def forgetting(r: Sequence[Sequence[float]]) -> float:
    """Average forgetting: (1/(T-1)) Σ_{j<T-1} max_{i<T-1} R[i, j] − R[T-1, j] (0 for T = 1)."""
    m = _square(r)
    if m.shape[0] == 1:
        return 0.0
    return (m[:-1, :-1].max(dim=0).values - m[-1, :-1]).mean().item()


def backward_transfer(r: Sequence[Sequence[float]]) -> float:
    """BWT = (1/(T-1)) Σ_{j<T-1} R[T-1, j] − R[j, j]; negative means forgetting (0 for T = 1)."""
    m = _square(r)
    if m.shape[0] == 1:
        return 0.0
    return (m[-1, :-1] - m.diagonal()[:-1]).mean().item()
