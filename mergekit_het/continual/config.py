"""Continual-learning configuration: one *setting* (a pool of examples from the task file, how
it is cut into experiences) run under several seeded *schedules* by several *strategies*.

```yaml
model: /path/to/all-MiniLM-L6-v2
data: {task_file: builtin, tasks: [wordnet_supersense], max_length: 64,
       train_per_class: 40, eval_per_class: 20}          # the pool: the same examples for every schedule
stream:
  by: classes                      # classes: class-incremental over the pool's classes; tasks: one experience per task
  experience_sizes: [[5, 5, 5, 5, 5], [3, 7, 5, 4, 6]]   # classes per experience, one list per schedule (cycled)
  chunk_sizes: [16, 8]             # online chunk = SGD batch / ridge update, cycled over schedules
  schedules: 5                     # schedule k: class (or task) order drawn from seed + k
strategies:                        # any of finetune, ewc, replay, merge, scroll, joint, federated
  - {name: finetune}
  - {name: ewc, lam: 100}
  - {name: replay, memory: 100}
  - {name: merge, method: ties, parameters: {lambda: 1.0}, model_parameters: {density: 0.2}}
  - {name: scroll, memory: 100, steps: 20}
  - {name: joint}
  - {name: federated}
train: {lr: 0.01, passes: 1}      # one online pass per experience
output: {dir: runs/continual/supersense}
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ..runtime.aggregation import AggregateConfig, check_aggregate
from ..runtime.device import device_spec_problem
from ..runtime.yaml_config import StrictModel, deep_update, load_config, parse_overrides


class DataConfig(StrictModel):
    """The pool: up to `train_per_class` train and `eval_per_class` eval examples of every class
    of every listed task (a seeded subset, the same for every schedule)."""

    task_file: Path
    tasks: list[str] = Field(min_length=1)
    max_length: int = Field(64, ge=2)
    train_per_class: int | None = Field(None, ge=1)
    eval_per_class: int | None = Field(None, ge=1)
    eval_split: Literal["validation", "test"] = "test"
    seed: int = 0


class StreamConfig(StrictModel):
    """How schedule k cuts the pool: `by: classes` shuffles all classes with seed + k and cuts
    them into experiences of `experience_sizes[k mod len]` classes (or `experiences` near-equal
    ones, for a task file whose class count is not known in advance); `by: tasks` makes one
    experience per task, in an order drawn from seed + k. Learners see each experience in
    online chunks of `chunk_sizes[k mod len]` examples."""

    by: Literal["classes", "tasks"] = "classes"
    experience_sizes: list[list[int]] = []
    experiences: int | None = Field(None, ge=1)
    chunk_sizes: list[int] = Field([16], min_length=1)
    schedules: int = Field(5, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sizes(self) -> "StreamConfig":
        if self.by == "classes" and bool(self.experience_sizes) == (self.experiences is not None):
            raise ValueError("stream.by: classes needs exactly one of stream.experience_sizes or stream.experiences")
        if self.by == "tasks" and (self.experience_sizes or self.experiences is not None):
            raise ValueError("stream.experience_sizes / stream.experiences apply to stream.by: classes, not tasks")
        if any(not s or min(s) < 1 for s in self.experience_sizes) or min(self.chunk_sizes) < 1:
            raise ValueError("stream.experience_sizes and stream.chunk_sizes must hold positive numbers")
        lengths = {len(s) for s in self.experience_sizes}
        if len(lengths) > 1:
            raise ValueError(f"stream.experience_sizes: every schedule needs the same number of experiences; got {sorted(lengths)}")
        return self


class TrainConfig(StrictModel):
    """SGD on an experience in batches of the schedule's chunk size: `passes` passes over its
    examples, or exactly `steps` steps when set (as many passes as needed); joint training gets
    the same budget for the union of all experiences."""

    lr: float = Field(0.01, gt=0)  # 0.05 diverged on MiniLM with logits / 0.1 (H200 run, 2026-12-01)
    weight_decay: float = Field(0.0, ge=0)
    passes: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1)
    temperature: float = Field(0.1, gt=0)  # logits / T (the head of the frozen-head protocol)


class FinetuneSpec(StrictModel):
    name: Literal["finetune"]


class EWCSpec(StrictModel):
    """Kirkpatrick et al., arXiv:1612.00796: + Σ_i (λ/2) F_i ⊙ (θ − θ*_i)²."""

    name: Literal["ewc"]
    lam: float = Field(100.0, ge=0)
    estimator: Literal["exact", "sample", "empirical"] = "sample"
    samples: int = Field(64, ge=1)


class ReplaySpec(StrictModel):
    """Experience replay: train on the experience plus a class-balanced buffer of `memory` examples."""

    name: Literal["replay"]
    memory: int = Field(100, ge=1)


class MergeSpec(AggregateConfig):
    """Merge-as-you-go: expert t from θ0, running model = the engine's merge of experts 0..t."""

    name: Literal["merge"]
    weighting: Literal["examples", "uniform"] = "uniform"


