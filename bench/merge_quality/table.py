"""The merge-quality table: one row per (expert kind, model), one column per task, plus heatmaps.

Inputs are the `results.json` of `mergekit-het eval --config` (one per expert kind) and the
experts' `expert.json`. Definitions (ALGORITHMS.md §7):

- absolute accuracy: mean over tasks of test accuracy;
- normalized accuracy: mean over tasks of acc(model, t) / acc(expert_t of the SAME kind, t),
  so every kind's experts score exactly 1;
- cross-task entry (i, j): acc(θ0 + τ_i, j) / acc(θ0, j), θ0 scored with task j's frozen head;
- TaLoS gap on task t: acc(dense expert_t, t) − acc(TaLoS expert_t, t).

TaLoS candidates are chosen on VALIDATION (`select_talos`): among candidates whose largest gap
is ≤ `max_gap` and whose smallest off-diagonal cross-task entry is ≥ `min_cross`, the one with
the highest mean validation accuracy; if none qualifies, the one that misses the two targets by
the least (sum of the shortfalls).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mergekit_het.evaluate import plots
from mergekit_het.runtime.yaml_config import parse_overrides

EXPERTS = "experts (each on its task)"
BASE = "base"


def accuracies(result: Mapping, model: str) -> dict[str, float]:
    """Per-task accuracy of one model of a comparison's results.json."""
    return {t: s["accuracy"] for t, s in result["models"][model]["tasks"].items()}


def off_diagonal(matrix: list[list[float]]) -> list[float]:
    return [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j]


def candidate_summary(talos: Mapping, dense: Mapping) -> dict:
    """Validation facts of one TaLoS candidate against the dense experts (both results.json of
    a comparison reported on validation, with a cross-task matrix)."""
    acc, ref = accuracies(talos, EXPERTS), accuracies(dense, EXPERTS)
    gap = {t: ref[t] - acc[t] for t in acc}
    cross = talos["cross_task"]["normalized"]
    return {"accuracy": acc, "dense_accuracy": ref, "gap": gap, "max_gap": max(gap.values()),
            "mean_accuracy": sum(acc.values()) / len(acc), "cross_task": cross,
            "min_cross": min(off_diagonal(cross), default=1.0)}


def select_talos(candidates: Mapping[str, Mapping], *, max_gap: float, min_cross: float) -> str:
    """Name of the chosen candidate (see the module docstring); the first wins ties."""
    if not candidates:
        raise ValueError("no TaLoS candidate to choose from")

    def shortfall(c: Mapping) -> float:
        return max(0.0, c["max_gap"] - max_gap) + max(0.0, min_cross - c["min_cross"])

    ok = [n for n, c in candidates.items() if shortfall(c) == 0.0]
    if ok:
        return max(ok, key=lambda n: candidates[n]["mean_accuracy"])
    return min(candidates, key=lambda n: shortfall(candidates[n]))


def expert_facts(folder: Path) -> dict:
    """Training facts of an expert folder; for a TaLoS expert also how its task vector sits in
    its mask (entries changed, entries changed outside the mask, mask entries that never moved
    because their tensor received no gradient)."""
    info = json.loads((Path(folder) / "expert.json").read_text())
    cfg, m = info["config"], info["metrics"]
    facts = {"steps": info["steps"], "max_steps": info["max_steps"], "lr": cfg["train"]["lr"],
             "train_seconds": m.get("train_seconds"), "samples_per_second": m.get("samples_per_second")}
    if info.get("sparsity"):
        facts.update(kept_fraction=info["sparsity"]["trainable_fraction"], **mask_usage(Path(folder)))
    return facts


def mask_usage(folder: Path) -> dict:
    """Counts over the TaLoS mask's tensors: total entries, kept, kept in tensors whose task
    vector is all zero (no gradient reached them), τ ≠ 0 inside and outside the mask."""
    from safetensors.torch import load_file

    masks = load_file(str(folder / "talos_mask.safetensors"))
    tau = load_file(str(folder / "task_vector.safetensors"))
    total = kept = dead = inside = outside = 0
    for name, mask in masks.items():
        mask, t = mask.bool(), tau[name]
        nz = t != 0
        total, kept = total + mask.numel(), kept + int(mask.sum())
        inside, outside = inside + int((nz & mask).sum()), outside + int((nz & ~mask).sum())
        if not bool(nz.any()):
            dead += int(mask.sum())
    return {"mask_entries": total, "kept": kept, "kept_without_gradient": dead,
            "changed": inside, "changed_outside_mask": outside}


