"""Outputs appear whole or not at all, and no run leaves anything hidden behind.

An output is built in a sibling staging folder `.NAME.tmp-PID-XXXX`, every file and folder
fsync'd, then moved into place in one step: `renameat2(RENAME_NOREPLACE)` for a new output,
`renameat2(RENAME_EXCHANGE)` to swap a new output with the old one (Linux; elsewhere two renames
through `.NAME.old-PID-XXXX`, undone by the next run if a crash falls between them). So:
- the old output is never lost: it is removed only after the new one is in place;
- a run that fails, is interrupted (Ctrl-C) or terminated (SIGTERM, handled as Ctrl-C) removes its
  staging folder; one killed outright (SIGKILL, power loss) leaves it, and the next run into the
  same output removes every staging folder whose owner process is gone;
- two runs into one new output without overwrite: the first to finish wins, the other gets a
  one-line error and removes its staging folder;
- `overwrite=True` replaces only a model folder or a folder one of our runners wrote (recognised
  by its files, see `_looks_like_output`); anything else needs `overwrite="any"`.
Durable writes for other state (federated round checkpoints): `fsync_tree`, `fsync_dir`,
`atomic_write_bytes`. A resumable runner (fine-tune, federated, continual) publishes with
`publish_run`, which also removes its work folder, and calls `drop_published_work` first, so a
kill between those two steps is not mistaken for an unfinished run.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from ..errors import ConfigError

Overwrite = bool | Literal["any"]
HINT = "--overwrite"
RUNNER_HINT = "--overwrite (output.overwrite=true)"
_OUTPUT_FILES = {"config.json", "mergekit_config.yml", "adapter_config.json", "expert.json", "history.json",
                 "matrix.json", "results.json", "pytorch_model.bin", "pytorch_model.bin.index.json"}  # fmt: skip
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every cleanup runs."""


# ---- durable writes ---------------------------------------------------------------------


def fsync_dir(folder: Path) -> None:
    """fsync one directory (after creating or renaming an entry in it)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder, deepest first."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace file `path` by `data` durably: temporary sibling, fsync, rename, fsync of the folder."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# ---- renames ----------------------------------------------------------------------------


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the C library or the file system lacks it."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


_LIBC: list[ctypes.CDLL | None] = []


def _libc() -> ctypes.CDLL | None:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def _move_new(src: Path, out: Path) -> None:
    """Rename `src` to `out`, which must not exist; FileExistsError if it does (another run won)."""
    try:
        if _renameat2(src, out, _RENAME_NOREPLACE):
            return
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "exists", str(out)) from None
        raise
    if os.path.lexists(out):
        raise FileExistsError(errno.EEXIST, "exists", str(out))
    try:
        os.rename(src, out)  # a race here can only replace an empty folder
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, "exists", str(out)) from None
        raise


def _swap(src: Path, out: Path) -> None:
    """Put `src` at `out` and the old `out` at `src`, atomically where the OS can."""
    if _renameat2(src, out, _RENAME_EXCHANGE):
        return
    old = _sibling(out, "old")
    os.rename(out, old)  # a crash from here until the next rename is undone by `recover`
    os.rename(src, out)
    os.rename(old, src)


# ---- staging folders --------------------------------------------------------------------


def _sibling(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(out: Path) -> None:
    """Undo what killed runs into `out` left: restore the old output moved aside by an unfinished
    swap (if `out` is missing), then remove every staging folder of a process that is gone."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}$")
    try:
        entries = sorted(os.listdir(out.parent))
    except FileNotFoundError:
        return
    for name in entries:
        m = pattern.match(name)
        if not m or int(m[2]) == os.getpid() or _pid_alive(int(m[2])):
            continue
        path = out.parent / name
        if m[1] == "old" and not os.path.lexists(out):
            os.rename(path, out)
            warnings.warn(f"{out}: restored the previous output, which an interrupted run had moved aside", stacklevel=2)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _looks_like_output(out: Path) -> bool:
    """A folder that `overwrite=True` may replace: empty, a model folder or one of our outputs."""
    names = set(os.listdir(out))
    return not names or bool(names & _OUTPUT_FILES) or any(n.endswith(".safetensors") for n in names)


