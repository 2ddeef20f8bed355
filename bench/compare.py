"""mergekit-het vs mergekit 0.1.x, side by side: same inputs, same YAML, same machine, same run.

    bash bench/setup_mergekit.sh                                # once: mergekit in its own venv
    python bench/compare.py --preset tiny                       # smoke test (~2 min on 2 cores)
    python bench/compare.py                                     # 270m shape, base + 3 experts, bf16
    python bench/compare.py --sizes tiny,70m,270m --methods ties    # scaling table + plot
    python bench/compare.py --device cuda --preset 1b           # on a GPU machine (bench/gpu.sh)

For each size: build (or reuse) the random Llama checkpoints, read every input file once to warm
the page cache, measure the floor (a warm read of all inputs + a write of one output-sized file),
then for each method write one mergekit YAML and run `mergekit-yaml CONFIG OUT` and
`mergekit-het merge CONFIG OUT`, each as a fresh child process measured for wall time and peak RSS
of its process tree (bench/measure.py), in alternating order over --repeat rounds. Deterministic
methods then have every output tensor compared (max |mergekit - mergekit-het| in float32).
Results go to --out as results.json, results.md and a PNG plot.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml
from make_checkpoints import (
    PRESETS,
    CheckpointSpec,
    add_shape_args,
    make_checkpoints,
    spec_from_args,
)
from measure import Measurement, child_env, open_gpu, read_files, run_measured, write_file
from outputs import compare_outputs
from report import write_report

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass(frozen=True)
class Method:
    """A merge method as benchmarked: per-model parameters, and whether outputs are comparable."""

    name: str
    uses_base: bool
    model_params: dict
    deterministic: bool = True
    experts: int | None = None  # how many experts it merges (None: all); the 2-model methods take 1 or 2
    params: dict = field(default_factory=dict)  # global parameters


METHODS: dict[str, Method] = {
    "linear": Method("linear", False, {"weight": 1.0}),
    "task_arithmetic": Method("task_arithmetic", True, {"weight": 0.5}),
    "ties": Method("ties", True, {"weight": 1.0, "density": 0.3}),
    "dare_ties": Method("dare_ties", True, {"weight": 1.0, "density": 0.5}, deterministic=False),
    "breadcrumbs": Method("breadcrumbs", True, {"weight": 1.0, "density": 0.9, "gamma": 0.01}),
    # mergekit 0.1.5's other methods that take a base and 3 experts (or 4 models)
    "model_stock": Method("model_stock", True, {}),
    "multislerp": Method("multislerp", True, {"weight": 1.0}),
    "karcher": Method("karcher", False, {}),
    "sce": Method("sce", True, {}),
    "ram": Method("ram", True, {}),
    "ramplus_tl": Method("ramplus_tl", True, {}),
    # two-model methods: base + 1 expert (nuslerp: 2 experts around the base)
    "slerp": Method("slerp", True, {}, experts=1, params={"t": 0.5}),
    "nuslerp": Method("nuslerp", True, {"weight": 1.0}, experts=2),
    "nearswap": Method("nearswap", True, {}, experts=1, params={"t": 0.001}),
    "arcee_fusion": Method("arcee_fusion", True, {}, experts=1, deterministic=False),  # samples above 10⁶ entries
}


def merge_yaml(method: Method, folders: list[Path], dtype: str, compute_dtype: str | None) -> dict:
    """mergekit YAML: task-vector methods merge the experts onto the base; linear averages all models."""
    members = folders[1:] if method.uses_base else folders
    members = members[: method.experts] if method.experts else members
    cfg: dict = {"merge_method": method.name}
    if method.uses_base:
        cfg["base_model"] = str(folders[0])
    cfg["models"] = [{"model": str(m), **({"parameters": dict(method.model_params)} if method.model_params else {})}
                     for m in members]  # fmt: skip
    if method.params:
        cfg["parameters"] = dict(method.params)
    cfg["dtype"] = compute_dtype or dtype
    if compute_dtype and compute_dtype != dtype:
        cfg["out_dtype"] = dtype
    return cfg


@dataclass(frozen=True)
class Tool:
    """A merge CLI: `argv` is its command prefix; `merge_args` builds the rest."""

    key: str
    label: str
    argv: tuple[str, ...]

    def help_cmd(self) -> list[str]:
        return [*self.argv, "--help"] if self.key == "mergekit" else [*self.argv, "merge", "--help"]

    def merge_cmd(self, config: Path, out: Path, device: str, threads: int | None, extra: list[str]) -> list[str]:
        if self.key == "mergekit":
            cmd = [*self.argv, str(config), str(out), "--no-copy-tokenizer"]
            cmd += ["--cuda"] if device == "cuda" else []
            cmd += ["--num-threads", str(threads)] if threads else []
        else:
            cmd = [*self.argv, "merge", str(config), str(out), "--device", device, "--no-copy-tokenizer"]
            cmd += ["--threads", str(threads)] if threads else []
        return cmd + extra


def default_mergekit_argv() -> list[str]:
    venv = BENCH / "_work" / "mergekit-venv" / "bin" / "mergekit-yaml"
    if venv.exists():
        return [str(venv)]
    if found := shutil.which("mergekit-yaml"):
        return [found]
    return [sys.executable, "-m", "mergekit.scripts.run_yaml"]


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def measure_floor(folders: list[Path], out_bytes: int, scratch: Path) -> dict:
    """Warm the page cache, then time a warm read of all inputs and a write of one output."""
    files = sorted(p for f in folders for p in f.iterdir() if p.is_file())
    read_files(files)  # warm-up pass, not timed
    in_bytes, read_s = read_files(files)
    scratch.mkdir(parents=True, exist_ok=True)
    write_s = write_file(scratch / "floor.bin", out_bytes)
    os.sync()
    return {"input_bytes": in_bytes, "output_bytes": out_bytes, "read_s": read_s, "write_s": write_s,
            "floor_s": read_s + write_s}


def summarize(runs: list[Measurement]) -> dict:
    ok = [m for m in runs if m.returncode == 0]
    gpu = [m.gpu_peak_bytes for m in ok if m.gpu_peak_bytes is not None]
    return {
        "ok": len(ok) == len(runs),
        "wall_s": statistics.median(m.wall_s for m in ok) if ok else None,
        "wall_s_all": [m.wall_s for m in runs],
        "cpu_s": statistics.median(m.cpu_s for m in ok) if ok else None,
        "peak_rss_bytes": max((m.peak_rss_bytes for m in ok), default=None),
        "maxrss_bytes": max((m.maxrss_bytes for m in ok), default=None),
        "tree_rss_bytes": max((m.tree_rss_bytes for m in ok), default=None),
        "anon_rss_bytes": max((m.anon_rss_bytes for m in ok), default=None),
        "gpu_peak_bytes": max(gpu) if gpu else None,
        "returncodes": [m.returncode for m in runs],
    }


def bench_size(spec: CheckpointSpec, tag: str, args: argparse.Namespace, tools: list[Tool], size: dict) -> None:
    """Benchmark one checkpoint size; fills `size` as methods finish (partial when interrupted)."""
    work: Path = args.work
    size.update(tag=tag, spec=asdict(spec), params_per_model=spec.shape.params, methods=[], load_1min=[],
                mergekit_het_commit=het_commit())  # the engine may change between sizes: record it per size
    print(f"\n== {tag}: base + {spec.experts} experts, {spec.shape.params / 1e6:.1f}M params each, {spec.dtype}")
    folders = make_checkpoints(spec, work / "ckpt" / tag)
    floor = measure_floor(folders, spec.bytes_per_model, work / "out")
    size["floor"] = floor
    print(f"floor: read {floor['input_bytes'] / 1e9:.2f} GB in {floor['read_s']:.2f} s (warm) + "
          f"write {floor['output_bytes'] / 1e9:.2f} GB in {floor['write_s']:.2f} s = {floor['floor_s']:.2f} s")
    gpu = open_gpu() if args.device == "cuda" else None
    for name in args.methods:
        size["methods"].append(bench_method(METHODS[name], tag, folders, spec.dtype, args, tools, gpu, size["load_1min"]))


def bench_method(method: Method, tag: str, folders: list[Path], dtype: str, args: argparse.Namespace,
                 tools: list[Tool], gpu: object, loads: list[float]) -> dict:
    """Run every tool on one method's YAML (`--repeat` rounds, alternating order) and compare outputs."""
    work: Path = args.work
    cfg = merge_yaml(method, folders, dtype, args.compute_dtype)
    config = work / "configs" / f"{tag}-{method.name}.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = child_env()
    runs: dict[str, list[Measurement]] = {t.key: [] for t in tools}
    outs = {t.key: work / "out" / f"{tag}-{method.name}-{t.key}" for t in tools}
    cmds = {t.key: t.merge_cmd(config, outs[t.key], args.device, args.threads,
                               args.mergekit_extra if t.key == "mergekit" else args.het_extra) for t in tools}
    logs: dict[str, str] = {}
    for r in range(args.repeat):
        for tool in tools if r % 2 == 0 else tools[::-1]:
            shutil.rmtree(outs[tool.key], ignore_errors=True)
            os.sync()
            log = work / "logs" / f"{tag}-{method.name}-{tool.key}-{r}.log"
            loads.append(os.getloadavg()[0])  # other work on the machine skews wall times: say how much
            m = run_measured(cmds[tool.key], log, env=env, cwd=REPO, gpu=gpu)
            runs[tool.key].append(m)
            status = "ok" if m.returncode == 0 else f"FAILED rc={m.returncode}, log {log}"
            print(f"  {method.name:16s} {tool.label:13s} {m.wall_s:8.2f} s (CPU {m.cpu_s:7.2f} s)  "
                  f"peak RSS {m.peak_rss_bytes / 2**30:6.2f} GiB (anon {m.anon_rss_bytes / 2**30:5.2f})  {status}")
            if m.returncode != 0:
                logs[tool.key] = tail(log)
                print(logs[tool.key])
    row = {"method": method.name, "config": cfg, "commands": {k: shlex.join(c) for k, c in cmds.items()},
           "tools": {k: summarize(v) for k, v in runs.items()}, "log_tails": logs, "diff": None}
    if method.deterministic and len(tools) == 2 and all(row["tools"][t.key]["ok"] for t in tools):
        diff = compare_outputs(outs["mergekit"], outs["het"])
        row["diff"] = asdict(diff) | {"differing_frac": diff.differing_frac}
        where = f" at {diff.max_abs_tensor}" if diff.max_abs_tensor else ""
        print(f"  {method.name:16s} max|mergekit - het| = {diff.max_abs:.3g}{where}; "
              f"{diff.differing:,} of {diff.elements:,} elements differ"
              + (f"; PROBLEMS: {diff.problems[:3]}" if diff.problems else ""))
    if not args.keep_outputs:
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)
    return row