def _override(overrides: list[str], key: str) -> float | None:
    """The number `key` (`section.name`) is set to by the `key=value` overrides, None if unset."""
    section, name = key.split(".")
    value = parse_overrides(overrides).get(section, {}).get(name)
    return None if value is None else float(value)  # YAML reads 5e-4 (no dot) as a string


def frontier(settings: Mapping[str, list[str]], candidates: Mapping[str, Mapping], references: Mapping[str, Mapping],
             merges: Mapping[str, Mapping]) -> dict:  # fmt: skip
    """The TaLoS accuracy/localization frontier: per point (kept fraction × learning rate) its
    largest own-task gap to dense and smallest off-diagonal cross-task entry (validation), and
    per merge method its test mean accuracy (knobs on validation); `references` are the dense and
    undertrained experts' same facts."""
    points = {}
    for name, c in candidates.items():
        sparsity = _override(settings[name], "talos.sparsity")
        methods = {}
        if name in merges:
            methods = {m: _mean(accuracies(merges[name], m)) for m in merges[name]["models"] if m not in (BASE, EXPERTS)}
        points[name] = {"kept": None if sparsity is None else round(1 - sparsity, 6),
                        "lr": _override(settings[name], "train.lr"), "max_gap": c["max_gap"], "min_cross": c["min_cross"],
                        "mean_accuracy": c["mean_accuracy"], "merges": methods,
                        "best_merge": max(methods.items(), key=lambda kv: kv[1]) if methods else None}  # fmt: skip
    refs = {k: {"max_gap": c["max_gap"], "min_cross": c["min_cross"], "mean_accuracy": c["mean_accuracy"]}
            for k, c in references.items()}
    return {"points": points, "references": refs}


def frontier_table(front: Mapping, methods: list[str]) -> str:
    lines = [f"| point | kept | lr | max gap to dense (val) | min off-diag (val) | {' | '.join(methods)} | best |",
             "|" + "---|" * (len(methods) + 6)]
    for k, ref in front["references"].items():
        lines.append(f"| {k} | – | – | {ref['max_gap']:+.4f} | {ref['min_cross']:.4f} | "
                     + " | ".join("" for _ in methods) + " | see above |")
    for name, pt in sorted(front["points"].items(), key=lambda kv: (kv[1]["lr"] or 0, -(kv[1]["kept"] or 0))):
        cells = " | ".join(f"{pt['merges'][m]:.4f}" if m in pt["merges"] else "–" for m in methods)
        best = f"{pt['best_merge'][0]} {pt['best_merge'][1]:.4f}" if pt["best_merge"] else "–"
        lines.append(f"| {name} | {pt['kept']} | {pt['lr']} | {pt['max_gap']:+.4f} | {pt['min_cross']:.4f} | "
                     f"{cells} | {best} |")
    return "\n".join(lines) + "\n"


def plot_frontier(front: Mapping, path: Path) -> Path:
    """Scatter of the frontier: x = largest own-task gap to dense, y = smallest off-diagonal
    cross-task entry (both validation); one marker per learning rate, labelled by kept fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    by_lr: dict = {}
    for name, pt in front["points"].items():
        by_lr.setdefault(pt["lr"], []).append((name, pt))
    for lr, pts in sorted(by_lr.items(), key=lambda kv: kv[0] or 0):
        ax.plot([p["max_gap"] for _, p in pts], [p["min_cross"] for _, p in pts], "o", label=f"TaLoS lr {lr:g}")
        for _, p in pts:
            ax.annotate(f"{100 * p['kept']:g}%" if p["kept"] is not None else "?", (p["max_gap"], p["min_cross"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    for (k, ref), marker in zip(front["references"].items(), ("s", "^", "D")):
        ax.plot([ref["max_gap"]], [ref["min_cross"]], marker, markersize=9, label=k)
    ax.set_xlabel("largest own-task gap to the dense expert (validation accuracy)")
    ax.set_ylabel("smallest off-diagonal cross-task entry (validation)")
    ax.set_title("TaLoS frontier: accuracy vs localization")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def rows_of(results: Mapping[str, Mapping]) -> list[dict]:
    """Table rows: the pretrained probe once, then each kind's experts and merges."""
    first = next(iter(results.values()))
    rows = [{"kind": "–", "model": "pretrained probe", "acc": accuracies(first, BASE),
             "norm": None, "params": {}}]
    for kind, res in results.items():
        expert = accuracies(res, EXPERTS)
        for name, model in res["models"].items():
            if name == BASE:
                continue
            acc = accuracies(res, name)
            rows.append({"kind": kind, "model": "experts" if name == EXPERTS else name, "acc": acc,
                         "norm": {t: acc[t] / expert[t] for t in acc}, "params": model.get("params", {})})
    return rows


