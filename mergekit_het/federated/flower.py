"""Flower (`flwr` 1.42, Message API) integration: the same federated config and the same
strategy objects (`federated.strategy`) on Flower's simulation engine or on a real
multi-machine deployment. Needs `pip install "mergekit-het[flower]"`; nothing else in
mergekit-het imports this module.

- `FlowerStrategy` is a Flower `Strategy` wrapping the native one: `configure_train` asks it
  for the round's `RoundTask` (the same seeded client sample as the native runner) and sends
  each sampled client's node the global model (`arrays`), the task's config and its arrays
  (e.g. `ghbm-momentum`); `aggregate_train` hands the replies to the strategy's `aggregate`
  (the merge engine) and `server_step`. A failed client reply raises, so the run fails.
- Clients are data partitions: before round 1 the server asks every node for its
  `partition-id` (node config, set by the simulation engine or by `flower-supernode
  --node-config "partition-id=3"`), so client k's messages go to the node holding partition k.
- Fed3R: the server asks every node for its statistics (A_k, b_k) and the strategy's
  `initialize` solves the head, which then travels with every training message.
- `client_app` / `server_app` read the mergekit-het YAML named by the run config key `config`
  (plus optional `overrides`, space-separated `key=value`).

With the same config, a Flower run gives the native runner's global model (the same client
sample, seeds and aggregation; `tests/federated/test_flower.py`), and a deployment (SuperLink
and SuperNodes as separate processes) the simulation's (`tests/federated/test_flower_deployment.py`).
Run through `mergekit-het federated CONFIG --flower federated/flower_app [--flower-deployment]`
(`flower_cli`, `flower_deploy`; docs/federated.md gives the plain `flwr run` commands).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save_file
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from ..errors import ConfigError, MergekitHetError
from ..models.classifier import load_trainable, set_head, trainable_state
from ..models.ridge import RidgeHead, RidgeStatistics
from .config import FederatedConfig, load_federated_config
from .fed3r import client_statistics
from .runner import FederatedData, build_model, evaluate_all, load_data
from .strategy import ClientUpdate, FedAvg, RoundTask, build_strategy

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
HEAD = "fed3r-head"  # the Fed3R head, sent with every training message
PARTITION = "partition-id"
ROUND, CLIENT = "server-round", "client-id"
FED3R_ACTION = "fed3r"  # query.fed3r: a node's Fed3R statistics
MODEL_FILE = "flower_model.safetensors"  # the global model's trainable tensors, written by the server
NODE_WAIT_SECONDS = 600.0  # how long the server waits for every partition's node to connect


class FlowerError(MergekitHetError):
    """A Flower round cannot go on (a client failed, a partition has no node)."""


class FlowerStrategy(Strategy):
    """Flower's two training hooks through a mergekit-het strategy (no federated evaluation:
    the server evaluates the global model centrally, as the native runner does)."""

    def __init__(self, strategy: FedAvg, head: RidgeHead | None = None) -> None:
        self.strategy = strategy
        self.head = head
        self.nodes: dict[int, int] | None = None  # partition id -> node id
        self.pending: tuple[dict[str, torch.Tensor], RoundTask] | None = None

    def summary(self) -> None:
        """Nothing to log beyond Flower's own lines."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.nodes is None:
            self.nodes = node_partitions(grid, self.strategy.cfg.partition.num_clients)
        x = arrays.to_torch_state_dict()
        task = self.strategy.configure(server_round - 1, x)
        self.pending = (x, task)
        extra = {key: ArrayRecord(torch_state_dict=state) for key, state in task.arrays.items()}
        if self.head is not None:
            extra[HEAD] = ArrayRecord(torch_state_dict={"weight": self.head.weight, "bias": self.head.bias})
        messages = []
        for k in task.clients:
            cfg = ConfigRecord({**config, **task.config, ROUND: server_round, CLIENT: k})
            content = RecordDict({ARRAYS: arrays, CONFIG: cfg, **extra})
            messages.append(Message(content=content, dst_node_id=self.nodes[k], message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = [msg for msg in replies if msg.has_error()]
        if failed:
            raise FlowerError(f"round {server_round}: {len(failed)} client(s) failed; first: {failed[0].error.reason}")
        x, task = self.pending
        updates = sorted((update_of(msg.content) for msg in replies), key=lambda u: u.client)
        if [u.client for u in updates] != task.clients:
            raise FlowerError(f"round {server_round}: replies from clients {[u.client for u in updates]}, "
                              f"expected {task.clients}")  # fmt: skip
        new = self.strategy.server_step(x, self.strategy.aggregate(x, updates, task.rnd))
        metrics = MetricRecord({"train-loss": sum(u.loss for u in updates) / len(updates),
                                "num-examples": sum(u.num_examples for u in updates)})  # fmt: skip
        return ArrayRecord(torch_state_dict=new), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


def node_partitions(grid: Grid, num_clients: int) -> dict[int, int]:
    """{partition id: node id} of every node (waits until `num_clients` nodes are connected)."""
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while len(nodes := sorted(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise FlowerError(f"{len(nodes)} node(s) connected after {NODE_WAIT_SECONDS:.0f} s; need {num_clients}")
        time.sleep(1.0)
    query = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    out: dict[int, int] = {}
    for reply in _answers(grid, query, "partition query"):
        k = int(reply.content[CONFIG][PARTITION])
        if k in out:
            raise FlowerError(f"two nodes hold partition-id {k}")
        out[k] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(out))
    if missing:
        raise FlowerError(f"no node holds partition-id(s) {missing} (of 0..{num_clients - 1})")
    return out


def _answers(grid: Grid, messages: list[Message], what: str) -> list[Message]:
    replies = list(grid.send_and_receive(messages))
    failed = [msg for msg in replies if msg.has_error()]
    if failed or len(replies) != len(messages):
        reason = failed[0].error.reason if failed else f"{len(replies)} of {len(messages)} replies"
        raise FlowerError(f"{what} failed: {reason}")
    return replies


def update_of(content: RecordDict) -> ClientUpdate:
    m = content[METRICS]
    return ClientUpdate(int(m[CLIENT]), int(m["num-examples"]), content[ARRAYS].to_torch_state_dict(),
                        int(m["steps"]), float(m["train-loss"]))  # fmt: skip


def task_of(content: RecordDict) -> tuple[RoundTask, int]:
    """The RoundTask a training message carries, and the client it is for."""
    cfg = content[CONFIG]
    arrays = {key: rec.to_torch_state_dict() for key, rec in content.array_records.items() if key not in (ARRAYS, HEAD)}
    config = {key: float(v) for key, v in cfg.items() if key not in (ROUND, CLIENT)}
    k = int(cfg[CLIENT])
    return RoundTask(int(cfg[ROUND]) - 1, [k], content[ARRAYS].to_torch_state_dict(), config, arrays), k


def reply_to_train(msg: Message, strategy: FedAvg, model: torch.nn.Module, data: FederatedData) -> Message:
    """The client program on a node: the strategy's client update of the client the message names."""
    task, k = task_of(msg.content)
    if HEAD in msg.content:
        head = msg.content[HEAD].to_torch_state_dict()
        set_head(model, RidgeHead(head["weight"], head["bias"]))
        model.head.requires_grad_(not strategy.cfg.fed3r.freeze_head)
    upd = strategy.client_update(model, data.client_rows(k), data.tokenizer, task, k, next(model.parameters()).device)
    metrics = MetricRecord({CLIENT: k, "num-examples": upd.num_examples, "train-loss": upd.loss, "steps": upd.steps})
    return Message(RecordDict({ARRAYS: ArrayRecord(torch_state_dict=upd.state), METRICS: metrics}), reply_to=msg)


def _config_of(context: Context) -> FederatedConfig:
    run = context.run_config
    if not run.get("config"):
        raise ConfigError("Flower run config has no 'config' key naming the mergekit-het federated YAML")
    return _load(str(run["config"]), str(run.get("overrides", "")))


@lru_cache(maxsize=2)
def _load(path: str, overrides: str) -> FederatedConfig:
    return load_federated_config(path, overrides.split() if overrides else None)


@lru_cache(maxsize=2)
def _setup(cfg_json: str) -> tuple[FederatedConfig, FederatedData, torch.nn.Module, FedAvg]:
    """Data, partition, model and strategy of this process (built once per process)."""
    cfg = FederatedConfig.model_validate_json(cfg_json)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)
    return cfg, data, build_model(cfg, data), build_strategy(cfg)


def _partition(context: Context, cfg: FederatedConfig) -> int:
    k = int(context.node_config[PARTITION])
    if not 0 <= k < cfg.partition.num_clients:
        raise ConfigError(f"node partition-id {k} is outside 0..{cfg.partition.num_clients - 1}")
    return k


client_app = ClientApp()


@client_app.query()
def client_partition(msg: Message, context: Context) -> Message:
    """This node's partition id."""
    cfg = _config_of(context)
    return Message(RecordDict({CONFIG: ConfigRecord({PARTITION: _partition(context, cfg)})}), reply_to=msg)


@client_app.query(FED3R_ACTION)
def client_fed3r(msg: Message, context: Context) -> Message:
    """This node's Fed3R statistics A_k, b_k on the pretrained network."""
    cfg, data, model, _ = _setup(_config_of(context).model_dump_json())
    stats = client_statistics(model, data.client_rows(_partition(context, cfg)), data.tokenizer, data.num_labels,
                              cfg.eval_batch_size)  # fmt: skip
    return Message(RecordDict({ARRAYS: ArrayRecord(torch_state_dict=stats.state_dict())}), reply_to=msg)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    cfg, data, model, strategy = _setup(_config_of(context).model_dump_json())
    return reply_to_train(msg, strategy, model, data)


def fed3r_statistics(grid: Grid, nodes: dict[int, int]) -> list[RidgeStatistics]:
    """Every node's Fed3R statistics, in partition order."""
    query = [Message(RecordDict(), dst_node_id=nodes[k], message_type=f"{MessageType.QUERY}.{FED3R_ACTION}")
             for k in sorted(nodes)]  # fmt: skip
    by_node = {r.metadata.src_node_id: r for r in _answers(grid, query, "Fed3R statistics")}
    return [RidgeStatistics.from_state_dict(by_node[nodes[k]].content[ARRAYS].to_torch_state_dict()) for k in sorted(nodes)]


def run_flower(grid: Grid, cfg: FederatedConfig, data: FederatedData, model: torch.nn.Module, strategy: FedAvg) -> list[dict]:
    """The server's run: initialize (Fed3R through the nodes), `cfg.rounds` rounds of
    `FlowerStrategy` through Flower's `Strategy.start`, central evaluation after each; the
    history (as the native runner's entries: round, accuracy, loss, ...)."""
    flower = FlowerStrategy(strategy)
    if cfg.fed3r is not None:
        flower.nodes = node_partitions(grid, cfg.partition.num_clients)
        strategy.initialize(model, lambda: fed3r_statistics(grid, flower.nodes))
        flower.head = RidgeHead(model.head.weight.detach().clone(), model.head.bias.detach().clone())
    history: list[dict] = []

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        load_trainable(model, arrays.to_torch_state_dict())
        res = evaluate_all(model, data, cfg)
        history.append({"round": rnd, **res})
        return MetricRecord(res)

    result = flower.start(grid, ArrayRecord(torch_state_dict=trainable_state(model)), num_rounds=cfg.rounds,
                          evaluate_fn=evaluate)  # fmt: skip
    if result.arrays is not None:
        load_trainable(model, result.arrays.to_torch_state_dict())
    return history


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """`run_flower`, then the history as `<output.dir>/flower_history.json` and the global
    model's trainable tensors as `<output.dir>/flower_model.safetensors`."""
    cfg, data, model, strategy = _setup(_config_of(context).model_dump_json())
    history = run_flower(grid, cfg, data, model, strategy)
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flower_history.json").write_text(json.dumps(history, indent=1))
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable_state(model).items()}, out / MODEL_FILE)
