"""Plot and tabulate the accuracy curves of finished federated runs.

    python federated/compare.py runs/fed/fedavg runs/fed/fedprox runs/fed/ghbm \
        runs/fed/fed3r_fedavg --out runs/fed/compare.png

Each argument is a `mergekit-het federated` output folder (its history.json; for a run still in
progress, the history of its last completed round in `.<name>.partial/state/meta.json`); the
legend uses the folder names. Prints a markdown table of accuracy at selected rounds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mergekit_het.evaluate.plots import plot_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--every", type=int, default=5, help="table column every N rounds")
    args = ap.parse_args()
    curves = {}
    for run in args.runs:
        done, live = run / "history.json", run.parent / f".{run.name}.partial" / "state" / "meta.json"
        hist = json.loads(done.read_text()) if done.is_file() else json.loads(live.read_text())["history"]
        evals = [(h["round"], h["accuracy"]) for h in hist if "accuracy" in h]
        curves[run.name] = ([r for r, _ in evals], [a for _, a in evals])
    plot_curves(curves, args.out, title="Federated all-MiniLM-L6-v2: global test accuracy")
    last = max(max(xs) for xs, _ in curves.values())
    cols = sorted({0, *range(args.every, last + 1, args.every), last})
    print("| run | " + " | ".join(f"r{c}" for c in cols) + " | best |")
    print("|---" * (len(cols) + 2) + "|")
    for name, (xs, ys) in curves.items():
        at = dict(zip(xs, ys))
        print(f"| {name} | " + " | ".join(f"{at[c]:.3f}" if c in at else "-" for c in cols) + f" | {max(ys):.3f} |")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
