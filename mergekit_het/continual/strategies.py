"""Continual strategies as hooks of one learning step (the shape of `federated.strategy`).

One step learns one experience (joint training: all of them at once):

    steps()                 which experiences each step learns ([[0], [1], ...])
    rows(t, uids)           the examples it trains on (the experience's, in stream order)
    start(t)                the weights training starts from (the running model θ_{t−1})
    corrections(t)          gradient corrections added by `local_sgd`
    update(t, trained, n)   the running model after the step (the trained weights)
    finish(t, model, uids)  bookkeeping after the step
    logits(model)           eval-pool logits to score, by row label

`Finetune` (sequential fine-tuning, the lower bound) implements every hook with local SGD in
batches of the schedule's chunk size; each variant overrides what makes it different:

- `EWC` (Kirkpatrick et al., arXiv:1612.00796): corrections + finish (the Fisher of each step);
- `Replay`: rows = the experience + a class-balanced buffer of past examples (`buffer`);
- `MergeAsYouGo`: start = θ0 and update = the engine's merge of every expert so far against θ0
  with any registered method (`linear` = running average of experts);
- `Joint` (the upper bound): steps = one step over the union of all experiences;
- `Scroll` (`continual.scroll`) and `Federated` (`continual.federated_link`) replace the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import MergekitHetError
from ..models.classifier import load_trainable
from ..runtime.aggregation import merge_models
from ..runtime.batching import eval_batches
from ..runtime.local_training import local_batch_indices, local_sgd
from .buffer import ClassBalancedBuffer
from .config import ContinualConfig, StrategyConfig, label_of
from .evaluation import pool_logits
from .ewc import EWCPenalty, fisher_diagonal
from .stream import Pool, Schedule

State = dict[str, torch.Tensor]


def step_seed(seed: int, t: int) -> int:
    """Seed of step t's batch order and dropout: the seed the federated client program gives
    client t in round t (`federated.strategy.client_seed(seed, t, t)`, tested), so sequential
    fine-tuning and the one-client-per-round federated run draw the same batches."""
    return (seed * 1_000_003 + t * 10_007 + t) % (2**63)


class DivergedError(MergekitHetError):
    """Training made the weights (or a loss) non-finite: the learning rate is too high."""


def check_finite(model: nn.Module, label: str, schedule: Schedule, exps: list[int], lr: float) -> None:
    """Raise `DivergedError` (one line: strategy, schedule, experience, a lower `train.lr`) if
    any trainable weight of `model` is NaN/Inf after learning experiences `exps` (a non-finite
    loss makes them so)."""
    if all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad):
        return
    names = "+".join(schedule.experiences[i].name for i in exps)
    raise DivergedError(f"continual: strategy {label!r} diverged on schedule {schedule.index}, experience {names!r}: "
                        f"non-finite weights after SGD with train.lr={lr:g}; lower train.lr (e.g. train.lr={lr / 5:g})")  # fmt: skip


@dataclass
class Context:
    """What every run of a setting shares."""

    cfg: ContinualConfig
    pool: Pool
    tokenizer: Any
    device: torch.device
    theta0: State  # trainable parameters of the pretrained encoder + the seeded new head (CPU)
    features: torch.Tensor  # pretrained features of pool.train (n, d) float32, CPU
    eval_features: torch.Tensor  # of pool.eval


class Finetune:
    """Sequential fine-tuning: θ_t = SGD from θ_{t−1} on experience t only."""

    name: ClassVar[str] = "finetune"

    def __init__(self, spec: StrategyConfig, ctx: Context, schedule: Schedule) -> None:
        self.spec, self.ctx, self.schedule = spec, ctx, schedule
        self.label = label_of(spec)
        self.x: State = ctx.theta0

    def steps(self) -> list[list[int]]:
        return [[t] for t in range(len(self.schedule.experiences))]

    def rows(self, t: int, uids: list[int]) -> list[int]:
        return uids

    def start(self, t: int) -> State:
        return self.x

    def corrections(self, t: int) -> list:
        return []

    def update(self, t: int, trained: State, n: int) -> State:
        return trained

    def finish(self, t: int, model: nn.Module, uids: list[int]) -> None:
        """Nothing to keep."""

    def learn(self, model: nn.Module, t: int, exps: list[int]) -> None:
        """One step: local SGD on `rows` from `start`, then `update` and `finish`; the model is
        left holding the running weights."""
        cfg, pool = self.ctx.cfg, self.ctx.pool
        uids = [u for i in exps for u in self.schedule.experiences[i].train]
        rows = [pool.train[u] for u in self.rows(t, uids)]
        load_trainable(model, self.start(t))
        seed = step_seed(cfg.seed, t)
        steps = cfg.train.steps * len(exps) if cfg.train.steps is not None else None
        batches = local_batch_indices(len(rows), self.schedule.chunk, cfg.train.passes, steps, seed)
        res = local_sgd(model, rows, self.ctx.tokenizer, batches, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                        corrections=self.corrections(t), seed=seed, device=self.ctx.device)  # fmt: skip
        self.x = self.update(t, res.state, len(rows))
        load_trainable(model, self.x)
        check_finite(model, self.label, self.schedule, exps, cfg.train.lr)
        self.finish(t, model, uids)

    def logits(self, model: nn.Module) -> dict[str, torch.Tensor]:
        c = self.ctx
        return {self.label: pool_logits(model, c.pool.eval, c.tokenizer, c.cfg.eval_batch_size, c.device)}

    def artifacts(self) -> dict[str, Any]:
        """What the suite may compare across runs (the final weights)."""
        return {"state": self.x}


class EWC(Finetune):
    """+ λ Σ_i F_i ⊙ (θ − θ*_i) on every gradient; F_i = diagonal Fisher after step i."""

    name = "ewc"

    def __init__(self, spec: StrategyConfig, ctx: Context, schedule: Schedule) -> None:
        super().__init__(spec, ctx, schedule)
        self.penalty = EWCPenalty(spec.lam)

    def corrections(self, t: int) -> list:
        return [self.penalty]

    def finish(self, t: int, model: nn.Module, uids: list[int]) -> None:
        c = self.ctx
        rows = [c.pool.train[u] for u in uids[: self.spec.samples]]
        g = torch.Generator(device=c.device).manual_seed(step_seed(c.cfg.seed, t))  # multinomial draws on the model's device
        fisher = fisher_diagonal(model, (b for _, b in eval_batches(rows, c.tokenizer, 1, device=c.device)),
                                 estimator=self.spec.estimator, generator=g)  # fmt: skip
        self.penalty.add_task(fisher, {k: v.to(c.device) for k, v in self.x.items()})


class Replay(Finetune):
    """Experience replay: step t trains on experience t ∪ the buffer of experiences < t."""

    name = "replay"

    def __init__(self, spec: StrategyConfig, ctx: Context, schedule: Schedule) -> None:
        super().__init__(spec, ctx, schedule)
        self.buffer = ClassBalancedBuffer(spec.memory, ctx.cfg.seed)

    def rows(self, t: int, uids: list[int]) -> list[int]:
        out = uids + self.buffer.uids()
        self.buffer.add(uids, [self.ctx.pool.train[u]["labels"] for u in uids])
        return out


class MergeAsYouGo(Finetune):
    """Expert t = SGD from θ0 on experience t; θ_t = merge(experts 0..t; base θ0)."""

    name = "merge"

    def __init__(self, spec: StrategyConfig, ctx: Context, schedule: Schedule) -> None:
        super().__init__(spec, ctx, schedule)
        self.experts: list[State] = []
        self.sizes: list[int] = []

    def start(self, t: int) -> State:
        return self.ctx.theta0

    def update(self, t: int, trained: State, n: int) -> State:
        self.experts.append(trained)
        self.sizes.append(n)
        weights = [float(s) if self.spec.weighting == "examples" else 1.0 for s in self.sizes]
        return merge_models(self.spec, self.experts, self.ctx.theta0, weights, seed=self.ctx.cfg.seed, device=self.ctx.device)


class Joint(Finetune):
    """Upper bound: one step on all experiences together (the budget of all steps)."""

    name = "joint"

    def steps(self) -> list[list[int]]:
        return [list(range(len(self.schedule.experiences)))]


STRATEGIES: dict[str, type[Finetune]] = {cls.name: cls for cls in (Finetune, EWC, Replay, MergeAsYouGo, Joint)}


def register(cls: type[Finetune]) -> type[Finetune]:
    """Add a strategy class under its `name` (the `name:` of a config's strategies entry)."""
    STRATEGIES[cls.name] = cls
    return cls
