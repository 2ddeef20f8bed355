"""Flower runs leave no process behind, and Flower's deployment mode (a SuperLink and one
SuperNode per client, separate processes on loopback) gives the simulation's global model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("flwr")

from safetensors.torch import load_file  # noqa: E402

from mergekit_het.federated import flower_cli, flower_deploy  # noqa: E402
from mergekit_het.federated.flower import MODEL_FILE  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "federated" / "flower_app"

# A stand-in for the SuperLink the Flower CLI starts: detached in a session of its own, it starts
# a child in another session (as flower-superlink does with flower-superexec) and waits.
FAKE_SUPERLINK = f"""#!{sys.executable}
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def test_simulation_stops_the_superlink_it_started_and_only_that(tmp_path, monkeypatch):
    """A SuperLink already running is left alone; the one started during the run is stopped,
    with the child it started in a session of its own."""
    script = tmp_path / "bin" / "flower-superlink"
    script.parent.mkdir()
    script.write_text(FAKE_SUPERLINK)
    script.chmod(0o755)
    older = subprocess.Popen([str(script)], start_new_session=True)
    started: list[subprocess.Popen] = []
    grandchild: list[int] = []

    def fake_run(*args, **kwargs):
        started.append(subprocess.Popen([str(script)], start_new_session=True))
        deadline = time.monotonic() + 10
        while not grandchild and time.monotonic() < deadline:
            grandchild.extend(_children_of(started[0].pid))
            time.sleep(0.05)
        return "42"

    monkeypatch.setattr(flower_cli, "run_app", fake_run)
    try:
        time.sleep(0.3)
        assert flower_cli.run_simulation(APP, tmp_path / "c.yaml", [], 2) == "42"
        (new,) = started
        assert new.wait(timeout=5) is not None and grandchild
        assert not any(_alive(p) for p in grandchild)
        assert _alive(older.pid)
    finally:
        flower_deploy.stop_sessions([older.pid, *(p.pid for p in started)])
        older.wait(timeout=5)
    assert not _alive(older.pid)


def test_stop_sessions_kills_what_ignores_sigterm(tmp_path):
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE,
                                start_new_session=True)  # fmt: skip
    assert stubborn.stdout.readline().strip() == b"ready"
    old = flower_deploy.GRACE_SECONDS
    flower_deploy.GRACE_SECONDS = 0.5
    try:
        tic = time.monotonic()
        flower_deploy.stop_sessions([stubborn.pid])
        assert stubborn.wait(timeout=5) == -9 and time.monotonic() - tic < 5
    finally:
        flower_deploy.GRACE_SECONDS = old


def _flower_processes() -> set[int]:
    pids = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(Path(a.decode(errors="replace")).name.startswith(("flower-", "flwr-")) for a in argv[:2]):
            pids.add(int(entry.name))
    return pids


@pytest.mark.slow
def test_deployment_on_loopback_equals_simulation(tiny_bert, toy_task, tmp_path):
    """`federated --flower APP --flower-deployment` (1 SuperLink + 2 SuperNodes, separate
    processes) and `federated --flower APP` (simulation) on the same config: the same global
    model bit for bit and the same history; no Flower process is left after either."""
    pytest.importorskip("ray")
    cfg = {"model": str(tiny_bert), "data": {"task_file": str(toy_task), "task": "toy", "max_length": 16},
           "partition": {"scheme": "dirichlet", "num_clients": 2, "alpha": 0.5}, "rounds": 2, "clients_per_round": 2,
           "client": {"lr": 0.1, "batch_size": 8, "local_steps": 2}, "ghbm": {"beta": 0.9, "tau": 1}, "threads": 1,
           "output": {"dir": str(tmp_path / "unused"), "save_model": False}}  # fmt: skip
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(cfg))
    home = tmp_path / "flwr"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39591",
           "FLWR_LOCAL_CONTROL_API_PORT": "39593"}  # fmt: skip
    before = _flower_processes()
    outs, printed = {}, {}
    for mode, extra in [("deployment", ["--flower-deployment"]), ("simulation", [])]:
        outs[mode] = tmp_path / mode
        proc = subprocess.run(["mergekit-het", "federated", str(tmp_path / "fed.yaml"), "--output", str(outs[mode]),
                               "--flower", str(APP), "--flower-timeout", "500", *extra],
                              env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        printed[mode] = proc.stdout
        assert _flower_processes() - before == set(), f"{mode} left Flower processes running"
    assert "1 SuperLink + 2 SuperNodes" in printed["deployment"]
    assert (tmp_path / ".deployment.flower" / "supernode-1.log").is_file()
    a, b = (load_file(outs[m] / MODEL_FILE) for m in ("deployment", "simulation"))
    assert set(a) == set(b) and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (json.loads((outs[m] / "flower_history.json").read_text()) for m in ("deployment", "simulation"))
    assert ha == hb and [h["round"] for h in ha] == [0, 1, 2]
