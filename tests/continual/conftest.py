"""Fixtures for continual tests; the tiny model and synthetic 4-class task come from tests/federated."""

from pathlib import Path

import pytest
import torch

from fed_fixtures import make_bert, write_task  # tests/conftest.py puts the fixture folders on sys.path

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cl_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("clbert"))


@pytest.fixture(scope="session")
def cl_task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("cltoy"), sizes=(80, 40, 40))


@pytest.fixture
def cl_config(cl_bert, cl_task, tmp_path):
    """A continual config dict on the toy task (4 classes, 12 train / 6 eval each)."""

    def make(**over):
        cfg = {
            "model": str(cl_bert),
            "data": {"task_file": str(cl_task), "tasks": ["toy"], "max_length": 16, "train_per_class": 12, "eval_per_class": 6},
            "stream": {"by": "classes", "experience_sizes": [[2, 2], [1, 3]], "chunk_sizes": [4, 5], "schedules": 2},
            "strategies": [{"name": "finetune"}],
            "train": {"lr": 0.1},
            "eval_batch_size": 64,
            "output": {"dir": str(tmp_path / "out")},
        }
        cfg.update(over)
        return cfg

    return make
