"""The Flower path (FlowerStrategy's configure_train / aggregate_train through the shared
strategy objects) against the native round: the same global model, bit for bit on CPU."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

from mergekit_het.federated import load_federated_config, run_federated  # noqa: E402
from mergekit_het.federated import flower as fl  # noqa: E402
from mergekit_het.federated.fed3r import client_statistics  # noqa: E402
from mergekit_het.federated.flower_cli import OFFLINE, superlink_pids  # noqa: E402
from mergekit_het.federated.runner import build_model, load_data  # noqa: E402
from mergekit_het.federated.strategy import build_strategy  # noqa: E402
from mergekit_het.models.classifier import trainable_state  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "federated" / "flower_app"


@pytest.fixture(autouse=True)
def _outside_flower(monkeypatch):
    """Messages need a run and task identity, which a Flower process would provide."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class LoopbackGrid(Grid):
    """Nodes in this process: node 100 + 7k (listed in shuffled order) holds partition k and
    runs the ClientApp's programs on its own model and strategy, as a SuperNode would."""

    def __init__(self, cfg, fail_round: int | None = None) -> None:
        self.cfg, self.fail_round = cfg, fail_round
        self.data = load_data(cfg)
        self.model, self.strategy = build_model(cfg, self.data), build_strategy(cfg)
        n = cfg.partition.num_clients
        self.partition_of = {100 + 7 * k: k for k in reversed(range(n))}
        self.sent: list[list[int]] = []  # partitions trained per round

    def get_node_ids(self):
        return list(self.partition_of)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.sent.append([self.partition_of[m.metadata.dst_node_id] for m in messages])
        return [self._answer(m) for m in messages]

    def _answer(self, msg):
        k = self.partition_of[msg.metadata.dst_node_id]
        kind = msg.metadata.message_type
        if kind == "query":
            return Message(RecordDict({fl.CONFIG: ConfigRecord({fl.PARTITION: k})}), reply_to=msg)
        if kind == "query.fed3r":
            stats = client_statistics(self.model, self.data.client_rows(k), self.data.tokenizer, self.data.num_labels,
                                     self.cfg.eval_batch_size)  # fmt: skip
            return Message(RecordDict({fl.ARRAYS: ArrayRecord(torch_state_dict=stats.state_dict())}), reply_to=msg)
        if self.fail_round == int(msg.content[fl.CONFIG][fl.ROUND]):
            return Message(Error(code=1, reason="client ran out of memory"), reply_to=msg)
        return fl.reply_to_train(msg, self.strategy, self.model, self.data)

    def set_run(self, run_id):
        raise NotImplementedError

    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError


def _flower(cfg, grid):
    data = load_data(cfg)
    model = build_model(cfg, data)
    history = fl.run_flower(grid, cfg, data, model, build_strategy(cfg))
    return trainable_state(model), history


@pytest.mark.parametrize("over", [
    {"ghbm": {"beta": 0.9, "tau": 1}, "server.momentum": 0.5, "client.prox_mu": 0.1,
     "aggregate": {"method": "ties", "model_parameters": {"density": 0.5}}},
    {"fed3r": {"init": True, "freeze_head": True}, "rounds": 2},
])  # fmt: skip
def test_flower_rounds_equal_native_rounds(fed_config, over):
    """Same clients sampled per round, same global model (GHBM + FedAvgM + FedProx + TIES;
    Fed3R's head from the nodes' statistics, kept frozen), same evaluations."""
    cfg = load_federated_config(fed_config(**{"rounds": 3, "partition": {"scheme": "dirichlet", "num_clients": 4,
                                                                           "alpha": 0.5}, **over}))  # fmt: skip
    native = run_federated(cfg, progress=False)
    grid = LoopbackGrid(cfg)
    state, history = _flower(cfg, grid)
    assert grid.sent == [h["clients"] for h in native.history[1:]]
    assert set(state) == set(native.global_state)
    assert all(torch.equal(state[k], native.global_state[k]) for k in state)
    assert [h["accuracy"] for h in history] == [h["accuracy"] for h in native.history]
    init = trainable_state(build_model(cfg, load_data(cfg)))
    assert max(float((state[k] - init[k]).abs().max()) for k in init if k in state) > 1e-3  # it trained


