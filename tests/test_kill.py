"""Kill a merge at a random moment (SIGTERM or SIGKILL, once its staging folder exists): the old
output is intact or the new one complete, SIGTERM leaves nothing hidden, and a re-run succeeds
without any clean-up (it removes what a SIGKILL left)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file


def make_models(root: Path) -> dict[str, Path]:
    """Three 'models' of 4 x 256K float32 elements: big enough that a merge takes a moment."""
    out = {}
    for seed, name in enumerate(["base", "e0", "e1"]):
        g = torch.Generator().manual_seed(seed)
        folder = root / name
        folder.mkdir()
        save_file({f"layer.{i}.weight": torch.randn(256, 1024, generator=g) for i in range(4)}, folder / "model.safetensors")
        (folder / "config.json").write_text('{"model_type": "llama"}')
        out[name] = folder
    return out


def config(root: Path, m: dict[str, Path], density: float) -> Path:
    cfg = {"merge_method": "ties", "base_model": str(m["base"]), "parameters": {"density": density},
           "models": [{"model": str(m[e]), "parameters": {"weight": 1.0}} for e in ("e0", "e1")]}  # fmt: skip
    path = root / f"cfg-{density}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def command(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mergekit_het.cli", "merge", str(cfg), str(out), "--overwrite", "--quiet", "--chunk-size", "65536"]


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".out"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    m = make_models(root)
    old_cfg, new_cfg = config(root, m, 0.3), config(root, m, 0.6)
    digests = {}
    for name, cfg in (("new", new_cfg), ("old", old_cfg)):  # ends with the old output in place
        subprocess.run(command(cfg, root / "out"), check=True, capture_output=True)
        digests[name] = digest(root / "out")
    assert digests["old"] != digests["new"]
    return root, new_cfg, digests


def kill_once(root: Path, cfg: Path, sig: int, delay: float) -> int:
    """Start a merge, wait for its staging folder, sleep `delay`, send `sig`; the exit code."""
    proc = subprocess.Popen(command(cfg, root / "out"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(n.startswith(".out.tmp-") for n in os.listdir(root)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc.returncode


def check_and_rerun(root: Path, cfg: Path, digests: dict[str, str], sig: int) -> None:
    assert digest(root / "out") in (digests["old"], digests["new"])  # never lost, never half-written
    if sig == signal.SIGTERM:
        assert hidden(root) == []
    subprocess.run(command(cfg, root / "out"), check=True, capture_output=True)  # no clean-up first
    assert digest(root / "out") == digests["new"] and hidden(root) == []
    subprocess.run(command(root / "cfg-0.3.yml", root / "out"), check=True, capture_output=True)  # the old output back


@pytest.mark.slow  # each merge is a fresh process: ~3 s of imports on 2 cores
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_kill_mid_merge_keeps_old_output_and_rerun_succeeds(setup, sig):
    root, cfg, digests = setup
    rc = kill_once(root, cfg, sig, delay=0.05)
    assert rc in (-sig, 143, 0), rc  # 143: our SIGTERM handler; 0: it finished first
    check_and_rerun(root, cfg, digests, sig)


@pytest.mark.slow
def test_kill_at_random_moments(setup):
    root, cfg, digests = setup
    rng = random.Random(0)
    for _ in range(8):
        sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
        kill_once(root, cfg, sig, delay=rng.uniform(0, 1.5))
        check_and_rerun(root, cfg, digests, sig)
