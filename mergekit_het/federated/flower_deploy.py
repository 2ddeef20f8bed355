"""Flower's deployment mode on this machine: one SuperLink and one SuperNode per client, each a
separate process on loopback (insecure, free ports), the way they run on separate machines.

    mergekit-het federated CONFIG --flower federated/flower_app --flower-deployment

starts, in their own process groups (logs in OUT/flower_deployment/*.log):

    flower-superlink --insecure --host 127.0.0.1 --port P       # Fleet, Control and Runtime API
    flower-supernode --insecure --superlink 127.0.0.1:P --node-config partition-id=k \\
        --host 127.0.0.1 --port Pk                                 # k = 0 .. num_clients − 1

writes a Flower CLI config (`FLWR_HOME/config.toml`: connection `deployment`, address
127.0.0.1:P, insecure), runs `flwr run APP deployment` against it (`flower_cli.run_app`) and
stops every process it started (SIGTERM to each one's session, SIGKILL after GRACE_SECONDS), whether the
run completed, failed or timed out. On several machines the same commands run there, with the
SuperLink's address instead of 127.0.0.1 (and TLS instead of --insecure): docs/federated.md.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .flower_cli import OFFLINE, FlowerError

CONNECTION = "deployment"
STARTUP_SECONDS = 60.0  # how long the SuperLink may take to open its port
GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL of a process group


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 now (bound together, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def superlink_command(port: int) -> list[str]:
    """The SuperLink: its Fleet, Control and Runtime APIs all on HTTP port `port` (flwr 1.42)."""
    return ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port)]


def supernode_command(superlink: int, partition: int, port: int) -> list[str]:
    """SuperNode of partition `partition`, its own Runtime API on `port`."""
    return ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{superlink}",
            "--node-config", f"partition-id={partition}", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerError(f"flower-superlink exited with code {proc.returncode} at start; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FlowerError(f"flower-superlink opened no port 127.0.0.1:{port} in {STARTUP_SECONDS:.0f} s; see {log}")


def _stat(entry: Path) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a /proc entry, None if it is gone."""
    try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[3])


def session_members(sessions: set[int]) -> list[int]:
    """Live (not zombie) processes of the sessions `sessions` and their descendants (a Flower
    SuperLink starts its SuperExec in a session of its own)."""
    procs = {int(e.name): st for e in Path("/proc").glob("[0-9]*") if (st := _stat(e)) is not None}
    members = {pid for pid, (_, _, sid) in procs.items() if sid in sessions}
    while grown := {pid for pid, (_, ppid, _) in procs.items() if ppid in members} - members:
        members |= grown
    return sorted(pid for pid in members if procs[pid][0] != "Z")


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (st := _stat(Path(f"/proc/{pid}"))) is not None and st[0] != "Z"}


def stop_sessions(leaders: list[int]) -> None:
    """Stop every process of the sessions led by `leaders` (processes started with a session
    of their own) and of their descendants, as found now: SIGTERM, then SIGKILL what is left
    after GRACE_SECONDS."""
    pids = set(session_members(set(leaders)))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _alive(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_SECONDS
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pids):
            return


@contextmanager
def local_deployment(num_nodes: int, folder: Path) -> Iterator[dict[str, str]]:
    """A SuperLink and `num_nodes` SuperNodes (partition-id 0 .. num_nodes − 1) on loopback;
    yields the environment for the `flwr` CLI (FLWR_HOME = `folder`, whose config.toml names
    the `deployment` connection). Every process is stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    link, *node_ports = free_ports(1 + num_nodes)
    env = {**os.environ, OFFLINE: "1", "FLWR_HOME": str(folder.resolve())}
    (folder / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    procs: list[subprocess.Popen] = []

    def start(command: list[str], log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # fmt: skip
        procs.append(proc)
        return proc

    try:
        link_log = folder / "superlink.log"
        _wait_for_port(link, start(superlink_command(link), link_log), link_log)
        for k, port in enumerate(node_ports):
            start(supernode_command(link, k, port), folder / f"supernode-{k}.log")
        yield env
    finally:
        stop_sessions([p.pid for p in procs])
        for p in procs:
            p.wait(timeout=GRACE_SECONDS)  # reaped (stop_sessions saw them end)
