"""The pieces of the fine-tuning loop (`recipe.py` calls them in order): the accelerator, one
optimizer step, evaluation of a split, resumable checkpoints, the training curve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..runtime.batching import eval_batches
from ..runtime.evaluation import eval_mode, evaluate_batches
from ..runtime.resume import resume_message
from . import io
from .config import FinetuneConfig

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"


def make_accelerator(mixed_precision: str):
    """`accelerate.Accelerator` for this launch (one process, `accelerate launch` or torchrun)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    return Accelerator(
        cpu=not torch.cuda.is_available(),  # lets torchrun-style launches use gloo on CPU-only hosts
        mixed_precision=mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def make_scheduler(cfg: FinetuneConfig, optimizer):
    """The LR schedule over the FULL budget `train.max_steps` (an undertrained run stops early)."""
    from transformers import get_scheduler

    t = cfg.train
    return get_scheduler(SCHEDULES[t.schedule], optimizer, num_warmup_steps=t.warmup_steps,
                         num_training_steps=t.max_steps)  # fmt: skip


def train_step(model, batch, optimizer, scheduler, accelerator, grad_clip: float | None) -> float:
    """One optimizer step on this process's batch; returns the (local) loss."""
    with accelerator.autocast():
        loss = model(**batch).loss
    accelerator.backward(loss)
    if grad_clip is not None:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def mean_over_processes(values: list[float], accelerator) -> float:
    """The mean of this process's `values`, averaged over all processes."""
    local = torch.tensor(sum(values) / len(values), device=accelerator.device)
    return float(accelerator.reduce(local, "mean"))


def evaluate(model, rows: list[dict], tokenizer, cfg: FinetuneConfig, accelerator) -> dict[str, float]:
    """Accuracy and mean cross-entropy on a tokenized split (next-token for causal LM), all
    processes together (each takes `[rank::world]` of the split)."""
    causal, world = cfg.protocol == "causal_lm", accelerator.num_processes
    batches = eval_batches(rows, tokenizer, cfg.train.eval_batch_size, rank=accelerator.process_index, world=world,
                           causal_lm=causal, device=accelerator.device)  # fmt: skip

    def logits(batch):
        with accelerator.autocast():
            return model(**batch).logits

    with eval_mode(model):
        totals = evaluate_batches(logits, batches, causal_lm=causal, device=accelerator.device,
                                  reduce=(lambda s: accelerator.reduce(s, "sum")) if world > 1 else None)  # fmt: skip
    return {"accuracy": totals.accuracy, "loss": totals.mean_loss, "examples": totals.count}


def save_checkpoint(accelerator, work: Path, step: int, history: list[dict]) -> None:
    """accelerate state + `trainer_state.json` under `work/checkpoints/step_N`; older ones removed."""
    ckpt = work / CHECKPOINTS / f"step_{step}"
    accelerator.save_state(str(ckpt))
    if accelerator.is_main_process:
        io.write_json(ckpt / TRAINER_STATE, {"step": step, "history": history})  # last, atomically: marks it complete
        for old in (work / CHECKPOINTS).glob("step_*"):
            if old != ckpt:
                shutil.rmtree(old)


def resume_latest(accelerator, work: Path) -> tuple[int, list[dict]]:
    """Load the latest checkpoint of `work` if there is one: (its step, its history), else (0, [])."""
    ckpts = sorted((p for p in (work / CHECKPOINTS).glob("step_*") if (p / TRAINER_STATE).is_file()), key=lambda p: int(p.name[5:]))
    if not ckpts:
        return 0, []
    accelerator.load_state(str(ckpts[-1]))
    state = json.loads((ckpts[-1] / TRAINER_STATE).read_text())
    accelerator.print(resume_message("step", state["step"], work))
    return state["step"], state["history"]


def write_history(history: list[dict], folder: Path) -> None:
    """`train_log.jsonl` (one entry per line) and `training_curve.png` (train loss, val accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (folder / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    tr = [h for h in history if "loss" in h and "split" not in h]
    ax.plot([h["step"] for h in tr], [h["loss"] for h in tr], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ev = [h for h in history if h.get("split") == "validation"]
    if ev:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in ev], [h["accuracy"] for h in ev], "o-", color="C1", label="val accuracy")
        ax2.set_ylabel("validation accuracy")
    ax.set_title("fine-tuning")
    fig.tight_layout()
    fig.savefig(folder / "training_curve.png", dpi=100)
    plt.close(fig)
