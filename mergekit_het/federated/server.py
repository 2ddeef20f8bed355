"""Server side of a round: aggregation through the merge engine, then the server optimizer step.

1. `aggregate`: the clients' models are merged by the configured registered method with the
   global model x^t as base and per-client weight n_k (`linear` with weights n_k is FedAvg;
   `task_arithmetic` with normalize is the same on task vectors; `ties` merges the deltas with
   TIES). The pseudo-gradient is Δ = x^t − merged (old − new, positive in descent direction).
2. `ServerOptimizer.step`: SGD with momentum on Δ (Hsu et al., arXiv:1909.06335, FedAvgM):
   v ← μ v + Δ, x^{t+1} = x^t − η_s v. η_s = 1, μ = 0 gives x^{t+1} = merged (FedAvg).
3. `GHBMState` (Zaccone et al., arXiv:2311.18578, `GHBMCenterServer._aggregation`): a queue of
   the last τ global models; after the step m = (x^{t+1−τ} − x^{t+1})/τ once τ models are
   queued (no momentum before: the trajectory is FedAvg's). m is sent to the next clients.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..merge.engine import merge_state_dicts
from .client import ClientUpdate
from .config import AggregateConfig

State = dict[str, Tensor]


def aggregate(global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], cfg: AggregateConfig, seed: int = 0) -> State:
    """Merge the clients' models with the engine (base = the global model); returns the merge."""
    weights = [float(u.num_examples) if cfg.weighting == "examples" else 1.0 for u in updates]
    per_model = [{**cfg.model_parameters, "weight": w} for w in weights]
    return merge_state_dicts(
        cfg.method, models=[u.state for u in updates], base=global_state, parameters=cfg.parameters,
        model_parameters=per_model, seed=seed,
    )


def pseudo_gradient(global_state: Mapping[str, Tensor], merged: Mapping[str, Tensor]) -> State:
    """Δ = x^t − merged."""
    return {k: global_state[k] - merged[k] for k in global_state}


class ServerOptimizer:
    """SGD with heavy-ball momentum on pseudo-gradients (torch.optim.SGD semantics)."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        self.lr, self.momentum = lr, momentum
        self.buffer: State = {}

    def step(self, global_state: Mapping[str, Tensor], delta: Mapping[str, Tensor]) -> State:
        if self.momentum:
            for k, d in delta.items():
                self.buffer[k] = self.buffer[k].mul(self.momentum).add_(d) if k in self.buffer else d.clone()
            delta = self.buffer
        return {k: global_state[k] - self.lr * delta[k] for k in global_state}

    def state_dict(self) -> State:
        return dict(self.buffer)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.buffer = {k: v.clone() for k, v in state.items()}


class GHBMState:
    """The server's queue of past global models and the momentum it yields."""

    def __init__(self, tau: int) -> None:
        self.tau = tau
        self.queue: deque[State] = deque()
        self.momentum: State | None = None

    def before_round(self, global_state: Mapping[str, Tensor]) -> None:
        """Queue x^t (dropping the oldest when τ are queued)."""
        if len(self.queue) >= self.tau:
            self.queue.popleft()
        self.queue.append({k: v.clone() for k, v in global_state.items()})

    def after_round(self, new_global: Mapping[str, Tensor]) -> None:
        """m = (x^{t+1−τ} − x^{t+1}) / τ, or None while fewer than τ models are queued."""
        if len(self.queue) < self.tau:
            self.momentum = None
            return
        oldest = self.queue[0]
        self.momentum = {k: (oldest[k] - new_global[k]) / self.tau for k in new_global}

    def state_dict(self) -> dict[str, State]:
        out = {f"queue.{i}": q for i, q in enumerate(self.queue)}
        if self.momentum is not None:
            out["momentum"] = self.momentum
        return out

    def load_state_dict(self, state: Mapping[str, State]) -> None:
        n = sum(1 for k in state if k.startswith("queue."))
        self.queue = deque({k: v.clone() for k, v in state[f"queue.{i}"].items()} for i in range(n))
        self.momentum = dict(state["momentum"]) if "momentum" in state else None


def sample_clients(num_clients: int, per_round: int, generator: torch.Generator) -> list[int]:
    """Uniform sampling without replacement (sorted ids)."""
    return sorted(torch.randperm(num_clients, generator=generator)[:per_round].tolist())
