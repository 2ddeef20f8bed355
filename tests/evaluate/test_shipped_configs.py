"""Every comparison config shipped under eval/configs binds at every grid point: method names
registered, parameter names and values within the method's schema (bounds, per-model filters),
so a typo in a grid fails here, not after the experts are trained."""

from pathlib import Path

import pytest

from mergekit_het.evaluate.config import CompareConfig
from mergekit_het.evaluate.sweep import grid_points
from mergekit_het.merge.binder import bind_parameters
from mergekit_het.methods import get_method
from mergekit_het.runtime.yaml_config import read_yaml_mapping, validate

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "eval" / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"merge_quality.yaml", "merge_quality_knobs.yaml", "merge_quality_small.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_comparison_config_binds_at_every_grid_point(path):
    cfg = validate(CompareConfig, read_yaml_mapping(path, "eval config"), str(path))
    assert cfg.methods
    for m in cfg.methods:
        method = get_method(m.method)
        weight = {"weight": 1.0} if "weight" in method.params else {}  # as the comparison sets it
        for point in grid_points(m.grid):
            bind_parameters(method, {**weight, **m.parameters, **point}, [{} for _ in range(4)], f"{path.name}: {m.name}")
