"""Text-classification task definitions, loaded from a YAML task file through `datasets`.

A task file lists tasks; nothing in the pipeline is specific to any task:

```yaml
root: data                                 # optional; relative to this file
tasks:
  - builtin: austen_book                   # a task shipped with the package (no path)
  - name: my_csv_folder
    dir: my_csv_folder                     # holds train.csv, validation.csv, test.csv (or .csv.gz) [, meta.json]
  - name: my_task
    data_files: {train: a.csv, validation: b.csv.gz, test: c.jsonl}
    text_column: sentence
    label_column: y
    num_labels: 3
```
The shipped tasks (`BUILTIN_TASKS`, built from Debian packages by `build_text_tasks.py`, see
`text_tasks/README.md`) live in `text_tasks/` beside this module as gzip-compressed CSV, which
`datasets` reads directly. The task file name `builtin` (for example `--tasks builtin` or
`data.task_file=builtin`) stands for a file listing all of them, so that nothing needs a path.
`num_labels` and `label_names` come from the task entry, else from `meta.json` in `dir`,
else from the largest label in the train split + 1.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ..errors import ConfigError
from ..runtime.yaml_config import read_yaml_mapping

SPLITS = ("train", "validation", "test")
BUILTIN = "builtin"  # the task file name that stands for every shipped task
BUILTIN_DIR = Path(__file__).parent / "text_tasks"
BUILTIN_TASKS = ("wordnet_supersense", "wordnet_pos", "fortune_topic", "austen_book")
FORMATS = {".csv": "csv", ".csv.gz": "csv", ".json": "json", ".json.gz": "json", ".jsonl": "json",
           ".jsonl.gz": "json", ".parquet": "parquet"}  # suffix -> datasets builder (it unzips .gz)


class TaskSpec(BaseModel):
    """One classification task: where its splits are and which columns hold text and label."""

    model_config = ConfigDict(extra="forbid")

    name: str
    builtin: str | None = None
    dir: Path | None = None
    data_files: dict[str, Path] | None = None
    text_column: str = "text"
    label_column: str = "label"
    num_labels: int | None = None
    label_names: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _builtin_name(cls, raw: Any) -> Any:
        """A shipped task is named after itself unless the entry says otherwise."""
        if isinstance(raw, dict) and "builtin" in raw and "name" not in raw:
            return {**raw, "name": raw["builtin"]}
        return raw

    @model_validator(mode="after")
    def _one_source(self) -> "TaskSpec":
        if sum(x is not None for x in (self.builtin, self.dir, self.data_files)) != 1:
            raise ValueError(f"task '{self.name}': give exactly one of 'builtin', 'dir' or 'data_files'")
        if self.builtin is not None and self.builtin not in BUILTIN_TASKS:
            close = difflib.get_close_matches(self.builtin, BUILTIN_TASKS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"builtin task '{self.builtin}' is unknown; choose one of {', '.join(BUILTIN_TASKS)}{hint}")
        return self

    def split_file(self, split: str) -> Path:
        """Path of the CSV/JSON/parquet file holding `split`; a one-line error if there is none."""
        if self.data_files is not None:
            if split not in self.data_files:
                raise ConfigError(
                    f"task '{self.name}' has no '{split}' split; it has {sorted(self.data_files)}"
                )
            path = self.data_files[split]
        else:
            candidates = [self.dir / f"{split}.csv", self.dir / f"{split}.csv.gz"]
            path = next((p for p in candidates if p.is_file()), candidates[0])
        if not path.is_file():
            raise ConfigError(f"task '{self.name}': split '{split}' file {path} does not exist")
        return path


def _resolve(task: TaskSpec, root: Path) -> TaskSpec:
    """Make the task's paths absolute against `root` and fill label metadata from meta.json."""
    upd: dict[str, Any] = {}
    if task.builtin is not None:
        upd["dir"] = BUILTIN_DIR / task.builtin
    elif task.dir is not None:
        upd["dir"] = (root / task.dir).resolve()
    if "dir" in upd:
        meta_path = upd["dir"] / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if task.num_labels is None and "num_labels" in meta:
                upd["num_labels"] = int(meta["num_labels"])
            if task.label_names is None and "label_names" in meta:
                upd["label_names"] = list(meta["label_names"])
    if task.data_files is not None:
        upd["data_files"] = {k: (root / v).resolve() for k, v in task.data_files.items()}
    return task.model_copy(update=upd)


def load_task_file(path: str | Path, names: list[str] | None = None) -> list[TaskSpec]:
    """Read a YAML task file (`builtin`: every shipped task); `names` selects (and orders) a subset."""
    path = Path(path)
    if str(path) == BUILTIN:
        raw: dict[str, Any] = {"tasks": [{"builtin": name} for name in BUILTIN_TASKS]}
    else:
        raw = read_yaml_mapping(path, "task file")
    if "tasks" not in raw:
        raise ConfigError(f"{path}: expected a mapping with a 'tasks' list")
    unknown = set(raw) - {"root", "tasks"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: root, tasks")
    root = (path.parent / raw.get("root", ".")).resolve()
    try:
        tasks = [_resolve(TaskSpec(**t), root) for t in raw["tasks"]]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{path}: tasks entry {loc}: {err['msg']}") from None
    by_name = {t.name: t for t in tasks}
    if names is None:
        return tasks
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"{path}: no task named {missing}; the file has {sorted(by_name)}")
    return [by_name[n] for n in names]


def load_split(task: TaskSpec, split: str):
    """Load one split as a `datasets.Dataset` with columns `text` (str) and `label` (int).

    Checks the configured columns exist and labels lie in [0, num_labels).
    """
    ds, file = _load_file(task, split)
    for col in (task.text_column, task.label_column):
        if col not in ds.column_names:
            raise ConfigError(
                f"task '{task.name}': {file} has no column '{col}'; columns are {ds.column_names}"
            )
    ds = ds.select_columns([task.text_column, task.label_column])
    if task.text_column != "text":
        ds = ds.rename_column(task.text_column, "text")
    if task.label_column != "label":
        ds = ds.rename_column(task.label_column, "label")
    num_labels = num_labels_of(task)
    labels = ds["label"]
    bad = [y for y in labels if not isinstance(y, int) or not 0 <= y < num_labels]
    if bad:
        raise ConfigError(
            f"task '{task.name}': {file} has label {bad[0]!r} outside 0..{num_labels - 1}"
        )
    return ds


def num_labels_of(task: TaskSpec) -> int:
    """Number of classes: from the task entry / meta.json, else max train label + 1."""
    if task.num_labels is not None:
        return task.num_labels
    ds, _ = _load_file(task, "train")
    return int(max(ds[task.label_column])) + 1


def _load_file(task: TaskSpec, split: str):
    """The raw `datasets.Dataset` of one split file, and its path."""
    from datasets import load_dataset

    file = task.split_file(split)
    fmt = FORMATS.get("".join(file.suffixes[-2:]) if file.suffix == ".gz" else file.suffix)
    if fmt is None:
        raise ConfigError(f"task '{task.name}': {file} is not one of {', '.join(FORMATS)}")
    kwargs = {"keep_default_na": False} if fmt == "csv" else {}
    return load_dataset(fmt, data_files={split: str(file)}, split=split, **kwargs), file
