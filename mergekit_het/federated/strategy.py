"""Federated strategies: one round as hooks in the shape of Flower's Message-API `Strategy`
(`configure_train` → clients → `aggregate_train`), shared by the native loop
(`federated.runner`) and the Flower adapter (`federated.flower`):

    initialize(model, statistics, cache)  once, before round 1
    configure(rnd, x)                     → RoundTask: the sampled clients and what they receive
    client_update(model, rows, tok, task, k, device) → ClientUpdate  (runs where the client is)
    aggregate(x, updates, rnd)            → the merge engine's merge of the clients' models, base x
    server_step(x, merged)                → x^{t+1}

`FedAvg` implements every hook; each variant overrides one:

- `FedAvgM` (Hsu et al., arXiv:1909.06335), server_step: heavy-ball SGD on the pseudo-gradient
  Δ = x^t − merged: v ← μ v + Δ, x^{t+1} = x^t − η_s v (FedAvg: x^{t+1} = x^t − η_s Δ).
- `FedProx` (Li et al., arXiv:1812.06127), configure: clients receive μ and add μ (w − x^t) to
  every local gradient (as Flower's FedProx sends `proximal-mu`).
- `GHBM` (Zaccone et al., arXiv:2311.18578), configure: the server keeps x^{t−τ} … x^t and, once
  τ+1 models are queued, sends m = (x^{t−τ} − x^t)/τ and β; clients add β/(ηJ)·m to every
  gradient, so J plain-SGD steps of lr η move the weights by exactly −β·m. τ = 1 is heavy-ball.
- `Fed3R` (Fanì et al., arXiv:2406.01116), initialize: the ridge head W̃ = (Σ_k A_k + λI)⁻¹ Σ_k b_k
  from every client's statistics of the pretrained network (`federated.fed3r`).

Variants compose (FedProx + GHBM + FedAvgM + Fed3R): `build_strategy` stacks the configured
ones over FedAvg, each calling `super()`. The client update is the one client program; it
follows what the task carries (μ, m, β), as a Flower ClientApp reads its message, and the
keys are those of the Flower messages. Aggregation never leaves the engine
(`merge_state_dicts`, on the configured device).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import TensorError
from ..models.classifier import load_trainable, set_head
from ..models.ridge import RidgeHead, RidgeStatistics
from ..runtime.aggregation import merge_models
from ..runtime.local_training import HeavyBall, Proximal, local_batch_indices, local_sgd, trainable_parameters
from .config import FederatedConfig
from .fed3r import server_solve

State = dict[str, Tensor]
PROX_MU = "proximal-mu"  # task config: FedProx μ
GHBM_BETA = "ghbm-beta"  # task config: GHBM β
GHBM_MOMENTUM = "ghbm-momentum"  # task arrays: GHBM m
ENGINE_NAN_HINT = " (pass --nan-policy warn to merge anyway)"  # the merge CLI's option, not the runners'


@dataclass
class RoundTask:
    """What the server sends in round `rnd` (0-based) to each of `clients`."""

    rnd: int
    clients: list[int]
    global_state: State  # trainable parameters x^t (CPU)
    config: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, State] = field(default_factory=dict)

    def for_clients(self, clients: list[int]) -> RoundTask:
        return replace(self, clients=clients)


@dataclass
class ClientUpdate:
    client: int
    num_examples: int
    state: State  # trained trainable parameters
    steps: int
    loss: float  # mean training loss over the local steps


def client_seed(seed: int, rnd: int, client: int) -> int:
    """Seed of client k's batch order and dropout in round t: the same in any process."""
    return (seed * 1_000_003 + rnd * 10_007 + client) % (2**63)


def pseudo_gradient(x: Mapping[str, Tensor], merged: Mapping[str, Tensor]) -> State:
    """Δ = x^t − merged (positive in the descent direction)."""
    return {k: x[k] - merged[k] for k in x}


