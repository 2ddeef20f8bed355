"""`mergekit-het federated CONFIG --flower APP [--flower-deployment]`: a Flower run whose failure
is the command's failure, and which leaves no Flower process behind.

Flower's own `flwr run APP CONNECTION --stream` exits 0 even when the ServerApp raises (the
error only appears in the streamed log), so a script cannot tell. `run_app` runs the same
three steps with Flower's CLI and checks the outcome:

1. `flwr run APP CONNECTION --format json --run-config 'config="…" overrides="…"'` starts the run;
2. `flwr log RUN_ID CONNECTION --stream` shows its log until it ends;
3. `flwr ls CONNECTION --run-id RUN_ID --format json` gives its status; anything but
   `finished:completed` raises `FlowerError` (the CLI prints it and exits 2).

Simulation (`run_simulation`): the `local` connection, on which the Flower CLI starts a
SuperLink of its own (`flower-superlink --simulation`, detached in its own session) when none
answers on its port; that SuperLink outlives `flwr`, so when this run started it, the
processes of its session are stopped at the end (a SuperLink that was already running is left
alone). Deployment (`run_deployment`): separate SuperLink and SuperNode processes on loopback
(`flower_deploy.local_deployment`), all stopped at the end.
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
RUN_TIMEOUT_SECONDS = 24 * 3600.0  # a bound on `flwr log --stream` of one run


class FlowerError(MergekitHetError):
    """The Flower CLI failed, or the run ended other than completed."""


def _flwr(*args: str, env: dict[str, str] | None = None, capture: bool = True, timeout: float | None = 300.0) -> subprocess.CompletedProcess:
    """`flwr ARGS`, with the local SuperLink it may start using this environment as it is
    (no `uv sync` of a per-run environment, which would need the network)."""
    if shutil.which("flwr") is None:
        raise ConfigError('--flower needs the Flower CLI: pip install "mergekit-het[flower]"')
    try:
        proc = subprocess.run(["flwr", *args], capture_output=capture, text=True, env={**(env or os.environ), OFFLINE: "1"},
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise FlowerError(f"flwr {args[0]} did not finish in {timeout:.0f} s") from None
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


def run_app(app: Path, config: Path, overrides: list[str], connection: str, extra: list[str], env: dict[str, str] | None = None,
            timeout: float = RUN_TIMEOUT_SECONDS) -> str:  # fmt: skip
    """Run the Flower App `app` on `config` through `connection` (`extra`: more `flwr run`
    options); returns the run id, raises FlowerError unless the run completed in `timeout` s."""
    if not (Path(app) / "pyproject.toml").is_file():
        raise ConfigError(f"--flower: {app} is not a Flower App (no pyproject.toml); use federated/flower_app")
    run_config = f'config="{Path(config).resolve()}" overrides="{" ".join(overrides)}"'
    started = _json(_flwr("run", str(app), connection, "--format", "json", "--run-config", run_config, *extra, env=env).stdout, "run")
    run_id = str(started.get("run-id", ""))
    if not run_id:
        raise FlowerError(f"flwr run started no run: {started}")
    _flwr("log", run_id, connection, "--stream", env=env, capture=False, timeout=timeout)
    runs = _json(_flwr("ls", connection, "--run-id", run_id, "--format", "json", env=env).stdout, "ls").get("runs", [])
    status = runs[0].get("status", "unknown") if runs else "unknown"
    if status != COMPLETED:
        details = runs[0].get("status-details", "") if runs else ""
        raise FlowerError(f"Flower run {run_id} ended {status}{': ' + details if details else ''} (its log is above)")
    return run_id


def run_simulation(app: Path, config: Path, overrides: list[str], num_supernodes: int, connection: str = "local",
                   timeout: float = RUN_TIMEOUT_SECONDS) -> str:  # fmt: skip
    """`run_app` on Flower's simulation engine (`num_supernodes` = partition.num_clients); a
    SuperLink the Flower CLI started for it is stopped afterwards."""
    from .flower_deploy import stop_sessions

    before = set(superlink_pids())
    try:
        return run_app(app, config, overrides, connection, ["--federation-config", f"num-supernodes={num_supernodes}"],
                       timeout=timeout)  # fmt: skip
    finally:
        stop_sessions(sorted(set(superlink_pids()) - before))


def run_deployment(app: Path, config: Path, overrides: list[str], num_nodes: int, folder: Path, timeout: float) -> str:
    """`run_app` on a loopback deployment of one SuperLink and `num_nodes` SuperNodes (their
    logs and the CLI's config in `folder`), every process stopped afterwards."""
    from .flower_deploy import CONNECTION, local_deployment

    with local_deployment(num_nodes, folder) as env:
        return run_app(app, config, overrides, CONNECTION, [], env=env, timeout=timeout)


def superlink_pids() -> list[int]:
    """Process ids of the running `flower-superlink` processes of this user (from /proc)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(Path(a.decode(errors="replace")).name == "flower-superlink" for a in argv[:2]):
            pids.append(int(entry.name))
    return pids
