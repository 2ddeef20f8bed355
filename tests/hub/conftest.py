"""Fixtures for hub tests: a fake Hub on 127.0.0.1 and tiny model folders (helpers in fake_hub.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from fake_hub import FakeHub

ALICE, BOB = "tok-alice-0123456789", "tok-bob-0123456789"


@pytest.fixture
def hub():
    with FakeHub({ALICE: "alice", BOB: "bob"}, orgs={"alice": ["alice-lab"]}) as server:
        yield server


def make_model(folder: Path, n_shards: int = 1) -> Path:
    """A tiny model folder: config.json and `n_shards` small safetensors files (all regular uploads)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 4}))
    names = ["model.safetensors"] if n_shards == 1 else [
        f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)
    ]
    for i, name in enumerate(names):
        save_file({"w": np.full((2, 2), i, dtype=np.float32)}, str(folder / name))
    return folder


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return make_model(tmp_path / "merged")