class ScrollSpec(StrictModel):
    """SCROLL: stage 1 online ridge (λ) on pretrained features; stage 2 `steps` SGD steps at `lr`
    (default `train.lr`) on the class-balanced buffer (`memory` examples, `validation` fraction
    held out for the rejection rule), the ridge head frozen or, with `train_head`, trained from it."""

    name: Literal["scroll"]
    lam: float = Field(0.01, ge=0)
    memory: int = Field(100, ge=1)
    steps: int = Field(20, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float | None = Field(None, gt=0)
    train_head: bool = False
    validation: float = Field(0.2, ge=0, lt=1)


class JointSpec(StrictModel):
    """Upper bound: one model trained on the union of all experiences (passes × all chunks)."""

    name: Literal["joint"]


class FederatedSpec(StrictModel):
    """The federated strategy (FedAvg's hooks) on the stream: client t = experience t, one client
    per round, no revisits; `aggregate` = its merge settings (linear: FedAvg)."""

    name: Literal["federated"]
    aggregate: AggregateConfig = AggregateConfig()
    server_lr: float = Field(1.0, gt=0)


StrategyConfig = Annotated[FinetuneSpec | EWCSpec | ReplaySpec | MergeSpec | ScrollSpec | JointSpec | FederatedSpec, Field(discriminator="name")]


class OutputConfig(StrictModel):
    dir: Path
    overwrite: bool = False


class ContinualConfig(StrictModel):
    model: str
    data: DataConfig
    stream: StreamConfig
    strategies: list[StrategyConfig] = Field(min_length=1)
    train: TrainConfig = TrainConfig()
    eval_batch_size: int = Field(128, ge=1)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)
    resume: bool = True  # continue an interrupted suite from its finished runs (continual.state)
    allow_config_change: bool = False  # resume even if keys outside state.RESUME_FREE_KEYS changed
    output: OutputConfig
    reduced: dict[str, Any] = {}  # overrides applied by --reduced (a tiny budget for a CPU check)

    @model_validator(mode="after")
    def _consistent(self) -> "ContinualConfig":
        labels = [label_of(s) for s in self.strategies]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"strategies: {dup} listed twice (two merges need different methods)")
        for i, s in enumerate(self.strategies):
            agg = s.aggregate if isinstance(s, FederatedSpec) else s if isinstance(s, MergeSpec) else None
            if agg is not None:
                check_aggregate(agg, f"strategies[{i}]")
        problem = device_spec_problem(self.device)
        if problem is not None:
            raise ValueError(f"device: {problem}")
        return self


def label_of(s: StrategyConfig) -> str:
    """Row name of a strategy in the table: its name, `merge:<method>` for merges."""
    return f"merge:{s.method}" if isinstance(s, MergeSpec) else s.name


def load_continual_config(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None, reduced: bool = False
) -> ContinualConfig:
    """The config; with `reduced`, its `reduced:` mapping is applied first (overrides still win)."""
    cfg = load_config(ContinualConfig, source, overrides)
    if not reduced or not cfg.reduced:
        return cfg
    raw = deep_update(json.loads(cfg.model_dump_json()), cfg.reduced)
    return load_config(ContinualConfig, deep_update(raw, parse_overrides(overrides or [])))
