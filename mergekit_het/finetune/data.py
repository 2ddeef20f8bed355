"""Task data for fine-tuning: `datasets` splits and the deterministic sharded train batches
(tokenization, padding and evaluation batches: `runtime.batching`).

Batch order is a pure function of (seed, epoch, step): epoch e visits the train split in the
order `randperm(n, seed + e)`, each global batch of `batch_size * world` examples is dealt to
the processes as `[rank::world]`, and a resumed run simply recomputes where it was. A trailing
partial global batch is dropped, so every process sees the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..data.tasks import TaskSpec, load_split, load_task_file, num_labels_of
from ..errors import ConfigError
from ..runtime.batching import collate
from ..runtime.logs import quiet_third_party
from ..runtime.seeding import generator
from .config import FinetuneConfig


@dataclass
class TaskData:
    task: TaskSpec
    num_labels: int
    splits: dict  # split name -> datasets.Dataset with text, label


def load_task_data(cfg: FinetuneConfig, splits: tuple[str, ...] = ("train", "validation", "test")) -> TaskData:
    """Load the configured task's splits (columns checked by `load_split`), capped as configured.

    The train cap is a seeded random subset; evaluation caps take the first examples."""
    task = load_task_file(cfg.data.task_file, [cfg.data.task])[0]
    out = {}
    for split in splits:
        with quiet_third_party():
            ds = load_split(task, split)
        cap = cfg.data.max_train_examples if split == "train" else cfg.data.max_eval_examples
        if cap is not None and len(ds) > cap:
            ds = ds.shuffle(seed=cfg.train.seed).select(range(cap)) if split == "train" else ds.select(range(cap))
        if len(ds) == 0:
            raise ConfigError(f"task '{task.name}': split '{split}' is empty")
        out[split] = ds
    return TaskData(task, num_labels_of(task), out)


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Global batches of `batch_size * world` examples in one pass over `n` (the rest dropped)."""
    steps = n // (batch_size * world)
    if steps == 0:
        raise ConfigError(
            f"train split has {n} examples, fewer than one global batch "
            f"({batch_size} x {world} processes); lower train.batch_size"
        )
    return steps


def train_batches(
    ds: list[dict], tokenizer, *, batch_size: int, seed: int, rank: int, world: int, start_step: int = 0, causal_lm: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless stream of this process's batches, starting at global step `start_step`."""
    per_epoch = steps_per_epoch(len(ds), batch_size, world)
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(len(ds), generator=generator(seed + epoch)).tolist()
        for s in range(offset, per_epoch):
            glob = order[s * batch_size * world : (s + 1) * batch_size * world]
            yield collate([ds[i] for i in glob[rank::world]], tokenizer, causal_lm)
        step = (epoch + 1) * per_epoch
