"""Run one method case through the whole engine (config file → `run_merge` → the output's
tensors), shared by the tests that compare forms or devices of the same merge.

A case is (method, experts, base?, per-model parameters, global parameters, flag): experts
e0..e{n-1} of the `tiny_models` fixture, per-model values as lists indexed by expert."""

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from mergekit_het.merge.config import load_merge_config
from mergekit_het.merge.engine import MergeOptions, run_merge


def merge_case(tmp_path: Path, models: dict[str, Path], case: tuple, out: str, **options) -> dict[str, torch.Tensor]:
    method, n, with_base, per_model, params, _ = case
    entries = [{"model": str(models[f"e{i}"]), "parameters": {k: v[i] for k, v in per_model.items()}} for i in range(n)]
    cfg = {"merge_method": method, "models": entries, "parameters": params}
    if with_base:
        cfg["base_model"] = str(models["base"])
    path = tmp_path / f"{out}.yml"
    path.write_text(yaml.safe_dump(cfg))
    run_merge(load_merge_config(path), tmp_path / out, MergeOptions(progress=False, **options))
    return load_file(tmp_path / out / "model.safetensors")
