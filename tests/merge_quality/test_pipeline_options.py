"""bench/merge_quality/pipeline.py's options that need no training."""

import pytest
import yaml

from bench.merge_quality.pipeline import ROOT, main, select_variants
from mergekit_het.errors import ConfigError


def gpu_profile() -> dict:
    return yaml.safe_load((ROOT / "bench/merge_quality/settings.yaml").read_text())["gpu"]


def test_select_variants_keeps_the_named_points_in_order():
    cfg = gpu_profile()
    select_variants(cfg, ["k10_lr2e-4_s2000", "k30_lr2e-4_s2000"], "gpu")
    assert list(cfg["talos"]["variants"]) == ["k10_lr2e-4_s2000", "k30_lr2e-4_s2000"]
    assert cfg["talos"]["variants"]["k10_lr2e-4_s2000"] == gpu_profile()["talos"]["variants"]["k10_lr2e-4_s2000"]


def test_unknown_variant_is_one_error_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"--variants: \['k99'\] not in profile 'gpu'"):
        main([str(tmp_path / "out"), "--variants", "k10_lr2e-4_s2000,k99"])
    assert not (tmp_path / "out").exists()
