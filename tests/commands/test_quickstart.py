"""`mergekit-het quickstart`: runs from any directory, skips finished steps, writes configs the next
commands take. The real run (minutes) is slow-marked; `bench/quickstart_time.py` times it."""

import importlib
import json
from pathlib import Path

import pytest

import mergekit_het.evaluate.experiment as experiment
import mergekit_het.finetune as finetune_pkg
import mergekit_het.merge.engine as engine
from mergekit_het.cli import COMMANDS, main
from mergekit_het.commands.quickstart import TASKS
from mergekit_het.evaluate.config import load_compare_config
from mergekit_het.federated.config import load_federated_config
from mergekit_het.merge.config import load_merge_config


def _finished(out: Path) -> None:
    """Every step's output as a finished run leaves it (folders holding the marker files)."""
    for folder in [out / "base", out / "merged_ties", *(out / "experts" / t for t in TASKS)]:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (out / "base" / "model.safetensors").write_bytes(b"")
    for t in TASKS:
        (out / "experts" / t / "expert.json").write_text("{}")
    (out / "report").mkdir()
    (out / "report" / "report.md").write_text("| model | acc |\n")


def _refuse(*args, **kwargs):
    raise AssertionError("a finished step was redone")


@pytest.fixture
def no_heavy_step(monkeypatch):
    """Fine-tuning, merging and comparing raise. Every command module is imported first: one that
    binds `run_merge` by name while the patch is on would keep `_refuse` for the rest of the session."""
    for name in COMMANDS:
        importlib.import_module(f"mergekit_het.commands.{name}")
    for module, name in [(finetune_pkg, "finetune"), (engine, "run_merge"), (experiment, "run_comparison")]:
        monkeypatch.setattr(module, name, _refuse)


def test_quickstart_rerun_from_another_directory_skips_finished_steps(tmp_path, monkeypatch, capsys, no_heavy_step):
    out = tmp_path / "qs"
    _finished(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing of the project checkout is needed

    assert main(["quickstart", "--output", str(out), "--eval-examples", "50"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("exists, skipped") == 6  # base, 3 experts, merge, comparison
    assert "| model | acc |" in printed and sorted(p.name for p in elsewhere.iterdir()) == []


def test_quickstart_configs_validate_for_the_documented_next_commands(tmp_path, monkeypatch, no_heavy_step):
    out = tmp_path / "qs"
    _finished(out)
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart", "--output", "qs", "--eval-examples", "50"]) == 0

    merge = load_merge_config(out / "merge_ties.yml")
    assert merge.base_model == "qs/base" and [m.model for m in merge.models] == [f"qs/experts/{t}" for t in TASKS]
    compare = load_compare_config(out / "compare.yaml")  # paths relative to the file: runs from anywhere
    assert compare.base == str((out / "base").resolve()) and compare.max_examples == {"validation": 50, "test": 50}
    assert compare.experts == {t: str((out / "experts" / t).resolve()) for t in TASKS}
    fed = load_federated_config(out / "federated.yaml")
    assert (fed.model, fed.data.task, str(fed.output.dir)) == ("qs/base", "austen_book", "qs/federated")


@pytest.mark.slow
def test_quickstart_real_run_in_empty_directory_writes_card_and_reruns_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart", "--steps", "2", "--eval-examples", "16"]) == 0
    out = tmp_path / "runs" / "quickstart"
    card = (out / "merged_ties" / "README.md").read_text()
    assert "ties" in card and "merge_method: ties" in card
    table = (out / "report" / "report.md").read_text()
    assert all(name in table for name in ("base", "average", "task_arithmetic", "ties"))
    capsys.readouterr()
    monkeypatch.setattr(finetune_pkg, "finetune", _refuse)
    assert main(["quickstart"]) == 0
    assert capsys.readouterr().out.count("exists, skipped") == 6
    assert main(["push", str(out / "merged_ties"), "alice/qs", "--dry-run"]) == 0
