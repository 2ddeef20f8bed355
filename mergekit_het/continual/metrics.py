"""Summaries of an accuracy matrix R[i][j] = accuracy on experience j after step i (j ≤ i;
entries j > i are None) and their mean ± std over schedules.

- average accuracy A = (1/T) Σ_j R[T−1][j];
- forgetting F = (1/(T−1)) Σ_{j<T−1} max_{i<T−1} R[i][j] − R[T−1][j] (Chaudhry et al., arXiv:1801.10112);
- backward transfer BWT = (1/(T−1)) Σ_{j<T−1} R[T−1][j] − R[j][j] (Lopez-Paz & Ranzato, arXiv:1706.08840);
formulas from `evaluate.metrics`. A matrix of one row over T > 1 experiences (joint training)
has A only: forgetting and BWT are None. Over schedules: mean and the sample std (n − 1; 0 for
one schedule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..evaluate.metrics import average_accuracy, backward_transfer, forgetting

METRICS = ("average_accuracy", "forgetting", "backward_transfer")


def summarize(matrix: Sequence[Sequence[float | None]]) -> dict[str, float | None]:
    """The three summaries of one matrix (unseen entries are not read: they count as 0)."""
    last = [v for v in matrix[-1] if v is not None]
    if len(matrix) != len(matrix[-1]):
        return {"average_accuracy": sum(last) / len(last), "forgetting": None, "backward_transfer": None}
    filled = [[0.0 if v is None else v for v in row] for row in matrix]
    return {"average_accuracy": average_accuracy(filled), "forgetting": forgetting(filled),
            "backward_transfer": backward_transfer(filled)}  # fmt: skip


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    """(mean, sample std) of the non-None values; None if there is none."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return m, math.sqrt(var)


def pad(rows: Sequence[Sequence[float]], width: int) -> list[list[float | None]]:
    """Lower-triangular rows (row i has i + 1 entries, or all for joint) padded with None to `width`."""
    return [list(r) + [None] * (width - len(r)) for r in rows]


def mean_matrix(matrices: Sequence[Sequence[Sequence[float | None]]]) -> list[list[float | None]]:
    """Entry-wise mean over schedules (None where unseen)."""
    out = []
    for i, row in enumerate(matrices[0]):
        out.append([None if v is None else sum(m[i][j] for m in matrices) / len(matrices) for j, v in enumerate(row)])
    return out
