"""Real memory and time bounds for the hostile-input readers (header parser, index reader,
config loader): each case runs in a forked child of one subprocess, under an address-space
limit (RLIMIT_AS = its current size + LIMIT_MB) and a wall-time alarm; the child reports the
exception type and its peak resident memory above what it started with (VmHWM − VmRSS from
/proc/self/status; for a fuzz run, the worst single example's, VmHWM reset before each through
/proc/self/clear_refs). tracemalloc (the fuzz tests' bound) counts Python allocations only; this
counts everything, C buffers of json/yaml included.

Run as a script (`python test_bounds_rss.py CASE ...`) it is that subprocess and prints one
JSON line per case.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

LIMIT_MB = 512  # address space a case may add; past it an allocation raises MemoryError
WALL_S = 20  # SIGALRM kills a case that runs longer (a fuzz run: + 50 ms per example; each one's own bound is 3 s)
RSS_BASE_MB, RSS_PER_INPUT = 32, 8  # asserted: a case's peak resident memory < 32 MB + 8 x its input's size
FUZZ_RSS_MB = 32  # and a fuzz run's worst single example (VmHWM reset before each: hypothesis's own memory excluded)
# (json.loads of a 20 MB list of zeros holds ~7x its size: a header near the 100 MB limit can cost ~0.7 GB)


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM, VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol"]'] + [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _header(blob: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


def _entry(shape: list[int]) -> bytes:
    return json.dumps({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}).encode()


# name -> (reader, file name, contents builder, the error type it must raise; None: accepted)
CASES = {
    "yaml_alias_bomb": ("yaml", "bomb.yml", lambda: laughs(9).encode(), "ConfigError"),
    "yaml_alias_bomb_10": ("yaml", "bomb.yml", lambda: laughs(10).encode(), "ConfigError"),
    "yaml_50mb": ("yaml", "big.yml", lambda: b"a: " + b"x" * 50 * 2**20 + b"\n", "ConfigError"),
    "yaml_deep": ("yaml", "deep.yml", lambda: b"a: " + b"[" * 100_000, "ConfigError"),
    "header_huge_shape": ("header", "h.safetensors", lambda: _header(_entry([2**62] * 3), bytes(8)), "TensorError"),
    # a valid header (the library reads it too) of a million size-1 dimensions
    "header_million_dims": ("header", "h.safetensors", lambda: _header(_entry([1] * 1_000_000 + [2]), bytes(8)), None),
    "header_20mb_list": ("header", "h.safetensors", lambda: _header(b"[" + b"0," * 10_000_000 + b"0]"), "TensorError"),
    "header_deep_nesting": ("header", "h.safetensors", lambda: _header(b"[" * 5_000_000 + b"]" * 5_000_000), "TensorError"),
    "header_length_2_63": ("header", "h.safetensors", lambda: _header(b"{}", length=2**63), "TensorError"),
    "index_200k_bad_values": ("index", "model.safetensors.index.json",
                              lambda: json.dumps({"weight_map": {f"t{i}": 7 for i in range(200_000)}}).encode(), "TensorError"),
}  # fmt: skip


def _file_case(name: str, folder: Path):
    """(function reading the case's file, expected error, file size); the file is written
    before the fork, so its bytes are not counted."""
    from mergekit_het.io.format import read_header, read_index
    from mergekit_het.runtime.bounded_yaml import load_yaml

    kind, fname, build, expected = CASES[name]
    path = folder / fname
    path.write_bytes(build())
    reader = {"yaml": load_yaml, "header": read_header, "index": read_index}[kind]
    return (lambda: reader(path)), expected, path.stat().st_size


def _fuzz_cases(examples: int) -> tuple[dict, Callable[[], None]]:
    """name -> the hypothesis fuzz tests of test_format / test_bounded_yaml at `examples`
    examples (they raise on any exception but the one error type): they must return normally;
    and a warm-up that reads one valid header through ours and the safetensors library."""
    import importlib.util
    import inspect

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    def load(path: Path):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    here = Path(__file__).resolve().parent
    fmt, yml = load(here / "test_format.py"), load(here.parent / "runtime" / "test_bounded_yaml.py")

    def fuzz(strategies, check) -> Callable[[], int]:
        """The fuzz run; returns the largest peak of one example (its reader's memory, not
        hypothesis's own, which grows with the run and lazily loads code pages of its own)."""
        worst = [0]

        def measured(*args) -> None:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            before = _status("VmRSS")
            check(*args)
            worst[0] = max(worst[0], _status("VmHWM") - before)

        measured.__signature__ = inspect.Signature(  # @given wants named positional parameters
            [inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(len(strategies))])
        test = settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                        database=None)(given(*strategies)(measured))  # fmt: skip
        return lambda: (test(), worst[0])[1]

    def index(value) -> None:
        with tempfile.TemporaryDirectory(prefix="idx") as folder:
            fmt.test_fuzz_read_index_only_tensor_error.hypothesis.inner_test(OneFolder(Path(folder)), value)

    class OneFolder:
        """The `tmp_path_factory` the fuzz test asks for: one folder per example, removed after it."""

        def __init__(self, path: Path):
            self.path = path

        def mktemp(self, name: str) -> Path:
            return self.path

    def warm() -> None:
        fmt._check_one(fmt.file_bytes({"a": fmt.T}, bytes(8)))

    return {
        "fuzz_header_structured": fuzz([fmt.headers, st.integers(0, 48)], lambda h, n: fmt._check_one(fmt.file_bytes(h, bytes(n)))),
        "fuzz_header_raw": fuzz([st.binary(max_size=64), st.integers(0, 16)],
                                lambda raw, n: fmt._check_one(fmt.file_bytes(None, bytes(n), raw=raw))),  # fmt: skip
        "fuzz_index": fuzz([fmt.json_values | st.binary(max_size=40)], index),
        "fuzz_yaml": fuzz([yml.yaml_texts(200)], yml.test_fuzz_parse_yaml_only_config_error_within_bounds.hypothesis.inner_test),
    }, warm


def _run_forked(fn, wall: int, warm: Callable[[], None]) -> dict:
    """Run `fn` in a forked child under the limits; its outcome, time and peak memory. The child
    first runs `warm`: a forked child has none of the parent's file-backed pages (torch's code,
    ~150-200 MB) resident, and the first torch call faults them in, which is not the input's
    memory; the baseline is taken after it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        warm()
        start_rss = _status("VmRSS")
        resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + LIMIT_MB * 2**20, resource.RLIM_INFINITY))
        signal.alarm(wall)
        t0 = time.perf_counter()
        peak = None
        try:
            peak = fn()
            outcome = None
        except BaseException as exc:  # noqa: BLE001  (reported, the test judges it)
            outcome = f"{type(exc).__name__}: {str(exc)[:300]}"
        if not isinstance(peak, int):  # a file case: the whole call's peak
            peak = _status("VmHWM") - start_rss
        res = {"outcome": outcome, "seconds": time.perf_counter() - t0, "rss_mb": peak / 2**20}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        return {"outcome": f"killed by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else status}", "seconds": None, "rss_mb": None}
    return json.loads(data)


def main(names: list[str], examples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fuzz, warm = _fuzz_cases(examples)
        for name in names:
            if name in CASES:
                (fn, expected, size), wall = _file_case(name, Path(tmp)), WALL_S
            else:
                fn, expected, size, wall = fuzz[name], None, 0, WALL_S + examples // 20
            res = _run_forked(fn, wall, warm)
            print(json.dumps({"case": name, "expected": expected, "input_mb": size / 2**20, "wall": wall, **res}), flush=True)


DEFAULT = ["yaml_alias_bomb", "yaml_50mb", "header_huge_shape", "header_deep_nesting", "index_200k_bad_values",
           "fuzz_header_structured"]  # fmt: skip
FUZZ = ["fuzz_header_structured", "fuzz_header_raw", "fuzz_index", "fuzz_yaml"]
REST = [n for n in CASES if n not in DEFAULT] + FUZZ  # the slow test: the other cases, every fuzz run at 1500 examples


def run_cases(names: list[str], examples: int) -> list[dict]:
    proc = subprocess.run([sys.executable, __file__, str(examples), *names], capture_output=True, text=True,
                          timeout=(WALL_S + examples // 20) * len(names) + 60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def check(results: list[dict], names: list[str]) -> None:
    assert [r["case"] for r in results] == names
    for r in results:
        want = None if r["expected"] is None else r["expected"] + ":"
        got = r["outcome"]
        assert (got is None) if want is None else (got or "").startswith(want), r
        bound = FUZZ_RSS_MB if r["case"] in FUZZ else RSS_BASE_MB + RSS_PER_INPUT * r["input_mb"]
        assert r["seconds"] < r["wall"] and r["rss_mb"] < bound, r


def test_hostile_inputs_one_error_within_real_memory_and_time(record_property):
    """A handful of the worst cases and a short fuzz run, in one subprocess (~6 s, mostly imports)."""
    results = run_cases(DEFAULT, examples=60)
    for r in results:
        record_property(r["case"], f"{r['rss_mb']:.1f} MB, {r['seconds']:.2f} s")
    check(results, DEFAULT)


@pytest.mark.slow
def test_hostile_inputs_rest_and_long_fuzz_within_real_bounds():
    results = run_cases(REST, examples=1500)
    check(results, REST)


if __name__ == "__main__":
    main(sys.argv[2:], int(sys.argv[1]))
