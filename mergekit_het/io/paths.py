"""Files a model folder names, resolved inside that folder and nowhere else.

A folder downloaded from a stranger can name any path: an index entry `/etc/passwd` or
`../other_model/model.safetensors`, a `tokenizer.json` that is a symlink to `~/.ssh/id_rsa`.
`locate` resolves a name one component at a time, reading symlinks itself (`os.readlink`) and
refusing any step that leaves the folder before the kernel would follow it, so no path outside
the folder is ever opened or even stat'ed. A Hugging Face cache snapshot
(`models--org--name/snapshots/REV/`) links every file into the repo's `blobs/` folder; there the
repo's cache folder is the boundary.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path, PurePosixPath
from typing import Literal

from ..errors import ConfigError

Where = Literal["file", "missing", "outside", "not a file"]
_MAX_LINKS = 40  # as the kernel's ELOOP limit


def boundary(folder: Path) -> str:
    """The real path that files of `folder` must stay within (the repo's cache folder for a
    Hugging Face snapshot, else the folder itself)."""
    real = os.path.realpath(folder)
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots" and os.path.isdir(os.path.join(os.path.dirname(parent), "blobs")):
        return os.path.dirname(parent)
    return real


def locate(folder: Path, name: str) -> tuple[Where, Path | None]:
    """Resolve `name` (a relative path) inside `folder`: ("file", real path) for a regular file,
    else "missing", "outside" (absolute, `..`, or a symlink leaving the folder) or "not a file"."""
    if not isinstance(name, str) or not name or "\0" in name:
        return "outside", None
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        return "outside", None
    root = boundary(folder)
    cur = os.path.realpath(folder)
    queue = list(rel.parts)
    links = 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            cur = os.path.dirname(cur)
            if not _within(cur, root):
                return "outside", None
            continue
        nxt = os.path.join(cur, part)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            return "missing", None
        except OSError:
            return "not a file", None
        if not stat.S_ISLNK(st.st_mode):
            cur = nxt
            continue
        links += 1
        target = os.readlink(nxt)
        if links > _MAX_LINKS:
            return "not a file", None
        if os.path.isabs(target):
            tparts = PurePosixPath(target).parts[1:]
            rparts = PurePosixPath(root).parts[1:]
            if tuple(tparts[: len(rparts)]) != rparts:
                return "outside", None
            cur, queue = root, [*tparts[len(rparts):], *queue]
        else:
            queue = [*PurePosixPath(target).parts, *queue]
    if not stat.S_ISREG(os.lstat(cur).st_mode):
        return "not a file", None
    return "file", Path(cur)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def member(folder: Path, name: str, what: str) -> Path:
    """The real path of file `name` of `folder`; a one-line `ConfigError` naming `what` (e.g.
    "model.safetensors.index.json names shard '../x'") if it is missing or not inside."""
    where, path = locate(folder, name)
    if path is not None:
        return path
    reason = {"missing": "which does not exist", "outside": "which is outside the model folder",
              "not a file": "which is not a regular file"}[where]  # fmt: skip
    raise ConfigError(f"{folder}: {what} {_short(name)}, {reason}")


def optional_member(folder: Path, name: str) -> Path | None:
    """`name` inside `folder` if it is a regular file there; None if absent. A file that is a link
    out of the folder (or not a regular file) is skipped with a warning, never followed."""
    where, path = locate(folder, name)
    if where in ("outside", "not a file"):
        warnings.warn(f"{folder}: skipped {name}: {'a link to outside the model folder' if where == 'outside' else 'not a regular file'}",
                      stacklevel=2)  # fmt: skip
    return path


def _short(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:79] + "…"


def weight_files(path: Path, index_name: str, single_name: str) -> list[Path]:
    """The weight files of model folder `path`: the shards its index `index_name` names (each
    resolved inside the folder), else `single_name`; `path` itself if it is a weight file."""
    from .format import read_index

    if path.is_file():
        return [path]
    where, index = locate(path, index_name)
    if index is not None:
        shards = sorted(set(read_index(index).values()))
        return sorted({member(path, shard, f"{index_name} names shard") for shard in shards})
    if where != "missing":
        raise ConfigError(f"{path}: {index_name} is {'outside the model folder' if where == 'outside' else 'not a regular file'}")
    return [member(path, single_name, "weight file")] if locate(path, single_name)[0] != "missing" else []


MAX_JSON_BYTES = 16 * 2**20  # config.json, adapter_config.json, tokenizer_config.json: a few KB


def read_member_json(folder: Path, name: str) -> dict | None:
    """The JSON object in file `name` of `folder` (None if absent); a one-line `ConfigError` if it
    is outside the folder, too large, not JSON or not an object."""
    from .format import load_json

    where, path = locate(folder, name)
    if where == "missing":
        return None
    path = member(folder, name, "file")
    with open(path, "rb") as f:
        blob = f.read(MAX_JSON_BYTES + 1)
    shown = folder / name
    if len(blob) > MAX_JSON_BYTES:
        raise ConfigError(f"{shown}: larger than {MAX_JSON_BYTES} bytes")
    value = load_json(blob, str(shown), "JSON file", ConfigError)
    if not isinstance(value, dict):
        raise ConfigError(f"{shown}: expected a JSON object, got {type(value).__name__}")
    return value
