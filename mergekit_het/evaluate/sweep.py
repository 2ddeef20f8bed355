"""Hyper-parameter sweeps of a merge method, merged in memory and scored on validation.

As in the task-arithmetic and TIES papers (arXiv:2212.04089, arXiv:2306.01708), a method's
parameters (λ; density for TIES) are chosen on the validation splits by the mean
normalized accuracy over tasks, and the test metrics are reported at the chosen point.
Each grid point is one `engine.merge_state_dicts` call (one per setting of the non-scale
parameters where the method has a scale parameter, see `sweep`); no folder is written.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..merge.engine import merge_state_dicts
from ..methods import get_method

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

    Where the method declares a scale parameter s (λ of task arithmetic / TIES, α of TSV-M and
    Iso; `MergeMethod.scale`) and the grid sweeps it, each setting of the other parameters is
    merged once, at s = 1, and every s is scored on θ₀ + s·(θ(1) − θ₀): the same merge up to
    float32 rounding (the engine computes θ₀ + s·τ without the round trip through θ(1)), one
    merge instead of one per s (18 for the TIES grid). Callers re-merge the chosen point.
    """
    scale = get_method(method).scale
    if scale not in grid or base is None:
        scale = None
    others = {k: v for k, v in grid.items() if k != scale}
    values = grid[scale] if scale else [None]
    points: dict[tuple, SweepPoint] = {}
    bar = tqdm(total=len(grid_points(grid)), desc=f"sweep {method}", unit="point")
    for fixed in grid_points(others):
        at = {**(parameters or {}), **fixed, **({scale: 1.0} if scale else {})}
        state = merge_state_dicts(method, list(experts), base, at, model_parameters, device=device,
                                  statistics=statistics)  # fmt: skip
        at_scale = scaling(state, base) if scale else None
        for s in values:
            params = {k: s if k == scale else fixed[k] for k in grid}  # the grid's key order
            value, details = score(at_scale(s) if scale else state)
            points[tuple(params.values())] = SweepPoint(params, value, details)
            bar.update()
        del state, at_scale
    bar.close()
    return SweepResult(method, [points[tuple(p.values())] for p in grid_points(grid)])  # the grid's order


def scaling(merged: StateDict, base: StateDict) -> Callable[[float], dict[str, Tensor]]:
    """s ↦ θ₀ + s·(θ(1) − θ₀) for every floating tensor (in float32, back to its dtype; others as
    merged), the task vector θ(1) − θ₀ computed once for every s."""
    parts = {}
    for name, t in merged.items():
        b = base.get(name)
        if b is not None and t.is_floating_point():
            b32 = b.to(t.device, torch.float32)
            parts[name] = (b32, t.float() - b32)

    def at(s: float) -> dict[str, Tensor]:
        if s == 1:
            return dict(merged)
        return {name: t if name not in parts else parts[name][1].mul(s).add_(parts[name][0]).to(t.dtype)
                for name, t in merged.items()}  # fmt: skip

    return at
