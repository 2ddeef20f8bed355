"""Compare the 1-process and 2-process fine-tuning runs of `bench/multigpu/run.sh`.

    python bench/multigpu/summarize.py WORK OUT_DIR

WORK holds expert folders `<mode>_<n>gpu` (train_log.jsonl, expert.json, talos_mask.safetensors)
and `fed_round_time.json`. Writes OUT_DIR/multigpu.json, multigpu.md and loss_curves.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _log(folder: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "split" not in r}


def _mask_diff(a: Path, b: Path) -> float | None:
    from safetensors.torch import load_file

    if not (a / "talos_mask.safetensors").is_file():
        return None
    ma, mb = load_file(str(a / "talos_mask.safetensors")), load_file(str(b / "talos_mask.safetensors"))
    diff = sum(int((ma[k] != mb[k]).sum()) for k in ma)
    return diff / sum(v.numel() for v in ma.values())


def main(work: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, summary = [], {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, mode in zip(axes, ("dense", "talos")):
        one, two = work / f"{mode}_1gpu", work / f"{mode}_2gpu"
        if not ((one / "expert.json").is_file() and (two / "expert.json").is_file()):
            summary[mode] = "missing"
            continue
        la, lb = _log(one), _log(two)
        steps = sorted(set(la) & set(lb))
        d = [abs(la[s] - lb[s]) for s in steps]
        ia, ib = (json.loads((f / "expert.json").read_text()) for f in (one, two))
        ma, mb = ia["metrics"], ib["metrics"]
        summary[mode] = {
            "steps": steps[-1], "max_abs_loss_diff": max(d), "mean_abs_loss_diff": sum(d) / len(d),
            "final_loss": [la[steps[-1]], lb[steps[-1]]], "mask_fraction_differing": _mask_diff(one, two),
            "samples_per_second": [ma["samples_per_second"], mb["samples_per_second"]],
            "speedup": mb["samples_per_second"] / ma["samples_per_second"],
            "test_accuracy": [ma["test_accuracy"], mb["test_accuracy"]],
            "validation_accuracy": [ma["validation_accuracy"], mb["validation_accuracy"]],
        }  # fmt: skip
        s = summary[mode]
        rows.append(f"| {mode} | {s['samples_per_second'][0]:.0f} | {s['samples_per_second'][1]:.0f} | {s['speedup']:.2f}x | "
                    f"{s['max_abs_loss_diff']:.4f} / {s['mean_abs_loss_diff']:.4f} | {s['final_loss'][0]:.4f} / {s['final_loss'][1]:.4f} | "
                    f"{s['test_accuracy'][0]:.4f} / {s['test_accuracy'][1]:.4f} |")  # fmt: skip
        ax.plot(steps, [la[s] for s in steps], label="1 GPU")
        ax.plot(steps, [lb[s] for s in steps], label="2 GPUs (DDP)", ls="--")
        ax.set(title=f"{mode}: training loss, same global batch", xlabel="step", ylabel="loss")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=100)
    fed = work / "fed_round_time.json"
    if fed.is_file():
        summary["federated"] = json.loads(fed.read_text())
    head = "| mode | samples/s 1 GPU | samples/s 2 GPUs | speed-up | max / mean abs loss diff | final loss 1 / 2 | test acc 1 / 2 |"
    md = "\n".join([head, "|---|---|---|---|---|---|---|", *rows])
    (out / "multigpu.json").write_text(json.dumps(summary, indent=1))
    (out / "multigpu.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
