"""Flower (`flwr` >= 1.42, Message API) integration: the same federated config on Flower's
simulation engine or on a real multi-machine deployment. Needs `pip install flwr`; the rest of
mergekit-het never imports this module.

- `MergeStrategy` is Flower's `FedAvg` (node sampling, messages, `Strategy.start`'s loop)
  with one step replaced: `aggregate_train` merges the clients' models through the engine
  (`server.aggregate`, weights = the replies' `num-examples`), then applies the server
  optimizer (lr, momentum) and GHBM's momentum; GHBM's m travels to the sampled clients as a
  second ArrayRecord `ghbm-momentum`.
- `client_app` / `server_app` read the mergekit-het YAML named by the run config key `config`
  (plus optional `overrides`, space-separated `key=value`). A node's client id is its
  `partition-id` node config (set by the simulation engine, or `flower-supernode
  --node-config "partition-id=3"` in a deployment).

Simulation (Flower's current entry point, `flwr run` on a local SuperLink):
```
flwr run finetune/federated/flower_app local --run-config 'config="/abs/path/minilm_austen.yaml"'
```
with `[superlink.local] address = ":local:"` and `options.num-supernodes = 20` in
`$FLWR_HOME/config.toml` (see docs/federated.md). Client sampling is Flower's (random per
round), so runs match the native runner in distribution, not bit for bit; Fed3R needs the
native runner.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from ..errors import ConfigError
from .client import ClientUpdate, train_client
from .config import FederatedConfig, load_federated_config
from .model import build_model, load_trainable, trainable_state
from .runner import FederatedData, evaluate_rows, load_data
from .server import GHBMState, ServerOptimizer, aggregate, pseudo_gradient
from .workers import client_seed

MOMENTUM_KEY = "ghbm-momentum"


class MergeStrategy(FedAvg):
    """FedAvg whose aggregation is the mergekit-het engine plus the server optimizer step."""

    def __init__(self, cfg: FederatedConfig, **fedavg_kwargs) -> None:
        kwargs = dict(
            fraction_train=cfg.clients_per_round / cfg.partition.num_clients, fraction_evaluate=0.0,
            min_train_nodes=cfg.clients_per_round, min_available_nodes=cfg.partition.num_clients,
        )  # fmt: skip
        super().__init__(**{**kwargs, **fedavg_kwargs})
        self.cfg = cfg
        self.server = ServerOptimizer(cfg.server.lr, cfg.server.momentum)
        self.ghbm = GHBMState(cfg.ghbm.tau) if cfg.ghbm else None
        self.current: dict[str, torch.Tensor] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.current = arrays.to_torch_state_dict()
        if self.ghbm is not None:
            self.ghbm.before_round(self.current)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.ghbm is not None and self.ghbm.momentum is not None:
            m = ArrayRecord(torch_state_dict=self.ghbm.momentum)
            for msg in messages:
                msg.content[MOMENTUM_KEY] = m
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid or self.current is None:
            return None, None
        contents = [msg.content for msg in valid]
        updates = [_update_of(c, self.arrayrecord_key, self.weighted_by_key) for c in contents]
        merged = aggregate(self.current, updates, self.cfg.aggregate, seed=self.cfg.seed + server_round)
        new = self.server.step(self.current, pseudo_gradient(self.current, merged))
        if self.ghbm is not None:
            self.ghbm.after_round(new)
        return ArrayRecord(torch_state_dict=new), self.train_metrics_aggr_fn(contents, self.weighted_by_key)


def _update_of(content: RecordDict, array_key: str, weight_key: str) -> ClientUpdate:
    metrics = next(iter(content.metric_records.values()))
    return ClientUpdate(-1, int(metrics[weight_key]),
                        content[array_key].to_torch_state_dict(), 0, float(metrics.get("train-loss", 0.0)))  # fmt: skip


def _config_of(context: Context) -> FederatedConfig:
    run = context.run_config
    if "config" not in run:
        raise ConfigError("Flower run config has no 'config' key naming the mergekit-het federated YAML")
    return _load(str(run["config"]), str(run.get("overrides", "")))


@lru_cache(maxsize=2)
def _load(path: str, overrides: str) -> FederatedConfig:
    cfg = load_federated_config(path, overrides.split() if overrides else None)
    if cfg.fed3r is not None:
        raise ConfigError("fed3r is not available through Flower yet; run it with `mergekit-het federated`")
    return cfg


@lru_cache(maxsize=2)
def _setup(cfg_json: str) -> tuple[FederatedConfig, FederatedData, torch.nn.Module]:
    """Data, partition and model of this process (loaded once per process, cached)."""
    cfg = FederatedConfig.model_validate_json(cfg_json)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)
    return cfg, data, build_model(cfg.model, cfg.protocol, data.num_labels, cfg.seed, data.tokenizer.pad_token_id)


client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """Local training of partition `partition-id` from the received global model."""
    cfg, data, model = _setup(_config_of(context).model_dump_json())
    k = int(context.node_config["partition-id"])
    if not 0 <= k < cfg.partition.num_clients:
        raise ConfigError(f"node partition-id {k} is outside 0..{cfg.partition.num_clients - 1}")
    load_trainable(model, msg.content["arrays"].to_torch_state_dict())
    momentum = msg.content[MOMENTUM_KEY].to_torch_state_dict() if MOMENTUM_KEY in msg.content else None
    rnd = int(msg.content["config"]["server-round"])
    upd = train_client(
        model, data.client_rows(k), data.tokenizer, client=k, lr=cfg.client.lr, batch_size=cfg.client.batch_size,
        local_epochs=cfg.client.local_epochs, local_steps=cfg.client.local_steps,
        weight_decay=cfg.client.weight_decay, temperature=cfg.head_temperature, prox_mu=cfg.client.prox_mu,
        ghbm_beta=cfg.ghbm.beta if cfg.ghbm else 0.0, momentum=momentum, seed=client_seed(cfg.seed, rnd, k),
    )  # fmt: skip
    metrics = MetricRecord({"num-examples": upd.num_examples, "train-loss": upd.loss})
    return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=upd.state), "metrics": metrics}), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Initial model → `MergeStrategy.start` for cfg.rounds rounds, centralized evaluation of
    the global model on the eval split after every round; history written as JSON."""
    import json
    from pathlib import Path

    cfg, data, model = _setup(_config_of(context).model_dump_json())
    history: list[dict] = []

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        load_trainable(model, arrays.to_torch_state_dict())
        res = evaluate_rows(model, data.eval, data.tokenizer, cfg.eval_batch_size, cfg.head_temperature)
        history.append({"round": rnd, **res})
        return MetricRecord(res)

    result = MergeStrategy(cfg).start(
        grid, ArrayRecord(torch_state_dict=trainable_state(model)), num_rounds=cfg.rounds, evaluate_fn=evaluate
    )
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flower_history.json").write_text(json.dumps(history, indent=1))
    load_trainable(model, result.arrays.to_torch_state_dict())
