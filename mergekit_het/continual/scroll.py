"""SCROLL stage 1 (Wang, Ciccone, Luise, Yapp, Pontil, Ciliberto, arXiv:2210.05561): an exact
online ridge classifier on features of a FIXED pretrained encoder.

Every arriving chunk updates the sufficient statistics A ← A + Σ φ̃φ̃ᵀ, b ← b + Σ φ̃ e_yᵀ
(`mergekit_het.models.ridge.RidgeStatistics`, global class ids) and the predictor is
W̃ = (A + λI)⁻¹ b. A and b are sums over the data seen, so the classifier after the whole stream
does not depend on the schedule (order of experiences, chunk sizes) up to float summation order.
Stage 2 of the paper (adapting the representation on a replay buffer) is not implemented.
"""

from __future__ import annotations

import torch

from ..models.ridge import RidgeHead, RidgeStatistics


class ScrollClassifier:
    def __init__(self, dim: int, num_classes: int, lam: float = 0.01) -> None:
        self.stats = RidgeStatistics.zeros(dim, num_classes)
        self.lam = lam

    def observe(self, features: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> None:
        """Stream (features, global labels) in chunks of `chunk_size` examples."""
        for i in range(0, len(labels), chunk_size):
            self.stats.update(features[i : i + chunk_size], labels[i : i + chunk_size])

    def head(self) -> RidgeHead:
        return self.stats.solve(self.lam)


def predict_within(head: RidgeHead, features: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Local predictions of a task whose global class ids are `classes` (argmax over them only)."""
    return head(features)[:, classes].argmax(dim=-1)