def machine_info(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "device": device,
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["mergekit_het_commit"] = het_commit()
    return info


def het_commit() -> str:
    """The repo's commit, with '+dirty' when mergekit_het/ has uncommitted changes ('' outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "mergekit_het"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_args(parser)
    parser.add_argument("--sizes", default=None,
                        help="comma-separated presets for a scaling run (e.g. tiny,70m,270m); overrides --preset")
    parser.add_argument("--methods", default="linear,task_arithmetic,ties",
                        help=f"comma-separated, from {','.join(METHODS)} (default linear,task_arithmetic,ties)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="pass a thread count to both tools")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool and method (median wall time)")
    parser.add_argument("--tools", default="mergekit,het", help="which of mergekit,het to run")
    parser.add_argument("--compute-dtype", default=None,
                        help="YAML dtype for the arithmetic (e.g. float32); the output keeps the checkpoint dtype")
    parser.add_argument("--mergekit-cmd", default=None, help="command prefix for mergekit-yaml")
    parser.add_argument("--het-cmd", default=f"{shlex.quote(sys.executable)} -m mergekit_het.cli",
                        help="command prefix for mergekit-het")
    parser.add_argument("--mergekit-extra", default="", help="extra arguments for mergekit-yaml")
    parser.add_argument("--het-extra", default="", help="extra arguments for mergekit-het merge")
    parser.add_argument("--work", type=Path, default=BENCH / "_work", help="checkpoints, configs, outputs, logs")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default <work>/results/<run>)")
    parser.add_argument("--keep-outputs", action="store_true")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if unknown := [m for m in args.methods if m not in METHODS]:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    args.tools = [t for t in args.tools.split(",") if t]
    if unknown := [t for t in args.tools if t not in ("mergekit", "het")]:
        parser.error(f"--tools: unknown {unknown}; choose from mergekit, het")
    args.sizes = args.sizes.split(",") if args.sizes else None
    if unknown := [s for s in args.sizes or [] if s not in PRESETS]:
        parser.error(f"--sizes: unknown {unknown}; choose from {', '.join(PRESETS)}")
    args.mergekit_extra, args.het_extra = shlex.split(args.mergekit_extra), shlex.split(args.het_extra)
    return args


class Interrupted(Exception):
    """SIGTERM (e.g. `timeout`): stop, kill the running merge, report what finished."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    mergekit_argv = shlex.split(args.mergekit_cmd) if args.mergekit_cmd else default_mergekit_argv()
    all_tools = {"mergekit": Tool("mergekit", "mergekit", tuple(mergekit_argv)),
                 "het": Tool("het", "mergekit-het", tuple(shlex.split(args.het_cmd)))}
    tools = [all_tools[k] for k in ("mergekit", "het") if k in args.tools]
    env = child_env()
    startup = {}
    for tool in tools:  # the tool must start; its --help time is its import/startup overhead
        m = run_measured(tool.help_cmd(), args.work / "logs" / f"help-{tool.key}.log", env=env, cwd=REPO)
        if m.returncode != 0:
            print(f"error: `{shlex.join(tool.help_cmd())}` failed:\n{tail(args.work / 'logs' / f'help-{tool.key}.log')}")
            return 2
        startup[tool.key] = m.wall_s
    specs = ([(s, replace(spec_from_args(args), shape=PRESETS[s])) for s in args.sizes] if args.sizes
             else [(args.preset, spec_from_args(args))])
    results = {"machine": machine_info(args.device), "startup_s": startup, "tools": [t.key for t in tools],
               "commands": {t.key: shlex.join(t.argv) for t in tools}, "repeat": args.repeat,
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sizes": []}
    for preset, spec in specs:
        shape = spec.shape
        name = preset if shape == PRESETS[preset] else (
            f"h{shape.hidden}-l{shape.layers}-i{shape.intermediate}-v{shape.vocab}-a{shape.heads}-kv{shape.kv_heads}")
        tag = f"{name}-{spec.dtype}-e{spec.experts}"
        results["sizes"].append({})
        try:
            bench_size(spec, tag, args, tools, results["sizes"][-1])
        except Interrupted:
            print("interrupted (SIGTERM): writing the results of the runs that finished")
            results["interrupted"] = True
            break
    results["sizes"] = [s for s in results["sizes"] if s.get("methods")]
    if not results["sizes"]:
        return 1
    out = args.out or args.work / "results" / f"{'_'.join(args.sizes or [args.preset])}-{args.device}"
    md = write_report(results, out)
    print(f"\n{md}\nresults: {out}")
    failed = any(not t["ok"] for s in results["sizes"] for r in s["methods"] for t in r["tools"].values())
    return 1 if failed or results.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
