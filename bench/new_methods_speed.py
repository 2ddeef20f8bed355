"""TSV-M and Iso-CTS against our TIES on base + N Llama-shaped checkpoints: wall time, its ratio
to TIES, peak RSS (and GPU memory), each merge a fresh `mergekit-het merge` child process
(`bench/measure.py`); optionally the max |Δ| of each method's GPU output against its CPU output.

    python bench/new_methods_speed.py --preset 70m                          # CPU, 62M x 4 bf16
    python bench/new_methods_speed.py --preset 1b --device cuda --compare-cpu

Checkpoints come from `bench/make_checkpoints.py` (reused when present). TIES runs at density
0.3 (chunked, streaming); TSV-M and Iso-CTS take whole tensors (1 + T + 2 SVDs per matrix).
Results: one JSON line per run on stdout, a table at the end, and `--out` (JSON) if given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from make_checkpoints import PRESETS, CheckpointSpec, make_checkpoints  # noqa: E402
from measure import child_env, open_gpu, run_measured  # noqa: E402

PARAMETERS = {"ties": {"normalize": True, "lambda": 1.0}, "tsv": {"alpha": 1.0}, "iso_c": {"alpha": 1.0},
              "iso_cts": {"alpha": 1.0, "common_space_fraction": 0.8}}  # fmt: skip


def write_config(method: str, folders: list[Path], path: Path) -> Path:
    """A mergekit YAML (JSON is YAML) of `method` over base = folders[0] and the experts."""
    per_model = {"weight": 1.0, **({"density": 0.3} if method == "ties" else {})}
    cfg = {"merge_method": method, "base_model": str(folders[0]), "parameters": PARAMETERS[method],
           "models": [{"model": str(f), "parameters": per_model} for f in folders[1:]]}  # fmt: skip
    path.write_text(json.dumps(cfg, indent=1))
    return path


def merge_once(method: str, folders: list[Path], work: Path, device: str, gpu, threads: int | None = None) -> dict:
    config = write_config(method, folders, work / f"{method}.yml")
    out = work / f"out-{method}-{device.replace(':', '')}"
    cmd = [sys.executable, "-m", "mergekit_het.cli", "merge", str(config), str(out), "--device", device, "--overwrite"]
    cmd += ["--threads", str(threads)] if threads else []
    log = work / f"{method}-{device.replace(':', '')}.log"
    m = run_measured(cmd, log, env=child_env(), gpu=gpu)
    if m.returncode != 0:
        raise SystemExit(f"{method} on {device} failed (exit {m.returncode}); see {log}")
    return {"method": method, "device": device, "wall_s": round(m.wall_s, 2), "cpu_s": round(m.cpu_s, 2),
            "peak_rss_mib": round(m.peak_rss_bytes / 2**20, 1), "anon_rss_mib": round(m.anon_rss_bytes / 2**20, 1),
            "gpu_peak_mib": None if m.gpu_peak_bytes is None else round(m.gpu_peak_bytes / 2**20, 1), "out": str(out)}  # fmt: skip


def max_difference(a: Path, b: Path) -> tuple[float, float]:
    """(max |Δ|, max |Δ| / max |b|) over all tensors of two merged folders."""
    from safetensors import safe_open

    worst = scale = 0.0
    for fa in sorted(a.glob("*.safetensors")):
        with safe_open(str(fa), "pt") as x, safe_open(str(b / fa.name), "pt") as y:
            for name in x.keys():
                ta, tb = x.get_tensor(name).float(), y.get_tensor(name).float()
                worst = max(worst, float((ta - tb).abs().max()))
                scale = max(scale, float(tb.abs().max()))
    return worst, worst / scale if scale else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="70m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--experts", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--methods", default="ties,tsv,iso_cts", help="comma-separated; ties first gives the ratios")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads of every merge (on a loaded machine 1: LAPACK's threads"
                                              " spin against other processes, a 2048x768 SVD took 20 s on 2 busy cores, 1.3 s on 1)")
    p.add_argument("--compare-cpu", action="store_true", help="on a GPU: also merge on the CPU and print max |Δ|")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "_work" / "new_methods")
    p.add_argument("--ckpt", type=Path, help="existing checkpoints folder (base/ expert1/ ...)")
    p.add_argument("--out", type=Path, help="write all results as JSON here")
    args = p.parse_args(argv)

    spec = CheckpointSpec(shape=PRESETS[args.preset], experts=args.experts, dtype=args.dtype)
    ckpt = args.ckpt or args.work / "ckpt" / f"{args.preset}-{args.dtype}-e{args.experts}"
    folders = make_checkpoints(spec, ckpt)
    args.work.mkdir(parents=True, exist_ok=True)
    gpu = open_gpu() if args.device.startswith("cuda") else None
    methods = args.methods.split(",")
    results = []
    for method in methods:
        runs = [merge_once(method, folders, args.work, args.device, gpu, args.threads) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["wall_s"])
        if args.compare_cpu and args.device != "cpu":
            cpu = merge_once(method, folders, args.work, "cpu", None, args.threads)
            best["max_abs_diff_vs_cpu"], best["max_rel_diff_vs_cpu"] = max_difference(Path(best["out"]), Path(cpu["out"]))
            best["cpu_wall_s"] = cpu["wall_s"]
            shutil.rmtree(cpu["out"], ignore_errors=True)
        results.append(best)
        print(json.dumps(best), flush=True)
        if method != methods[0]:
            shutil.rmtree(best["out"], ignore_errors=True)
    ref = results[0]["wall_s"]
    print(f"\n{args.preset} {args.dtype} base + {args.experts} experts on {args.device}")
    print(f"{'method':10} {'wall s':>8} {'x ' + methods[0]:>8} {'peak RSS MiB':>13} {'GPU MiB':>8}")
    for r in results:
        gpu_mib = "-" if r["gpu_peak_mib"] is None else f"{r['gpu_peak_mib']:.0f}"
        print(f"{r['method']:10} {r['wall_s']:8.2f} {r['wall_s'] / ref:8.2f} {r['peak_rss_mib']:13.0f} {gpu_mib:>8}")
    shutil.rmtree(results[0]["out"], ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps({"preset": args.preset, "dtype": args.dtype, "device": args.device, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
