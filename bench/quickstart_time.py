"""Wall time of `mergekit-het quickstart` from scratch, as a new user runs it.

    python bench/quickstart_time.py [--keep DIR] [-- QUICKSTART_ARGS ...]

Runs the installed `mergekit-het quickstart` in a fresh temporary folder (so nothing of this
checkout is on its path but the package itself), prefixes each line of its output with the
seconds elapsed, and prints the total wall time, the CPU time (user + system: what a busy
machine does not stretch), the CPU count and the load average before and after (the machine may
be shared: a load above the core count stretches the wall time), then the comparison table
quickstart wrote. A second run in the same folder (`--rerun`) times what a
re-run costs (every step skipped). Exit status: quickstart's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, float, float]:
    """Run `cmd` in `cwd`, echoing its lines with the elapsed seconds; (exit status, wall seconds,
    CPU seconds: user + system of the command and its children, which a busy machine does not stretch)."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
        for part in line.rstrip("\n").split("\r"):  # progress bars redraw with \r: one line each
            if part.strip():
                print(f"[{time.perf_counter() - start:7.1f}s] {part}", flush=True)
    rc = proc.wait()
    return rc, time.perf_counter() - start, _cpu_seconds() - cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=Path, help="run in this (new) folder and keep it, instead of a temporary one")
    p.add_argument("--threads", type=int, help="set OMP_NUM_THREADS for quickstart (torch's compute threads); "
                   "1 gives a CPU time that a loaded machine hardly stretches")
    p.add_argument("--rerun", action="store_true", help="then run quickstart again in the same folder and time it")
    p.add_argument("quickstart_args", nargs="*", help="passed to `mergekit-het quickstart` (after --)")
    args = p.parse_args()
    exe = shutil.which("mergekit-het")
    if exe is None:
        sys.exit("mergekit-het is not on PATH: pip install the package first")
    work = args.keep or Path(tempfile.mkdtemp(prefix="quickstart-time-"))
    work.mkdir(parents=True, exist_ok=args.keep is None)
    cmd = [exe, "quickstart", *args.quickstart_args]
    threads = f"OMP_NUM_THREADS={args.threads} " if args.threads else ""
    print(f"$ cd {work} && {threads}{' '.join(cmd)}\nbefore: {_load()}", flush=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    rc, wall, cpu = _timed_run(cmd, work, env)
    print(f"after: {_load()}\nquickstart exit {rc}, wall time {wall:.1f} s ({wall / 60:.2f} min), "
          f"CPU time {cpu:.1f} s (user + system)")
    if rc == 0 and args.rerun:
        rc, again, cpu = _timed_run(cmd, work, env)
        print(f"re-run: exit {rc}, wall time {again:.1f} s, CPU time {cpu:.1f} s")
    qs = args.quickstart_args
    out = Path(qs[qs.index("--output") + 1]) if "--output" in qs[:-1] else Path("runs/quickstart")
    report = work / out / "report" / "report.md"
    if report.is_file():
        print(f"\n{report}:\n{report.read_text()}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
