"""MergeStrategy's aggregation equals the native runner's engine aggregation + server step."""

import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402

from mergekit_het.federated.client import ClientUpdate  # noqa: E402
from mergekit_het.federated.config import load_federated_config  # noqa: E402
from mergekit_het.federated.flower import MergeStrategy  # noqa: E402
from mergekit_het.federated.server import GHBMState, ServerOptimizer, aggregate, pseudo_gradient  # noqa: E402


def _reply(state, n, k):
    content = RecordDict({"arrays": ArrayRecord(torch_state_dict=state),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5})})  # fmt: skip
    return Message(content=content, dst_node_id=1, message_type="train")


@pytest.mark.parametrize("method,params", [("linear", {}), ("ties", {"density": 0.5})])
def test_merge_strategy_aggregate_equals_engine_and_server_step(fed_config, method, params, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # Messages need a run outside a Flower process
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    cfg = load_federated_config(fed_config(**{
        "aggregate": {"method": method, "model_parameters": params}, "server.momentum": 0.9, "server.lr": 0.5,
        "ghbm": {"beta": 0.9, "tau": 1}}))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x0 = {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)}
    rounds = [[({k: v + torch.randn(v.shape, generator=g) for k, v in x0.items()}, n) for n in (3, 7)] for _ in range(2)]

    strategy = MergeStrategy(cfg)
    server, ghbm, x = ServerOptimizer(0.5, 0.9), GHBMState(1), x0
    arrays = ArrayRecord(torch_state_dict=x0)
    for rnd, clients in enumerate(rounds, start=1):
        strategy.current = arrays.to_torch_state_dict()  # what configure_train records
        strategy.ghbm.before_round(strategy.current)
        arrays, metrics = strategy.aggregate_train(rnd, [_reply(s, n, k) for k, (s, n) in enumerate(clients)])
        strategy.ghbm.after_round(arrays.to_torch_state_dict())

        ghbm.before_round(x)
        upd = [ClientUpdate(k, n, s, 1, 0.5) for k, (s, n) in enumerate(clients)]
        x = server.step(x, pseudo_gradient(x, aggregate(x, upd, cfg.aggregate, seed=cfg.seed + rnd)))
        ghbm.after_round(x)
        got = arrays.to_torch_state_dict()
        assert all(torch.allclose(got[k], x[k], atol=1e-6) for k in x)
        assert metrics["train-loss"] == pytest.approx(0.5)
    assert all(torch.allclose(strategy.ghbm.momentum[k], ghbm.momentum[k], atol=1e-6) for k in x)


def _kill_superlink(port: str) -> None:
    """Stop the local SuperLink that `flwr run` started for this test (matched by its port)."""
    import os
    import signal
    from pathlib import Path

    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmd and port in cmd:
            os.kill(int(proc.name), signal.SIGTERM)


@pytest.mark.slow
def test_flower_simulation_runs_merge_strategy_and_writes_history(tiny_bert, toy_task, tmp_path):
    """`flwr run` on a local SuperLink (simulation, loopback only): 4 SuperNodes, 2 rounds."""
    import json
    import os
    import subprocess
    from pathlib import Path

    import yaml

    pytest.importorskip("ray")
    cfg = {"model": str(tiny_bert), "data": {"task_file": str(toy_task), "task": "toy", "max_length": 16},
           "partition": {"scheme": "iid", "num_clients": 4}, "rounds": 2, "clients_per_round": 2,
           "client": {"lr": 0.1, "batch_size": 8, "local_steps": 2}, "ghbm": {"beta": 0.9, "tau": 1}, "threads": 1,
           "output": {"dir": str(tmp_path / "out"), "save_model": False}}  # fmt: skip
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(cfg))
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
                                      "options.num-supernodes = 4\n")  # fmt: skip
    port = "39291"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": port,
           "FLWR_LOCAL_CONTROL_API_PORT": "39293"}  # fmt: skip
    app = Path(__file__).resolve().parents[2] / "finetune" / "federated" / "flower_app"
    try:
        proc = subprocess.run(["flwr", "run", str(app), "local", "--stream", "--run-config",
                               f'config="{tmp_path / "fed.yaml"}"'], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    finally:
        _kill_superlink(port)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    history = json.loads((tmp_path / "out" / "flower_history.json").read_text())
    assert [h["round"] for h in history] == [0, 1, 2]
