"""An interrupted continual suite resumes in its output folder to the uninterrupted result."""

import json
import shutil
from pathlib import Path

import pytest

from mergekit_het.continual import load_continual_config, run_continual
from mergekit_het.continual.state import load_run, run_file
from mergekit_het.errors import ConfigError
from mergekit_het.runtime.files import work_dir

STRATEGIES = [{"name": "finetune"}, {"name": "scroll", "memory": 8, "steps": 2}, {"name": "federated"}]


class Stop(KeyboardInterrupt):
    """Ctrl-C after some runs."""


def stop_after(n: int):
    def hook(i, results):
        if i + 1 == n:
            raise Stop()

    return hook


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cl_bert, cl_task):
    """An uninterrupted suite (2 schedules x 3 strategies) and the config maker for its twins."""
    root = tmp_path_factory.mktemp("clresume")

    def make(out: str, **over):
        cfg = {"model": str(cl_bert),
               "data": {"task_file": str(cl_task), "tasks": ["toy"], "max_length": 16, "train_per_class": 12, "eval_per_class": 6},
               "stream": {"by": "classes", "experience_sizes": [[2, 2], [1, 3]], "chunk_sizes": [4, 5], "schedules": 2},
               "strategies": STRATEGIES, "train": {"lr": 0.1}, "eval_batch_size": 64, "output": {"dir": str(root / out)}}  # fmt: skip
        cfg.update(over)
        return load_continual_config(cfg)

    run_continual(make("ref"), progress=False)
    return root, make


def test_stopped_suite_resumes_to_the_same_results(reference, capsys):
    root, make = reference
    cfg = make("cut")
    with pytest.raises(Stop):
        run_continual(cfg, progress=False, on_run=stop_after(4))  # schedule 0 done, schedule 1's finetune done
    work = work_dir(root / "cut")
    assert not (root / "cut").exists()
    kept = sorted(p.name for p in (work / "runs").iterdir())
    assert kept == ["s0-federated.safetensors", "s0-finetune.safetensors", "s0-scroll.safetensors", "s1-finetune.safetensors"]
    r_scroll, r_stage1 = load_run(run_file(work, 0, "scroll"))  # artifacts come back with their types
    assert (r_scroll.label, r_stage1.label) == ("scroll", "scroll:stage1") and r_stage1.artifacts == {}
    assert r_scroll.artifacts["ridge"].weight.shape[0] == 4 and len(r_scroll.artifacts["accepted"]) == 2
    assert all(isinstance(c, int) for c in r_scroll.artifacts["buffer_counts"])
    capsys.readouterr()
    seen = []
    run_continual(cfg, progress=False, on_run=lambda i, r: seen.append(i))
    assert f"resuming from run 4 of {work}" in capsys.readouterr().out
    assert seen == list(range(6))
    for name in ("results.json", "table.md"):  # exact: every float of every matrix, the weight gaps, the ridge heads
        assert (root / "cut" / name).read_bytes() == (root / "ref" / name).read_bytes(), name
    assert not work.exists()
    shutil.rmtree(root / "cut")


def test_changed_result_keys_are_refused_by_name(reference):
    root, make = reference
    out, over = "chg", {"seed": 2, "train": {"lr": 0.2}}
    with pytest.raises(Stop):
        run_continual(make(out), progress=False, on_run=stop_after(1))
    with pytest.raises(ConfigError) as err:
        run_continual(make(out, **over), progress=False)
    msg = str(err.value)
    assert "--allow-config-change" in msg and "--restart" in msg
    assert "seed: 0 -> 2" in msg and "train.lr: 0.1 -> 0.2" in msg
    assert "device" not in msg and "output" not in msg
    # a free key (device) changes nothing; --allow-config-change resumes with the new keys
    seen = []
    run_continual(make(out, allow_config_change=True, device="cpu", **over), progress=False,
                  on_run=lambda i, r: seen.append(i))  # fmt: skip
    saved = json.loads((root / out / "results.json").read_text())
    assert len(saved["runs"]) == 2 * 4 and seen == list(range(6))


def test_restart_discards_the_saved_runs(reference, capsys):
    root, make = reference
    with pytest.raises(Stop):
        run_continual(make("rs"), progress=False, on_run=stop_after(1))
    capsys.readouterr()
    run_continual(make("rs", resume=False, seed=5), progress=False)  # no refusal: nothing is resumed
    assert "resuming" not in capsys.readouterr().out
    assert (root / "rs" / "results.json").is_file() and not work_dir(root / "rs").exists()


def test_bad_model_leaves_no_work_folder(reference, tmp_path):
    """A bad model stops the suite before its work folder exists (nothing hidden left)."""
    _, make = reference
    cfg = make("bad_model", model=str(tmp_path / "no_such_model"))
    with pytest.raises(ConfigError, match="no_such_model"):
        run_continual(cfg, progress=False)
    out = Path(cfg.output.dir)
    assert not work_dir(out).exists() and not out.exists()
