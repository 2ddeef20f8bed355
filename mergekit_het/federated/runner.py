"""The federated loop: the strategy's hooks round after round, resumable.

```
mergekit-het federated federated/configs/minilm_austen.yaml output.dir=runs/fed/a
```
```python
strategy = build_strategy(cfg, device)                 # FedAvg + the configured variants
strategy.initialize(model, client statistics)          # Fed3R's ridge head (else nothing)
for rnd in range(start, cfg.rounds):
    task = strategy.configure(rnd, x)                  # sampled clients + what they receive
    updates = [strategy.client_update(model, rows_k, task, k) for k in task.clients]
    x = strategy.server_step(x, strategy.aggregate(x, updates, rnd))   # engine merge, server step
    history.append(evaluate(x)); save_state(...)       # resumable after every round
```
All randomness is a function of `seed`: the client sampler's generator is checkpointed with the
strategy and client k's batch order and dropout in round t are seeded by (seed, t, k), so a
resumed run gives the same result as an uninterrupted one. A resume refuses a config whose
result-changing keys differ from the saved run's (`allow_config_change` overrides).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..evaluate.plots import plot_curves
from ..runtime.batching import tokenize
from ..runtime.device import resolve_device
from ..runtime.files import RUNNER_HINT, check_output, drop_published_work, publish_run, work_dir
from ..models.encoder import HEAD_FILE, load_tokenizer, resolve_model
from ..models.ridge import RidgeStatistics
from ..data.tasks import load_split, load_task_file, num_labels_of
from ..models.classifier import build_classifier, load_trainable, trainable_state
from ..runtime.evaluation import evaluate_classifier
from ..runtime.resume import check_resume, resume_message
from .config import RESUME_FREE_KEYS, FederatedConfig
from .fed3r import client_statistics
from .partition import make_partition
from .state import RoundState, load_state, save_state
from .strategy import FedAvg, build_strategy
from .workers import make_trainer

FED3R_FILE = "fed3r_head.safetensors"


@dataclass
class FederatedResult:
    history: list[dict[str, Any]]  # one entry per round (round 0: the initial model)
    global_state: dict[str, torch.Tensor]  # final trainable parameters


@dataclass
class FederatedData:
    task: str
    num_labels: int
    tokenizer: Any
    train: list[dict]  # tokenized rows with labels
    eval: list[dict]
    partition: list[list[int]]
    extra_eval: dict[str, list[dict]] = field(default_factory=dict)  # split name -> tokenized rows

    def client_rows(self, k: int) -> list[dict]:
        return [self.train[i] for i in self.partition[k]]


def load_data(cfg: FederatedConfig) -> FederatedData:
    """Task splits (train capped by a seeded subset, eval by its first examples), tokenized, and
    the client partition of the train examples."""
    task = load_task_file(cfg.data.task_file, [cfg.data.task])[0]
    tok = load_tokenizer(cfg.model)
    train = load_split(task, "train")
    if cfg.data.max_train_examples is not None and len(train) > cfg.data.max_train_examples:
        train = train.shuffle(seed=cfg.seed).select(range(cfg.data.max_train_examples))

    def eval_rows(split: str) -> list[dict]:
        ev = load_split(task, split)
        if cfg.data.max_eval_examples is not None and len(ev) > cfg.data.max_eval_examples:
            ev = ev.select(range(cfg.data.max_eval_examples))
        return tokenize(ev, tok, cfg.data.max_length)

    parts = make_partition(train["label"], cfg.partition, cfg.seed)
    extra = {s: eval_rows(s) for s in cfg.data.extra_eval_splits}
    return FederatedData(task.name, num_labels_of(task), tok, tokenize(train, tok, cfg.data.max_length),
                         eval_rows(cfg.data.eval_split), parts, extra)  # fmt: skip


def _scores(model: torch.nn.Module, rows: list[dict], tokenizer, batch_size: int) -> dict[str, float]:
    totals = evaluate_classifier(model, rows, tokenizer, batch_size)
    return {"accuracy": totals.accuracy, "loss": totals.mean_loss}


def evaluate_all(model: torch.nn.Module, data: FederatedData, cfg: FederatedConfig) -> dict[str, float]:
    """The eval split's accuracy/loss, plus `<split>_accuracy`/`<split>_loss` of the extra splits."""
    out = _scores(model, data.eval, data.tokenizer, cfg.eval_batch_size)
    for split, rows in data.extra_eval.items():
        res = _scores(model, rows, data.tokenizer, cfg.eval_batch_size)
        out.update({f"{split}_{k}": v for k, v in res.items()})
    return out


def all_client_statistics(cfg: FederatedConfig, model: torch.nn.Module, data: FederatedData) -> Iterator[RidgeStatistics]:
    """Every client's Fed3R statistics A_k, b_k on the model as it is (the pretrained network)."""
    device = next(model.parameters()).device
    for k in tqdm(range(cfg.partition.num_clients), desc="fed3r clients", leave=False):
        yield client_statistics(model, data.client_rows(k), data.tokenizer, data.num_labels, cfg.eval_batch_size, device)