def normalize(out: str | Path) -> Path:
    """`out` as an absolute path with a name (`.` becomes the current folder's path); a valid
    symlink is replaced by its target, a dangling one is a one-line error."""
    out = Path(os.path.abspath(out))
    if os.path.islink(out):
        if not out.exists():
            raise ConfigError(f"output {out} is a symbolic link to nothing ({os.readlink(out)}); remove it or give another path")
        out = Path(os.path.realpath(out))
    if not out.name or Path.cwd().is_relative_to(out):
        raise ConfigError(f"output {out} is the current folder or holds it; give a new folder's path")
    return out


def check_output(out: Path, overwrite: Overwrite, hint: str = HINT) -> None:
    """Refuse early (before any work) to replace an existing output; clean up after killed runs."""
    out = normalize(out)
    recover(out)
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise ConfigError(f"output {out} already exists; pass {hint} to replace it")
    if not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder; remove it or give another path")
    if overwrite != "any" and not _looks_like_output(out):
        raise ConfigError(
            f"output {out} exists and holds no model (no config.json, no *.safetensors); "
            "refusing to delete it: remove it yourself, or pass --overwrite-any"
        )


def publish(src: Path, out: Path, overwrite: Overwrite, hint: str = HINT) -> None:
    """Make the finished folder `src` the output `out` (fsync'd, atomically); an existing `out`
    (only with `overwrite`) is removed after the new one is in place. `src` is gone afterwards,
    also on failure."""
    out = normalize(out)
    try:
        fsync_tree(src)
        recover(out)
        try:
            if os.path.lexists(out):
                raise FileExistsError(errno.EEXIST, "exists", str(out))
            _move_new(src, out)
        except FileExistsError:
            if not overwrite:
                raise ConfigError(
                    f"output {out} appeared while this run worked (another run into the same folder?); "
                    f"this run's result is discarded; pass {hint} to replace it"
                ) from None
            check_output(out, overwrite, hint)
            _swap(src, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(src, ignore_errors=True)  # the failed output, or the old one after a swap


@contextmanager
def staged_output(out: str | Path, overwrite: Overwrite) -> Iterator[Path]:
    """A staging folder that becomes `out` only if the block completes; on error, Ctrl-C or
    SIGTERM it is removed and `out` is untouched."""
    out = normalize(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(out, "tmp")
    with terminate_as_interrupt():
        try:
            staging.mkdir(mode=0o755)
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish(staging, out, overwrite)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so
    cleanups run as on Ctrl-C; only where SIGTERM still has its default action."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def work_dir(out: Path) -> Path:
    """The hidden resumable work folder of a fine-tuning, federated or continual run."""
    return out.parent / f".{out.name}.partial"


PUBLISHED = "published.json"  # in a work folder: the (device, inode) of the staged output being published


def publish_run(stage: Path, out: Path, overwrite: Overwrite, work: Path, hint: str = RUNNER_HINT) -> None:
    """`publish` a resumable runner's finished `stage`, then remove its work folder `work`.

    The identity of `stage` (device, inode; a rename keeps both) is recorded in `work` first: a
    run killed after the rename but before the removal leaves a work folder that
    `drop_published_work` recognises, instead of a finished run that looks interrupted (whose
    resume would publish a second time and fail on the output now present)."""
    st = os.stat(stage)
    atomic_write_text(work / PUBLISHED, json.dumps({"dev": st.st_dev, "ino": st.st_ino}))
    publish(stage, out, overwrite, hint)
    shutil.rmtree(work, ignore_errors=True)


def drop_published_work(out: Path, work: Path) -> bool:
    """Remove `work` if the output it was publishing is `out` (see `publish_run`); True if so."""
    try:
        mark = json.loads((work / PUBLISHED).read_text())
        st = os.stat(out)
    except (OSError, ValueError):
        return False
    if (st.st_dev, st.st_ino) != (mark.get("dev"), mark.get("ino")):
        return False
    shutil.rmtree(work, ignore_errors=True)
    return True
