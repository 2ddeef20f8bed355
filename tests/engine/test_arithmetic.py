"""`MergeOptions.arithmetic`: float32 (default) or the config's dtype, as mergekit 0.1.5 computes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mergekit_het.merge.config import load_merge_config
from mergekit_het.merge.engine import MergeOptions, run_merge
from mergekit_het.methods import get_method
from mergekit_het.merge.binder import bind_parameters


@pytest.fixture
def bf16_models(tmp_path):
    from tests.conftest import perturb, save_tiny_bert

    base = save_tiny_bert(tmp_path / "base", dtype=torch.bfloat16)
    return [base] + [perturb(base, tmp_path / f"e{i}", seed=i + 1) for i in range(2)]


def merged(models, tmp_path, arithmetic, name, chunk_size=None):
    cfg = load_merge_config({"merge_method": "ties", "base_model": str(models[0]), "dtype": "bfloat16",
                             "parameters": {"density": 0.5, "lambda": 0.9},
                             "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models[1:], (0.6, 0.3))]})  # fmt: skip
    run_merge(cfg, tmp_path / name, MergeOptions(progress=False, arithmetic=arithmetic, chunk_size=chunk_size))
    return load_file(tmp_path / name / "model.safetensors")


def test_config_dtype_runs_the_method_on_bf16_inputs(bf16_models, tmp_path):
    """With config-dtype the method sees the bf16 tensors themselves (mergekit's arithmetic), also
    when the tensor would be chunked; float32 (the default) differs from it in some elements."""
    exact = merged(bf16_models, tmp_path, "config-dtype", "exact", chunk_size=64)
    default = merged(bf16_models, tmp_path, "float32", "default")
    sds = [load_file(m / "model.safetensors") for m in bf16_models]
    binding = bind_parameters("ties", {"density": 0.5, "lambda": 0.9}, [{"weight": 0.6}, {"weight": 0.3}])
    fn = get_method("ties").fn
    differing = 0
    for name, out in exact.items():
        if not out.is_floating_point():
            continue
        expected = fn(sds[0][name], [sd[name].clone() for sd in sds[1:]], **binding.for_tensor(name))
        assert expected.dtype == torch.bfloat16 and torch.equal(out, expected), name
        differing += int((default[name] != out).sum())
    assert differing > 0
