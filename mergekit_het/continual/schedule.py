"""Experiences of a continual stream and the schedule that orders them.

An experience has its own label space (task-incremental): rows carry LOCAL labels 0..k−1 and
`classes` maps them to GLOBAL class ids (the task's offset in the stream + its class id), which
SCROLL's single classifier over all seen classes uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..runtime.batching import tokenize
from ..data.tasks import load_split, load_task_file, num_labels_of
from .config import ContinualConfig


@dataclass
class Experience:
    name: str
    classes: list[int]  # global class id of each local label
    train: list[dict]  # tokenized rows, local labels
    eval: list[dict]

    @property
    def num_labels(self) -> int:
        return len(self.classes)

    def global_labels(self, rows: list[dict]) -> torch.Tensor:
        return torch.tensor([self.classes[r["labels"]] for r in rows], dtype=torch.long)


def _cap(ds, cap: int | None, seed: int | None):
    if cap is None or len(ds) <= cap:
        return ds
    return ds.shuffle(seed=seed).select(range(cap)) if seed is not None else ds.select(range(cap))


def _subset(ds, classes: list[int]):
    """Rows of `ds` whose label is in `classes`, relabelled to their position in `classes`."""
    local = {c: i for i, c in enumerate(classes)}
    ds = ds.filter(lambda y: y in local, input_columns="label")
    return ds.map(lambda y: {"label": local[y]}, input_columns="label")


def class_chunks(num_labels: int, cfg: ContinualConfig) -> list[list[int]]:
    s = cfg.stream
    if s.classes is not None:
        bad = [c for chunk in s.classes for c in chunk if not 0 <= c < num_labels]
        if bad:
            raise ConfigError(f"stream.classes: class ids {bad} outside 0..{num_labels - 1} of task '{s.split}'")
        return [list(c) for c in s.classes]
    order = torch.randperm(num_labels, generator=torch.Generator().manual_seed(s.seed)).tolist()
    k = s.classes_per_experience
    return [order[i : i + k] for i in range(0, num_labels, k)]


def build_experiences(cfg: ContinualConfig, tokenizer) -> list[Experience]:
    """Load, cap, tokenize and order the configured experiences."""
    d, s = cfg.data, cfg.stream
    out: list[Experience] = []
    if s.tasks is not None:
        offset = 0
        for task in load_task_file(d.task_file, s.tasks):
            n = num_labels_of(task)
            train = _cap(load_split(task, "train"), d.max_train_examples, cfg.seed)
            ev = _cap(load_split(task, d.eval_split), d.max_eval_examples, None)
            out.append(Experience(task.name, list(range(offset, offset + n)),
                                  tokenize(train, tokenizer, d.max_length), tokenize(ev, tokenizer, d.max_length)))  # fmt: skip
            offset += n
    else:
        task = load_task_file(d.task_file, [s.split])[0]
        train_all, eval_all = load_split(task, "train"), load_split(task, d.eval_split)
        for chunk in class_chunks(num_labels_of(task), cfg):
            train = _cap(_subset(train_all, chunk), d.max_train_examples, cfg.seed)
            ev = _cap(_subset(eval_all, chunk), d.max_eval_examples, None)
            out.append(Experience(f"{task.name}{chunk}", chunk,
                                  tokenize(train, tokenizer, d.max_length), tokenize(ev, tokenizer, d.max_length)))  # fmt: skip
    empty = [e.name for e in out if not e.train or not e.eval]
    if empty:
        raise ConfigError(f"stream: experience(s) {empty} have no train or eval examples")
    if s.order is not None:
        if sorted(s.order) != list(range(len(out))):
            raise ConfigError(f"stream.order must be a permutation of 0..{len(out) - 1}; got {s.order}")
        out = [out[i] for i in s.order]
    return out
