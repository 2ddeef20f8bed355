"""The pool of a setting and the schedules that stream it, in the task file's terms only.

The *pool* is fixed per setting: every class c of every task (global id = the task's offset +
its label) keeps at most `train_per_class` train examples (a seeded subset) and
`eval_per_class` eval examples. A *schedule* only reorders and cuts the pool: experiences are
disjoint sets of classes (class-incremental: a seeded shuffle of all classes cut into the
schedule's sizes; task sequence: one experience per task in a seeded order) and each
experience's examples arrive in chunks of the schedule's chunk size. So the multiset of
training examples is the same for every schedule: what SCROLL's invariance is about.
Example ids (`uid`: the row's index in the pool) are schedule-independent.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..data.tasks import load_split, load_task_file, num_labels_of
from ..errors import ConfigError
from ..runtime.batching import tokenize
from ..runtime.logs import quiet_third_party
from .config import ContinualConfig


@dataclass
class Pool:
    tasks: list[str]
    class_names: list[str]  # global class id -> "task:label name"
    task_of: list[int]  # global class id -> index into tasks
    train: list[dict]  # tokenized rows, `labels` = global class ids
    eval: list[dict]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor([r["labels"] for r in getattr(self, split)], dtype=torch.long)


@dataclass
class Experience:
    name: str
    classes: list[int]  # global class ids
    train: list[int]  # pool.train uids, in stream order
    eval: list[int]  # pool.eval indices


@dataclass
class Schedule:
    index: int
    experiences: list[Experience]
    chunk: int  # online chunk size: SGD batch size and ridge-update size

    def seen(self, t: int) -> list[int]:
        """Global classes of experiences 0..t."""
        return [c for e in self.experiences[: t + 1] for c in e.classes]


def _per_class(labels: list[int], cap: int | None, seed: int) -> list[int]:
    """Indices keeping at most `cap` of each class (seeded choice), in their original order."""
    if cap is None:
        return list(range(len(labels)))
    g = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        keep.extend(idx[j] for j in torch.randperm(len(idx), generator=g)[:cap].tolist())
    return sorted(keep)


def build_pool(cfg: ContinualConfig, tokenizer) -> Pool:
    """Load the listed tasks' splits, keep the per-class subsets, tokenize, relabel to global ids."""
    d = cfg.data
    names: list[str] = []
    task_of: list[int] = []
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    for k, task in enumerate(load_task_file(d.task_file, d.tasks)):
        n, offset = num_labels_of(task), len(names)
        labels = task.label_names or [str(c) for c in range(n)]
        names.extend(f"{task.name}:{labels[c]}" for c in range(n))
        task_of.extend([k] * n)
        for split, source, cap in (("train", "train", d.train_per_class), ("eval", d.eval_split, d.eval_per_class)):
            with quiet_third_party():
                ds = load_split(task, source)
                ds = ds.select(_per_class(ds["label"], cap, d.seed + k))
            for r in tokenize(ds, tokenizer, d.max_length):
                rows[split].append({**r, "labels": r["labels"] + offset})
    pool = Pool(list(d.tasks), names, task_of, rows["train"], rows["eval"])
    present = {s: set(pool.labels(s).tolist()) for s in ("train", "eval")}
    missing = [names[c] for c in range(len(names)) if c not in present["train"] or c not in present["eval"]]
    if missing:
        raise ConfigError(f"data: class(es) {missing[:5]} have no train or {d.eval_split} example; drop the task or raise the caps")
    return pool


def task_order(num_tasks: int, seed: int, k: int) -> list[int]:
    """Schedule k's task order: the k-th of all orders in a seeded shuffle (distinct orders for
    the first T! schedules), or a seeded random order when T! is too large to list."""
    if num_tasks > 7:
        return torch.randperm(num_tasks, generator=torch.Generator().manual_seed(seed + k)).tolist()
    orders = list(itertools.permutations(range(num_tasks)))
    pick = torch.randperm(len(orders), generator=torch.Generator().manual_seed(seed)).tolist()
    return list(orders[pick[k % len(orders)]])


def class_groups(cfg: ContinualConfig, pool: Pool, k: int) -> list[list[int]]:
    """Schedule k's experiences as lists of global classes."""
    s = cfg.stream
    g = torch.Generator().manual_seed(s.seed + k)
    if s.by == "tasks":
        order = task_order(len(pool.tasks), s.seed, k)
        return [[c for c in range(pool.num_classes) if pool.task_of[c] == t] for t in order]
    if s.experiences is not None:
        if s.experiences > pool.num_classes:
            raise ConfigError(f"stream.experiences: {s.experiences} experiences need at least as many classes; the pool has {pool.num_classes}")
        q, r = divmod(pool.num_classes, s.experiences)
        sizes = [q + 1] * r + [q] * (s.experiences - r)
    else:
        sizes = s.experience_sizes[k % len(s.experience_sizes)]
    if sum(sizes) != pool.num_classes:
        raise ConfigError(f"stream.experience_sizes {sizes} sum to {sum(sizes)}, but the pool has {pool.num_classes} classes")
    order = torch.randperm(pool.num_classes, generator=g).tolist()
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [order[a : a + n] for a, n in zip(starts, sizes)]


def make_schedule(cfg: ContinualConfig, pool: Pool, k: int) -> Schedule:
    """Schedule k: its experiences (examples in a seeded stream order) and chunk size."""
    s = cfg.stream
    g = torch.Generator().manual_seed(s.seed + k + 7919)
    train_y, eval_y = pool.labels("train").tolist(), pool.labels("eval").tolist()
    exps = []
    for classes in class_groups(cfg, pool, k):
        cs = set(classes)
        train = [i for i, y in enumerate(train_y) if y in cs]
        train = [train[j] for j in torch.randperm(len(train), generator=g).tolist()]
        name = "+".join(sorted({pool.tasks[pool.task_of[c]] for c in classes})) if s.by == "tasks" else f"c{sorted(classes)}"
        exps.append(Experience(name, classes, train, [i for i, y in enumerate(eval_y) if y in cs]))
    return Schedule(k, exps, s.chunk_sizes[k % len(s.chunk_sizes)])


def schedules(cfg: ContinualConfig, pool: Pool) -> list[Schedule]:
    return [make_schedule(cfg, pool, k) for k in range(cfg.stream.schedules)]
