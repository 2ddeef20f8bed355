"""Resumable continual suites: every finished run is kept, so an interrupted suite continues.

A *run* is one strategy on one schedule (with every row it scores: `scroll` and
`scroll:stage1` are one run). When a run finishes, its results (R_CI, R_TI, final accuracy)
and the artifacts the report reads (the final weights of finetune/federated, SCROLL's final
ridge head, its accepted flags and buffer counts) are written to
`<work>/runs/s<schedule>-<strategy>.safetensors` (tensors, with the rest as JSON metadata)
through a temporary sibling, fsync and rename: a kill at any moment leaves each finished run
whole or absent. `<work>` is the output's hidden `.NAME.partial` folder; it also keeps the
config the suite was started with (`runtime.resume.RUN_CONFIG`).

A rerun into the same output loads the finished runs, prints where it resumes from and does
the others; a change to a key that alters the result (anything outside `RESUME_FREE_KEYS`) is
refused, naming the keys, unless `allow_config_change`. A run cut off mid-way is redone from
its first experience: its steps are seeded by (seed, step), so it gives the same numbers, and
the resumed suite's `results.json` equals an uninterrupted one's (tested).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.ridge import RidgeHead
from ..runtime.files import RUNNER_HINT, check_output, drop_published_work, fsync_dir
from ..runtime.resume import RUN_CONFIG, check_recorded_config, record_config, resume_message
from .config import ContinualConfig
from .metrics import summarize

RUNS = "runs"
SEP = "::"
# Keys a resume may change: where and how fast it runs, and the switches of resuming itself.
# `reduced` is free because what it changed is compared key by key; `output.dir` because the
# work folder is found through it (a relative and an absolute spelling of one folder are equal).
RESUME_FREE_KEYS = ("device", "threads", "resume", "allow_config_change", "output", "reduced")


@dataclass
class RunResult:
    label: str
    schedule: int
    experiences: list[str]
    class_incremental: list[list[float | None]]  # R_CI[i][j]
    task_incremental: list[list[float | None]]  # R_TI[i][j]
    final_accuracy: float
    artifacts: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, dict[str, float | None]]:
        return {"class_incremental": summarize(self.class_incremental), "task_incremental": summarize(self.task_incremental)}

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.label, "schedule": self.schedule, "experiences": self.experiences,
                "class_incremental": self.class_incremental, "task_incremental": self.task_incremental,
                "final_accuracy": self.final_accuracy, "summary": self.summary,
                **{k: v for k, v in self.artifacts.items() if k in ("accepted", "buffer_counts")}}  # fmt: skip


def run_file(work: Path, schedule: int, label: str) -> Path:
    safe = label.replace(":", "_").replace("/", "_")
    return work / RUNS / f"s{schedule}-{safe}.safetensors"


def _pack(results: list[RunResult]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Tensors `i::state::NAME`, `i::ridge::weight|bias` and the JSON rest of every result i."""
    tensors: dict[str, torch.Tensor] = {}
    meta = []
    for i, r in enumerate(results):
        art = dict(r.artifacts)
        state = art.pop("state", {})
        for k, v in state.items():
            tensors[f"{i}{SEP}state{SEP}{k}"] = v.detach().contiguous().cpu()
        if state:  # its order: the report sums over it, and safetensors sorts the names
            art["state_order"] = list(state)
        ridge: RidgeHead | None = art.pop("ridge", None)
        if ridge is not None:
            tensors[f"{i}{SEP}ridge{SEP}weight"] = ridge.weight.contiguous().cpu()
            tensors[f"{i}{SEP}ridge{SEP}bias"] = ridge.bias.contiguous().cpu()
            art["ridge_metadata"] = ridge.metadata
        if "buffer_counts" in art:  # dict[int, int]: JSON would make the keys strings
            art["buffer_counts"] = sorted(art["buffer_counts"].items())
        meta.append({"label": r.label, "schedule": r.schedule, "experiences": r.experiences, "ci": r.class_incremental,
                     "ti": r.task_incremental, "final_accuracy": r.final_accuracy, "artifacts": art})  # fmt: skip
    return tensors, meta


def save_run(work: Path, schedule: int, label: str, results: list[RunResult]) -> None:
    """Keep one finished run durably (temporary sibling, fsync, rename, fsync of the folder)."""
    path = run_file(work, schedule, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors, meta = _pack(results)
    try:
        save_file(tensors or {"_empty": torch.zeros(0)}, str(tmp), metadata={"results": json.dumps(meta)})
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def load_run(path: Path) -> list[RunResult]:
    """The results `save_run` kept in `path`, artifacts restored to their saved types."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["results"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    groups: dict[int, dict[tuple[str, str], torch.Tensor]] = {}
    for key, v in tensors.items():
        i, kind, name = (key.split(SEP, 2) + ["", ""])[:3]
        if kind:
            groups.setdefault(int(i), {})[kind, name] = v
    out = []
    for i, m in enumerate(meta):
        art, group = m["artifacts"], groups.get(i, {})
        if "state_order" in art:
            art["state"] = {name: group["state", name] for name in art.pop("state_order")}
        if ("ridge", "weight") in group:
            art["ridge"] = RidgeHead(group["ridge", "weight"], group["ridge", "bias"], art.pop("ridge_metadata"))
        if "buffer_counts" in art:
            art["buffer_counts"] = {int(c): n for c, n in art["buffer_counts"]}
        out.append(RunResult(m["label"], m["schedule"], m["experiences"], m["ci"], m["ti"], m["final_accuracy"], art))
    return out


def config_json(cfg: ContinualConfig) -> dict[str, Any]:
    return json.loads(cfg.model_dump_json())


def start(cfg: ContinualConfig, work: Path) -> dict[Path, list[RunResult]]:
    """The finished runs to resume with, by their `run_file`; {} on a fresh start
    (the output must then be free, and `work` is made anew with this config recorded)."""
    out = Path(cfg.output.dir)
    drop_published_work(out, work)
    files = sorted((work / RUNS).glob("s*.safetensors")) if cfg.resume and (work / RUN_CONFIG).is_file() else []
    if not files:
        check_output(out, cfg.output.overwrite, RUNNER_HINT)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        record_config(work, config_json(cfg))
        return {}
    if not cfg.allow_config_change:
        check_recorded_config(work, config_json(cfg), RESUME_FREE_KEYS, "--allow-config-change")
    done = {path: load_run(path) for path in files}
    print(resume_message("run", len(done), work))
    return done
