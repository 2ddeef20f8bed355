"""The federated loop: sample clients, train locally, merge through the engine, server step.

```
mergekit-het federated finetune/federated/austen_fedavg.yaml output.dir=runs/fed/a
```
```python
for rnd in range(start, cfg.rounds):
    ids = sample_clients(K, cfg.clients_per_round, sampler)
    ghbm.before_round(x)                                   # GHBM queue
    updates = [train_client(model ← x, client rows, prox/ghbm hooks) for k in ids]
    merged = aggregate(x, updates, cfg.aggregate)          # merge_state_dicts, weights n_k
    x = server.step(x, x − merged)                         # server lr / momentum
    ghbm.after_round(x)                                    # m = (x^{t+1−τ} − x^{t+1}) / τ
    history.append(evaluate(x)); save_state(...)           # resumable after every round
```
All randomness is a function of `seed`: the client sampler's generator is checkpointed and
client k's batch order and dropout in round t are seeded by (seed, t, k), so a resumed run
gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..evaluate.metrics import accuracy
from ..evaluate.plots import plot_curves
from ..finetune.data import collate, tokenize
from ..finetune.io import check_output, publish, work_dir
from ..models.encoder import HEAD_FILE, load_tokenizer, resolve_model
from ..models.ridge import RidgeHead
from ..data.tasks import load_split, load_task_file, num_labels_of
from .config import FederatedConfig
from .fed3r import client_statistics, server_solve
from .model import build_model, load_trainable, set_head, trainable_state
from .partition import make_partition
from .server import GHBMState, ServerOptimizer, aggregate, pseudo_gradient, sample_clients
from .state import RoundState, load_state, save_state
from .workers import RoundTask, make_trainer, resolve_device

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


@torch.no_grad()
def evaluate_rows(model: torch.nn.Module, rows: list[dict], tokenizer, batch_size: int, temperature: float) -> dict[str, float]:
    """Accuracy and mean cross-entropy of logits / T (batches of similar length, eval mode, on
    the model's device)."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    was_training = model.training
    model.eval()
    preds, labels, loss = [], [], 0.0
    for i in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in collate([rows[j] for j in order[i : i + batch_size]], tokenizer).items()}
        logits = model(batch) / temperature
        loss += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
        preds.append(logits.argmax(-1).cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    return {"accuracy": accuracy(torch.cat(preds), torch.cat(labels)), "loss": loss / len(rows)}


def evaluate_all(model: torch.nn.Module, data: FederatedData, cfg: FederatedConfig, temperature: float) -> dict[str, float]:
    """The eval split's accuracy/loss, plus `<split>_accuracy`/`<split>_loss` of the extra splits."""
    out = evaluate_rows(model, data.eval, data.tokenizer, cfg.eval_batch_size, temperature)
    for split, rows in data.extra_eval.items():
        res = evaluate_rows(model, rows, data.tokenizer, cfg.eval_batch_size, temperature)
        out.update({f"{split}_{k}": v for k, v in res.items()})
    return out


def fed3r_init(cfg: FederatedConfig, model: torch.nn.Module, data: FederatedData, work: Path) -> RidgeHead:
    """Every client's statistics on the pretrained network, summed and solved (cached in `work`)."""
    path = work / FED3R_FILE
    if path.is_file():
        return RidgeHead.load(path)
    stats = (
        client_statistics(model, data.client_rows(k), data.tokenizer, data.num_labels, cfg.eval_batch_size,
                          next(model.parameters()).device)
        for k in tqdm(range(cfg.partition.num_clients), desc="fed3r clients", leave=False)
    )
    head = server_solve(stats, cfg.fed3r.lam, cfg.fed3r.normalize)
    head.metadata["temperature"] = str(cfg.fed3r.temperature)
    head.save(path)
    return head


def run_federated(
    cfg: FederatedConfig, on_round: Callable[[int, dict[str, Any]], None] | None = None, progress: bool = True
) -> FederatedResult:
    """Run (or resume) the configured federated training; publishes `cfg.output.dir` (history,
    accuracy plot, partition, final model) when complete. `on_round(t, entry)` is called after
    every round t (and with t = 0 and the initial evaluation on a fresh start)."""
    out = Path(cfg.output.dir)
    work = work_dir(out)
    if not (cfg.resume and (work / "state").is_dir()):
        check_output(out, cfg.output.overwrite)
        shutil.rmtree(work, ignore_errors=True)
    resolve_model(cfg.model)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = load_data(cfg)
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg.model, cfg.protocol, data.num_labels, cfg.seed, data.tokenizer.pad_token_id).to(device)
    temperature = cfg.head_temperature
    if cfg.fed3r is not None:
        set_head(model, fed3r_init(cfg, model, data, work))
        if cfg.fed3r.freeze_head:
            model.head.requires_grad_(False)
    sampler = torch.Generator().manual_seed(cfg.seed)
    server = ServerOptimizer(cfg.server.lr, cfg.server.momentum)
    ghbm = GHBMState(cfg.ghbm.tau) if cfg.ghbm else None
    st = load_state(work) if cfg.resume else None
    if st is None:
        st = RoundState(0, {k: v.cpu() for k, v in trainable_state(model).items()})
        st.history.append({"round": 0, **evaluate_all(model, data, cfg, temperature)})
        if on_round is not None:
            on_round(0, st.history[0])
    else:
        server.load_state_dict(st.server)
        if ghbm is not None:
            ghbm.load_state_dict(st.ghbm)
        sampler.set_state(st.rng)
    x = st.global_state
    bar = tqdm(range(st.round, cfg.rounds), desc="rounds", initial=st.round, total=cfg.rounds, disable=not progress)
    with make_trainer(cfg, model, data, device) as trainer:
        for rnd in bar:
            start = time.perf_counter()
            ids = sample_clients(cfg.partition.num_clients, cfg.clients_per_round, sampler)
            if ghbm is not None:
                ghbm.before_round(x)
            updates = trainer.train(RoundTask(rnd, ids, x, ghbm.momentum if ghbm is not None else None))
            merged = aggregate(x, updates, cfg.aggregate, seed=cfg.seed + rnd)
            x = server.step(x, pseudo_gradient(x, merged))
            if ghbm is not None:
                ghbm.after_round(x)
            entry: dict[str, Any] = {
                "round": rnd + 1, "clients": ids, "examples": [u.num_examples for u in updates],
                "train_loss": sum(u.loss for u in updates) / len(updates),
                "train_seconds": round(time.perf_counter() - start, 3),
            }  # fmt: skip
            if (rnd + 1) % cfg.eval_every == 0 or rnd + 1 == cfg.rounds:
                load_trainable(model, x)
                entry.update(evaluate_all(model, data, cfg, temperature))
                bar.set_postfix(acc=f"{entry['accuracy']:.3f}")
            entry["seconds"] = round(time.perf_counter() - start, 2)
            st = RoundState(rnd + 1, x, server.state_dict(), ghbm.state_dict() if ghbm else {}, sampler.get_state(),
                            st.history + [entry])  # fmt: skip
            if (rnd + 1) % cfg.checkpoint_every == 0:
                save_state(work, st)
            if on_round is not None:
                on_round(rnd + 1, entry)
    load_trainable(model, x)
    _write_output(cfg, model, data, st.history, work, temperature)
    return FederatedResult(st.history, x)


def _write_output(cfg: FederatedConfig, model, data: FederatedData, history: list[dict], work: Path, temperature: float) -> None:
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
        save_model(model, stage / "model", data.tokenizer, temperature)
    publish(stage, Path(cfg.output.dir), cfg.output.overwrite)
    shutil.rmtree(work, ignore_errors=True)


def save_model(model: torch.nn.Module, folder: Path, tokenizer, temperature: float) -> None:
    """pooled_head: the encoder as a HF folder + `head.safetensors` (loadable by
    `EncoderWithFrozenHead.from_folder`); classifier: the HF model. Tokenizer alongside."""
    if hasattr(model, "encoder"):
        model.encoder.save_pretrained(folder)
        RidgeHead(model.head.weight.detach().cpu().clone(), model.head.bias.detach().cpu().clone(),
                  {"temperature": str(temperature), "pooling": "mean"}).save(folder / HEAD_FILE)  # fmt: skip
    else:
        model.net.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
