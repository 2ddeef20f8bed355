"""Continual-learning configuration (YAML + `key.sub=value` overrides, pydantic, extra="forbid").

```yaml
model: /path/to/all-MiniLM-L6-v2
data: {task_file: eval/tasks/text_tasks.yaml, max_length: 64, max_train_examples: 1000, max_eval_examples: 300}
stream:                                   # either a sequence of tasks ...
  tasks: [austen_book, fortune_topic, wordnet_pos]
# stream: {split: austen_book, classes: [[0, 1], [2, 3], [4, 5]], order: [2, 0, 1]}   # ... or class-incremental splits
strategy: merge                           # merge | finetune | scroll
merge: {method: ties, parameters: {lambda: 1.0}, model_parameters: {density: 0.2}}
train: {lr: 0.05, batch_size: 16, steps: 50}
ewc: {lam: 100.0}                         # strategy finetune: EWC penalty (omit for plain sequential fine-tuning)
output: {dir: runs/continual/ties}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..runtime.aggregation import AggregateConfig, check_aggregate
from ..runtime.yaml_config import StrictModel, load_config


class DataConfig(StrictModel):
    task_file: Path
    max_length: int = Field(128, ge=2)
    max_train_examples: int | None = Field(None, ge=1)  # per experience, seeded subset
    max_eval_examples: int | None = Field(None, ge=1)  # per experience, first examples
    eval_split: Literal["validation", "test"] = "test"


class StreamConfig(StrictModel):
    """The schedule: which experiences, in which order.

    `tasks`: one experience per task of the task file (each with its own label space).
    `split`: class-incremental experiences of one task, `classes` listing each experience's
    class ids, or `classes_per_experience` chunks of a seeded random class order.
    `order`: a permutation of the experiences (default: as listed)."""

    tasks: list[str] | None = None
    split: str | None = None
    classes: list[list[int]] | None = None
    classes_per_experience: int | None = Field(None, ge=1)
    order: list[int] | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> "StreamConfig":
        if (self.tasks is None) == (self.split is None):
            raise ValueError("give exactly one of stream.tasks or stream.split")
        if self.split is not None and (self.classes is None) == (self.classes_per_experience is None):
            raise ValueError("stream.split needs exactly one of stream.classes or stream.classes_per_experience")
        if self.classes is not None:
            flat = [c for chunk in self.classes for c in chunk]
            if len(flat) != len(set(flat)) or any(not chunk for chunk in self.classes):
                raise ValueError(f"stream.classes must be non-empty disjoint lists; got {self.classes}")
        return self


class TrainConfig(StrictModel):
    """Fine-tuning of the encoder on one experience under its frozen ridge head (plain SGD)."""

    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    steps: int = Field(50, ge=1)


class HeadConfig(StrictModel):
    """Per-experience frozen head: ridge on the PRETRAINED features, Fed3R-normalized, logits / T."""

    lam: float = Field(0.01, ge=0)
    normalize: bool = True
    temperature: float = Field(0.1, gt=0)


class EWCConfig(StrictModel):
    """EWC (Kirkpatrick et al., arXiv:1612.00796): + Σ_i (λ/2) F_i ⊙ (θ − θ*_i)²."""

    lam: float = Field(100.0, ge=0)
    estimator: Literal["exact", "sample", "empirical"] = "exact"
    samples: int = Field(200, ge=1)  # examples of the finished experience used for F


class ScrollConfig(StrictModel):
    """SCROLL stage 1: exact online ridge over every class seen, fed `chunk_size` examples at a time."""

    lam: float = Field(0.01, ge=0)
    chunk_size: int = Field(32, ge=1)


class OutputConfig(StrictModel):
    dir: Path
    overwrite: bool = False


class ContinualConfig(StrictModel):
    model: str
    data: DataConfig
    stream: StreamConfig
    strategy: Literal["merge", "finetune", "scroll"] = "merge"
    merge: AggregateConfig = AggregateConfig(weighting="uniform")
    train: TrainConfig = TrainConfig()
    head: HeadConfig = HeadConfig()
    ewc: EWCConfig | None = None
    scroll: ScrollConfig = ScrollConfig()
    eval_batch_size: int = Field(64, ge=1)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    output: OutputConfig

    @model_validator(mode="after")
    def _consistent(self) -> "ContinualConfig":
        if self.ewc is not None and self.strategy != "finetune":
            raise ValueError(f"ewc applies to strategy 'finetune', not '{self.strategy}'")
        check_aggregate(self.merge, "merge")
        return self


def load_continual_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> ContinualConfig:
    return load_config(ContinualConfig, source, overrides)
