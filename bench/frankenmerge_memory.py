"""A passthrough frankenmerge (layer stacking with `slices:`) at two depths, mergekit-yaml beside
mergekit-het: wall time and peak RSS side by side, and the outputs compared tensor by tensor.

    python bench/make_checkpoints.py --preset 1b --experts 2 --dtype bfloat16 --out /tmp/ck1b
    python bench/frankenmerge_memory.py --checkpoints /tmp/ck1b --threads 2 --repeat 3

Two configs over expert1 and expert2 of the checkpoint folder (`bench/make_checkpoints.py`):
"32 layers" stacks layers 0-16 of expert1 then 6-22 of expert2 (the common community recipe:
an overlapping middle), "44 layers" stacks all 22 layers of each. Each merge is a fresh child
process measured by bench/measure.py (peak RSS of its process tree, and its anonymous part);
the tools alternate. A streaming passthrough holds about one tensor at a time, whatever the
depth: its peak RSS should not grow from 32 to 44 layers, where a tool that holds the output
or its inputs grows with them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import child_env  # noqa: E402
from measure import run_measured  # noqa: E402
from outputs import compare_outputs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GiB = 2**30


def stack_config(folder: Path, ranges: list[tuple[str, int, int]], dtype: str) -> dict:
    """A passthrough `slices:` config taking each (model, start, end) layer range in turn."""
    return {"merge_method": "passthrough", "dtype": dtype,
            "slices": [{"sources": [{"model": str(folder / m), "layer_range": [a, b]}]} for m, a, b in ranges]}  # fmt: skip


def depths(layers: int) -> dict[str, list[tuple[str, int, int]]]:
    """The two stacks for `layers`-layer experts: an overlapping ~1.45x one and a 2x one."""
    cut = round(layers * 16 / 22)
    return {f"{2 * cut} layers": [("expert1", 0, cut), ("expert2", layers - cut, layers)],
            f"{2 * layers} layers": [("expert1", 0, layers), ("expert2", 0, layers)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", type=Path, required=True, help="folder of bench/make_checkpoints.py (expert1, expert2)")
    ap.add_argument("--mergekit-cmd", default="/tmp/mergekit-venv/bin/mergekit-yaml", help="mergekit-yaml command")
    ap.add_argument("--het-cmd", default=f"{shlex.quote(sys.executable)} -m mergekit_het.cli", help="mergekit-het command")
    ap.add_argument("--threads", type=int, default=2, help="threads for both tools (default 2)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/frankenmerge_memory"), help="configs, outputs, logs")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and stack, the order alternating; the median wall time and the largest peak RSS are reported (default 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    spec = json.loads((args.checkpoints / "spec.json").read_text())
    layers, dtype = spec["shape"]["layers"], spec["dtype"]
    args.work.mkdir(parents=True, exist_ok=True)
    tools = {"mergekit": lambda c, o: [*shlex.split(args.mergekit_cmd), str(c), str(o), "--no-copy-tokenizer",
                                       "--num-threads", str(args.threads)],
             "mergekit-het": lambda c, o: [*shlex.split(args.het_cmd), "merge", str(c), str(o), "--no-copy-tokenizer",
                                           "--threads", str(args.threads)]}  # fmt: skip
    rows = []
    for i, (label, ranges) in enumerate(depths(layers).items()):
        config = args.work / f"stack{i}.yml"
        config.write_text(yaml.safe_dump(stack_config(args.checkpoints, ranges, dtype), sort_keys=False))
        outs = {k: args.work / f"stack{i}-{k}" for k in tools}
        row = {"stack": label, "ranges": ranges}
        runs: dict[str, list] = {k: [] for k in tools}
        for rep in range(args.repeat):
            for key in list(tools) if (i + rep) % 2 == 0 else list(tools)[::-1]:
                shutil.rmtree(outs[key], ignore_errors=True)
                m = run_measured(tools[key](config, outs[key]), args.work / f"stack{i}-{key}.log", env=child_env(), cwd=REPO)
                if m.returncode != 0:
                    print(f"{label}: {key} failed (exit {m.returncode}), log {args.work / f'stack{i}-{key}.log'}")
                    return 1
                runs[key].append(m)
                print(f"{label} {key}: {m.wall_s:.1f} s, peak RSS {m.peak_rss_bytes / GiB:.2f} GiB", file=sys.stderr, flush=True)
        for key, ms in runs.items():
            row[key] = {"wall_s": statistics.median(m.wall_s for m in ms), "walls_s": [round(m.wall_s, 2) for m in ms],
                        "peak_rss_gib": max(m.peak_rss_bytes for m in ms) / GiB,
                        "anon_rss_gib": max(m.anon_rss_bytes for m in ms) / GiB}  # fmt: skip
        diff = compare_outputs(outs["mergekit"], outs["mergekit-het"])
        row |= {"tensors": diff.tensors, "differing": diff.differing, "problems": diff.problems[:3]}
        rows.append(row)
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)
    print(f"passthrough frankenmerge of 2 x {layers}-layer {dtype} checkpoints ({args.checkpoints}), {args.threads} threads, "
          f"median of {args.repeat}\n")
    print("| stack | tensors | mergekit wall | mergekit-het wall | ratio | mergekit peak RSS | mergekit-het peak RSS (anon) | ratio | outputs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        mk, het = r["mergekit"], r["mergekit-het"]
        equal = "equal" if r["differing"] == 0 and not r["problems"] else f"DIFFER ({r['differing']}; {r['problems']})"
        print(f"| {r['stack']} | {r['tensors']} | {mk['wall_s']:.1f} s | {het['wall_s']:.1f} s | {het['wall_s'] / mk['wall_s']:.2f} | "
              f"{mk['peak_rss_gib']:.2f} GiB | {het['peak_rss_gib']:.2f} GiB ({het['anon_rss_gib']:.2f}) | "
              f"{het['peak_rss_gib'] / mk['peak_rss_gib']:.2f} | {equal} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["differing"] == 0 and not r["problems"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
