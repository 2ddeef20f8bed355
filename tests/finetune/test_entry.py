"""`finetune/finetune.py` and `mergekit-het finetune` run the same recipe: identical experts."""

import runpy
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from mergekit_het.cli import main as cli_main

ENTRY = Path(__file__).resolve().parents[2] / "finetune" / "finetune.py"


def _config(tmp_path, model, task_file) -> Path:
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(model), "data": {"task_file": str(task_file), "task": "toy", "max_length": 16},
        "train": {"max_steps": 4, "batch_size": 8, "lr": 2e-3, "seed": 5}, "output": {"dir": str(tmp_path / "unused")},
    }))  # fmt: skip
    return path


def test_recipe_entry_and_cli_write_bit_identical_experts(tiny_bert, toy_task, tmp_path):
    cfg = _config(tmp_path, tiny_bert, toy_task)
    entry = runpy.run_path(str(ENTRY), run_name="finetune_entry")["main"]
    assert entry([str(cfg), "--output", str(tmp_path / "a")]) == 0
    assert cli_main(["finetune", str(cfg), "--output", str(tmp_path / "b")]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    base = load_file(tiny_bert / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it trained


def test_recipe_entry_bad_input_exits_2_with_one_line(tiny_bert, toy_task, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_bert, toy_task)
    entry = runpy.run_path(str(ENTRY), run_name="finetune_entry")["main"]
    assert entry([str(cfg), "train.max_stpes=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "max_stpes" in err and "\n" not in err
