"""The suite's table (mean ± std over schedules) and plots.

Per strategy row: class-incremental average accuracy, forgetting, BWT and final accuracy (on
the whole eval pool), task-incremental average accuracy, and the gap of the final accuracy to
joint training. Then SCROLL stage 1's invariance (max |W̃_k − W̃_0| over schedules k of the final
ridge classifier) and the federated run against sequential fine-tuning on the same schedules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate.plots import plot_accuracy_matrix, plot_curves
from .federated_link import weight_gap
from .metrics import METRICS, mean_matrix, mean_std


def _fmt(ms: tuple[float, float] | None, scale: float = 100.0) -> str:
    return "n/a" if ms is None else f"{ms[0] * scale:.2f} ± {ms[1] * scale:.2f}"


def _by_label(runs: Sequence) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    return out


def strategy_rows(runs: Sequence) -> dict[str, dict[str, Any]]:
    """label -> {protocol.metric: (mean, std)}, final accuracy, schedules."""
    rows = {}
    for label, rs in _by_label(runs).items():
        row: dict[str, Any] = {"schedules": len(rs), "final_accuracy": mean_std([r.final_accuracy for r in rs])}
        for proto in ("class_incremental", "task_incremental"):
            for m in METRICS:
                row[f"{proto}.{m}"] = mean_std([r.summary[proto][m] for r in rs])
        rows[label] = row
    return rows


def scroll_invariance(runs: Sequence) -> dict[str, float] | None:
    """Largest entry-wise difference of the final stage-1 ridge classifier to schedule 0's."""
    heads = [r.artifacts["ridge"] for r in runs if "ridge" in r.artifacts]
    if len(heads) < 2:
        return None
    w0, b0 = heads[0].weight, heads[0].bias
    return {"schedules": len(heads), "max_abs_weight": max(float((h.weight - w0).abs().max()) for h in heads),
            "max_abs_bias": max(float((h.bias - b0).abs().max()) for h in heads),
            "weight_scale": float(w0.abs().max())}  # fmt: skip


def federated_gap(runs: Sequence) -> dict[str, float] | None:
    """Federated (one client per round) vs sequential fine-tuning, schedule by schedule."""
    ft = {r.schedule: r for r in runs if r.label == "finetune"}
    fl = {r.schedule: r for r in runs if r.label == "federated"}
    pairs = [(fl[k], ft[k]) for k in sorted(set(ft) & set(fl))]
    if not pairs:
        return None
    gaps = [weight_gap(a.artifacts["state"], b.artifacts["state"]) for a, b in pairs]
    acc = [abs(v - w) for a, b in pairs for ra, rb in zip(a.class_incremental, b.class_incremental)
           for v, w in zip(ra, rb) if v is not None]  # fmt: skip
    return {"schedules": len(pairs), "max_abs_weight": max(g["max_abs"] for g in gaps),
            "max_relative_weight": max(g["relative"] for g in gaps), "max_abs_accuracy": max(acc)}  # fmt: skip


def suite_report(runs: Sequence) -> dict[str, Any]:
    rows = strategy_rows(runs)
    joint = rows.get("joint", {}).get("final_accuracy")
    lines = ["| strategy | CI avg acc | CI forgetting | CI BWT | CI final acc | TI avg acc | gap to joint (final) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, row in rows.items():
        gap = "n/a" if joint is None or row["final_accuracy"] is None else f"{(joint[0] - row['final_accuracy'][0]) * 100:.2f}"
        lines.append(f"| {label} | {_fmt(row['class_incremental.average_accuracy'])} | {_fmt(row['class_incremental.forgetting'])} "
                     f"| {_fmt(row['class_incremental.backward_transfer'])} | {_fmt(row['final_accuracy'])} "
                     f"| {_fmt(row['task_incremental.average_accuracy'])} | {gap} |")  # fmt: skip
    n = max(row["schedules"] for row in rows.values())
    lines.append(f"\nAccuracies in %, mean ± sample std over {n} schedules; CI = class-incremental, TI = task-incremental.")
    inv, fed = scroll_invariance(runs), federated_gap(runs)
    if inv is not None:
        lines.append(f"\nSCROLL stage 1, final ridge classifier over {inv['schedules']} schedules: max |ΔW| = "
                     f"{inv['max_abs_weight']:.3g}, max |Δb| = {inv['max_abs_bias']:.3g} (max |W| = {inv['weight_scale']:.3g}).")  # fmt: skip
    if fed is not None:
        lines.append(f"\nFederated (one client per round, no revisits) vs sequential fine-tuning, {fed['schedules']} schedules: "
                     f"max |Δθ| = {fed['max_abs_weight']:.3g}, max ‖Δθ‖/‖θ‖ = {fed['max_relative_weight']:.3g}, "
                     f"max |ΔR_CI| = {fed['max_abs_accuracy']:.3g}.")  # fmt: skip
    data = {"strategies": rows, "scroll_invariance": inv, "federated_vs_finetune": fed}
    return {"data": data, "markdown": "\n".join(lines) + "\n"}


def write_plots(runs: Sequence, folder: Path, setting: str = "") -> None:
    """`matrix_<label>.png` (class-incremental matrix, mean over schedules) per strategy and
    `accuracy_vs_experience.png` (mean over schedules of the average accuracy over the
    experiences seen after each step), titled with the `setting`'s name."""
    curves = {}
    for label, rs in _by_label(runs).items():
        mats = [r.class_incremental for r in rs]
        names = [f"e{j}" for j in range(len(mats[0][-1]))]
        safe = label.replace(":", "_").replace("/", "_")
        if len(mats[0]) == len(names):
            plot_accuracy_matrix(mean_matrix(mats), names, folder / f"matrix_{safe}.png",
                                 title=f"{label}: class-incremental accuracy (mean over {len(rs)} schedules)")  # fmt: skip
        avg = [sum(v for v in row if v is not None) / sum(v is not None for v in row) for row in mean_matrix(mats)]
        xs = list(range(len(names) - len(avg) + 1, len(names) + 1))
        curves[label] = (xs, avg)
    plot_curves(curves, folder / "accuracy_vs_experience.png", xlabel="experiences learned",
                ylabel="class-incremental accuracy (seen experiences)",
                title=f"Continual learning{': ' + setting if setting else ''} (mean over schedules)")  # fmt: skip