def test_flower_failed_client_stops_the_run(fed_config):
    cfg = load_federated_config(fed_config())
    with pytest.raises(fl.FlowerError, match="round 2: 2 client.*client ran out of memory"):
        _flower(cfg, LoopbackGrid(cfg, fail_round=2))


def test_flower_missing_partition_is_named(fed_config):
    cfg = load_federated_config(fed_config())
    grid = LoopbackGrid(cfg)
    grid.partition_of = {100: 0, 107: 1, 114: 2, 121: 0}
    with pytest.raises(fl.FlowerError, match="two nodes hold partition-id 0"):
        _flower(cfg, grid)


def _kill_superlink(port: str) -> None:
    """Stop the local SuperLink that `flwr run` started for this test (matched by its port)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmd and port in cmd:
            os.kill(int(proc.name), signal.SIGTERM)


def _flower_env(tmp_path, port: str) -> dict:
    """FLWR_HOME of this test (Flower writes its default config there: a `local` SuperLink
    started by the CLI itself), free ports for that SuperLink, no per-run `uv sync` (offline)."""
    home = tmp_path / "flwr"
    home.mkdir(exist_ok=True)
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": port,
            "FLWR_LOCAL_CONTROL_API_PORT": str(int(port) + 2), OFFLINE: "1"}  # fmt: skip


@pytest.mark.slow
def test_flower_simulation_runs_and_failures_exit_nonzero(tiny_bert, toy_task, tmp_path):
    """`flwr run` on a local SuperLink (simulation, loopback only, flwr 1.42's keys): 4
    SuperNodes, 2 rounds; then `mergekit-het federated --flower` on a config whose ServerApp
    fails (a missing task file) exits 2 naming the failed run, and leaves no SuperLink running."""
    pytest.importorskip("ray")
    cfg = {"model": str(tiny_bert), "data": {"task_file": str(toy_task), "task": "toy", "max_length": 16},
           "partition": {"scheme": "iid", "num_clients": 4}, "rounds": 2, "clients_per_round": 2,
           "client": {"lr": 0.1, "batch_size": 8, "local_steps": 2}, "ghbm": {"beta": 0.9, "tau": 1}, "threads": 1,
           "output": {"dir": str(tmp_path / "out"), "save_model": False}}  # fmt: skip
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(cfg))
    try:
        proc = subprocess.run(["flwr", "run", str(APP), "local", "--stream", "--run-config", f'config="{tmp_path / "fed.yaml"}"',
                               "--federation-config", "num-supernodes=4"],
                              env=_flower_env(tmp_path, "39291"), capture_output=True, text=True, timeout=600)  # fmt: skip
    finally:
        _kill_superlink("39291")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "deprecated" not in proc.stdout + proc.stderr
    history = json.loads((tmp_path / "out" / "flower_history.json").read_text())
    assert [h["round"] for h in history] == [0, 1, 2]

    bad = {**cfg, "data": {**cfg["data"], "task_file": str(tmp_path / "missing.yaml")}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    try:
        failed = subprocess.run(["mergekit-het", "federated", str(tmp_path / "bad.yaml"), "--flower", str(APP)],
                                env=_flower_env(tmp_path, "39391"), capture_output=True, text=True, timeout=600)  # fmt: skip
        left = [pid for pid in superlink_pids() if "39391" in Path(f"/proc/{pid}/cmdline").read_text()]
    finally:
        _kill_superlink("39391")
    assert failed.returncode == 2, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert "ended finished:failed" in failed.stderr
    assert left == []  # the command stopped the local SuperLink that flwr started for it
