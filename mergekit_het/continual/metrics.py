"""The accuracy matrix R[i][j] = accuracy on experience j after learning experience i (j ≤ i)
and its summaries (average accuracy, forgetting, backward transfer from `evaluate.metrics`)."""

from __future__ import annotations

from ..evaluate.metrics import average_accuracy, backward_transfer, forgetting


def summarize(matrix: list[list[float | None]]) -> dict[str, float]:
    """Unseen entries (j > i) are None; they are filled with 0 for the summaries, which read
    only the last row, the diagonal and maxima over rows where the task was seen."""
    filled = [[0.0 if v is None else v for v in row] for row in matrix]
    return {
        "average_accuracy": average_accuracy(filled),
        "forgetting": forgetting(filled),
        "backward_transfer": backward_transfer(filled),
    }
