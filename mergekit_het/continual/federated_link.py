"""Federated learning on the continual stream: the seed's claim that FL with one client per
round and no revisits reduces to continual learning, measured.

Client t holds experience t; round t sends x^t to client t alone (no sampling, no revisits),
which runs the federated client program (`federated.strategy.FedAvg.client_update`: local SGD
in batches of the schedule's chunk size, seeded by `client_seed(seed, t, t)` = this package's
`step_seed(seed, t)`); the server aggregates with the engine (`aggregate`, linear = FedAvg:
Σ n_k θ_k / Σ n_k over one client = θ_t) and steps x^{t+1} = x^t − η_s (x^t − merged).
With η_s = 1 and linear aggregation this is sequential fine-tuning in exact arithmetic; the
suite reports how far the two runs' weights and accuracies are in floating point.
"""

from __future__ import annotations

import torch
from torch import nn

from ..federated.config import FederatedConfig
from ..federated.strategy import FedAvg, RoundTask, build_strategy
from ..models.classifier import load_trainable
from .strategies import Context, Finetune, register
from .stream import Schedule


def federated_config(spec, ctx: Context, schedule: Schedule) -> FederatedConfig:
    """The FederatedConfig of this stream: T clients, one per round, the continual budget."""
    cfg = ctx.cfg
    return FederatedConfig.model_validate({
        "model": cfg.model, "data": {"task_file": str(cfg.data.task_file), "task": cfg.data.tasks[0]},
        "partition": {"num_clients": len(schedule.experiences)}, "rounds": len(schedule.experiences),
        "clients_per_round": 1, "aggregate": spec.aggregate.model_dump(), "server": {"lr": spec.server_lr},
        "client": {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay, "batch_size": schedule.chunk,
                   "local_epochs": cfg.train.passes, "local_steps": cfg.train.steps},
        "seed": cfg.seed, "output": {"dir": str(cfg.output.dir / "federated")},
    })  # fmt: skip


@register
class Federated(Finetune):
    name = "federated"

    def __init__(self, spec, ctx: Context, schedule: Schedule) -> None:
        super().__init__(spec, ctx, schedule)
        self.server: FedAvg = build_strategy(federated_config(spec, ctx, schedule), ctx.device)

    def learn(self, model: nn.Module, t: int, exps: list[int]) -> None:
        rows = [self.ctx.pool.train[u] for i in exps for u in self.schedule.experiences[i].train]
        task = RoundTask(t, [t], self.x)
        update = self.server.client_update(model, rows, self.ctx.tokenizer, task, t, self.ctx.device)
        self.x = self.server.server_step(self.x, self.server.aggregate(self.x, [update], t))
        load_trainable(model, self.x)


def weight_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """max |a − b| over all entries and ‖a − b‖ / ‖b‖ (all parameters as one vector)."""
    diff = sum(float((a[k].double() - b[k].double()).square().sum()) for k in b)
    norm = sum(float(b[k].double().square().sum()) for k in b)
    return {"max_abs": max(float((a[k] - b[k]).abs().max()) for k in b), "relative": (diff / max(norm, 1e-300)) ** 0.5}
