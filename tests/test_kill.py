"""Kill a merge, a fine-tune, a federated run and a continual suite at random moments (SIGTERM or SIGKILL): the old
output is intact or the new one complete, nothing hidden is left but a runner's resumable work
folder, and a re-run succeeds without any clean-up (it removes what a SIGKILL left; the runners
resume from their saved state) and gives exactly the uninterrupted result."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
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


# ---- resumable runners: a fine-tune, a federated run, a continual suite -----------------


def runner_config(root: Path, kind: str) -> Path:
    """A bounded fine-tune (30 steps, a checkpoint every 3), federated run (6 rounds, a round
    state after each) or continual suite (3 strategies x 2 schedules, each run kept when done)
    of the tiny BERT on the synthetic task."""
    from fed_fixtures import make_bert, write_task  # tests/conftest.py puts the fixture folders on sys.path

    model, task = root / "bert", root / "task" / "tasks.yaml"
    if not model.is_dir():
        make_bert(model)
        write_task(task.parent)
    data = {"task_file": str(task), "task": "toy", "max_length": 16}
    if kind == "finetune":
        cfg = {"model": str(model), "protocol": "frozen_head", "mode": "dense", "data": data, "head": {"temperature": 0.1},
               "train": {"max_steps": 30, "batch_size": 8, "lr": 2e-3, "log_every": 3, "checkpoint_every": 3, "seed": 0}}  # fmt: skip
    elif kind == "continual":
        cfg = {"model": str(model), "data": {"task_file": str(task), "tasks": ["toy"], "max_length": 16, "train_per_class": 12,
                                             "eval_per_class": 6},
               "stream": {"by": "classes", "experience_sizes": [[2, 2], [1, 3]], "chunk_sizes": [4, 5], "schedules": 2},
               "strategies": [{"name": "finetune"}, {"name": "scroll", "memory": 8, "steps": 2}, {"name": "federated"}],
               "train": {"lr": 0.1}, "eval_batch_size": 64, "threads": 1}  # fmt: skip
    else:
        cfg = {"model": str(model), "data": data, "partition": {"scheme": "iid", "num_clients": 4}, "rounds": 6,
               "clients_per_round": 2, "client": {"lr": 0.1, "batch_size": 8, "local_steps": 2}, "eval_batch_size": 32,
               "seed": 0, "threads": 1}  # fmt: skip
    path = root / f"{kind}.yml"
    path.write_text(yaml.safe_dump({**cfg, "output": {"dir": str(root / "out")}}))
    return path


def runner_command(kind: str, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "mergekit_het.cli", kind, str(cfg), "--overwrite", "--quiet"]


def runner_digest(kind: str, out: Path) -> str:
    """The result: every safetensors file's tensors and metadata (not its bytes: safetensors
    writes the metadata in a random order), the federated history without wall times, the
    continual results.json and table.md."""
    from safetensors import safe_open

    h = hashlib.sha256()
    for f in sorted(out.rglob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            h.update(json.dumps([f.relative_to(out).as_posix(), sorted((st.metadata() or {}).items())]).encode())
            for k in sorted(st.keys()):
                h.update(k.encode() + st.get_tensor(k).numpy().tobytes())
    if kind == "federated":
        hist = [{k: v for k, v in e.items() if "seconds" not in k} for e in json.loads((out / "history.json").read_text())]
        h.update(json.dumps(hist).encode())
    if kind == "continual":
        h.update(b"".join((out / n).read_bytes() for n in ("results.json", "table.md") if (out / n).is_file()))
    return h.hexdigest()


def saved_progress(root: Path) -> int:
    """The step of the fine-tune's latest checkpoint, the round of the federated round state or
    the number of finished continual runs (0: none yet)."""
    work = root / ".out.partial"
    steps = [int(p.name[5:]) for p in work.glob("checkpoints/step_*") if p.name[5:].isdigit()] + [len(list(work.glob("runs/s*")))]
    try:
        rounds = [json.loads((work / "state" / "meta.json").read_text())["round"]]
    except (OSError, ValueError, KeyError):
        rounds = []
    return max(steps + rounds, default=0)


def start_and_wait(kind: str, cfg: Path, root: Path, progress: int) -> tuple[subprocess.Popen, float]:
    """Start the run; wait until it has saved step/round `progress` (or ended): (process, start time)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(runner_command(kind, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while saved_progress(root) < progress and proc.poll() is None and time.monotonic() < t0 + 120:
        time.sleep(0.005)
    return proc, t0


@pytest.fixture(scope="module", params=["finetune", "federated", "continual"])
def runner(request, tmp_path_factory):
    """(kind, root, config, digests of the old and the new output, seconds to the first
    checkpoint); `root/old-copy` is an old output (a model folder, which --overwrite may
    replace) to put back before each kill."""
    kind, root = request.param, tmp_path_factory.mktemp(f"kill-{request.param}")
    cfg = runner_config(root, kind)
    proc, t0 = start_and_wait(kind, cfg, root, 1)
    to_ckpt = time.monotonic() - t0
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    old = root / "old-copy"
    old.mkdir()
    (old / "config.json").write_text('{"model_type": "bert"}')
    save_file({"w": torch.arange(4.0)}, old / "model.safetensors")
    (old / {"finetune": "expert.json", "federated": "history.json", "continual": "results.json"}[kind]).write_text("{}")
    digests = {"new": runner_digest(kind, root / "out"), "old": runner_digest(kind, old)}
    return kind, root, cfg, digests, to_ckpt


def staging(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith(".out.") and not n.startswith(".out.partial"))


@pytest.mark.slow  # every run is a fresh process (~4 s of imports on 2 cores); ~60 s per runner
def test_kill_runner_at_random_moments(runner):
    """Three kills, each followed by a plain re-run of the same command: one at a uniform
    random moment of the set-up (before the first checkpoint: imports, data, model, head), two
    within 0.3 s after a save (checkpoint, round state, finished run) drawn at random (mid-training, mid-save, or after the last
    one: final evaluation, publishing); SIGTERM, SIGKILL, then one drawn at random."""
    kind, root, cfg, digests, to_ckpt = runner
    last = {"finetune": 27, "federated": 6, "continual": 6}[kind]  # the last save before the end
    rng = random.Random(17)
    sigs = [signal.SIGTERM, signal.SIGKILL, rng.choice([signal.SIGTERM, signal.SIGKILL])]
    for n, sig in enumerate(sigs):
        shutil.rmtree(root / "out")
        shutil.copytree(root / "old-copy", root / "out")  # the old output in place again
        if n == 0:
            delay = rng.uniform(0, to_ckpt)
            t0 = time.monotonic()
            proc = subprocess.Popen(runner_command(kind, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(delay)
        else:
            proc, t0 = start_and_wait(kind, cfg, root, rng.randint(1, last))
            time.sleep(rng.uniform(0, 0.3))
        delay = time.monotonic() - t0
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (-sig, 130, 143, 0), (proc.returncode, err.decode()[-2000:])
        assert b"Traceback" not in err, err.decode()[-2000:]
        assert runner_digest(kind, root / "out") in (digests["old"], digests["new"])  # never lost, never half-written
        assert staging(root) == [], staging(root)  # runners stage inside their work folder, even under SIGKILL
        saved = saved_progress(root) if (root / ".out.partial").is_dir() else None
        res = subprocess.run(runner_command(kind, cfg), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        resumed = [line for line in res.stdout.splitlines() if line.startswith("resuming")]
        print(f"{kind} {signal.Signals(sig).name} at {delay:.2f}s (first checkpoint at ~{to_ckpt:.1f}s): "
              f"rc {proc.returncode}, saved step/round {saved}, {resumed}")
        assert runner_digest(kind, root / "out") == digests["new"]  # resumed runs give the uninterrupted result
        assert sorted(n for n in os.listdir(root) if n.startswith(".")) == []


@pytest.mark.slow  # three in-process fine-tunes: ~10 s on 2 cores
def test_finetune_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    """SIGKILL during `accelerator.save_state` leaves a newest `step_N` without its
    `trainer_state.json` (written last, atomically): the resume takes the previous checkpoint
    and gives the uninterrupted weights."""
    from fed_fixtures import make_bert, write_task
    from safetensors.torch import load_file

    from finetune_fixtures import interrupted_at_step
    from mergekit_het.finetune import finetune, load_finetune_config

    model, task = make_bert(tmp_path / "bert"), write_task(tmp_path / "task")
    raw = {"model": str(model), "protocol": "frozen_head", "mode": "dense", "head": {"temperature": 0.1},
           "data": {"task_file": str(task), "task": "toy", "max_length": 16},
           "train": {"max_steps": 10, "batch_size": 8, "lr": 2e-3, "log_every": 2, "checkpoint_every": 4, "seed": 0}}  # fmt: skip
    finetune(load_finetune_config({**raw, "output": {"dir": str(tmp_path / "full")}}))
    cfg = load_finetune_config({**raw, "output": {"dir": str(tmp_path / "cut")}})
    with interrupted_at_step(7), pytest.raises(KeyboardInterrupt):
        finetune(cfg)
    partial = tmp_path / ".cut.partial" / "checkpoints" / "step_8"  # what the kill mid-save left
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x08\x00\x00")
    info = finetune(load_finetune_config({**raw, "resume": True, "output": {"dir": str(tmp_path / "cut")}}))
    assert info["metrics"]["train_steps_this_run"] == 6  # from step 4, not the broken step 8
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