class FedAvg:
    """McMahan et al. (arXiv:1602.05629) with the engine as aggregator: uniform sampling of
    `clients_per_round` clients without replacement, local SGD, merge with base x^t and
    per-client weight n_k (`linear` = FedAvg), x^{t+1} = x^t − η_s (x^t − merged)."""

    @staticmethod
    def applies(cfg: FederatedConfig) -> bool:
        return True

    def __init__(self, cfg: FederatedConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.sampler = torch.Generator().manual_seed(cfg.seed)

    def initialize(self, model: nn.Module, statistics: Callable[[], Iterable[RidgeStatistics]], cache: Path | None = None) -> None:
        """Before round 1; FedAvg starts from the checkpoint as it is."""

    def configure(self, rnd: int, x: State) -> RoundTask:
        k, n = self.cfg.partition.num_clients, self.cfg.clients_per_round
        return RoundTask(rnd, sorted(torch.randperm(k, generator=self.sampler)[:n].tolist()), x)

    def client_update(self, model: nn.Module, rows: Sequence[dict], tokenizer, task: RoundTask, client: int,
                      device: torch.device | str) -> ClientUpdate:  # fmt: skip
        """Client k's local training from x^t (the model already on `device`)."""
        c = self.cfg.client
        load_trainable(model, task.global_state)
        seed = client_seed(self.cfg.seed, task.rnd, client)
        batches = local_batch_indices(len(rows), c.batch_size, c.local_epochs, c.local_steps, seed)
        corrections: list = []
        if task.config.get(PROX_MU):
            anchor = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
            corrections.append(Proximal(task.config[PROX_MU], anchor))
        if GHBM_MOMENTUM in task.arrays and task.config.get(GHBM_BETA):
            m = {k: v.to(device) for k, v in task.arrays[GHBM_MOMENTUM].items()}
            corrections.append(HeavyBall(m, task.config[GHBM_BETA] / (c.lr * len(batches))))
        res = local_sgd(model, rows, tokenizer, batches, lr=c.lr, weight_decay=c.weight_decay,
                        corrections=corrections, seed=seed, device=device)  # fmt: skip
        return ClientUpdate(client, len(rows), res.state, res.steps, res.loss)

    def aggregate(self, x: State, updates: Sequence[ClientUpdate], rnd: int) -> State:
        """The configured merge method over the clients' models, base x^t, weight n_k or 1."""
        agg = self.cfg.aggregate
        weights = [float(u.num_examples) if agg.weighting == "examples" else 1.0 for u in updates]
        try:
            return merge_models(agg, [u.state for u in updates], x, weights, seed=self.cfg.seed + rnd, device=self.device)
        except TensorError as exc:
            reason = str(exc).removesuffix(ENGINE_NAN_HINT)
            raise TensorError(
                f"round {rnd + 1}: aggregating clients {[u.client for u in updates]} failed: {reason}; a client "
                f"diverged: lower client.lr (or server.lr), or start again from an earlier round with --no-resume"
            ) from None

    def server_step(self, x: State, merged: State) -> State:
        delta = pseudo_gradient(x, merged)
        return {k: x[k] - self.cfg.server.lr * delta[k] for k in x}

    def state_dict(self) -> dict[str, State]:
        """Everything a resumed run needs, as named groups of tensors."""
        return {"sampler": {"rng": self.sampler.get_state()}}

    def load_state_dict(self, groups: Mapping[str, State]) -> None:
        self.sampler.set_state(groups["sampler"]["rng"])


class FedAvgM(FedAvg):
    """server_step: v ← μ v + Δ, x^{t+1} = x^t − η_s v (torch.optim.SGD's momentum)."""

    @staticmethod
    def applies(cfg: FederatedConfig) -> bool:
        return cfg.server.momentum > 0

    def __init__(self, cfg: FederatedConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, device)
        self.buffer: State = {}

    def server_step(self, x: State, merged: State) -> State:
        mu = self.cfg.server.momentum
        for k, d in pseudo_gradient(x, merged).items():
            self.buffer[k] = self.buffer[k].mul(mu).add_(d) if k in self.buffer else d.clone()
        return {k: x[k] - self.cfg.server.lr * self.buffer[k] for k in x}

    def state_dict(self) -> dict[str, State]:
        return {**super().state_dict(), "server": dict(self.buffer)}

    def load_state_dict(self, groups: Mapping[str, State]) -> None:
        super().load_state_dict(groups)
        self.buffer = {k: v.clone() for k, v in groups.get("server", {}).items()}


class FedProx(FedAvg):
    """configure: the clients receive μ (`proximal-mu`)."""

    @staticmethod
    def applies(cfg: FederatedConfig) -> bool:
        return cfg.client.prox_mu > 0

    def configure(self, rnd: int, x: State) -> RoundTask:
        task = super().configure(rnd, x)
        task.config[PROX_MU] = self.cfg.client.prox_mu
        return task


class GHBM(FedAvg):
    """configure: queue x^t (the last τ+1 global models; they are never modified in place) and
    send m = (x^{t−τ} − x^t)/τ with β once the queue is full (before that: FedAvg's rounds)."""

    @staticmethod
    def applies(cfg: FederatedConfig) -> bool:
        return cfg.ghbm is not None

    def __init__(self, cfg: FederatedConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, device)
        self.queue: deque[State] = deque(maxlen=cfg.ghbm.tau + 1)

    def configure(self, rnd: int, x: State) -> RoundTask:
        task = super().configure(rnd, x)
        self.queue.append(x)
        tau = self.cfg.ghbm.tau
        if len(self.queue) == tau + 1:
            oldest = self.queue[0]
            task.arrays[GHBM_MOMENTUM] = {k: (oldest[k] - x[k]) / tau for k in x}
            task.config[GHBM_BETA] = self.cfg.ghbm.beta
        return task

    def state_dict(self) -> dict[str, State]:
        return {**super().state_dict(), **{f"ghbm.{i}": q for i, q in enumerate(self.queue)}}

    def load_state_dict(self, groups: Mapping[str, State]) -> None:
        super().load_state_dict(groups)
        self.queue.clear()
        self.queue.extend(dict(groups[f"ghbm.{i}"]) for i in range(sum(1 for g in groups if g.startswith("ghbm."))))


class Fed3R(FedAvg):
    """initialize: the ridge head from every client's statistics (cached in `cache`), copied
    into the model's head, which `fed3r.freeze_head` keeps fixed."""

    @staticmethod
    def applies(cfg: FederatedConfig) -> bool:
        return cfg.fed3r is not None

    def initialize(self, model: nn.Module, statistics: Callable[[], Iterable[RidgeStatistics]], cache: Path | None = None) -> None:
        f = self.cfg.fed3r
        if cache is not None and cache.is_file():
            head = RidgeHead.load(cache)
        else:
            head = server_solve(statistics(), f.lam, f.normalize)
            head.metadata["temperature"] = str(f.temperature)
            if cache is not None:
                head.save(cache)
        set_head(model, head)
        if f.freeze_head:
            model.head.requires_grad_(False)


VARIANTS = (GHBM, FedProx, FedAvgM, Fed3R)


def build_strategy(cfg: FederatedConfig, device: torch.device | str = "cpu") -> FedAvg:
    """FedAvg with every configured variant stacked on it (a class named e.g. `GHBM+FedAvgM`)."""
    layers = [v for v in VARIANTS if v.applies(cfg)]
    cls = type("+".join(v.__name__ for v in layers), (*layers, FedAvg), {}) if layers else FedAvg
    return cls(cfg, device)
