"""Run several federated variants side by side (one process each, e.g. all on one GPU), choose
each variant's client lr on validation, and write the comparison (table, JSON, PNG).

    python federated/sweep.py federated/configs/minilm_austen_full.yaml \
        --variants federated/configs/methods.yaml --grid client.lr=0.01,0.05 \
        --out runs/fed/sweep --deadline 600 model=/path/to/all-MiniLM-L6-v2

Every (variant, grid value) pair is one `run_federated` process whose per-round history goes to
`OUT/<variant>@<value>.jsonl` as it runs, so a deadline (`--deadline` seconds; the remaining
processes are stopped) still leaves every curve up to its last round. Selection: per variant,
the grid value whose validation accuracy (`data.extra_eval_splits: [validation]`), averaged over
the evaluations in the last quarter of the rounds all runs reached, is highest; the table
reports the test accuracy of every run on those same rounds, marking the chosen ones.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

FIELDS = ("round", "accuracy", "loss", "validation_accuracy", "train_loss", "train_seconds", "seconds")


def child(jsonl: Path, config: str, overrides: list[str], precision: str) -> None:
    """One run: history entries appended to `jsonl` as rounds finish."""
    import torch

    from mergekit_het.federated import load_federated_config, run_federated

    torch.set_float32_matmul_precision(precision)
    cfg = load_federated_config(config, overrides)

    def record(rnd: int, entry: dict) -> None:
        with jsonl.open("a") as f:
            f.write(json.dumps({k: entry[k] for k in FIELDS if k in entry}) + "\n")
        if "accuracy" in entry:
            print(f"round {rnd}: test {entry['accuracy']:.4f} val {entry.get('validation_accuracy', float('nan')):.4f} "
                  f"({entry.get('seconds', 0)} s)", flush=True)  # fmt: skip

    run_federated(cfg, on_round=record, progress=False)


def launch(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """Start every run; wait until all finish or the deadline passes. Returns name → (variant, value)."""
    variants = yaml.safe_load(args.variants.read_text())
    key, _, values = args.grid.partition("=")
    runs = {f"{v}@{g}": (v, g, [*args.overrides, *ovr, f"{key}={g}", f"output.dir={args.out / 'runs' / f'{v}@{g}'}"])
            for v, ovr in variants.items() for g in values.split(",")}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, (_, _, ovr) in runs.items():
        (args.out / f"{name}.jsonl").unlink(missing_ok=True)
        log = (args.out / f"{name}.log").open("w")
        cmd = [sys.executable, __file__, "--child", str(args.out / f"{name}.jsonl"), str(args.config),
               "--precision", args.precision, *ovr]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    end = time.monotonic() + args.deadline
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < end:
        time.sleep(2)
    for name, p in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            print(f"{name}: stopped at the deadline")
        elif p.returncode:
            print(f"{name}: failed (exit {p.returncode}); see {args.out / (name + '.log')}")
    for p in procs.values():
        p.wait()
    return {name: (v, g) for name, (v, g, _) in runs.items()}


def _evals(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if "accuracy" in r]


def _failure(log: Path) -> str:
    """The last line of a run's log (its error), or why there is none."""
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()] if log.is_file() else []
    return lines[-1].strip().replace("|", "/")[:200] if lines else "no log"


