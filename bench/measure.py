"""Measure one command as its own child process: wall and CPU time, peak RSS of its tree, GPU memory.

Peak RSS is taken two ways and the larger is reported:
  * `ru_maxrss` of the command: the kernel's high-water mark of the largest single process among
    it and the descendants it reaped (exact, no sampling; what `/usr/bin/time -v` prints as
    "Maximum resident set size"). Linux carries a process's high-water mark across fork and exec,
    so a command forked straight from this (large, after comparing outputs) process would report
    this process's RSS: commands are started by a small launcher (`_LAUNCH`) that forks them
    and hands back their own `ru_maxrss`;
  * the sum of RSS over the live process tree, sampled every `interval` s with psutil (catches
    several processes resident at once, e.g. worker pools; may miss short spikes).
Neither includes the benchmark's own process. Both count file-backed pages the child mapped and
touched (memory-mapped safetensors), exactly as the kernel charges them to the process. Those pages
are clean page cache the kernel can drop, so the sampler also records the peak of the summed
anonymous RSS (`RssAnon` in /proc/PID/status: heap, tensors, buffers), the memory a merge really holds.

GPU memory (when pynvml is importable and a GPU is visible): the peak of the device's used memory
while the command ran minus what was used before it started (the device must be otherwise idle).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is on every machine we run on, but stay usable
    psutil = None


@dataclass
class Measurement:
    """One run of one command."""

    returncode: int
    wall_s: float
    cpu_s: float  # user + system CPU time of the child and its reaped descendants
    maxrss_bytes: int  # ru_maxrss of the child (largest process of its tree)
    tree_rss_bytes: int  # sampled peak of the summed RSS of the live tree (0 without psutil)
    anon_rss_bytes: int  # sampled peak of the summed anonymous RSS of the live tree (0 without psutil)
    gpu_peak_bytes: int | None  # None when not measured

    @property
    def peak_rss_bytes(self) -> int:
        return max(self.maxrss_bytes, self.tree_rss_bytes)


class _TreeSampler(threading.Thread):
    """Polls the summed RSS of a process and its descendants, and the GPU's used memory."""

    def __init__(self, pid: int, interval: float, gpu: _Gpu | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.gpu = pid, interval, gpu
        self.peak_rss = 0
        self.peak_anon = 0
        self.peak_gpu = 0
        self.stop = threading.Event()

    def run(self) -> None:
        root = psutil.Process(self.pid) if psutil else None
        while not self.stop.is_set():
            if root is not None:
                try:
                    rss = anon = 0
                    for pid in [self.pid, *(c.pid for c in root.children(recursive=True))]:
                        fields = _status_kib(pid)
                        rss += fields.get("VmRSS", 0) * 1024
                        anon += fields.get("RssAnon", 0) * 1024
                    self.peak_rss = max(self.peak_rss, rss)
                    self.peak_anon = max(self.peak_anon, anon)
                except psutil.Error:
                    pass
            if self.gpu is not None:
                self.peak_gpu = max(self.peak_gpu, self.gpu.used())
            self.stop.wait(self.interval)


def _status_kib(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (empty once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if v.strip().endswith("kB")}
    except (FileNotFoundError, ProcessLookupError):
        return {}


class _Gpu:
    """Used memory of GPU 0 through NVML."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)


def open_gpu() -> _Gpu | None:
    """An NVML handle on GPU 0, or None where there is no GPU or no pynvml."""
    try:
        return _Gpu()
    except Exception:  # noqa: BLE001 - no driver, no GPU, no pynvml: all mean "not measured"
        return None


_LAUNCH = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def child_env() -> dict[str, str]:
    """A benchmark child's environment: the repo first on PYTHONPATH (mergekit-het runs from
    source), the caller's PYTHONPATH kept after it (e.g. a wheels' site folder)."""
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_measured(cmd: list[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, gpu: _Gpu | None = None, interval: float = 0.05) -> Measurement:
    """Run `cmd` (stdout+stderr to `log`) in a fresh child and measure it. The timer starts
    after `os.sync()`: what earlier runs left in the page cache unwritten (a tool that does not
    fsync its output leaves gigabytes) is flushed first, so the disk's writeback of one run's
    output is charged to neither that run nor the next."""
    os.sync()
    gpu_before = gpu.used() if gpu is not None else 0
    log.parent.mkdir(parents=True, exist_ok=True)
    maxrss_file = log.with_suffix(".maxrss")
    maxrss_file.unlink(missing_ok=True)
    with open(log, "wb") as out:
        start = time.perf_counter()
        launch = [sys.executable, "-S", "-c", _LAUNCH, str(maxrss_file), *cmd]
        proc = subprocess.Popen(launch, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        sampler = _TreeSampler(proc.pid, interval, gpu)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
        except BaseException:  # interrupted (SIGTERM, Ctrl-C): leave no merge running behind us
            proc.kill()
            os.waitpid(proc.pid, 0)
            raise
        finally:
            sampler.stop.set()
            sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
    return Measurement(
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        maxrss_bytes=int(maxrss_file.read_text() or 0) * 1024 if maxrss_file.exists() else 0,  # Linux reports KiB
        tree_rss_bytes=sampler.peak_rss,
        anon_rss_bytes=sampler.peak_anon,
        gpu_peak_bytes=max(0, sampler.peak_gpu - gpu_before) if gpu is not None else None,
    )


def read_files(paths: list[Path], chunk: int = 64 << 20) -> tuple[int, float]:
    """Read every file once (warms the page cache); returns (bytes, seconds)."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total, time.perf_counter() - start


def write_file(path: Path, nbytes: int, chunk: int = 64 << 20) -> float:
    """Write `nbytes` to a new file (page cache, no fsync, as the merge tools do); returns seconds."""
    block = os.urandom(min(chunk, max(nbytes, 1)))
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(block[: min(left, len(block))])
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed
