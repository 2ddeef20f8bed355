"""The fine-tuning recipe: setup, an explicit training loop, save (torchtune / nanoGPT style).

One code path for every launcher (`train.batch_size` is per process):

    python finetune/finetune.py finetune/configs/minilm_frozen_head_dense.yaml train.max_steps=200
    accelerate launch --cpu --num_processes 2 finetune/finetune.py CONFIG [key.sub=value ...]
    accelerate launch --num_processes 4 finetune/finetune.py CONFIG        # 4 GPUs
    mergekit-het finetune CONFIG [--overwrite] [--resume] [key.sub=value ...]

Modes: `dense` (full fine-tuning), `undertrained` (stop after budget_fraction·max_steps steps
while the LR schedule spans max_steps; Horoi et al., arXiv:2506.14126), `talos` (sparse, masked
AdamW, `talos.py`), `lora` (peft). The run writes into `.<out>.partial/` (resumable checkpoints
every `train.checkpoint_every` steps, `resume=true` continues from the latest) and renames the
finished expert to `output.dir`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models.classifier import PooledClassifier
from ..models.encoder import HEAD_FILE, load_tokenizer
from . import io
from .config import FinetuneConfig
from .data import TaskData, eval_batches, tokenize, train_batches
from .optim import MaskedAdamW
from .setup import apply_lora, build_model, freeze_for_talos, preflight, talos_masks
from .talos import mask_fraction

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


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


@torch.no_grad()
def evaluate(model, ds, tokenizer, cfg: FinetuneConfig, accelerator) -> dict[str, float]:
    """Accuracy and mean cross-entropy on a tokenized split (next-token for causal LM), all
    processes together (each takes `[rank::world]` of the split)."""
    causal = cfg.protocol == "causal_lm"
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # correct, count, loss
    for batch in eval_batches(ds, tokenizer, batch_size=cfg.train.eval_batch_size, rank=accelerator.process_index,
                              world=accelerator.num_processes, causal_lm=causal):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        with accelerator.autocast():
            logits = model(**batch).logits.float()
        if causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        valid = labels != -100
        logits, labels = logits[valid], labels[valid]
        sums += torch.stack([
            (logits.argmax(-1) == labels).sum().double(),
            torch.tensor(float(labels.numel()), device=sums.device, dtype=torch.float64),
            torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
        ])
    sums = accelerator.reduce(sums, "sum") if accelerator.num_processes > 1 else sums
    model.train(was_training)
    n = max(float(sums[1]), 1.0)
    return {"accuracy": float(sums[0]) / n, "loss": float(sums[2]) / n, "examples": int(sums[1])}


def _masks_by_saved_name(model, masks, cfg: FinetuneConfig) -> dict[str, torch.Tensor]:
    """TaLoS masks keyed like the saved expert's tensors (the base checkpoint's names)."""
    if isinstance(model, PooledClassifier):
        stripped = {n.removeprefix("encoder."): m for n, m in masks.items()}
        return io.align_to_base(stripped, cfg.model, model.encoder.base_model_prefix, fill=False)
    return io.align_to_base(masks, cfg.model, model.base_model_prefix, fill=False)


def save_expert(model, cfg: FinetuneConfig, tokenizer, folder: Path, info: dict, masks=None, head_file=None) -> None:
    """Write one expert folder: weights (or a LoRA adapter), tokenizer, head, mask, expert.json."""
    folder.mkdir(parents=True, exist_ok=True)
    lora = cfg.mode == "lora"
    net = model.encoder if isinstance(model, PooledClassifier) else model
    if lora:
        net.save_pretrained(folder)  # adapter_config.json + adapter_model.safetensors
    else:
        prefix = getattr(net, "base_model_prefix", "")
        if isinstance(model, PooledClassifier):  # encoder under the base checkpoint's names
            state = io.align_to_base(net.state_dict(), cfg.model, prefix)
            io.save_state_dict(state, folder)
            net.config.save_pretrained(folder)
        else:
            net.save_pretrained(folder)
            state = io.align_to_base(net.state_dict(), cfg.model, prefix, fill=False)
        if cfg.output.save_task_vector:
            io.save_task_vector(state, cfg.model, folder / io.TASK_VECTOR_FILE)
    tokenizer.save_pretrained(folder)
    if head_file is not None:
        shutil.copyfile(head_file, folder / HEAD_FILE)
    if masks is not None:
        io.save_masks(_masks_by_saved_name(model, masks, cfg), folder / io.MASK_FILE,
                      {"sparsity": str(cfg.talos.sparsity)})
    io.write_json(folder / io.EXPERT_FILE, info)


def _expert_info(cfg: FinetuneConfig, data: TaskData, step: int, masks, metrics: dict, world: int) -> dict:
    return {
        "format": "mergekit-het expert v1",
        "base_model": str(Path(cfg.model).resolve()) if Path(cfg.model).is_dir() else cfg.model,
        "protocol": cfg.protocol,
        "mode": cfg.mode,
        "task": {"name": data.task.name, "task_file": str(cfg.data.task_file), "num_labels": data.num_labels,
                 "train_examples": len(data.splits["train"])},
        "steps": step,
        "max_steps": cfg.train.max_steps,
        "budget_fraction": cfg.train.budget_fraction,
        "sparsity": None if masks is None else {"requested": cfg.talos.sparsity, "trainable_fraction": mask_fraction(masks)},
        "seed": cfg.train.seed,
        "processes": world,
        "metrics": metrics,
        "config": json.loads(cfg.model_dump_json()),
    }


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finetune(cfg: FinetuneConfig) -> dict:
    """Run the recipe end to end; returns the written expert's info (expert.json)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # lets torchrun-style launches use gloo on CPU-only hosts
        mixed_precision=cfg.train.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main, t = accelerator.is_main_process, cfg.train
    out = Path(cfg.output.dir)
    work = io.work_dir(out)
    data = preflight(cfg)  # one-line errors before any weight is read
    if main:
        if work.exists() and not cfg.resume:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(t.seed)

    # --- setup -------------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg, tokenizer, data, accelerator, work)
    masks, opt_masks = None, {}
    if cfg.mode == "talos":
        masks = talos_masks(cfg, model, tokenizer, data, accelerator, work)
        opt_masks = freeze_for_talos(cfg, model, masks)
    if cfg.mode == "lora":
        model = apply_lora(cfg, model)
    head_file = (cfg.head.path or work / HEAD_FILE) if cfg.protocol == "frozen_head" else None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = MaskedAdamW(params, opt_masks, lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    scheduler = get_scheduler(SCHEDULES[t.schedule], optimizer, num_warmup_steps=t.warmup_steps,
                              num_training_steps=t.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    start, history = 0, []
    ckpts = sorted((work / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:])) if cfg.resume else []
    if ckpts:
        accelerator.load_state(str(ckpts[-1]))
        state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
        start, history = state["step"], state["history"]
        accelerator.print(f"resumed from {ckpts[-1]} at step {start}")
    causal = cfg.protocol == "causal_lm"
    split_tok = {s: tokenize(ds, tokenizer, cfg.data.max_length, causal) for s, ds in data.splits.items()}
    batches = train_batches(split_tok["train"], tokenizer, batch_size=t.batch_size, seed=t.seed,
                            rank=accelerator.process_index, world=accelerator.num_processes,
                            start_step=start, causal_lm=causal)
    unwrapped = accelerator.unwrap_model

    # --- loop --------------------------------------------------------------------------------
    steps, window, train_time = t.steps_to_run, [], 0.0
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"{cfg.mode} {data.task.name}",
               disable=not main)
    for step in bar:
        batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
        tic = time.perf_counter()
        window.append(train_step(model, batch, optimizer, scheduler, accelerator, t.grad_clip))
        train_time += time.perf_counter() - tic
        done = step + 1
        if done % t.log_every == 0 or done == steps:
            loss = float(accelerator.reduce(torch.tensor(sum(window) / len(window), device=accelerator.device),
                                            "mean"))
            history.append({"step": done, "loss": loss, "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            window = []
        if t.eval_every and done % t.eval_every == 0 and done < steps:
            ev = evaluate(model, split_tok["validation"], tokenizer, cfg, accelerator)
            history.append({"step": done, "split": "validation", **ev})
            accelerator.print(f"step {done}: validation accuracy {ev['accuracy']:.4f} loss {ev['loss']:.4f}")
        if done in t.snapshot_steps:
            accelerator.wait_for_everyone()
            if main:
                info = _expert_info(cfg, data, done, masks, {}, accelerator.num_processes)
                save_expert(unwrapped(model), cfg, tokenizer, work / "expert" / "snapshots" / f"step_{done}",
                            info, masks, head_file)
        if t.checkpoint_every and done % t.checkpoint_every == 0 and done < steps:
            ckpt = work / "checkpoints" / f"step_{done}"
            accelerator.save_state(str(ckpt))
            if main:
                io.write_json(ckpt / "trainer_state.json", {"step": done, "history": history})
                for old in (work / "checkpoints").glob("step_*"):
                    if old != ckpt:
                        shutil.rmtree(old)
    bar.close()

    # --- evaluate and save -------------------------------------------------------------------
    metrics = {f"{s}_{k}": v for s in ("validation", "test")
               for k, v in evaluate(model, split_tok[s], tokenizer, cfg, accelerator).items()}
    ran = steps - start
    metrics.update(train_steps_this_run=ran, train_seconds=round(train_time, 3),
                   samples_per_second=round(ran * t.batch_size * accelerator.num_processes / max(train_time, 1e-9), 2),
                   device=str(accelerator.device))
    history.append({"step": steps, "split": "validation", "accuracy": metrics["validation_accuracy"],
                    "loss": metrics["validation_loss"]})
    info = _expert_info(cfg, data, steps, masks, metrics, accelerator.num_processes)
    accelerator.wait_for_everyone()
    if main:
        folder = work / "expert"
        save_expert(unwrapped(model), cfg, tokenizer, folder, info, masks, head_file)
        (folder / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        _plot(history, folder / "training_curve.png")
        io.publish(folder, out, cfg.output.overwrite)
        shutil.rmtree(work, ignore_errors=True)
        accelerator.print(
            f"wrote {out}: validation accuracy {metrics['validation_accuracy']:.4f}, "
            f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['samples_per_second']} samples/s"
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return info
