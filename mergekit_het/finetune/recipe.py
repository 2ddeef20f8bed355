"""The fine-tuning recipe: setup, an explicit training loop, save (torchtune / nanoGPT style).

Every launcher runs this recipe (`train.batch_size` is per process):

    mergekit-het finetune finetune/configs/minilm_frozen_head_dense.yaml train.max_steps=200
    python finetune/finetune.py finetune/configs/minilm_frozen_head_talos.yaml data.task=wordnet_pos \\
        output.dir=experts/wordnet_pos_talos
    accelerate launch --cpu --num_processes 2 finetune/finetune.py CONFIG [key.sub=value ...]
    accelerate launch --num_processes 4 finetune/finetune.py CONFIG            # 4 GPUs
    accelerate launch --num_processes 4 -m mergekit_het.cli finetune CONFIG    # the same, installed
    mergekit-het finetune CONFIG                  # again after a stop: resumes (--restart starts over)

```python
recipe = FinetuneRecipe(load_finetune_config("finetune/configs/minilm_frozen_head_dense.yaml"))
recipe.setup()          # checks, data, model (+ frozen head / TaLoS masks / LoRA), optimizer, resume
recipe.train()          # the loop: step, log, evaluate, snapshot, checkpoint
info = recipe.save()    # final evaluation, expert folder written and renamed into place
```

Modes: `dense` (full fine-tuning), `undertrained` (stop after budget_fraction·max_steps steps
while the LR schedule spans max_steps; Horoi et al., arXiv:2506.14126), `talos` (sparse, masked
AdamW, `talos.py`), `lora` (peft). The run writes into `.<out>.partial/` (resumable checkpoints
every `train.checkpoint_every` steps, `resume=true` continues from the latest) and renames the
finished expert to `output.dir`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..models.encoder import HEAD_FILE, load_tokenizer
from ..runtime.batching import to_device, tokenize
from ..runtime.seeding import seed_everything
from . import io
from .config import FinetuneConfig
from .data import train_batches
from .optim import MaskedAdamW
from .setup import apply_lora, build_model, freeze_for_talos, preflight, talos_masks
from .steps import (
    evaluate,
    make_accelerator,
    make_scheduler,
    mean_over_processes,
    resume_latest,
    save_checkpoint,
    train_step,
    write_history,
)
from .talos import mask_fraction


class FinetuneRecipe:
    """One fine-tuning run; `setup`, `train`, `save` in that order (`finetune` does all three)."""

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.accelerator = make_accelerator(cfg.train.mixed_precision)
        self.out = Path(cfg.output.dir)
        self.work = io.work_dir(self.out)
        self.start, self.history, self.train_seconds = 0, [], 0.0

    def setup(self) -> None:
        """Check the input, then build model, optimizer, schedule and data; resume if asked."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        self.data = preflight(cfg)  # one-line errors before any weight is read
        if acc.is_main_process:
            if self.work.exists() and not cfg.resume:
                shutil.rmtree(self.work)
            self.work.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        seed_everything(t.seed)

        self.tokenizer = load_tokenizer(cfg.model)
        model = build_model(cfg, self.tokenizer, self.data, acc, self.work)
        self.masks, optimizer_masks = None, {}
        if cfg.mode == "talos":
            self.masks = talos_masks(cfg, model, self.tokenizer, self.data, acc, self.work)
            optimizer_masks = freeze_for_talos(cfg, model, self.masks)
        if cfg.mode == "lora":
            model = apply_lora(cfg, model)
        self.head_file = (cfg.head.path or self.work / HEAD_FILE) if cfg.protocol == "frozen_head" else None

        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = MaskedAdamW(trainable, optimizer_masks, lr=t.lr, betas=t.betas, eps=t.eps,
                                weight_decay=t.weight_decay)  # fmt: skip
        self.scheduler = make_scheduler(cfg, optimizer)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        if cfg.resume:
            self.start, self.history = resume_latest(acc, self.work)

        causal = cfg.protocol == "causal_lm"
        self.rows = {s: tokenize(ds, self.tokenizer, cfg.data.max_length, causal) for s, ds in self.data.splits.items()}
        self.batches = train_batches(self.rows["train"], self.tokenizer, batch_size=t.batch_size, seed=t.seed,
                                     rank=acc.process_index, world=acc.num_processes, start_step=self.start,
                                     causal_lm=causal)  # fmt: skip

    def train(self) -> None:
        """The loop: one optimizer step per global batch, from the resumed step to the budget."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        steps, window = t.steps_to_run, []
        bar = tqdm(range(self.start, steps), initial=self.start, total=steps,
                   desc=f"{cfg.mode} {self.data.task.name}", disable=not acc.is_main_process)  # fmt: skip
        for step in bar:
            done = step + 1
            batch = to_device(next(self.batches), acc.device)
            tic = time.perf_counter()
            window.append(train_step(self.model, batch, self.optimizer, self.scheduler, acc, t.grad_clip))
            self.train_seconds += time.perf_counter() - tic

            if done % t.log_every == 0 or done == steps:
                loss, lr = mean_over_processes(window, acc), self.scheduler.get_last_lr()[0]
                self.history.append({"step": done, "loss": loss, "lr": lr})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                window = []
            if t.eval_every and done % t.eval_every == 0 and done < steps:
                ev = evaluate(self.model, self.rows["validation"], self.tokenizer, cfg, acc)
                self.history.append({"step": done, "split": "validation", **ev})
                acc.print(f"step {done}: validation accuracy {ev['accuracy']:.4f} loss {ev['loss']:.4f}")
            if done in t.snapshot_steps:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    self._write_expert(self.work / "expert" / "snapshots" / f"step_{done}", self._info(done, {}))
            if t.checkpoint_every and done % t.checkpoint_every == 0 and done < steps:
                save_checkpoint(acc, self.work, done, self.history)
        bar.close()

    def save(self) -> dict:
        """Evaluate on validation and test, write the expert and rename it to `output.dir`;
        returns the expert's info (`expert.json`)."""
        cfg, acc, steps = self.cfg, self.accelerator, self.cfg.train.steps_to_run
        metrics = {f"{s}_{k}": v for s in ("validation", "test")
                   for k, v in evaluate(self.model, self.rows[s], self.tokenizer, cfg, acc).items()}  # fmt: skip
        ran = steps - self.start
        examples_per_step = cfg.train.batch_size * acc.num_processes
        metrics.update(train_steps_this_run=ran, train_seconds=round(self.train_seconds, 3),
                       samples_per_second=round(ran * examples_per_step / max(self.train_seconds, 1e-9), 2),
                       device=str(acc.device))  # fmt: skip
        self.history.append({"step": steps, "split": "validation", "accuracy": metrics["validation_accuracy"],
                             "loss": metrics["validation_loss"]})  # fmt: skip
        info = self._info(steps, metrics)
        acc.wait_for_everyone()
        if acc.is_main_process:
            folder = self._write_expert(self.work / "expert", info)
            write_history(self.history, folder)
            io.publish(folder, self.out, cfg.output.overwrite, self.work)
            if cfg.stats.examples:
                self._write_statistics()
            acc.print(f"wrote {self.out}: validation accuracy {metrics['validation_accuracy']:.4f}, "
                      f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['samples_per_second']} samples/s")
        acc.wait_for_everyone()
        acc.end_training()
        return info

    def _write_statistics(self) -> None:
        """`merge_stats.safetensors` of the published expert (`stats:` in the config)."""
        from .statistics import expert_statistics

        st = self.cfg.stats
        path = expert_statistics(self.out, self.data.task, examples=st.examples, split=st.split, batch_size=st.batch_size,
                                 max_length=self.cfg.data.max_length, device=str(self.accelerator.device), gram=st.gram,
                                 fisher=st.fisher, mask_padding=st.mask_padding, seed=self.cfg.train.seed)  # fmt: skip
        self.accelerator.print(f"wrote {path}")

    def _info(self, step: int, metrics: dict) -> dict:
        data = self.data
        fraction = None if self.masks is None else mask_fraction(self.masks)
        return io.expert_info(self.cfg, data.task.name, data.num_labels, len(data.splits["train"]), step, fraction,
                              metrics, self.accelerator.num_processes)  # fmt: skip

    def _write_expert(self, folder: Path, info: dict) -> Path:
        io.save_expert(self.accelerator.unwrap_model(self.model), self.cfg, self.tokenizer, folder, info, self.masks,
                       self.head_file)  # fmt: skip
        return folder


def finetune(cfg: FinetuneConfig) -> dict:
    """Run the recipe end to end; returns the written expert's info (expert.json)."""
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    recipe.train()
    return recipe.save()
