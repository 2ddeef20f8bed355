"""End-to-end merges of on-disk models: streamed equals in-memory, sharding, round trip."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mergekit_het.merge.config import load_merge_config
from mergekit_het.merge.engine import MergeOptions, merge_state_dicts, run_merge
from mergekit_het.methods import get_method


def write_cfg(tmp_path: Path, models, method="ties", base=None, **extra) -> Path:
    cfg = {"merge_method": method, "models": models, **extra}
    if base is not None:
        cfg["base_model"] = str(base)
    path = tmp_path / "merge.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def ties_cfg(tmp_path, m, **extra):
    models = [{"model": str(m[f"e{i}"]), "parameters": {"weight": w, "density": d}} for i, w, d in [(0, 1.0, 0.5), (1, 0.5, [0.2, 0.8]), (2, 1.0, 0.3)]]
    return write_cfg(tmp_path, models, base=m["base"], parameters={"lambda": 1.3}, **extra)


def test_merge_streamed_equals_in_memory_and_hand_loop(tmp_path, tiny_models):
    cfg_path = ties_cfg(tmp_path, tiny_models)
    cfg = load_merge_config(cfg_path)
    run_merge(cfg, tmp_path / "out", MergeOptions(progress=False, max_shard_size=20_000))
    streamed = load_all(tmp_path / "out")
    in_memory = run_merge(cfg, None, MergeOptions(progress=False)).state
    base = load_file(tiny_models["base"] / "model.safetensors")
    experts = [load_file(tiny_models[f"e{i}"] / "model.safetensors") for i in range(3)]
    ties = get_method("ties")
    assert streamed.keys() == base.keys() == in_memory.keys()
    for name, b in base.items():
        assert torch.equal(streamed[name], in_memory[name])
        if not b.is_floating_point():
            assert torch.equal(streamed[name], b)
            continue
        t = 0.0
        if ".layer." in name:
            t = int(name.split(".layer.")[1].split(".")[0]) / 1  # 2 layers: t = idx / (2 - 1)
        expected = ties.apply(b, [e[name] for e in experts], weight=[1.0, 0.5, 1.0], density=[0.5, 0.2 + 0.6 * t, 0.3], lambda_=1.3)
        assert torch.equal(streamed[name], expected), name


def test_merge_sharded_output_index_and_from_pretrained(tmp_path, tiny_models):
    from transformers import AutoModel

    cfg = load_merge_config(ties_cfg(tmp_path, tiny_models))
    run_merge(cfg, tmp_path / "out", MergeOptions(progress=False, max_shard_size=8_000))
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    names_in_shards = [n for f in shards for n in load_file(f)]
    assert sorted(names_in_shards) == sorted(index["weight_map"]) and len(set(names_in_shards)) == len(names_in_shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in load_all(out).values())
    model = AutoModel.from_pretrained(out)
    merged = load_all(out)
    for name, p in model.state_dict().items():
        if name in merged:
            assert torch.equal(p, merged[name])
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_merge_bf16_inputs_keep_bf16_and_config_dtype(tmp_path):
    from tests.conftest import perturb, save_tiny_bert

    base = save_tiny_bert(tmp_path / "b", dtype=torch.bfloat16)
    e = perturb(base, tmp_path / "e", seed=1)
    cfg = load_merge_config(write_cfg(tmp_path, [{"model": str(base), "parameters": {"weight": 1}}, {"model": str(e), "parameters": {"weight": 1}}], method="linear"))
    run_merge(cfg, tmp_path / "out", MergeOptions(progress=False))
    merged = load_all(tmp_path / "out")
    assert all(t.dtype == torch.bfloat16 for t in merged.values() if t.is_floating_point())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    a, b = load_file(base / "model.safetensors"), load_file(e / "model.safetensors")
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(merged[name], ((a[name].float() + b[name].float()) / 2).to(torch.bfloat16))


def test_merge_out_dtype_and_side_files(tmp_path, tiny_models):
    cfg = load_merge_config(ties_cfg(tmp_path, tiny_models, out_dtype="float16"))
    run_merge(cfg, tmp_path / "out", MergeOptions(progress=False), config_text="verbatim: yes\n")
    out = tmp_path / "out"
    assert load_file(out / "model.safetensors")["pooler.dense.weight"].dtype == torch.float16
    assert (out / "mergekit_config.yml").read_text() == "verbatim: yes\n"
    assert (out / "config.json").is_file()


def test_merge_state_dicts_fedavg_weights_by_counts():
    a = {"w": torch.tensor([1.0, 2.0]), "step": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 6.0]), "step": torch.tensor([3])}
    out = merge_state_dicts("linear", [a, b], model_parameters=[{"weight": 10}, {"weight": 30}])
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0])) and torch.equal(out["step"], torch.tensor([3]))


def test_merge_state_dicts_dare_seeded_reproducible_and_order_free():
    base = {f"t{i}": torch.zeros(500) for i in range(3)}
    ms = [{k: torch.randn(500, generator=torch.Generator().manual_seed(j)) for k in base} for j in range(2)]
    kw = dict(base=base, parameters={"density": 0.5}, model_parameters=[{"weight": 1}, {"weight": 1}], seed=3)
    a = merge_state_dicts("dare_ties", ms, **kw)
    b = merge_state_dicts("dare_ties", [{k: m[k] for k in reversed(list(m))} for m in ms],
                          base={k: base[k] for k in reversed(list(base))}, **{k: v for k, v in kw.items() if k != "base"})  # fmt: skip
    c = merge_state_dicts("dare_ties", ms, **{**kw, "seed": 4})
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["t0"], c["t0"])


def test_merge_overwrite_replaces_existing_output(tmp_path, tiny_models):
    cfg = load_merge_config(ties_cfg(tmp_path, tiny_models))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")  # a model folder: overwrite may replace it
    (tmp_path / "out" / "old.txt").write_text("old")
    run_merge(cfg, tmp_path / "out", MergeOptions(progress=False, overwrite=True))
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("method,params", [("slerp", {"t": [0.0, 1.0]}), ("model_stock", {}), ("breadcrumbs", {"density": 0.9, "gamma": 0.01}), ("dare_linear", {"density": 0.5})])
def test_merge_other_methods_run_on_files(tmp_path, tiny_models, method, params):
    n = 1 if method == "slerp" else 2
    weight = {} if method in ("slerp", "model_stock") else {"weight": 1.0}
    models = [{"model": str(tiny_models[f"e{i}"]), "parameters": weight} for i in range(n)]
    cfg = load_merge_config(write_cfg(tmp_path, models, method=method, base=tiny_models["base"], parameters=params))
    summary = run_merge(cfg, tmp_path / "out", MergeOptions(progress=False))
    assert summary.tensors == len(load_all(tmp_path / "out"))


def test_run_merge_writes_card_titled_with_output_name(tmp_path, tiny_models):
    """Every caller of run_merge (CLI, quickstart, library) gets the card; its title was the
    staging folder's name (`# .out.tmp-2e731sa7`), which the Hub would show."""
    cfg = load_merge_config(ties_cfg(tmp_path, tiny_models))
    run_merge(cfg, tmp_path / "my-merge", MergeOptions(progress=False))
    card = (tmp_path / "my-merge" / "README.md").read_text()
    assert "\n# my-merge\n" in card and ".tmp-" not in card
    assert "Method: `ties`." in card and "lambda=1.3" in card


def test_run_merge_card_bounds_a_huge_config_comment(tmp_path, tiny_models):
    text = ties_cfg(tmp_path, tiny_models).read_text() + "# " + "x" * 2_000_000 + "\n"
    cfg = load_merge_config(yaml.safe_load(text))
    run_merge(cfg, tmp_path / "out", MergeOptions(progress=False), config_text=text)
    card = (tmp_path / "out" / "README.md").read_text()
    assert len(card) < 20_000 and "xxxxxxxxxx" not in card and "merge_method: ties" in card
    assert (tmp_path / "out" / "mergekit_config.yml").read_text() == text  # the config itself is kept whole