def report(out: Path, runs: dict[str, tuple[str, str]], targets: list[float]) -> str:
    """Choose per variant on validation; write results.json, accuracy.png; return the markdown table."""
    every = {name: _evals(out / f"{name}.jsonl") for name in runs}
    failed = {n: _failure(out / f"{n}.log") for n, h in every.items() if len(h) < 2}
    hist = {n: h for n, h in every.items() if n not in failed}
    common = min(h[-1]["round"] for h in hist.values())
    window = [r for r in {e["round"] for h in hist.values() for e in h} if common * 3 / 4 <= r <= common and r > 0]

    def mean_at(h: list[dict], key: str) -> float:
        vals = [e[key] for e in h if e["round"] in window and key in e]
        return sum(vals) / len(vals) if vals else float("nan")

    chosen: dict[str, str] = {}
    for name, h in hist.items():
        v = runs[name][0]
        if v not in chosen or mean_at(h, "validation_accuracy") > mean_at(hist[chosen[v]], "validation_accuracy"):
            chosen[v] = name
    cols = sorted({0, *range(25, common + 1, 25), common})
    head = ["run", "lr", "chosen", *(f"r{c}" for c in cols), f"test mean r{min(window)}-{common}",
            f"val mean r{min(window)}-{common}", *(f"rounds to {t:.2f}" for t in targets), "s/round"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, h in sorted(hist.items(), key=lambda kv: (list(chosen).index(runs[kv[0]][0]), kv[0])):
        at = {e["round"]: e["accuracy"] for e in h}
        reach = [next((e["round"] for e in h if e["accuracy"] >= t and e["round"] <= common), None) for t in targets]
        secs = [e["seconds"] for e in h if e["round"] > 0 and "seconds" in e]
        row = [runs[name][0], runs[name][1], "**yes**" if chosen[runs[name][0]] == name else "",
               *(f"{at[c]:.3f}" if c in at else "-" for c in cols), f"{mean_at(h, 'accuracy'):.3f}",
               f"{mean_at(h, 'validation_accuracy'):.3f}", *(str(r) if r is not None else f">{common}" for r in reach),
               f"{sum(secs) / len(secs):.2f}" if secs else "-"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    lines += [f"| {runs[n][0]} | {runs[n][1]} | failed: {why} |" + " |" * (len(head) - 3) for n, why in failed.items()]
    table = "\n".join(lines)
    (out / "results.json").write_text(json.dumps({"common_rounds": common, "selection_rounds": sorted(window),
                                                  "chosen": chosen, "runs": runs, "failed": failed, "history": every},
                                                 indent=1))  # fmt: skip
    _plot(out / "accuracy.png", hist, runs, chosen, common)
    (out / "table.md").write_text(table + "\n")
    return table


def _plot(path: Path, hist: dict, runs: dict, chosen: dict, common: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sorted({g for _, g in runs.values()}, key=float)
    fig, axes = plt.subplots(1, len(values) + 1, figsize=(5.5 * (len(values) + 1), 4.2), sharey=True)
    panels = [("chosen lr (validation)", set(chosen.values()))] + [(f"client lr {g}", {n for n in hist if runs[n][1] == g}) for g in values]
    variants = list(dict.fromkeys(v for v, _ in runs.values()))
    color = {v: f"C{i}" for i, v in enumerate(variants)}  # one colour per variant in every panel
    for ax, (title, names) in zip(axes, panels):
        for name in sorted(names & set(hist), key=lambda n: variants.index(runs[n][0])):
            h = [e for e in hist[name] if e["round"] <= common]
            label = runs[name][0] + (f" (lr {runs[name][1]})" if title.startswith("chosen") else "")
            ax.plot([e["round"] for e in h], [e["accuracy"] for e in h], label=label, lw=1.4, color=color[runs[name][0]])
        ax.set(title=title, xlabel="round", ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        ap = argparse.ArgumentParser()
        ap.add_argument("--child", type=Path)
        ap.add_argument("config")
        ap.add_argument("--precision", default="highest")
        a, rest = ap.parse_known_args()
        return child(a.child, a.config, rest, a.precision)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("overrides", nargs="*", help="key.sub=value for every run")
    ap.add_argument("--variants", type=Path, required=True, help="YAML: variant name -> list of overrides")
    ap.add_argument("--grid", required=True, help="KEY=V1,V2: one run per value per variant, chosen on validation")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--deadline", type=float, default=3600.0, help="seconds before unfinished runs are stopped")
    ap.add_argument("--targets", default="0.6,0.7", help="test accuracies for the rounds-to-reach columns")
    ap.add_argument("--precision", default="highest", help="torch float32 matmul precision (high = TF32)")
    ap.add_argument("--report-only", action="store_true", help="tabulate the histories already in OUT")
    args = ap.parse_args()
    if args.report_only:
        runs = {n: tuple(v) for n, v in json.loads((args.out / "results.json").read_text())["runs"].items()}
    else:
        runs = launch(args)
    print(report(args.out, runs, [float(t) for t in args.targets.split(",")]))


if __name__ == "__main__":
    main()
