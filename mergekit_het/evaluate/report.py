"""Results of an evaluation as JSON, a Markdown table and PNG plots, written to a fresh folder.

Outputs are staged in a temporary sibling folder and renamed into place when complete; an
existing output folder is only replaced with `overwrite=True`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from ..runtime.files import staged_output
from . import plots
from .experiment import Comparison, ModelResult
from .runner import TaskScore


def scores_table(rows: Mapping[str, Mapping[str, TaskScore]]) -> str:
    """Markdown table of accuracy / macro-F1 per task for each evaluated model."""
    tasks = list(next(iter(rows.values())))
    head = "| model | " + " | ".join(f"{t} acc | {t} F1" for t in tasks) + " | mean acc |"
    lines = [head, "|" + "---|" * (2 * len(tasks) + 2)]
    for name, scores in rows.items():
        cells = " | ".join(f"{scores[t].accuracy:.4f} | {scores[t].macro_f1:.4f}" for t in tasks)
        mean = sum(s.accuracy for s in scores.values()) / len(scores)
        lines.append(f"| {name} | {cells} | {mean:.4f} |")
    return "\n".join(lines) + "\n"


def _result_json(r: ModelResult) -> dict:
    out = {"tasks": {t: asdict(s) for t, s in r.scores.items()}, "normalized": r.normalized,
           "absolute_accuracy": r.absolute, "normalized_accuracy": r.mean_normalized,
           "params": r.params}
    if r.sweep is not None:
        out["sweep"] = [{"params": p.params, "score": p.score, "accuracy": p.details}
                        for p in r.sweep.points]
    return out


def comparison_json(c: Comparison) -> dict:
    out = {"tasks": c.tasks, "select_split": c.select_split, "report_split": c.report_split,
           "models": {r.name: _result_json(r) for r in [c.base, c.experts, *c.methods]}}
    if c.cross_task is not None:
        out["cross_task"] = {"alpha": c.cross_task.alpha, "vectors": c.cross_task.vectors,
                             "accuracy": c.cross_task.accuracy, "base": c.cross_task.base,
                             "normalized": c.cross_task.normalized}
    if c.disentanglement is not None:
        out["disentanglement"] = asdict(c.disentanglement)
    return out


def _matrix_table(rows: list[str], cols: list[str], m: list[list[float]], corner: str) -> str:
    lines = [f"| {corner} | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {r} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for r, row in zip(rows, m)]
    return "\n".join(lines) + "\n"


def comparison_markdown(c: Comparison) -> str:
    models = [c.base, c.experts, *c.methods]
    head = "| model | " + " | ".join(c.tasks) + " | absolute acc | normalized acc | chosen params |"
    lines = [f"Accuracy on `{c.report_split}` (normalized = ÷ the task's expert); merge parameters "
             f"chosen on `{c.select_split}` by mean normalized accuracy.", "", head,
             "|" + "---|" * (len(c.tasks) + 4)]
    for r in models:
        params = ", ".join(f"{k}={v}" for k, v in r.params.items()) or "–"
        cells = " | ".join(f"{r.scores[t].accuracy:.4f}" for t in c.tasks)
        lines.append(f"| {r.name} | {cells} | {r.absolute:.4f} | {r.mean_normalized:.4f} | {params} |")
    text = "\n".join(lines) + "\n\n## Macro-F1\n\n" + scores_table({r.name: r.scores for r in models})
    for r in c.methods:
        if r.sweep is not None:
            text += f"\n## Sweep of {r.name} on `{c.select_split}`\n\n| params | mean normalized acc |\n|---|---|\n"
            text += "".join(f"| {p.params} | {p.score:.4f} |\n" for p in r.sweep.points)
    if c.cross_task is not None:
        ct = c.cross_task
        text += (f"\n## Cross-task matrix (θ0 + {ct.alpha}·τ_i on task j ÷ base accuracy on j)\n\n"
                 + _matrix_table([f"τ {v}" for v in ct.vectors], ct.tasks, ct.normalized, "vector \\ task"))
    if c.disentanglement is not None:
        d = c.disentanglement
        text += (f"\n## Weight-disentanglement error ξ(α1, α2), α1 = {d.tasks[0]} (rows), "
                 f"α2 = {d.tasks[1]} (columns)\n\n"
                 + _matrix_table([str(a) for a in d.alphas], [str(a) for a in d.alphas], d.errors, "α1 \\ α2"))
    return text


def write_comparison(c: Comparison, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """results.json, report.md and the plots (normalized accuracy bars, sweep curves,
    cross-task heatmap, disentanglement heatmap) into the folder `out`."""
    with staged_output(Path(out), overwrite) as tmp:
        (tmp / "results.json").write_text(json.dumps(comparison_json(c), indent=2) + "\n")
        (tmp / "report.md").write_text(comparison_markdown(c))
        bars = {r.name: r.normalized for r in [c.base, *c.methods]}
        plots.plot_method_bars(bars, tmp / "normalized_accuracy.png")
        for r in c.methods:
            if r.sweep is not None:
                plots.plot_curves(_sweep_curves(r), tmp / f"sweep_{r.name}.png",
                                  xlabel=list(r.sweep.points[0].params)[-1],
                                  ylabel=f"mean normalized acc ({c.select_split})",
                                  title=f"Sweep of {r.name}")
        if c.cross_task is not None:
            plots.plot_cross_task(c.cross_task.normalized, c.cross_task.vectors, c.cross_task.tasks,
                                  tmp / "cross_task.png",
                                  title=f"θ0 + {c.cross_task.alpha}·τ_i on task j (÷ base acc on j)")
        if c.disentanglement is not None:
            d = c.disentanglement
            plots.plot_disentanglement(d.errors, d.alphas, d.tasks, tmp / "disentanglement.png")
    return Path(out)


def _sweep_curves(r: ModelResult) -> dict[str, tuple[list[float], list[float]]]:
    """One curve over the last grid key per combination of the other keys."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for p in r.sweep.points:
        *others, last = p.params.items()
        label = ", ".join(f"{k}={v}" for k, v in others) or r.name
        xs, ys = curves.setdefault(label, ([], []))
        xs.append(last[1])
        ys.append(p.score)
    return curves
