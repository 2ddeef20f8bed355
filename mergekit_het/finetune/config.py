"""Fine-tuning configuration: a YAML file plus `key.sub=value` overrides, validated by pydantic.

```yaml
model: /path/to/all-MiniLM-L6-v2          # local folder or Hub id
protocol: frozen_head                      # frozen_head | classifier | causal_lm
mode: talos                                # dense | undertrained | talos | lora
data: {task_file: eval/tasks/text_tasks.yaml, task: austen_book, max_length: 64}
train: {max_steps: 300, batch_size: 32, lr: 5.0e-5}
talos: {sparsity: 0.9}
output: {dir: experts/austen_talos}
```
Relative paths in the file are resolved against the current working directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..runtime.yaml_config import StrictModel, load_config


class DataConfig(StrictModel):
    task_file: Path
    task: str
    max_length: int = Field(128, ge=2)
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)


class HeadConfig(StrictModel):
    """Frozen ridge head (protocol frozen_head): W = (A + λI)⁻¹b on pretrained mean-pooled features."""

    lam: float = Field(0.01, ge=0)
    normalize: bool = True  # Fed3R normalize_W
    temperature: float = Field(0.1, gt=0)  # logits / T in training and evaluation (Fed3R+FT)
    max_examples: int | None = Field(None, ge=1)  # train examples used for the statistics
    path: Path | None = None  # reuse a head.safetensors instead of computing one


class TalosConfig(StrictModel):
    """TaLoS (Iurada et al., ICLR 2025): train only the LOW-sensitivity `1 - sparsity` fraction."""

    sparsity: float = Field(0.9, gt=0, lt=1)
    rounds: int = Field(4, ge=1)
    calibration_split: Literal["train", "validation"] = "validation"
    max_examples: int | None = Field(None, ge=1)  # cap on calibration examples (all by default)
    frozen_scale: float = Field(0.1, ge=0)  # forward scale of frozen entries in later rounds
    samples: int = Field(1, ge=1)  # labels sampled per example (TaLoS's R)


class LoraConfig(StrictModel):
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # peft's default for the architecture if None


class TrainConfig(StrictModel):
    max_steps: int = Field(300, ge=1)  # the full budget: the LR schedule always spans it
    budget_fraction: float | None = Field(None, gt=0, le=1)  # undertrained: stop at this fraction
    batch_size: int = Field(32, ge=1)  # per process
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0)  # 0: evaluate only at the end
    checkpoint_every: int = Field(0, ge=0)  # 0: no resumable checkpoints
    snapshot_steps: list[int] = []  # also save full experts at these steps (early checkpoints)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    eval_batch_size: int = Field(64, ge=1)

    @property
    def steps_to_run(self) -> int:
        """ceil(budget_fraction * max_steps), at least 1."""
        return max(1, math.ceil((self.budget_fraction or 1.0) * self.max_steps))


class StatsConfig(StrictModel):
    """Merge statistics written beside the finished expert (`finetune/statistics.py`; for the
    `regmean` and `fisher` merge methods): `examples` > 0 turns them on."""

    examples: int = Field(0, ge=0)  # examples drawn from `split` (0: no statistics)
    split: Literal["train", "validation"] = "train"
    gram: bool = True
    fisher: bool = False
    mask_padding: bool = False
    batch_size: int = Field(16, ge=1)


class OutputConfig(StrictModel):
    dir: Path
    overwrite: bool = False
    save_task_vector: bool = False


class FinetuneConfig(StrictModel):
    model: str
    protocol: Literal["frozen_head", "classifier", "causal_lm"] = "frozen_head"
    mode: Literal["dense", "undertrained", "talos", "lora"] = "dense"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    data: DataConfig
    head: HeadConfig = HeadConfig()
    talos: TalosConfig = TalosConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig
    stats: StatsConfig = StatsConfig()
    resume: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "FinetuneConfig":
        t = self.train
        if self.mode == "undertrained" and t.budget_fraction is None:
            t.budget_fraction = 0.25
        if self.mode == "undertrained" and t.budget_fraction >= 1:
            raise ValueError("mode 'undertrained' needs train.budget_fraction < 1 (e.g. 0.25)")
        if self.mode != "undertrained" and t.budget_fraction not in (None, 1.0):
            raise ValueError(f"train.budget_fraction is for mode 'undertrained'; mode is '{self.mode}'")
        bad = [s for s in t.snapshot_steps if not 1 <= s < t.steps_to_run]
        if bad:
            raise ValueError(f"train.snapshot_steps {bad} must lie in 1..{t.steps_to_run - 1}")
        if self.head.path is not None and self.protocol != "frozen_head":
            raise ValueError("head.path is only used by protocol 'frozen_head'")
        return self


def load_finetune_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> FinetuneConfig:
    """Read and validate a config; every problem is reported at once on one line."""
    return load_config(FinetuneConfig, source, overrides)
