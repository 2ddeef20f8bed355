"""PNG plots of evaluation results (matplotlib, Agg backend); each function takes plain data.

The continual and federated runners call `plot_accuracy_matrix` and `plot_curves` with their
recorded numbers; the evaluation runner calls `plot_cross_task` and `plot_method_bars`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..errors import MergekitHetError  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    """Write the figure to `path` atomically (temporary file, then rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _heatmap(
    matrix: Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar: str,
    path: str | Path,
    mask_upper: bool = False,
) -> Path:
    if len(matrix) != len(rows) or any(len(r) != len(cols) for r in matrix):
        raise MergekitHetError(
            f"{title}: matrix must be {len(rows)} x {len(cols)} to match its row and column labels"
        )
    shown = [
        [float("nan") if mask_upper and j > i else float(v) for j, v in enumerate(r)]
        for i, r in enumerate(matrix)
    ]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 1.0 + 0.8 * len(rows)))
    im = ax.imshow(shown, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label=colorbar)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    finite = [v for r in shown for v in r if v == v]
    mid = (max(finite) + min(finite)) / 2 if finite else 0.0
    for i, r in enumerate(shown):
        for j, v in enumerate(r):
            if v == v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="black" if v > mid else "white")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def plot_cross_task(
    matrix: Sequence[Sequence[float]],
    vectors: Sequence[str],
    tasks: Sequence[str],
    path: str | Path,
    *,
    title: str = "θ0 + α·τ_i on task j (÷ base accuracy on j)",
) -> Path:
    """Heatmap of the cross-task matrix: row i = task vector applied alone, column j = task."""
    return _heatmap(matrix, vectors, tasks, title=title, xlabel="evaluated on task j",
                    ylabel="task vector τ_i", colorbar="normalized accuracy", path=path)


def plot_accuracy_matrix(
    matrix: Sequence[Sequence[float]],
    tasks: Sequence[str],
    path: str | Path,
    *,
    title: str = "Continual learning: accuracy after each step",
) -> Path:
    """Heatmap of R[i][j] = accuracy on task j after learning step i (tasks seen in order).

    Entries above the diagonal (tasks not yet learned) are left blank.
    """
    return _heatmap(matrix, [f"after {t}" for t in tasks], tasks, title=title,
                    xlabel="evaluated on task", ylabel="training step", colorbar="accuracy",
                    path=path, mask_upper=True)


def plot_disentanglement(
    errors: Sequence[Sequence[float]],
    alphas: Sequence[float],
    tasks: tuple[str, str],
    path: str | Path,
) -> Path:
    """Heatmap of the weight-disentanglement error ξ(α1, α2) (rows α1, columns α2)."""
    labels = [f"{a:g}" for a in alphas]
    return _heatmap(errors, labels, labels, title="Weight-disentanglement error ξ(α1, α2)",
                    xlabel=f"α2 ({tasks[1]})", ylabel=f"α1 ({tasks[0]})", colorbar="ξ", path=path)


def plot_method_bars(
    scores: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    ylabel: str = "normalized accuracy",
    title: str = "Merged models: accuracy relative to each task's expert",
) -> Path:
    """Grouped bar chart: one group per task (plus their mean), one bar per method.

    `scores[method][task]` is a number; every method must cover the same tasks.
    """
    methods = list(scores)
    if not methods:
        raise MergekitHetError("plot_method_bars: no methods to plot")
    tasks = list(scores[methods[0]])
    for m in methods:
        if list(scores[m]) != tasks:
            raise MergekitHetError(
                f"plot_method_bars: method '{m}' has tasks {list(scores[m])}, expected {tasks}"
            )
    groups = [*tasks, "mean"] if len(tasks) > 1 else tasks
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(groups), 4.0))
    for k, m in enumerate(methods):
        vals = [scores[m][t] for t in tasks]
        if len(tasks) > 1:
            vals.append(sum(vals) / len(vals))
        xs = [g + (k - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, vals, width=width, label=m)
    ax.set_xticks(range(len(groups)), labels=groups, rotation=20, ha="right")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize="small", ncols=min(len(methods), 4))
    return _save(fig, path)


def plot_curves(
    curves: Mapping[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str = "round",
    ylabel: str = "accuracy",
    title: str = "Federated learning",
) -> Path:
    """Line plot of one curve per run (e.g. global test accuracy per federated round).

    Each value is either the y values (x = 1, 2, ...) or an (x values, y values) pair.
    """
    if not curves:
        raise MergekitHetError("plot_curves: no curves to plot")
    many = len(curves) > 6  # legend beside the axes; past 10 curves the line style changes with the colour cycle
    fig, ax = plt.subplots(figsize=(8.0 if many else 6.0, 4.0))
    integer_x = True
    for i, (name, c) in enumerate(curves.items()):
        xs, ys = c if isinstance(c, tuple) else (range(1, len(c) + 1), c)
        if len(xs) != len(ys):
            raise MergekitHetError(f"plot_curves: curve '{name}' has {len(xs)} x and {len(ys)} y values")
        integer_x = integer_x and all(float(x).is_integer() for x in xs)
        ax.plot(list(xs), list(ys), marker="o" if len(ys) <= 30 else None, ms=3, label=name,
                color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3])  # fmt: skip
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small")
    return _save(fig, path)
