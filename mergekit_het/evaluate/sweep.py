"""Hyper-parameter sweeps of a merge method, merged in memory and scored on validation.

As in the task-arithmetic and TIES papers (arXiv:2212.04089, arXiv:2306.01708), a method's
parameters (λ; density for TIES) are chosen on the validation splits by the mean
normalized accuracy over tasks, and the test metrics are reported at the chosen point.
Each grid point is one `engine.merge_state_dicts` call; no folder is written.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from ..merge.engine import merge_state_dicts
from ..errors import ConfigError

StateDict = Mapping[str, Tensor]

# Grids of the reference implementations (ALGORITHMS.md §7).
TASK_ARITHMETIC_ALPHAS = [round(0.05 * i, 2) for i in range(21)]  # np.linspace(0, 1, 21)
TIES_LAMBDAS = [round(0.8 + 0.1 * i, 1) for i in range(18)]  # np.arange(0.8, 2.51, 0.1)


def grid_points(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Cartesian product of the grid, in the order its keys and values are given.

    An empty grid is one point with no parameters (a method without hyper-parameters).
    """
    for key, values in grid.items():
        if len(values) == 0:
            raise ConfigError(f"sweep grid '{key}' has no values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


@dataclass
class SweepPoint:
    params: dict[str, float]
    score: float
    details: dict = field(default_factory=dict)


@dataclass
class SweepResult:
    """Every grid point with its validation score; `best` is the first argmax."""

    method: str
    points: list[SweepPoint]

    @property
    def best(self) -> SweepPoint:
        return max(self.points, key=lambda p: p.score)  # max keeps the first of equal scores


def sweep(
    method: str,
    experts: Sequence[StateDict],
    base: StateDict | None,
    grid: Mapping[str, Sequence[float]],
    score: Callable[[dict[str, Tensor]], tuple[float, dict]],
    *,
    parameters: Mapping[str, float] | None = None,
    model_parameters: Sequence[Mapping[str, float]] | None = None,
    device: str = "cpu",
    statistics: Sequence[str | Path] | None = None,
) -> SweepResult:
    """Merge at every grid point and score the merged state dict.

    `score(state) -> (value, details)` evaluates on validation (higher is better); grid values
    are global parameters, overriding `parameters` (mergekit passes a global value of a
    per-model parameter such as `density` to every model). `statistics`: each expert's merge
    statistics (for regmean / fisher), as `merge_state_dicts` takes them.
    """
    points = []
    for params in tqdm(grid_points(grid), desc=f"sweep {method}", unit="point"):
        state = merge_state_dicts(method, list(experts), base, {**(parameters or {}), **params},
                                  model_parameters, device=device, statistics=statistics)
        value, details = score(state)
        points.append(SweepPoint(params, value, details))
        del state
    return SweepResult(method, points)
