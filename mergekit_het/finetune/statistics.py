"""Merge statistics of an expert on its task data (RegMean's Grams, Fisher merging's Fishers),
saved beside it as `merge_stats.safetensors` (`io/statistics.py`: raw sums and counts, so the
statistics of shards or clients add exactly).

    mergekit-het stats experts/austen --tasks eval/tasks/text_tasks.yaml --task austen_book --examples 256

- Gram (RegMean, official semantics): a forward hook on every nn.Linear adds XᵀX of its input
  rows X = input.reshape(-1, in_features) (every token row, padding included, as the official
  `compute_grams`; `mask_padding` drops padded rows), and the number of rows, per weight.
- Fisher (Matena & Raffel, exact per example): F = Σ_x Σ_y p(y|x) (∂ log p(y|x)/∂θ)² over the
  task's classes, for every trainable parameter outside the classification head, from
  per-example gradients (`talos.per_example_grads`); C gradient passes per example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..data.tasks import TaskSpec, load_split, num_labels_of
from ..errors import ConfigError
from ..io.statistics import STATS_FILE, save
from ..runtime.device import items_per_call
from .talos import HEAD_NAMES, Batches, per_example_grads, per_example_logits, pooled_length_groups, task_logits


@contextmanager
def _gram_hooks(model: nn.Module, sums: dict[str, torch.Tensor], rows: dict[str, int], keep: list):
    """Hooks adding XᵀX and the row count of every nn.Linear's input (rows where keep[0] is True)."""

    def hook(name: str) -> Callable:
        def add(module: nn.Linear, args: tuple) -> None:
            x = args[0].detach().reshape(-1, module.in_features).float()
            if keep[0] is not None and keep[0].numel() == x.shape[0]:
                x = x[keep[0]]
            sums[name] = sums[name].addmm_(x.T, x) if name in sums else x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]

        return add

    handles = [m.register_forward_pre_hook(hook(f"{n}.weight")) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def gram_statistics(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], mask_padding: bool = False,
                    logits_fn: Callable = task_logits) -> dict[str, torch.Tensor]:  # fmt: skip
    """`<weight>.gram` (Σ x xᵀ, float32) and `<weight>.gram_rows` (int64) of every nn.Linear,
    keyed by the model's parameter names."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    keep: list = [None]
    was_training = model.training
    model.eval()
    with _gram_hooks(model, sums, rows, keep), torch.no_grad():
        for batch in batches:
            keep[0] = batch["attention_mask"].reshape(-1).bool() if mask_padding else None
            logits_fn(model, batch)
    model.train(was_training)
    out = {f"{n}.gram": g.cpu() for n, g in sums.items()}
    out.update({f"{n}.gram_rows": torch.tensor(r, dtype=torch.int64) for n, r in rows.items()})
    return out


def fisher_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters Fisher merging weighs: trainable ones outside the classification/LM head."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n.split(".")[0] not in HEAD_NAMES}


def _log_prob_of(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(0, label.unsqueeze(0))[0]


def fisher_statistics(model: nn.Module, batches: Batches, logits_fn: Callable = task_logits,
                      chunk: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """`<param>.fisher` = Σ_x Σ_y p(y|x) (∂ log p(y|x)/∂θ)² (float32) and `fisher_examples`, over
    the (row indices, batch) pairs `batches` (as `eval_batches` yields; the sum needs no order).
    Examples of one real length (`pooled_length_groups`) are expanded into their (example, class)
    pairs, `chunk` pairs per vmapped gradient call: one call per length and chunk rather than one
    per length, chunk and class (25 classes: 25× fewer calls, each about as costly, launch-bound).
    `chunk` None: as many as `items_per_call` allows for a pair's gradients and their squares
    (float32), at most 64."""
    params = fisher_parameters(model)
    if chunk is None:
        device = next(iter(params.values())).device
        chunk = items_per_call(8 * sum(p.numel() for p in params.values()), device, 64)
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    for n, (_, inputs) in pooled_length_groups(batches).items():
        probs = torch.softmax(per_example_logits(model, inputs, logits_fn).float(), dim=-1)
        examples, classes = probs.shape
        pairs = {k: v.repeat_interleave(classes, dim=0) for k, v in inputs.items()}  # (example, class), class fastest
        labels = torch.arange(classes, device=probs.device).repeat(examples)
        weights = probs.flatten()
        for s0 in range(0, len(labels), chunk):
            part = {k: v[s0 : s0 + chunk] for k, v in pairs.items()}
            grads = per_example_grads(model, params, n, part, labels[s0 : s0 + chunk], _log_prob_of, logits_fn)
            for name, g in grads.items():
                sums[name] += torch.einsum("b,b...->...", weights[s0 : s0 + chunk], g.float().square())
        count += examples
    model.train(was_training)
    out = {f"{n}.fisher": f.cpu() for n, f in sums.items()}
    out["fisher_examples"] = torch.tensor(count, dtype=torch.int64)
    return out


def match_names(stats: Mapping[str, torch.Tensor], file_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Rename statistics keyed by module parameter names (`encoder.layer.0...weight.gram`) to the
    expert file's tensor names: the one file name that equals the parameter name or is a
    dotted suffix of it (or it of the file name). Counts keep their names; statistics of
    parameters the file does not hold are dropped (e.g. a frozen head)."""
    names = list(file_names)
    out = {}
    for key, t in stats.items():
        param, dot, kind = key.rpartition(".")
        if not dot or "." not in param or kind not in ("gram", "gram_rows", "fisher"):
            out[key] = t
            continue
        hits = [f for f in names if f == param or param.endswith("." + f) or f.endswith("." + param)]
        if len(hits) > 1:
            hits = [f for f in hits if f == param] or hits
        if len(hits) > 1:
            raise ConfigError(f"statistics of {param}: several tensors of the expert match ({hits[:3]})")
        if hits:
            out[f"{hits[0]}.{kind}"] = t
    return out