def _mean(d: Mapping[str, float]) -> float:
    return sum(d.values()) / len(d)


def markdown_table(rows: list[dict], tasks: list[str], key: str) -> str:
    head = f"| kind | model | {' | '.join(tasks)} | mean | chosen on validation |"
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for r in rows:
        vals = r[key]
        if vals is None:
            continue
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k not in ("weight", "normalize")) or "–"
        cells = " | ".join(f"{vals[t]:.4f}" for t in tasks)
        lines.append(f"| {r['kind']} | {r['model']} | {cells} | **{_mean(vals):.4f}** | {params} |")
    return "\n".join(lines) + "\n"


def matrix_table(vectors: list[str], tasks: list[str], m: list[list[float]]) -> str:
    lines = [f"| τ \\ task | {' | '.join(tasks)} |", "|" + "---|" * (len(tasks) + 1)]
    lines += [f"| {v} | " + " | ".join(f"{x:.3f}" for x in row) + " |" for v, row in zip(vectors, m)]
    return "\n".join(lines) + "\n"


def targets(results: Mapping[str, Mapping], rows: list[dict], tasks: list[str]) -> dict:
    """The issue's targets on test: TaLoS gap ≤ 0.02 on every task, TaLoS off-diagonal cross-task
    entries ≥ 0.98, best merge (any kind, any method) ≥ 0.80 mean accuracy."""
    dense, talos = accuracies(results["dense"], EXPERTS), accuracies(results["talos"], EXPERTS)
    gap = {t: dense[t] - talos[t] for t in tasks}
    cross = min(off_diagonal(results["talos"]["cross_task"]["normalized"]), default=1.0)
    merges = [r for r in rows if r["norm"] is not None and r["model"] != "experts"] or rows[:1]

    def pick(key: str) -> dict:
        r = max(merges, key=lambda r: _mean(r[key] or r["acc"]))
        return {"kind": r["kind"], "model": r["model"], "mean_accuracy": _mean(r["acc"]),
                "mean_normalized": _mean(r["norm"] or r["acc"]), "params": r["params"]}

    best = pick("acc")
    return {"talos_gap": gap, "talos_gap_met": max(gap.values()) <= 0.02 + 1e-12,
            "talos_min_cross": cross, "talos_cross_met": cross >= 0.98,
            "best_merge": best, "best_merge_met": best["mean_accuracy"] >= 0.80,
            "best_normalized": pick("norm")}


