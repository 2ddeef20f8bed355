"""Helpers for federated/continual tests: the finetune tests' tiny BERT and synthetic task,
with 4 classes and shorter texts."""

from __future__ import annotations

from pathlib import Path

from finetune_fixtures import make_bert  # noqa: F401  (re-exported for the federated/continual tests)
from finetune_fixtures import write_task as _write_task

NUM_LABELS = 4


def write_task(folder: Path, sizes=(80, 24, 24), name: str = "toy") -> Path:
    """CSV splits + a task file with 4 classes; returns the task file path."""
    return _write_task(folder, sizes, name, num_labels=NUM_LABELS, noise_words=(2, 6))
