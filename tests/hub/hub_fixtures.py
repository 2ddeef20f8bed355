"""Helpers for hub tests: tokens of the fake Hub's users and tiny on-disk model folders."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ALICE, BOB = "tok-alice-0123456789", "tok-bob-0123456789"


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