def candidates_table(info: Mapping, tasks: list[str]) -> str:
    tal = info["talos"]
    lines = [f"| candidate | overrides | kept fraction | {' | '.join(f'{t} (TaLoS/dense)' for t in tasks)} "
             "| max gap | min off-diag | chosen |", "|" + "---|" * (len(tasks) + 6)]
    for name, c in tal["candidates"].items():
        kept = _mean({t: f.get("kept_fraction", 0.0) for t, f in tal["experts"][name].items()})
        cells = " | ".join(f"{c['accuracy'][t]:.4f} / {c['dense_accuracy'][t]:.4f}" for t in tasks)
        lines.append(f"| {name} | {' '.join(tal['settings'][name])} | {kept:.4f} | {cells} | "
                     f"{c['max_gap']:+.4f} | {c['min_cross']:.4f} | {'**yes**' if name == tal['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def summary_markdown(results: Mapping[str, Mapping], info: Mapping) -> str:
    tasks = info["tasks"]
    rows = rows_of(results)
    tg = targets(results, rows, tasks)
    b = tg["best_merge"]
    text = [
        f"# Merge quality ({info['profile']} profile)\n",
        f"Frozen-head protocol; base `{info['base']}`; tasks from `{info['tasks_file']}`. Test accuracy; "
        "every knob (λ, density, TaLoS candidate) chosen on validation. Normalized = ÷ the same kind's "
        "expert on that task.\n",
        "## Test accuracy\n\n", markdown_table(rows, tasks, "acc"),
        "\n## Normalized accuracy (÷ expert of the same kind)\n\n", markdown_table(rows, tasks, "norm"),
    ]
    for kind, res in results.items():
        ct = res["cross_task"]
        text += [f"\n## Cross-task matrix, {kind} experts (test; θ0 + τ_i on task j ÷ θ0 on j)\n\n",
                 matrix_table(ct["vectors"], res["tasks"], ct["normalized"])]
    text += [f"\n## TaLoS candidates (validation; chosen: `{info['talos']['chosen']}`; "
             f"targets max gap ≤ {info['talos']['select']['max_gap']}, "
             f"min off-diagonal ≥ {info['talos']['select']['min_cross']})\n\n",
             candidates_table(info, tasks)]
    if info.get("frontier"):
        methods = sorted({m for p in info["frontier"]["points"].values() for m in p["merges"]})
        text += ["\n## TaLoS frontier (gap and off-diagonal on validation; merges: test mean accuracy, knobs on "
                 "validation)\n\n", frontier_table(info["frontier"], methods), "\n![frontier](frontier.png)\n"]
    if info["talos"]["skipped"]:
        text.append(f"\nSkipped (deadline): {', '.join(info['talos']['skipped'])}\n")
    gaps = ", ".join(f"{t} {g:+.4f}" for t, g in tg["talos_gap"].items())
    text += [
        "\n## Targets (test)\n\n",
        f"- TaLoS within 2 points of dense on every task: **{'met' if tg['talos_gap_met'] else 'not met'}** "
        f"(dense − TaLoS: {gaps})\n",
        f"- TaLoS off-diagonal cross-task ≥ 0.98: **{'met' if tg['talos_cross_met'] else 'not met'}** "
        f"(min {tg['talos_min_cross']:.4f})\n",
        f"- best merge ≥ 0.80 mean accuracy: **{'met' if tg['best_merge_met'] else 'not met'}** "
        f"({b['kind']} {b['model']}: {b['mean_accuracy']:.4f}, normalized {b['mean_normalized']:.4f})\n",
        f"- best normalized merge: {tg['best_normalized']['kind']} {tg['best_normalized']['model']} "
        f"{tg['best_normalized']['mean_normalized']:.4f}\n",
        f"\nWall time {info['wall_seconds']} s.\n",
    ]
    return "".join(text)


def write_summary(results: Mapping[str, Mapping], info: Mapping, out: Path) -> list[Path]:
    """merge_quality.md / .json, cross_task_<kind>.png per kind and normalized_accuracy.png."""
    out = Path(out)
    rows = rows_of(results)
    payload = {"info": info, "rows": rows, "targets": targets(results, rows, info["tasks"]),
               "cross_task": {k: r["cross_task"] for k, r in results.items()}}
    written = [out / "merge_quality.json", out / "merge_quality.md"]
    written[0].write_text(json.dumps(payload, indent=2) + "\n")
    written[1].write_text(summary_markdown(results, info))
    for kind, res in results.items():
        ct = res["cross_task"]
        written.append(plots.plot_cross_task(
            ct["normalized"], [f"τ {v}" for v in ct["vectors"]], res["tasks"], out / f"cross_task_{kind}.png",
            title=f"{kind} experts: θ0 + τ_i on task j (÷ θ0 on j), test"))
    if info.get("frontier"):
        written.append(plot_frontier(info["frontier"], out / "frontier.png"))
    bars = {f"{r['kind']} {r['model']}": r["norm"] for r in rows
            if r["norm"] is not None and r["model"] not in ("base",)}
    written.append(plots.plot_method_bars(bars, out / "normalized_accuracy.png",
                                          title="Test accuracy ÷ same-kind expert"))
    return written
