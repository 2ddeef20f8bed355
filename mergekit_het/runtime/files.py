"""Outputs appear whole or not at all: build in a sibling folder, then swap it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError


def check_output(out: Path, overwrite: bool, hint: str = "--overwrite") -> None:
    """Refuse early (before any work) to replace an existing output."""
    if out.exists() and not overwrite:
        raise ConfigError(f"output {out} already exists; pass {hint} to replace it")


def publish(src: Path, out: Path, overwrite: bool, hint: str = "--overwrite") -> None:
    """Rename the finished folder `src` to `out`; an existing `out` (only with `overwrite`) is
    moved aside first and deleted only after the new one is in place."""
    check_output(out, overwrite, hint)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(src, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling folder that becomes `out` only if the block completes; on error or
    interrupt it is removed and `out` is untouched."""
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    staging.chmod(0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, out, overwrite)
