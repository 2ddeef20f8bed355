"""Interference between task vectors τ_i = θ_i − θ0, measured through the merge engine.

- Cross-task matrix (the task-arithmetic papers' figure): each task vector applied alone,
  θ0 + α τ_i, evaluated on every task j and divided by the base model's accuracy on j.
  Row i shows how much learning task i helps (> 1) or hurts (< 1) every other task.
- Weight-disentanglement error (Ortiz-Jimenez, Favero, Frossard, "Task Arithmetic in the
  Tangent Space", arXiv:2305.12827) on an (α1, α2) grid:
  ξ(α1, α2) = Σ_{t=1,2} E_{x∼D_t} 1[f(x; θ0 + α_t τ_t) ≠ f(x; θ0 + α1 τ1 + α2 τ2)].

Models are built as task-arithmetic merges (`lambda` 1, `normalize` false, weights α), so no
weight arithmetic happens here; the caller supplies how a state dict is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor
from tqdm.auto import tqdm

from ..merge.engine import merge_state_dicts
from ..errors import ConfigError
from .metrics import disentanglement_error, normalize_columns
from .sweep import StateDict


def add_task_vectors(
    base: StateDict, experts: Sequence[StateDict], alphas: Sequence[float], *, device: str = "cpu"
) -> dict[str, Tensor]:
    """θ0 + Σ_i α_i (θ_i − θ0), as a `task_arithmetic` merge with weights α_i."""
    return merge_state_dicts(
        "task_arithmetic",
        list(experts),
        base,
        {"lambda": 1.0, "normalize": False},
        [{"weight": float(a)} for a in alphas],
        device=device,
    )


@dataclass
class CrossTask:
    """accuracy[i][j] of θ0 + α τ_i on task j; `normalized` divides column j by base[j]."""

    vectors: list[str]
    tasks: list[str]
    alpha: float
    accuracy: list[list[float]]
    base: list[float]

    @property
    def normalized(self) -> list[list[float]]:
        return normalize_columns(self.accuracy, self.base)


def cross_task_matrix(
    base: StateDict,
    experts: Mapping[str, StateDict],
    tasks: Sequence[str],
    accuracy_of: Callable[[StateDict], Mapping[str, float]],
    *,
    alpha: float = 1.0,
    device: str = "cpu",
) -> CrossTask:
    """Evaluate θ0 and each θ0 + α τ_i on all `tasks`; `accuracy_of(state)` maps task → accuracy."""

    def row(state: StateDict) -> list[float]:
        acc = accuracy_of(state)
        return [float(acc[t]) for t in tasks]

    base_row = row(base)
    rows = [
        row(add_task_vectors(base, [sd], [alpha], device=device))
        for sd in tqdm(experts.values(), desc="cross-task matrix", unit="vector")
    ]
    return CrossTask(list(experts), list(tasks), alpha, rows, base_row)


def disentanglement_grid(
    base: StateDict,
    pair: tuple[StateDict, StateDict],
    alphas: Sequence[float],
    predict: Callable[[StateDict, int], Tensor],
    *,
    device: str = "cpu",
) -> list[list[float]]:
    """ξ(α1, α2) for every α1 (rows) and α2 (columns) in `alphas`.

    `predict(state, t)` returns the predicted classes of `state` on task t's inputs (t = 0, 1).
    Costs 2·len(alphas) single-vector and 2·len(alphas)² joint evaluations.
    """
    if len(alphas) == 0:
        raise ConfigError("disentanglement grid needs at least one alpha")
    single = [
        {a: predict(add_task_vectors(base, [pair[t]], [a], device=device), t) for a in alphas}
        for t in (0, 1)
    ]
    errors = []
    for a1 in tqdm(alphas, desc="disentanglement", unit="row"):
        row = []
        for a2 in alphas:
            joint = add_task_vectors(base, list(pair), [a1, a2], device=device)
            row.append(disentanglement_error([single[0][a1], single[1][a2]],
                                             [predict(joint, 0), predict(joint, 1)]))
        errors.append(row)
    return errors
