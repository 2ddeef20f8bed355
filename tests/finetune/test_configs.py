"""The shipped example configs (finetune/configs, eval/configs) stay valid against their schemas."""

from pathlib import Path

import pytest

from mergekit_het.data.tasks import load_task_file
from mergekit_het.evaluate.config import CompareConfig
from mergekit_het.finetune import load_finetune_config
from mergekit_het.runtime.yaml_config import read_yaml_mapping, validate

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = sorted((ROOT / "finetune" / "configs").glob("*.yaml"))
EVAL = sorted((ROOT / "eval" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", FINETUNE, ids=lambda p: p.name)
def test_finetune_config_validates_and_its_mode_matches_its_name(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs are run from the project root
    cfg = load_finetune_config(path)
    assert cfg.mode in path.stem and cfg.protocol in path.stem
    assert [t.name for t in load_task_file(cfg.data.task_file, [cfg.data.task])] == [cfg.data.task]


@pytest.mark.parametrize("path", EVAL, ids=lambda p: p.name)
def test_eval_config_validates_and_names_an_existing_task_file(path):
    cfg = validate(CompareConfig, read_yaml_mapping(path), str(path))  # model folders are not checked here
    assert (path.parent / cfg.tasks).is_file()
    assert len({m.name for m in cfg.methods}) == len(cfg.methods)


def test_the_example_configs_exist():
    assert len(FINETUNE) >= 5 and len(EVAL) >= 3
