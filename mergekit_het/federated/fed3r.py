"""Fed3R (Fanì, Camoriano, Caputo, Ciccone, ICML 2024, arXiv:2406.01116): a closed-form ridge
classifier from client statistics of the frozen pretrained network.

Client k sends A_k = Σ φ̃φ̃ᵀ and b_k = Σ φ̃ e_yᵀ of its examples (φ̃ = [φ; 1], φ = the features
entering the head); the server adds them (`RidgeStatistics.__add__`) and solves
W̃ = (A + λI)⁻¹ b (`mergekit_het.models.ridge`). Sums commute, so the head does not depend on how the
data is split among clients or in which order clients report. Used alone (`rounds: 0`) it is
the classifier; as initialization of federated fine-tuning (Fed3R+FT) the head is normalized
(`normalize_W`) and logits are divided by T = 0.1 in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..models.ridge import RidgeHead, RidgeStatistics
from ..runtime.batching import eval_batches
from ..models.classifier import head_inputs


def client_statistics(
    model: nn.Module, rows: Sequence[dict], tokenizer, num_labels: int, batch_size: int = 64, device: str | torch.device = "cpu"
) -> RidgeStatistics:
    """A_k, b_k of one client's tokenized rows (the model in eval mode, no gradients)."""
    batches = (batch for _, batch in eval_batches(rows, tokenizer, batch_size, device=device))
    stats = RidgeStatistics.zeros(model.head.in_features, num_labels)
    for feats, labels in head_inputs(model, batches):
        stats.update(feats.cpu(), labels.cpu())
    return stats


def server_solve(stats: Iterable[RidgeStatistics], lam: float, normalize: bool) -> RidgeHead:
    """Σ_k (A_k, b_k) → (A + λI)⁻¹ b, optionally with Fed3R's column normalization."""
    total = None
    for s in stats:
        total = s if total is None else total + s
    if total is None:
        raise ValueError("Fed3R needs the statistics of at least one client")
    head = total.solve(lam)
    head = head.normalized() if normalize else head
    head.metadata.update(lam=str(lam), examples=str(total.count))
    return head.to(torch.float32)
