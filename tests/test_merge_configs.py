"""Every example in merge_configs/ is a valid mergekit YAML for our schema."""

from pathlib import Path

import pytest

from mergekit_het.merge.config import load_merge_config

CONFIGS = sorted((Path(__file__).parent.parent / "merge_configs").glob("*.yml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_merge_config_example_validates(path):
    cfg = load_merge_config(path, check_paths=False)  # the models exist once the quickstart (or a download) made them
    assert cfg.models or cfg.slices


def test_merge_config_examples_exist():
    assert len(CONFIGS) >= 7
