"""SCROLL (Wang, Ciccone, Luise, Yapp, Pontil, Ciliberto, arXiv:2210.05561; TPAMI 2025).

Stage 1, a schedule-robust predictor: an exact online ridge classifier on the features φ of
the FIXED pretrained encoder. Every arriving chunk updates A ← A + Σ φ̃φ̃ᵀ, b ← b + Σ φ̃ e_yᵀ
(`models.ridge.RidgeStatistics`, float64, global class ids, φ̃ = [φ; 1]); after any step the
predictor is W̃ = (A + λI)⁻¹ b, ŷ = argmax W̃ᵀφ̃. A and b are sums over the data seen, so after
the whole stream W̃ is the ridge solution of the pooled data whatever the schedule (class order,
experience sizes, chunk sizes), up to float summation order. Each example's φ is computed once,
in one fixed batching of the pool, so φ(x) itself does not depend on the schedule.

Stage 2, adaptation on replay data only (the paper's GDumb-style choice): the buffer is
`buffer.ClassBalancedBuffer` (bottom-k by a stable key per class, fed chunk by chunk along the
stream; its content is a function of the data only). After each step the pretrained encoder
with the closed-form classifier as its head (W̃ itself, logits / T, so that before any step the
network predicts exactly what stage 1 does; frozen, or trained from W̃ with `train_head`) is fine-tuned for `steps` SGD steps at `lr` on the buffer's training
part, in key order with a fixed seed;
each class's lowest-key `validation` fraction is held out and the adapted model is kept only if
its class-incremental accuracy there beats the ridge predictor's (else the ridge predictor is
used). The buffer policy, the frozen head and the rejection rule are the project's design
(ALGORITHMS-addendum §16.3: the paper's stage-2 details are unverified).
Rows: `scroll` (stage 2 as used) and `scroll:stage1` (the ridge predictor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.classifier import load_trainable, set_head
from ..models.ridge import RidgeHead, RidgeStatistics
from ..runtime.local_training import local_batch_indices, local_sgd
from .buffer import ClassBalancedBuffer
from .evaluation import pool_logits, restricted_argmax
from .strategies import Context, Finetune, register, step_seed
from .stream import Schedule


class ScrollClassifier:
    """Stage 1 alone: online ridge statistics over global class ids."""

    def __init__(self, dim: int, num_classes: int, lam: float = 0.01) -> None:
        self.stats = RidgeStatistics.zeros(dim, num_classes)
        self.lam = lam

    def observe(self, features: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> None:
        """Stream (features, global labels) in chunks of `chunk_size` examples."""
        for i in range(0, len(labels), chunk_size):
            self.stats.update(features[i : i + chunk_size], labels[i : i + chunk_size])

    def head(self) -> RidgeHead:
        return self.stats.solve(self.lam)


@register
class Scroll(Finetune):
    name = "scroll"

    def __init__(self, spec, ctx: Context, schedule: Schedule) -> None:
        super().__init__(spec, ctx, schedule)
        self.stage1 = ScrollClassifier(ctx.features.shape[1], ctx.pool.num_classes, spec.lam)
        self.buffer = ClassBalancedBuffer(spec.memory, ctx.cfg.seed)
        self.labels = ctx.pool.labels("train")
        self.ridge: RidgeHead | None = None
        self.accepted: list[bool] = []
        self.seen: list[int] = []

    def learn(self, model: nn.Module, t: int, exps: list[int]) -> None:
        chunk = self.schedule.chunk
        uids = torch.as_tensor([u for i in exps for u in self.schedule.experiences[i].train], dtype=torch.long)
        for i in range(0, len(uids), chunk):
            part = uids[i : i + chunk]
            self.stage1.stats.update(self.ctx.features[part], self.labels[part])
            self.buffer.add(part.tolist(), self.labels[part].tolist())
        self.seen = self.schedule.seen(t)
        self.ridge = self.stage1.head()
        self.accepted.append(self.adapt(model, t))

    def adapt(self, model: nn.Module, t: int) -> bool:
        """Stage 2 from the pretrained encoder + the ridge head W̃ (the stage-1 predictor); True if kept."""
        c, spec = self.ctx, self.spec
        model.head.requires_grad_(True)
        load_trainable(model, c.theta0)
        set_head(model, self.ridge.to(torch.float32))
        model.head.requires_grad_(spec.train_head)
        train, val = self.buffer.split(spec.validation)
        if spec.steps and train:
            seed = step_seed(c.cfg.seed, t)
            batches = local_batch_indices(len(train), spec.batch_size, 1, spec.steps, seed)
            local_sgd(model, [c.pool.train[u] for u in train], c.tokenizer, batches, lr=spec.lr or c.cfg.train.lr,
                      weight_decay=c.cfg.train.weight_decay, seed=seed, device=c.device)  # fmt: skip
        if not val:
            return bool(spec.steps and train)
        y = self.labels[val]
        adapted = pool_logits(model, [c.pool.train[u] for u in val], c.tokenizer, c.cfg.eval_batch_size, c.device)
        ridge = self.ridge(c.features[val])
        acc = [(restricted_argmax(z, self.seen) == y).double().mean().item() for z in (adapted, ridge)]
        return acc[0] > acc[1]

    def logits(self, model: nn.Module) -> dict[str, torch.Tensor]:
        ridge = self.ridge(self.ctx.eval_features).float()
        stage2 = super().logits(model)[self.label] if self.accepted[-1] else ridge
        return {self.label: stage2, f"{self.label}:stage1": ridge}

    def artifacts(self) -> dict[str, Any]:
        return {**super().artifacts(), "ridge": self.ridge, "accepted": list(self.accepted), "buffer_counts": self.buffer.counts()}
