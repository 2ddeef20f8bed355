"""`mergekit-het federated CONFIG --flower APP`: a Flower simulation whose failure is the
command's failure.

Flower's own `flwr run APP CONNECTION --stream` exits 0 even when the ServerApp raises (the
error only appears in the streamed log), so a script cannot tell. This runs the same three
steps with Flower's CLI and checks the outcome:

1. `flwr run APP CONNECTION --format json --run-config 'config="…" overrides="…"'
   --federation-config num-supernodes=K` starts the run (K = partition.num_clients);
2. `flwr log RUN_ID CONNECTION --stream` shows its log until it ends;
3. `flwr ls CONNECTION --run-id RUN_ID --format json` gives its status; anything but
   `finished:completed` raises `FlowerError` (the CLI prints it and exits 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import ConfigError, MergekitHetError

COMPLETED = "finished:completed"
OFFLINE = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"  # read by the SuperLink when it starts


class FlowerError(MergekitHetError):
    """The Flower CLI failed, or the run ended other than completed."""


def _flwr(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    """`flwr ARGS`, with the local SuperLink it may start using this environment as it is
    (no `uv sync` of a per-run environment, which would need the network)."""
    if shutil.which("flwr") is None:
        raise ConfigError('--flower needs the Flower CLI: pip install "mergekit-het[flower]"')
    env = {**os.environ, OFFLINE: "1"}
    proc = subprocess.run(["flwr", *args], capture_output=capture, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] if capture else []
        raise FlowerError(f"flwr {args[0]} failed (exit {proc.returncode}){': ' + tail[0] if tail else ''}")
    return proc


def _json(text: str, what: str) -> dict:
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        raise FlowerError(f"flwr {what} printed no JSON: {text.strip()[:200]}") from None


def run_simulation(app: Path, config: Path, overrides: list[str], num_supernodes: int, connection: str = "local") -> str:
    """Run the Flower App `app` on `config`; returns the run id, raises FlowerError unless the
    run completed."""
    if not (Path(app) / "pyproject.toml").is_file():
        raise ConfigError(f"--flower: {app} is not a Flower App (no pyproject.toml); use federated/flower_app")
    run_config = f'config="{Path(config).resolve()}" overrides="{" ".join(overrides)}"'
    started = _json(_flwr("run", str(app), connection, "--format", "json", "--run-config", run_config,
                          "--federation-config", f"num-supernodes={num_supernodes}").stdout, "run")  # fmt: skip
    run_id = str(started.get("run-id", ""))
    if not run_id:
        raise FlowerError(f"flwr run started no run: {started}")
    _flwr("log", run_id, connection, "--stream", capture=False)
    runs = _json(_flwr("ls", connection, "--run-id", run_id, "--format", "json").stdout, "ls").get("runs", [])
    status = runs[0].get("status", "unknown") if runs else "unknown"
    if status != COMPLETED:
        details = runs[0].get("status-details", "") if runs else ""
        raise FlowerError(f"Flower run {run_id} ended {status}{': ' + details if details else ''} (its log is above)")
    return run_id
