"""Staged outputs: whole or nothing, the old output never lost, nothing hidden left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mergekit_het.errors import ConfigError
from mergekit_het.runtime import files
from mergekit_het.runtime.files import atomic_write_bytes, check_output, publish, recover, staged_output


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def model_folder(path: Path, tag: str) -> Path:
    path.mkdir()
    (path / "config.json").write_text(tag)
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staged_output_replaces_old_only_when_complete(tmp_path):
    out = model_folder(tmp_path / "out", "old")
    with pytest.raises(RuntimeError):
        with staged_output(out, overwrite=True) as st:
            (st / "config.json").write_text("new")
            raise RuntimeError("boom")
    assert (out / "config.json").read_text() == "old" and hidden(tmp_path) == []
    with staged_output(out, overwrite=True) as st:
        (st / "config.json").write_text("new")
    assert (out / "config.json").read_text() == "new" and hidden(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_publish_swap_with_and_without_renameat2(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_renameat2", lambda *a: False)
    out = model_folder(tmp_path / "out", "old")
    src = model_folder(tmp_path / "src", "new")
    publish(src, out, overwrite=True)
    assert (out / "config.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_refuses_a_folder_that_is_not_a_model(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="holds no model .*refusing to delete it.*--overwrite-any"):
        check_output(out, overwrite=True)
    with staged_output(out, overwrite="any") as st:
        (st / "config.json").write_text("{}")
    assert sorted(os.listdir(out)) == ["config.json"]


def test_recover_removes_dead_staging_and_restores_moved_aside_output(tmp_path):
    out = tmp_path / "out"
    pid = dead_pid()
    model_folder(tmp_path / f".out.old-{pid}-0123abcd", "old")  # killed between the two renames
    (tmp_path / f".out.tmp-{pid}-89abcdef").mkdir()  # killed mid-merge
    live = tmp_path / f".out.tmp-{os.getppid()}-00000000"  # a live process's staging: kept
    live.mkdir()
    with pytest.warns(UserWarning, match="restored the previous output"):
        recover(out)
    assert (out / "config.json").read_text() == "old" and hidden(tmp_path) == [live.name]


def test_concurrent_run_loser_gets_error_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="appeared while this run worked"):
        with staged_output(out, overwrite=False) as st:
            (st / "config.json").write_text("loser")
            model_folder(out, "winner")  # the other run finishes first
    assert (out / "config.json").read_text() == "winner" and hidden(tmp_path) == []


def test_output_dangling_symlink_and_dot_one_line(tmp_path, monkeypatch):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is a symbolic link to nothing"):
        check_output(link, overwrite=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="is the current folder"):
        check_output(Path("."), overwrite=True)


def test_output_existing_file_refused_even_with_overwrite(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_output(tmp_path / "out", overwrite=True)


def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path):
    f = tmp_path / "state.json"
    f.write_text("old")
    atomic_write_bytes(f, b"new")
    assert f.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["state.json"]


CHILD = """
import sys, time
from mergekit_het.runtime.files import staged_output
with staged_output(sys.argv[1], overwrite=True) as st:
    (st / "config.json").write_text("new")
    print("ready", flush=True)
    time.sleep(30)
"""


def test_sigterm_removes_staging_and_keeps_old(tmp_path):
    out = model_folder(tmp_path / "out", "old")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert proc.returncode != 0 and (out / "config.json").read_text() == "old" and hidden(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_publish_run_then_kill_before_work_removal_is_recognised(tmp_path, monkeypatch, exchange):
    """A runner killed between publishing and removing its work folder: the next run must see a
    finished run (drop the work folder), not an interrupted one to resume and publish again."""
    if not exchange:
        monkeypatch.setattr(files, "_renameat2", lambda *a: False)
    out, work = model_folder(tmp_path / "out", "old"), tmp_path / ".out.partial"
    work.mkdir()
    stage = model_folder(work / "output", "new")
    real = files.shutil.rmtree
    monkeypatch.setattr(files.shutil, "rmtree", lambda p, **kw: None if Path(p) == work else real(p, **kw))  # the kill
    files.publish_run(stage, out, True, work)
    monkeypatch.setattr(files.shutil, "rmtree", real)
    assert (out / "config.json").read_text() == "new" and (work / files.PUBLISHED).is_file()
    assert files.drop_published_work(out, work) and not work.exists()
    # an unfinished run's work folder (its stage never published, or another output there) is kept
    work.mkdir()
    stage = model_folder(work / "output", "newer")
    (work / files.PUBLISHED).write_text('{"dev": %d, "ino": %d}' % (os.stat(stage).st_dev, os.stat(stage).st_ino))
    assert not files.drop_published_work(out, work) and work.is_dir()
    (work / files.PUBLISHED).write_text("{trunc")
    assert not files.drop_published_work(out, work) and work.is_dir()
    files.publish_run(stage, out, True, work)
    assert (out / "config.json").read_text() == "newer" and hidden(tmp_path) == []
