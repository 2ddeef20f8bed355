"""Evaluate a model folder on tasks: load it with one head per task, predict in batches, score.

A model is an encoder (the weights that get merged) plus, for every task, a head:
- frozen-head protocol (`models.classifier.PooledClassifier`, head frozen): the head is
  `head.safetensors` of the folder, or of the task's expert folder (`heads={task: folder}`);
  all tasks share the model's encoder module;
- plain `AutoModelForSequenceClassification` folders: the folder's own head, or the task
  expert's whole classifier with the model's encoder weights loaded into its backbone
  (the "heads trained jointly with each expert" protocol).
Either way task t is scored with expert t's head, so a merge, the base model and every
expert are compared on equal terms; `load_encoder_state` swaps in merged weights in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, MergekitHetError
from ..models.classifier import PooledClassifier
from ..models.encoder import (
    HEAD_FILE,
    load_classifier,
    load_encoder,
    model_head_labels,
    resolve_model,
)
from ..models.ridge import RidgeHead
from ..data.tasks import TaskSpec, num_labels_of
from ..runtime.batching import to_device
from ..runtime.files import atomic_write_text
from ..runtime.evaluation import evaluate_batches
from .data import EncodedSplit
from .metrics import accuracy, macro_f1

RESULTS_FILE = "eval_results.json"


@dataclass
class TaskScore:
    accuracy: float
    macro_f1: float
    n: int


class MultiTaskModel:
    """`heads[task](**batch).logits` for every task; `encoders` hold the mergeable weights
    (all the same weights: one shared encoder, or the backbones of per-task classifiers)."""

    def __init__(self, name: str, heads: dict[str, nn.Module], encoders: list[nn.Module]) -> None:
        self.name, self.heads, self.encoders = name, heads, encoders

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """A copy of the encoder weights (what merges combine), on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.encoders[0].state_dict().items()}

    def load_encoder_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the encoder weights in place (strict: same names and shapes)."""
        for enc in self.encoders:
            try:
                enc.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise MergekitHetError(
                    f"{self.name}: state dict does not fit the encoder ({str(exc).splitlines()[1].strip()})"
                ) from None

    def to(self, device: str | torch.device) -> "MultiTaskModel":
        for module in {id(m): m for m in self.heads.values()}.values():
            module.to(device).eval()
        return self


def _check_labels(task: TaskSpec, have: int, where: str) -> None:
    want = num_labels_of(task)
    if have != want:
        raise ConfigError(f"task '{task.name}' has {want} labels but {where} has a {have}-label head")


def _head_source(task: TaskSpec, src: str) -> tuple[str, RidgeHead | int]:
    """Where `task`'s head is: (folder, frozen head), or (folder, label count) of a seq-cls
    folder; label counts are checked here, before any encoder weight is read."""
    head_file = Path(src) / HEAD_FILE
    if head_file.is_file():
        head = RidgeHead.load(head_file)
        _check_labels(task, head.num_classes, str(head_file))
        return src, head
    have = model_head_labels(src)
    if have is None:
        raise ConfigError(
            f"no head for task '{task.name}': {src} has no {HEAD_FILE} and no "
            f"sequence-classification head; give the task's expert folder as its head"
        )
    _check_labels(task, have, f"model folder {src}")
    return src, have


def load_model(
    model: str | os.PathLike,
    tasks: Sequence[TaskSpec],
    heads: Mapping[str, str | os.PathLike] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> MultiTaskModel:
    """Load `model`'s encoder with a head for each task (from `heads[task]`, else from `model`).

    Raises a one-line error for an unreadable folder, a task without a head, or a head whose
    label count differs from the task's.
    """
    heads = dict(heads or {})
    unknown = set(heads) - {t.name for t in tasks}
    if unknown:
        raise ConfigError(f"heads given for unknown task(s) {sorted(unknown)}")
    sources = {t.name: _head_source(t, str(resolve_model(heads.get(t.name, model)))) for t in tasks}
    encoder = read_encoder(model, dtype)
    modules: dict[str, nn.Module] = {}
    classifiers: dict[str, nn.Module] = {}  # head folder -> classifier holding a copy of the encoder
    for task, (src, head) in sources.items():
        if isinstance(head, RidgeHead):
            modules[task] = PooledClassifier(encoder, head, float(head.metadata.get("temperature", 1.0)))
            continue
        if src not in classifiers:
            classifiers[src] = load_classifier(src, head, dtype)
            classifiers[src].base_model.load_state_dict(encoder.state_dict(), strict=True)
        modules[task] = classifiers[src]
    shared = [encoder] if any(isinstance(m, PooledClassifier) for m in modules.values()) else []
    return MultiTaskModel(str(model), modules, shared + [c.base_model for c in classifiers.values()])


def read_encoder(model: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """The folder's backbone (`models.encoder.load_encoder`); a one-line error if it cannot be read."""
    from safetensors import SafetensorError

    try:
        return load_encoder(model, dtype)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ConfigError(f"cannot load model folder {model}: {str(exc).splitlines()[0]}") from None


def predict(module: nn.Module, data: EncodedSplit, *, device: str | torch.device = "cpu",
            progress: bool = True, desc: str = "") -> torch.Tensor:
    """Predicted class of every row of `data`, in the split's original order."""

    def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = module(**batch).logits
        if out.shape[-1] != data.num_labels:
            raise MergekitHetError(f"task '{data.task}' has {data.num_labels} labels but the model outputs {out.shape[-1]}")
        return out

    batches = tqdm(data.batches, desc=desc or f"{data.task}/{data.split}", unit="batch", disable=not progress,
                   leave=False)  # fmt: skip
    return evaluate_batches(logits, ((i, to_device(b, device)) for i, b in batches), num_rows=len(data)).preds


def score(preds: torch.Tensor, data: EncodedSplit) -> TaskScore:
    """Accuracy and macro-F1 of `preds` against the split's labels."""
    return TaskScore(accuracy(preds, data.labels), macro_f1(preds, data.labels), len(data))


def evaluate(
    model: MultiTaskModel,
    data: Mapping[str, EncodedSplit],
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, TaskScore]:
    """Accuracy and macro-F1 of `model` on every encoded split in `data` (keyed by task)."""
    model.to(device)
    return {
        task: score(predict(model.heads[task], d, device=device, progress=progress,
                            desc=f"{Path(model.name).name} {task}/{d.split}"), d)
        for task, d in data.items()
    }


def write_eval_results(folder: str | os.PathLike, scores: Mapping[str, TaskScore], split: str,
                       *, overwrite: bool = False) -> Path:
    """Write `<folder>/eval_results.json` = {"tasks": {task: {"accuracy", "macro_f1", "n"}}, "split"}
    (read by the model-card writer); atomically, never over an existing file unless `overwrite`."""
    path = Path(folder) / RESULTS_FILE
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass --overwrite to replace it")
    payload = {"tasks": {t: asdict(s) for t, s in scores.items()}, "split": split}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path
