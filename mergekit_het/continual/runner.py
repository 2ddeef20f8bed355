"""The continual suite: every configured strategy on every seeded schedule of one setting.

```
mergekit-het continual continual/configs/minilm_supersense_classes.yaml model=PATH --output runs/cl/ss
```
```python
pool = build_pool(cfg, tokenizer)                 # the setting's examples (global class ids)
model = encoder + one new head over all C classes # θ0, the same for every run
for schedule in schedules(cfg, pool):             # class order, experience sizes, chunk size
    for spec in cfg.strategies:
        strategy = STRATEGIES[spec.name](spec, ctx, schedule)
        for t, exps in enumerate(strategy.steps()):
            strategy.learn(model, t, exps)
            R_CI[t], R_TI[t] = accuracy_rows(strategy.logits(model), ...)
```
Every finished run (one strategy on one schedule) is kept in the output's hidden work folder, so
an interrupted suite resumes where it stopped when run again (`continual.state`).
Outputs (`output.dir`, published atomically): `results.json` (every run's matrices and
summaries), `table.md` (mean ± std over schedules, gaps to joint, SCROLL's invariance, the
federated-vs-fine-tuning gap), `matrix_<strategy>.png`, `accuracy_vs_experience.png`, `config.yaml`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from ..models.classifier import PooledClassifier, head_inputs, trainable_state
from ..models.encoder import load_encoder, load_tokenizer, resolve_model
from ..runtime.batching import eval_batches, length_order
from ..runtime.device import resolve_device
from ..runtime.files import RUNNER_HINT, publish_run, work_dir
from . import federated_link, scroll  # noqa: F401  (register the federated and SCROLL strategies)
from .config import ContinualConfig, label_of
from .evaluation import accuracy_rows, final_accuracy
from .metrics import pad
from .report import suite_report, write_plots
from .strategies import STRATEGIES, Context, check_finite
from .state import RunResult, run_file, save_run, start
from .stream import Schedule, build_pool, schedules

COMPARED = ("finetune", "federated")  # runs whose final weights the report compares


@dataclass
class SuiteResult:
    runs: list[RunResult]
    report: dict[str, Any]


@torch.no_grad()
def pool_features(model: nn.Module, rows: list[dict], tokenizer, batch_size: int, device) -> torch.Tensor:
    """Features entering the head (n, d) float32 on the CPU, computed once in length-sorted
    batches, so every schedule reads the same φ(x)."""
    out: torch.Tensor | None = None
    for idx, batch in eval_batches(rows, tokenizer, batch_size, order=length_order(rows), device=device):
        feats = next(head_inputs(model, [batch]))[0].cpu()
        if out is None:
            out = torch.empty(len(rows), feats.shape[1])
        out[idx] = feats
    return out


def run_one(model: nn.Module, state0: dict, ctx: Context, spec, schedule: Schedule) -> list[RunResult]:
    """One strategy on one schedule, from θ0; one result per row the strategy scores."""
    model.load_state_dict(state0)
    model.head.requires_grad_(True)
    strategy = STRATEGIES[spec.name](spec, ctx, schedule)
    labels = ctx.pool.labels("eval")
    ci: dict[str, list[list[float]]] = {}
    ti: dict[str, list[list[float]]] = {}
    for t, exps in enumerate(strategy.steps()):
        strategy.learn(model, t, exps)
        check_finite(model, strategy.label, schedule, exps, ctx.cfg.train.lr)
        logits = strategy.logits(model)
        for label, z in logits.items():
            c, k = accuracy_rows(z, labels, schedule, max(exps))
            ci.setdefault(label, []).append(c)
            ti.setdefault(label, []).append(k)
    artifacts = strategy.artifacts()
    if strategy.label not in COMPARED:
        artifacts.pop("state", None)
    width, names = len(schedule.experiences), [e.name for e in schedule.experiences]
    return [RunResult(label, schedule.index, names, pad(ci[label], width), pad(ti[label], width),
                      final_accuracy(z, labels, schedule), artifacts if label == strategy.label else {})
            for label, z in logits.items()]  # fmt: skip


def run_continual(
    cfg: ContinualConfig, progress: bool = True, on_run: Callable[[int, list[RunResult]], None] | None = None
) -> SuiteResult:
    """Run (or resume) the suite; publishes `cfg.output.dir`. `on_run(i, results)` is called
    after the i-th run of the plan is kept (resumed runs included)."""
    resolve_model(cfg.model)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    tok = load_tokenizer(cfg.model)
    pool = build_pool(cfg, tok)
    work = work_dir(Path(cfg.output.dir))
    done = start(cfg, work)  # after the model and data checks: a bad input leaves no work folder
    torch.manual_seed(cfg.seed)
    model = PooledClassifier(load_encoder(cfg.model), pool.num_classes, cfg.train.temperature).to(device)
    state0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    feats = [pool_features(model, rows, tok, cfg.eval_batch_size, device) for rows in (pool.train, pool.eval)]
    theta0 = {k: v.cpu() for k, v in trainable_state(model).items()}
    ctx = Context(cfg, pool, tok, device, theta0, *feats)
    plan = [(s, spec) for s in schedules(cfg, pool) for spec in cfg.strategies]
    runs: list[RunResult] = []
    for i, (sched, spec) in enumerate(tqdm(plan, desc="runs", disable=not progress)):
        path = run_file(work, sched.index, label_of(spec))
        if path not in done:
            done[path] = run_one(model, state0, ctx, spec, sched)
            save_run(work, sched.index, label_of(spec), done[path])
        runs.extend(done[path])
        if on_run is not None:
            on_run(i, done[path])
    report = suite_report(runs)
    _write_output(cfg, runs, report, work)
    return SuiteResult(runs, report)


def _write_output(cfg: ContinualConfig, runs: list[RunResult], report: dict[str, Any], work: Path) -> None:
    stage = work / "output"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    (stage / "results.json").write_text(json.dumps({"report": report["data"], "runs": [r.to_json() for r in runs]}, indent=1))
    (stage / "table.md").write_text(report["markdown"])
    (stage / "config.yaml").write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    write_plots(runs, stage, setting=Path(cfg.output.dir).name)
    publish_run(stage, Path(cfg.output.dir), cfg.output.overwrite, work, RUNNER_HINT)
