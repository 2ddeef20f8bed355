"""The shipped tasks (mergekit_het/data/text_tasks) and task files that name them or user CSVs."""

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from mergekit_het.data.tasks import BUILTIN_DIR, BUILTIN_TASKS, load_split, load_task_file, num_labels_of
from mergekit_het.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[2]


def test_builtin_tasks_folders_hold_compressed_splits_meta_and_license():
    assert sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) == sorted(BUILTIN_TASKS)
    for name in BUILTIN_TASKS:
        files = sorted(p.name for p in (BUILTIN_DIR / name).iterdir())
        assert files == ["LICENSE", "meta.json", "test.csv.gz", "train.csv.gz", "validation.csv.gz"]
        meta = json.loads((BUILTIN_DIR / name / "meta.json").read_text())
        license_text = (BUILTIN_DIR / name / "LICENSE").read_text()
        assert f"License: {meta['license']}." in license_text and "Copyright" in license_text
        # gzip written without a time stamp, so a rebuild is byte-identical
        assert (BUILTIN_DIR / name / "test.csv.gz").read_bytes()[4:8] == b"\0\0\0\0"


def test_builtin_task_file_equals_default_task_file_with_meta_label_counts():
    builtin = load_task_file("builtin")
    assert load_task_file(PROJECT / "eval/tasks/text_tasks.yaml") == builtin
    assert [(t.name, t.num_labels) for t in builtin] == [
        ("wordnet_supersense", 25), ("wordnet_pos", 4), ("fortune_topic", 12), ("austen_book", 6)]
    assert builtin[3].label_names[1] == "Pride & Prejudice"


def test_builtin_split_loads_through_datasets_with_meta_sizes_and_labels():
    task = load_task_file("builtin", ["fortune_topic"])[0]
    meta = json.loads((BUILTIN_DIR / "fortune_topic" / "meta.json").read_text())
    for split in ("validation", "test"):
        ds = load_split(task, split)
        assert len(ds) == meta["sizes"][split] == 834
        assert ds.column_names == ["text", "label"] and set(ds["label"]) == set(range(12))
    with gzip.open(BUILTIN_DIR / "fortune_topic" / "test.csv.gz", "rt", encoding="utf-8") as f:
        assert f.readline() == "text,label\n"
        assert load_split(task, "test")[0]["text"] == f.readline().rsplit(",", 1)[0]


def test_task_file_builtin_entry_renamed_and_user_csv_folders_side_by_side(tmp_path):
    plain, zipped = tmp_path / "plain", tmp_path / "zipped"
    rows = "text,label\nNA,1\nnull,0\nhello,2\n"
    for split in ("train", "validation", "test"):
        plain.mkdir(exist_ok=True)
        zipped.mkdir(exist_ok=True)
        (plain / f"{split}.csv").write_text(rows)
        (zipped / f"{split}.csv.gz").write_bytes(gzip.compress(rows.encode()))
    jsonl = tmp_path / "t.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b'{"s": "a", "y": 1}\n{"s": "b", "y": 0}\n'))
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - {builtin: wordnet_pos, name: pos}\n  - {name: plain, dir: plain}\n"
        "  - {name: zipped, dir: zipped}\n"
        "  - {name: js, data_files: {train: t.jsonl.gz}, text_column: s, label_column: y}\n")
    pos, p, z, js = load_task_file(tmp_path / "tasks.yaml")
    assert (pos.name, pos.num_labels, pos.dir) == ("pos", 4, BUILTIN_DIR / "wordnet_pos")
    assert load_split(p, "test")["text"] == load_split(z, "test")["text"] == ["NA", "null", "hello"]
    assert num_labels_of(z) == 3 and load_split(js, "train")["label"] == [1, 0]


@pytest.mark.parametrize("entry, message", [
    ("{builtin: austen_bok}", "builtin task 'austen_bok' is unknown; choose one of wordnet_supersense, "
                              "wordnet_pos, fortune_topic, austen_book (did you mean 'austen_book'?)"),
    ("{builtin: austen_book, dir: x}", "give exactly one of 'builtin', 'dir' or 'data_files'"),
])
def test_task_file_bad_builtin_entry_one_line_error(tmp_path, entry, message):
    (tmp_path / "tasks.yaml").write_text(f"tasks:\n  - {entry}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_task_file(tmp_path / "tasks.yaml")
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_tracked_files_never_refer_to_the_shared_folder_outside_the_project():
    """The project carries what it needs: no tracked file may point at the development machine's
    shared folder beside the checkout (the needles are assembled so this file names none)."""
    if not (PROJECT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True, check=True).stdout
    shared = "shared"
    needles = (f"../{shared}", f"/work/{shared}", f"{shared}/data")
    hits = []
    for rel in filter(None, files.decode().split("\0")):
        path = PROJECT / rel
        if path.is_file() and path.suffix != ".gz" and path != Path(__file__).resolve():
            text = path.read_bytes().decode("utf-8", "replace")
            hits += [f"{rel}: {n}" for n in needles if n in text]
    assert hits == []
