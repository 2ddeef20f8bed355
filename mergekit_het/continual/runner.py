"""The continual loop: learn experiences one after another, evaluate every seen one after each.

```
mergekit-het continual continual/configs/minilm_tasks.yaml strategy=merge merge.method=ties
```
Strategies (every experience j is evaluated with its own frozen ridge head, computed on the
PRETRAINED encoder's features: task-incremental evaluation, see docs/continual.md):

- `merge`: fine-tune θ0 on experience t (SGD, its frozen head) → expert θ_t; the running model
  is the engine's merge of all experts so far against θ0 with the configured method
  (`linear` = sequential averaging, `task_arithmetic`, `ties`, ...);
- `finetune`: fine-tune the running model on each experience in turn, with the EWC penalty of
  all finished experiences when `ewc` is set (the usual baseline);
- `scroll`: no training; SCROLL's exact online ridge over all classes seen, restricted to the
  experience's classes at evaluation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from ..evaluate.metrics import accuracy
from ..evaluate.plots import plot_accuracy_matrix
from ..runtime.files import RUNNER_HINT, check_output, publish, work_dir
from ..models.classifier import PooledClassifier, head_inputs, load_trainable, trainable_state
from ..models.encoder import load_encoder, load_tokenizer, resolve_model
from ..models.ridge import fit_ridge
from ..runtime.aggregation import merge_models
from ..runtime.batching import eval_batches
from ..runtime.evaluation import evaluate_classifier
from ..runtime.local_training import local_batch_indices, local_sgd
from .config import ContinualConfig
from .ewc import EWCPenalty, fisher_diagonal
from .metrics import summarize
from .schedule import Experience, build_experiences
from .scroll import ScrollClassifier, predict_within


@dataclass
class ContinualResult:
    experiences: list[str]
    matrix: list[list[float | None]]  # R[i][j], None for j > i
    summary: dict[str, float]
    state: dict[str, torch.Tensor] | None = None  # final encoder (None for scroll)
    scroll_head: object | None = None  # final RidgeHead (scroll)


def _batches(rows: list[dict], tokenizer, size: int) -> Iterator[dict[str, torch.Tensor]]:
    return (batch for _, batch in eval_batches(rows, tokenizer, size))


def pretrained_features(model: nn.Module, rows: list[dict], tokenizer, batch_size: int) -> torch.Tensor:
    """Mean-pooled features of the model as it is (the pretrained encoder before any training)."""
    return torch.cat([f for f, _ in head_inputs(model, _batches(rows, tokenizer, batch_size))])


def _frozen_head(cfg: ContinualConfig, feats: torch.Tensor, exp: Experience) -> nn.Linear:
    labels = torch.tensor([r["labels"] for r in exp.train])
    head = fit_ridge(feats, labels, exp.num_labels, cfg.head.lam)
    head = (head.normalized() if cfg.head.normalize else head).to(torch.float32)
    linear = nn.Linear(head.dim, head.num_classes).requires_grad_(False)
    with torch.no_grad():
        linear.weight.copy_(head.weight)
        linear.bias.copy_(head.bias)
    return linear


def run_continual(cfg: ContinualConfig, progress: bool = True) -> ContinualResult:
    """Run the configured stream; publishes `cfg.output.dir` (matrix.json, plot, config)."""
    out = Path(cfg.output.dir)
    check_output(out, cfg.output.overwrite, RUNNER_HINT)
    resolve_model(cfg.model)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = load_tokenizer(cfg.model)
    exps = build_experiences(cfg, tok)
    torch.manual_seed(cfg.seed)
    model = PooledClassifier(load_encoder(cfg.model), 1, cfg.head.temperature)
    feats = [pretrained_features(model, e.train, tok, cfg.eval_batch_size) for e in exps]
    if cfg.strategy == "scroll":
        result = _run_scroll(cfg, model, tok, exps, feats, progress)
    else:
        result = _run_training(cfg, model, tok, exps, feats, progress)
    _write_output(cfg, result)
    return result


def _run_scroll(cfg, model, tok, exps, feats, progress) -> ContinualResult:
    num_classes = 1 + max(c for e in exps for c in e.classes)
    scroll = ScrollClassifier(feats[0].shape[1], num_classes, cfg.scroll.lam)
    eval_feats = [pretrained_features(model, e.eval, tok, cfg.eval_batch_size) for e in exps]
    matrix: list[list[float | None]] = []
    for t, exp in enumerate(tqdm(exps, desc="experiences", disable=not progress)):
        scroll.observe(feats[t], exp.global_labels(exp.train), cfg.scroll.chunk_size)
        head = scroll.head()
        row = [accuracy(predict_within(head, eval_feats[j], exps[j].classes), [r["labels"] for r in exps[j].eval])
               for j in range(t + 1)]  # fmt: skip
        matrix.append(row + [None] * (len(exps) - t - 1))
    return ContinualResult([e.name for e in exps], matrix, summarize(matrix), scroll_head=head)


def _run_training(cfg, model, tok, exps, feats, progress) -> ContinualResult:
    heads = [_frozen_head(cfg, f, e) for f, e in zip(feats, exps)]
    model.head = heads[0]
    theta0 = trainable_state(model)
    running = theta0
    experts: list[dict[str, torch.Tensor]] = []
    ewc = EWCPenalty(cfg.ewc.lam) if cfg.ewc is not None else None
    matrix: list[list[float | None]] = []
    for t, exp in enumerate(tqdm(exps, desc="experiences", disable=not progress)):
        model.head = heads[t]
        load_trainable(model, theta0 if cfg.strategy == "merge" else running)
        seed = cfg.seed * 1_000_003 + t
        batches = local_batch_indices(len(exp.train), cfg.train.batch_size, 1, cfg.train.steps, seed)
        upd = local_sgd(model, exp.train, tok, batches, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                        corrections=[ewc] if ewc is not None else (), seed=seed)  # fmt: skip
        if cfg.strategy == "merge":
            experts.append(upd.state)
            running = merge_models(cfg.merge, experts, theta0, [1.0] * len(experts), seed=cfg.seed)
        else:
            running = upd.state
        load_trainable(model, running)
        if ewc is not None:
            ewc.add_task(_fisher(cfg, model, exp, tok), running)
        row = []
        for j in range(t + 1):
            model.head = heads[j]
            row.append(evaluate_classifier(model, exps[j].eval, tok, cfg.eval_batch_size).accuracy)
        matrix.append(row + [None] * (len(exps) - t - 1))
    return ContinualResult([e.name for e in exps], matrix, summarize(matrix), state=running)


def _fisher(cfg: ContinualConfig, model: nn.Module, exp: Experience, tok) -> dict[str, torch.Tensor]:
    rows = exp.train[: cfg.ewc.samples]
    g = torch.Generator().manual_seed(cfg.seed)
    return fisher_diagonal(model, _batches(rows, tok, 1), estimator=cfg.ewc.estimator, generator=g)


def _write_output(cfg: ContinualConfig, result: ContinualResult) -> None:
    out = Path(cfg.output.dir)
    stage = work_dir(out)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    report = {"strategy": cfg.strategy, "experiences": result.experiences, "accuracy": result.matrix, **result.summary}
    (stage / "matrix.json").write_text(json.dumps(report, indent=1))
    (stage / "config.yaml").write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    plot_accuracy_matrix([[v if v is not None else 0.0 for v in r] for r in result.matrix], result.experiences,
                         stage / "accuracy_matrix.png", title=f"Continual ({cfg.strategy}): accuracy after each step")  # fmt: skip
    publish(stage, out, cfg.output.overwrite, RUNNER_HINT)