def expert_statistics(expert: str | Path, task: TaskSpec, *, examples: int = 256, split: str = "train",
                      batch_size: int = 16, max_length: int = 128, device: str = "auto", gram: bool = True,
                      fisher: bool = False, mask_padding: bool = False, seed: int = 0) -> Path:  # fmt: skip
    """Compute an expert's statistics on `examples` random rows (seed `seed`) of its task's
    `split` and write `expert/merge_stats.safetensors` (returns its path). The expert is a
    frozen-head folder (encoder + head.safetensors) or a sequence classifier."""
    from ..io.resolve import open_model
    from ..models.classifier import PooledClassifier
    from ..models.encoder import HEAD_FILE, load_classifier, load_tokenizer
    from ..runtime.batching import eval_batches, tokenize
    from ..runtime.device import resolve_device

    folder = Path(expert)
    if not gram and not fisher:
        raise ConfigError("nothing to compute: ask for the Gram matrices, the Fisher, or both")
    dev = resolve_device(device, "device")
    model = (PooledClassifier.from_folder(folder) if (folder / HEAD_FILE).is_file()
             else load_classifier(folder, num_labels_of(task))).to(dev)  # fmt: skip
    tokenizer = load_tokenizer(folder)
    ds = load_split(task, split)
    ds = ds.shuffle(seed=seed).select(range(min(examples, len(ds))))
    rows = tokenize(ds, tokenizer, max_length)

    def batches():  # (row indices, padded batch) pairs
        return eval_batches(rows, tokenizer, batch_size, device=dev)

    stats: dict[str, torch.Tensor] = {}
    if gram:
        stats.update(gram_statistics(model, (b for _, b in batches()), mask_padding))
    if fisher:
        stats.update(fisher_statistics(model, batches()))
    src = open_model(str(folder))
    try:
        stats = match_names(stats, src.names())
    finally:
        src.close()
    path = folder / STATS_FILE
    save(path, stats, {"task": task.name, "split": split, "examples": str(len(rows)), "mask_padding": str(mask_padding)})
    return path
