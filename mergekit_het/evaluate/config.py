"""Schema of a comparison config (`mergekit-het eval --config FILE`), checked before any weight is read.

```yaml
tasks: eval/tasks/text_tasks.yaml      # relative paths: against this file's folder
task_names: [wordnet_pos, austen_book] # optional subset (default: every task of the file)
base: /path/to/all-MiniLM-L6-v2        # θ0; its tokenizer is used for every model
experts: {wordnet_pos: runs/experts/wordnet_pos, austen_book: runs/experts/austen_book}
methods:
  - {name: average, method: linear}
  - {name: task_arithmetic, method: task_arithmetic, grid: {lambda: [0.1, 0.2, 0.3]}}
  - {name: ties, method: ties, grid: {density: [0.1, 0.2], lambda: [0.8, 1.0]}}
cross_task: {alpha: 1.0}               # optional
disentanglement: {tasks: [wordnet_pos, austen_book], alphas: [-1, 0, 1], max_examples: 200}
select_split: validation               # grid points are chosen here ...
report_split: test                     # ... and reported here
max_examples: {validation: 500}        # optional per-split random subsets (seed 0)
```
Every task in the comparison needs an expert: task t is always scored with expert t's head,
and merged accuracy is normalized by expert t's accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..runtime.yaml_config import deep_update, parse_overrides, read_yaml_mapping, validate
from ..data.tasks import SPLITS


class MethodSpec(BaseModel):
    """One merge method of the comparison; `grid` values are swept on the selection split."""

    model_config = ConfigDict(extra="forbid")
    name: str
    method: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[float]] = Field(default_factory=dict)


class CrossTaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = 1.0


class DisentanglementSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: tuple[str, str]
    alphas: list[float] = Field(min_length=1)
    max_examples: int | None = Field(default=200, gt=0)


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: Path
    task_names: list[str] | None = None
    base: str
    experts: dict[str, str]
    methods: list[MethodSpec] = Field(default_factory=list)
    cross_task: CrossTaskSpec | None = None
    disentanglement: DisentanglementSpec | None = None
    select_split: str = "validation"
    report_split: str = "test"
    max_examples: dict[str, int] = Field(default_factory=dict)
    batch_size: int = Field(default=64, gt=0)
    max_length: int = Field(default=128, gt=0)
    device: str = "auto"
    seed: int = 0


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Parse and validate a comparison YAML (+ `key.sub=value` overrides); relative paths are
    resolved against the file's folder."""
    path = Path(path)
    raw = deep_update(read_yaml_mapping(path, "eval config"), parse_overrides(overrides or []))
    cfg = validate(CompareConfig, raw, str(path))
    here = path.parent

    def rel(p: str | Path) -> str:  # relative to the config file; else kept (a Hub id)
        candidate = here / p
        return str(candidate.resolve()) if not Path(p).is_absolute() and candidate.exists() else str(p)

    cfg = cfg.model_copy(update={
        "tasks": Path(rel(cfg.tasks)),
        "base": rel(cfg.base),
        "experts": {t: rel(p) for t, p in cfg.experts.items()},
    })
    check_compare_config(cfg, str(path))
    return cfg


def check_compare_config(cfg: CompareConfig, where: str) -> None:
    """Cross-field checks: splits known, methods registered, every task has an expert, names unique."""
    from ..io.statistics import stats_path
    from ..methods import get_method
    from ..models.encoder import resolve_model
    from ..data.tasks import load_task_file

    problems = []
    for key in ("select_split", "report_split"):
        if getattr(cfg, key) not in SPLITS:
            problems.append(f"{key} '{getattr(cfg, key)}' is not one of {list(SPLITS)}")
    bad_caps = sorted(set(cfg.max_examples) - set(SPLITS))
    if bad_caps:
        problems.append(f"max_examples has unknown split(s) {bad_caps}")
    tasks = [t.name for t in load_task_file(cfg.tasks, cfg.task_names)]
    missing = [t for t in tasks if t not in cfg.experts]
    if missing:
        problems.append(f"experts: no expert for task(s) {missing}")
    extra = sorted(set(cfg.experts) - set(tasks))
    if extra:
        problems.append(f"experts: {extra} are not tasks of the comparison {tasks}")
    for what, folder in [("base", cfg.base), *((f"experts.{t}", p) for t, p in cfg.experts.items())]:
        try:
            resolve_model(folder)
        except ConfigError as exc:
            problems.append(f"{what}: {exc}")
    names = [m.name for m in cfg.methods]
    if len(set(names)) != len(names):
        problems.append(f"methods: names must be unique, got {names}")
    for m in cfg.methods:
        try:
            method = get_method(m.method)
        except ConfigError as exc:
            problems.append(f"methods '{m.name}': {exc}")
            continue
        if method.statistics:  # regmean / fisher read merge_stats.safetensors beside each expert
            lacking = [t for t, p in cfg.experts.items() if not stats_path(p).is_file()]
            if lacking:
                problems.append(f"methods '{m.name}': {m.method} needs merge statistics beside the experts of "
                                f"{lacking} (`mergekit-het stats EXPERT --tasks TASKFILE --task NAME`)")
        problems += [f"methods '{m.name}': grid '{k}' is empty" for k, v in m.grid.items() if not v]
    if cfg.disentanglement is not None:
        unknown = [t for t in cfg.disentanglement.tasks if t not in tasks]
        if unknown:
            problems.append(f"disentanglement.tasks {unknown} are not tasks of the comparison {tasks}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
