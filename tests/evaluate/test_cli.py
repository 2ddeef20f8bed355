import json
import shutil

import pytest
import yaml

from mergekit_het.cli import main


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert err.startswith("error: ")
    return err


def test_cli_eval_model_writes_results_file_table_and_plot(tmp_path, capsys, task_file, always0):
    model = shutil.copytree(always0, tmp_path / "m")
    out = tmp_path / "out"
    assert main(["eval", str(model), "--tasks", str(task_file), "--task-names", "pair",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert "| 0.5000 | 0.3333 |" in capsys.readouterr().out
    results = json.loads((model / "eval_results.json").read_text())
    assert results["split"] == "test" and results["tasks"]["pair"]["accuracy"] == 0.5
    assert (out / "accuracy.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["models"][str(model)]["pair"]["accuracy"] == 0.5
    err = _one_line_error(capsys, ["eval", str(model), "--tasks", str(task_file), "--task-names", "pair"])
    assert "eval_results.json already exists; pass --overwrite" in err


def test_cli_eval_label_count_mismatch_one_line(tmp_path, capsys, task_file, always0):
    err = _one_line_error(capsys, ["eval", str(always0), "--tasks", str(task_file), "--task-names", "triple",
                                   "--no-results-file"])
    assert "task 'triple' has 3 labels" in err and "2-label head" in err


def test_cli_eval_missing_split_one_line(tmp_path, capsys, always0):
    (tmp_path / "train.csv").write_text("text,label\nw0,0\nw5,1\n")
    tf = tmp_path / "tasks.yaml"
    tf.write_text(yaml.safe_dump({"tasks": [{"name": "p", "data_files": {"train": "train.csv"}, "num_labels": 2}]}))
    err = _one_line_error(capsys, ["eval", str(always0), "--tasks", str(tf), "--no-results-file"])
    assert "task 'p' has no 'test' split" in err


def test_cli_eval_unreadable_model_one_line(tmp_path, capsys, task_file, always0):
    err = _one_line_error(capsys, ["eval", str(tmp_path / "nope"), "--tasks", str(task_file)])
    assert "does not exist" in err
    broken = shutil.copytree(always0, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    err = _one_line_error(capsys, ["eval", str(broken), "--tasks", str(task_file), "--task-names", "pair",
                                   "--no-results-file"])
    assert "cannot load model folder" in err


def test_cli_eval_config_runs_comparison(tmp_path, capsys, task_file, base, experts):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"tasks": str(task_file), "base": str(base), "device": "cpu",
                                   "experts": {t: str(p) for t, p in experts.items()},
                                   "methods": [{"name": "avg", "method": "linear"}]}))
    out = tmp_path / "cmp"
    assert main(["eval", "--config", str(cfg), "--out", str(out), "--set", "batch_size=4"]) == 0
    assert "| avg |" in capsys.readouterr().out
    assert (out / "normalized_accuracy.png").stat().st_size > 1000
    err = _one_line_error(capsys, ["eval", "--config", str(cfg), "--out", str(out)])
    assert "already exists" in err
