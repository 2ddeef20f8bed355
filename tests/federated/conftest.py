"""Session fixtures for federated tests (helpers live in fed_fixtures.py)."""

from pathlib import Path

import pytest
import torch

from fed_fixtures import make_bert, write_task

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("fedbert"))


@pytest.fixture(scope="session")
def toy_task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("fedtoy"))


@pytest.fixture
def fed_config(tiny_bert, toy_task, tmp_path):
    """A dict config for a small run; tests override what they need."""

    def make(**over):
        cfg = {
            "model": str(tiny_bert),
            "data": {"task_file": str(toy_task), "task": "toy", "max_length": 16},
            "partition": {"scheme": "iid", "num_clients": 4},
            "rounds": 2,
            "clients_per_round": 2,
            "client": {"lr": 0.1, "batch_size": 8, "local_steps": 2},
            "eval_batch_size": 32,
            "output": {"dir": str(tmp_path / "out"), "save_model": False},
        }
        for key, value in over.items():
            node = cfg
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return cfg

    return make