def _start(cfg: FederatedConfig, work: Path) -> RoundState | None:
    """The saved state to resume from (None: a fresh start; the output must then be free)."""
    drop_published_work(Path(cfg.output.dir), work)  # a run killed after publishing is finished, not resumable
    st = load_state(work) if cfg.resume else None
    if st is None:
        check_output(Path(cfg.output.dir), cfg.output.overwrite, RUNNER_HINT)
        shutil.rmtree(work, ignore_errors=True)
        return None
    if cfg.rounds < st.round:
        raise ConfigError(f"rounds: {cfg.rounds}, but the interrupted run in {work} has completed {st.round} rounds")
    if not cfg.allow_config_change:
        check_resume(st.config, _config_json(cfg), RESUME_FREE_KEYS, f"the interrupted run in {work}", "--allow-config-change")
    print(resume_message("round", st.round, work))
    return st


def _config_json(cfg: FederatedConfig) -> dict[str, Any]:
    return json.loads(cfg.model_dump_json())


def run_federated(
    cfg: FederatedConfig, on_round: Callable[[int, dict[str, Any]], None] | None = None, progress: bool = True
) -> FederatedResult:
    """Run (or resume) the configured federated training; publishes `cfg.output.dir` (history,
    accuracy plot, partition, final model) when complete. `on_round(t, entry)` is called after
    every round t (and with t = 0 and the initial evaluation on a fresh start)."""
    work = work_dir(Path(cfg.output.dir))
    st = _start(cfg, work)
    resolve_model(cfg.model)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = load_data(cfg)
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, data).to(device)
    strategy = build_strategy(cfg, device)
    strategy.initialize(model, lambda: all_client_statistics(cfg, model, data), work / FED3R_FILE)
    if st is None:
        st = RoundState(0, {k: v.cpu() for k, v in trainable_state(model).items()}, config=_config_json(cfg))
        st.history.append({"round": 0, **evaluate_all(model, data, cfg)})
        if on_round is not None:
            on_round(0, st.history[0])
    else:
        strategy.load_state_dict(st.strategy)
    with make_trainer(cfg, strategy, model, data, device) as trainer:
        st = _rounds(cfg, strategy, trainer, model, data, st, work, on_round, progress)
    load_trainable(model, st.global_state)
    _write_output(cfg, model, data, st.history, work)
    return FederatedResult(st.history, st.global_state)


def _rounds(cfg: FederatedConfig, strategy: FedAvg, trainer, model, data: FederatedData, st: RoundState, work: Path,
            on_round, progress: bool) -> RoundState:  # fmt: skip
    """Rounds st.round .. cfg.rounds − 1: configure, train, aggregate, server step, evaluate, save."""
    x = st.global_state
    bar = tqdm(range(st.round, cfg.rounds), desc="rounds", initial=st.round, total=cfg.rounds, disable=not progress)
    for rnd in bar:
        start = time.perf_counter()
        task = strategy.configure(rnd, x)
        updates = trainer.train(task)
        x = strategy.server_step(x, strategy.aggregate(x, updates, rnd))
        entry: dict[str, Any] = {
            "round": rnd + 1, "clients": task.clients, "examples": [u.num_examples for u in updates],
            "train_loss": sum(u.loss for u in updates) / len(updates),
            "train_seconds": round(time.perf_counter() - start, 3),
        }  # fmt: skip
        if (rnd + 1) % cfg.eval_every == 0 or rnd + 1 == cfg.rounds:
            load_trainable(model, x)
            entry.update(evaluate_all(model, data, cfg))
            bar.set_postfix(acc=f"{entry['accuracy']:.3f}")
        entry["seconds"] = round(time.perf_counter() - start, 2)
        st = RoundState(rnd + 1, x, strategy.state_dict(), st.history + [entry], _config_json(cfg))
        if (rnd + 1) % cfg.checkpoint_every == 0:
            save_state(work, st)
        if on_round is not None:
            on_round(rnd + 1, entry)
    return st


def _write_output(cfg: FederatedConfig, model, data: FederatedData, history: list[dict], work: Path) -> None:
    stage = work / "output"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    (stage / "history.json").write_text(json.dumps(history, indent=1))
    (stage / "config.yaml").write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    sizes = [len(p) for p in data.partition]
    hist = [[sum(1 for i in p if data.train[i]["labels"] == c) for c in range(data.num_labels)] for p in data.partition]
    (stage / "partition.json").write_text(json.dumps({"sizes": sizes, "label_counts": hist}))
    evals = [(h["round"], h["accuracy"]) for h in history if "accuracy" in h]
    plot_curves({cfg.output.dir.name: ([r for r, _ in evals], [a for _, a in evals])}, stage / "accuracy.png",
                title=f"Federated {data.task}: global test accuracy")  # fmt: skip
    if cfg.output.save_model:
        save_model(model, stage / "model", data.tokenizer)
    publish_run(stage, Path(cfg.output.dir), cfg.output.overwrite, work, RUNNER_HINT)


def build_model(cfg: FederatedConfig, data: FederatedData) -> torch.nn.Module:
    """The configured classifier with a new head initialized from `seed`, logits / T (T =
    `head_temperature`)."""
    return build_classifier(cfg.model, cfg.protocol, data.num_labels, cfg.seed, data.tokenizer.pad_token_id,
                            cfg.head_temperature)  # fmt: skip


def save_model(model: torch.nn.Module, folder: Path, tokenizer) -> None:
    """pooled_head: the encoder as a HF folder + `head.safetensors` (loadable by
    `PooledClassifier.from_folder`); classifier: the HF model. Tokenizer alongside."""
    if hasattr(model, "encoder"):
        model.encoder.save_pretrained(folder)
        model.ridge_head().save(folder / HEAD_FILE)
    else:
        model.net.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
