"""Building the model to fine-tune: pre-flight checks, frozen ridge head, TaLoS masks, LoRA.

Everything that can be wrong with the input is checked in `preflight` before any weight is read
(unknown model, missing task/columns, label count of the task vs the model's head, output
already present), so bad input gives a one-line error and never a half-done run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..models.classifier import PooledClassifier
from ..models.encoder import (
    HEAD_FILE,
    encode_texts,
    load_causal_lm,
    load_classifier,
    load_encoder,
    model_head_labels,
    resolve_model,
)
from ..models.ridge import RidgeHead, RidgeStatistics
from ..runtime.batching import eval_batches, tokenize
from ..runtime.device import parse_dtype
from ..runtime.files import drop_published_work
from . import io
from .config import FinetuneConfig
from .data import TaskData, load_task_data
from .talos import HEAD_NAMES, calibrate_masks, prunable_parameters

def preflight(cfg: FinetuneConfig) -> TaskData:
    """All input checks; returns the loaded task data."""
    out = Path(cfg.output.dir)
    drop_published_work(out, io.work_dir(out))  # a run killed after publishing is finished, not resumable
    if not (cfg.resume and io.work_dir(out).is_dir()):
        io.check_output(out, cfg.output.overwrite)
    resolve_model(cfg.model)
    data = load_task_data(cfg)
    if cfg.protocol == "classifier":
        have = model_head_labels(cfg.model)
        if have is not None and have != data.num_labels:
            raise ConfigError(
                f"model {cfg.model} has a {have}-label classification head but task "
                f"'{data.task.name}' has {data.num_labels} labels"
            )
    if cfg.head.path is not None:
        head = RidgeHead.load(cfg.head.path)
        if head.num_classes != data.num_labels:
            raise ConfigError(
                f"head {cfg.head.path} has {head.num_classes} classes but task '{data.task.name}' "
                f"has {data.num_labels} labels"
            )
    if cfg.output.save_task_vector and not (Path(cfg.model).is_dir() and io.base_names(cfg.model)):
        raise ConfigError(f"output.save_task_vector needs a local safetensors base; {cfg.model} has none")
    return data


def ridge_head(cfg: FinetuneConfig, encoder: nn.Module, tokenizer, data: TaskData, accelerator) -> RidgeHead:
    """Closed-form head on the pretrained encoder's mean-pooled train features; each process
    accumulates the statistics of its shard and the sums are all-reduced (Fed3R aggregation)."""
    train = data.splits["train"]
    if cfg.head.max_examples is not None and len(train) > cfg.head.max_examples:
        train = train.shuffle(seed=cfg.train.seed).select(range(cfg.head.max_examples))
    rank, world = accelerator.process_index, accelerator.num_processes
    texts, labels = train["text"][rank::world], torch.tensor(train["label"][rank::world], dtype=torch.long)
    encoder.to(accelerator.device)
    feats = encode_texts(
        encoder, tokenizer, texts, batch_size=cfg.train.eval_batch_size, max_length=cfg.data.max_length,
        progress=accelerator.is_main_process,
    )
    stats = RidgeStatistics.zeros(feats.shape[1], data.num_labels).update(feats, labels)
    if world > 1:
        stats.A = accelerator.reduce(stats.A.to(accelerator.device), "sum").cpu()
        stats.b = accelerator.reduce(stats.b.to(accelerator.device), "sum").cpu()
    head = stats.solve(cfg.head.lam)
    if cfg.head.normalize:
        head = head.normalized()
    head = head.to(torch.float32)
    head.metadata.update(
        lam=str(cfg.head.lam), temperature=str(cfg.head.temperature), pooling="mean",
        task=data.task.name, examples=str(len(train)),
    )
    return head


def build_model(cfg: FinetuneConfig, tokenizer, data: TaskData, accelerator, work: Path) -> nn.Module:
    """The trainable model for the configured protocol (LoRA applied later by `apply_lora`)."""
    dtype = parse_dtype(cfg.dtype)
    if cfg.protocol == "classifier":
        return load_classifier(cfg.model, data.num_labels, dtype, pad_token_id=tokenizer.pad_token_id)
    if cfg.protocol == "causal_lm":
        return load_causal_lm(cfg.model, dtype)
    encoder = load_encoder(cfg.model, dtype)
    saved = work / HEAD_FILE
    if cfg.head.path is not None:
        head = RidgeHead.load(cfg.head.path)
    elif saved.is_file():  # resuming: the head computed by the interrupted run
        head = RidgeHead.load(saved)
    else:
        head = ridge_head(cfg, encoder, tokenizer, data, accelerator)
        if accelerator.is_main_process:
            head.save(saved)
    return PooledClassifier(encoder, head, float(head.metadata.get("temperature", cfg.head.temperature)))


def talos_masks(cfg: FinetuneConfig, model: nn.Module, tokenizer, data: TaskData, accelerator, work: Path):
    """TaLoS masks over `prunable_parameters` (loaded from the work folder when resuming)."""
    path = work / io.MASK_FILE
    if path.is_file():
        return io.load_masks(path)
    calib = data.splits[cfg.talos.calibration_split]
    if cfg.talos.max_examples is not None and len(calib) > cfg.talos.max_examples:
        calib = calib.select(range(cfg.talos.max_examples))
    calib = tokenize(calib, tokenizer, cfg.data.max_length, cfg.protocol == "causal_lm")
    model.to(accelerator.device)
    rank, world = accelerator.process_index, accelerator.num_processes

    def batches() -> list:  # (global indices, batch) of this process's share; a list, so the scoring bar has a total
        return list(eval_batches(calib, tokenizer, cfg.train.eval_batch_size, rank=rank, world=world,
                                 causal_lm=cfg.protocol == "causal_lm", device=accelerator.device))  # fmt: skip

    def across(t: torch.Tensor) -> torch.Tensor:  # the sum over processes (a CPU tensor comes back on the CPU)
        return accelerator.reduce(t.to(accelerator.device), "sum").to(t.device)

    masks = calibrate_masks(
        model, batches, sparsity=cfg.talos.sparsity, rounds=cfg.talos.rounds, frozen_scale=cfg.talos.frozen_scale,
        samples=cfg.talos.samples, seed=cfg.train.seed, examples=len(calib),
        reduce=across if world > 1 else (lambda t: t),
        progress=accelerator.is_main_process,
    )
    masks = {n: m.cpu() for n, m in masks.items()}
    if accelerator.is_main_process:
        io.save_masks(masks, path, {"sparsity": str(cfg.talos.sparsity), "rounds": str(cfg.talos.rounds)})
    return masks


def freeze_for_talos(cfg: FinetuneConfig, model: nn.Module, masks: dict[str, torch.Tensor]) -> dict:
    """Embeddings and LM heads are frozen; a jointly trained classification head (protocol
    classifier) stays dense; fully masked tensors get requires_grad False. Gradient hooks zero
    the masked entries so clipping and all-reduce see only trainable ones.
    Returns {parameter: mask} for the optimizer."""
    prunable = prunable_parameters(model)
    by_param = {}
    for name, p in model.named_parameters():
        if name in masks:
            if not bool(masks[name].any()):
                p.requires_grad_(False)
                continue
            mask = masks[name].to(p.device)
            p.register_hook(lambda g, m=mask: g * m)
            by_param[p] = mask
        elif name in prunable:
            raise ConfigError(f"TaLoS mask has no entry for parameter {name}")
        elif not (cfg.protocol == "classifier" and name.split(".")[0] in HEAD_NAMES):
            p.requires_grad_(False)
    return by_param


def apply_lora(cfg: FinetuneConfig, model: nn.Module) -> nn.Module:
    """Wrap with peft LoRA: the encoder under a frozen head, the whole model otherwise."""
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = {"classifier": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM}.get(cfg.protocol)
    lcfg = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, task_type=task_type,
    )
    try:
        if isinstance(model, PooledClassifier):
            model.encoder = get_peft_model(model.encoder, lcfg)
            return model
        return get_peft_model(model, lcfg)
    except ValueError as exc:
        raise ConfigError(f"lora: {str(exc).splitlines()[0]} (set lora.target_modules)") from None
