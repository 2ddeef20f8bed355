"""`slices:` (ALGORITHMS-addendum §11): layer stacking against hand-assembled layer stacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llama_fixtures import save_tiny_llama
from safetensors.torch import load_file, save_file

from mergekit_het.errors import ConfigError, MergekitHetError, TensorError
from mergekit_het.merge.config import load_merge_config
from mergekit_het.merge.engine import MergeOptions, merge_state_dicts, run_merge

LAYER = ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
         "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
         "mlp.down_proj.weight")  # fmt: skip


@pytest.fixture(scope="module")
def llamas(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llamas")
    return {name: save_tiny_llama(root / name, seed) for seed, name in enumerate(["A", "B", "C"])}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def merge(config: dict, out: Path) -> dict[str, torch.Tensor]:
    run_merge(load_merge_config(config), out, MergeOptions(progress=False))
    return weights(out)


def layer(sd: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: sd[f"model.layers.{i}.{k}"] for k in LAYER}


def test_passthrough_frankenmerge_stacks_layers_bit_exactly_and_loads(llamas, tmp_path):
    """§11.9 #1: A[0,3) + B[1,4) -> 6 layers: 0-2 = A 0-2, 3-5 = B 1-3; embeddings A's, norm and lm_head B's."""
    from transformers import LlamaForCausalLM

    a, b = weights(llamas["A"]), weights(llamas["B"])
    out = merge({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(llamas["A"]), "layer_range": [0, 3]}]},
        {"sources": [{"model": str(llamas["B"]), "layer_range": [1, 4]}]},
    ]}, tmp_path / "out")  # fmt: skip
    expected = {"model.embed_tokens.weight": a["model.embed_tokens.weight"], "model.norm.weight": b["model.norm.weight"],
                "lm_head.weight": b["lm_head.weight"]}  # fmt: skip
    for i, (src, j) in enumerate([(a, 0), (a, 1), (a, 2), (b, 1), (b, 2), (b, 3)]):
        expected.update({f"model.layers.{i}.{k}": v for k, v in layer(src, j).items()})
    assert out.keys() == expected.keys()
    assert all(torch.equal(out[k], v) for k, v in expected.items())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 6
    model = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 6 and torch.equal(model.model.layers[4].mlp.up_proj.weight, b["model.layers.2.mlp.up_proj.weight"])
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 32)


def test_more_layers_than_any_input_repeats_a_layer(llamas, tmp_path):
    """A[0,4) + A[2,4): 6 layers from a 4-layer model, output layer 4 = layer 2 again."""
    a = weights(llamas["A"])
    out = merge({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(llamas["A"]), "layer_range": [0, 4]}]},
        {"sources": [{"model": str(llamas["A"]), "layer_range": [2, 4]}]},
    ]}, tmp_path / "out")  # fmt: skip
    assert sum(k.endswith("mlp.up_proj.weight") for k in out) == 6
    assert all(torch.equal(out[f"model.layers.{i}.{k}"], a[f"model.layers.{j}.{k}"]) for i, j in [(4, 2), (5, 3), (2, 2)] for k in LAYER)


def test_gradients_are_relative_to_the_slice(llamas, tmp_path):
    """§11.9 #2 (linear, normalize false): t restarts in each slice; a one-layer slice has t = 1; the
    embeddings take slice 0's value at t = 0, lm_head the last slice's at t = 0."""
    A, B = str(llamas["A"]), str(llamas["B"])
    a = weights(llamas["A"])
    out = merge({"merge_method": "linear", "parameters": {"normalize": False}, "slices": [
        {"sources": [{"model": A, "layer_range": [0, 3], "parameters": {"weight": [0, 1]}},
                     {"model": B, "layer_range": [1, 4], "parameters": {"weight": 0}}]},
        {"sources": [{"model": A, "layer_range": [3, 4], "parameters": {"weight": [0.5, 1]}},
                     {"model": B, "layer_range": [0, 1], "parameters": {"weight": 0}}]},
    ]}, tmp_path / "out")  # fmt: skip
    for i, (j, w) in enumerate([(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.0)]):
        assert all(torch.equal(out[f"model.layers.{i}.{k}"], w * a[f"model.layers.{j}.{k}"]) for k in LAYER), i
    assert torch.equal(out["model.embed_tokens.weight"], torch.zeros_like(a["model.embed_tokens.weight"]))
    assert torch.equal(out["lm_head.weight"], 0.5 * a["lm_head.weight"])


def test_per_source_filter_sees_the_source_tensor_name(llamas, tmp_path):
    """§11.9 #5: A[2,4) with weight {filter 'layers.2.': 5, else 1} -> output layer 0 = 5·A.layers.2, 1 = A.layers.3."""
    a = weights(llamas["A"])
    spec = [{"filter": "layers.2.", "value": 5}, {"value": 1}]
    out = merge({"merge_method": "linear", "parameters": {"normalize": False}, "slices": [
        {"sources": [{"model": str(llamas["A"]), "layer_range": [2, 4], "parameters": {"weight": spec}}]},
    ]}, tmp_path / "out")  # fmt: skip
    assert all(torch.equal(out[f"model.layers.0.{k}"], 5 * a[f"model.layers.2.{k}"]) for k in LAYER)
    assert all(torch.equal(out[f"model.layers.1.{k}"], a[f"model.layers.3.{k}"]) for k in LAYER)


def stack(parts: list[tuple[Path, int, int]], embed: Path, final: Path, folder: Path) -> Path:
    """A checkpoint assembled by hand: the given layer ranges renumbered, embeddings and final tensors copied."""
    e, f = weights(embed), weights(final)
    sd = {"model.embed_tokens.weight": e["model.embed_tokens.weight"], "model.norm.weight": f["model.norm.weight"],
          "lm_head.weight": f["lm_head.weight"]}  # fmt: skip
    i = 0
    for src, start, end in parts:
        w = weights(src)
        for j in range(start, end):
            sd.update({f"model.layers.{i}.{k}": v for k, v in layer(w, j).items()})
            i += 1
    folder.mkdir()
    save_file(sd, folder / "model.safetensors")
    return folder


def test_per_slice_base_parameters_and_method_equal_merges_of_hand_assembled_stacks(llamas, tmp_path):
    """Slice 0: TIES of B and C over base A (layers 0-1, its own parameters); slice 1 (its own method):
    passthrough of C's layers 2-3. Each output tensor equals the models: merge of hand-assembled stacks."""
    A, B, C = (str(llamas[n]) for n in "ABC")
    out = merge({"merge_method": "ties", "base_model": A, "parameters": {"lambda": 1.0}, "slices": [
        {"sources": [{"model": A, "layer_range": [0, 2]}, {"model": B, "layer_range": [0, 2], "parameters": {"weight": 0.7}},
                     {"model": C, "layer_range": [2, 4], "parameters": {"weight": [0.2, 0.4]}}],
         "parameters": {"density": 0.5}},
        {"sources": [{"model": C, "layer_range": [2, 4]}], "merge_method": "passthrough"},
    ]}, tmp_path / "out")  # fmt: skip
    sa = weights(stack([(llamas["A"], 0, 2)], llamas["A"], llamas["A"], tmp_path / "sa"))
    sb = weights(stack([(llamas["B"], 0, 2)], llamas["B"], llamas["B"], tmp_path / "sb"))
    sc = weights(stack([(llamas["C"], 2, 4)], llamas["C"], llamas["C"], tmp_path / "sc"))
    ties = merge_state_dicts("ties", [sb, sc], base=sa, parameters={"lambda": 1.0, "density": 0.5},
                             model_parameters=[{"weight": 0.7}, {"weight": [0.2, 0.4]}], num_layers=2)  # fmt: skip
    c = weights(llamas["C"])
    for k in LAYER:
        for i in range(2):
            assert torch.equal(out[f"model.layers.{i}.{k}"], ties[f"model.layers.{i}.{k}"]), (i, k)
            assert torch.equal(out[f"model.layers.{i + 2}.{k}"], c[f"model.layers.{i + 2}.{k}"])
    assert torch.equal(out["model.embed_tokens.weight"], ties["model.embed_tokens.weight"])
    assert torch.equal(out["lm_head.weight"], c["lm_head.weight"])  # the last slice's (passthrough) source


def test_one_full_range_slice_is_the_models_merge(llamas, tmp_path):
    A, B = str(llamas["A"]), str(llamas["B"])
    sliced = merge({"merge_method": "slerp", "base_model": A, "parameters": {"t": [0, 0.3, 1]}, "slices": [
        {"sources": [{"model": A, "layer_range": [0, 4]}, {"model": B, "layer_range": [0, 4]}]}]}, tmp_path / "s")  # fmt: skip
    models = merge({"merge_method": "slerp", "base_model": A, "parameters": {"t": [0, 0.3, 1]},
                    "models": [{"model": A}, {"model": B}]}, tmp_path / "m")  # fmt: skip
    assert sliced.keys() == models.keys() and all(torch.equal(sliced[k], models[k]) for k in models)


def test_bert_frankenmerge_loads(tiny_models, tmp_path):
    from transformers import BertModel

    base, e0 = tiny_models["base"], tiny_models["e0"]
    out = merge({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(base), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(e0), "layer_range": [1, 2]}]},
    ]}, tmp_path / "out")  # fmt: skip
    b, e = weights(base), weights(e0)
    assert torch.equal(out["encoder.layer.2.output.dense.weight"], e["encoder.layer.1.output.dense.weight"])
    assert torch.equal(out["encoder.layer.1.output.dense.weight"], b["encoder.layer.1.output.dense.weight"])
    assert torch.equal(out["embeddings.word_embeddings.weight"], b["embeddings.word_embeddings.weight"])
    assert torch.equal(out["pooler.dense.weight"], e["pooler.dense.weight"])
    model = BertModel.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 3 and len(model.encoder.layer) == 3


def test_unequal_source_lengths_refused_before_reading(llamas):
    with pytest.raises(ConfigError, match=r"slices\[0\]: all sources of a slice must take the same number of layers \(got \[2, 3\]\)"):
        load_merge_config({"merge_method": "linear", "slices": [{"sources": [
            {"model": str(llamas["A"]), "layer_range": [0, 3], "parameters": {"weight": 1}},
            {"model": str(llamas["B"]), "layer_range": [0, 2], "parameters": {"weight": 1}}]}]})  # fmt: skip


def test_range_beyond_the_model_names_the_source(llamas, tmp_path):
    cfg = load_merge_config({"merge_method": "passthrough", "slices": [{"sources": [{"model": str(llamas["A"]), "layer_range": [2, 6]}]}]})
    with pytest.raises(ConfigError, match=r"slices\[0\]\.sources\[0\]\.layer_range \[2, 6\]: .* has 4 layers"):
        run_merge(cfg, tmp_path / "out", MergeOptions(progress=False))


def test_unknown_architecture_is_one_line_naming_it(llamas, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    save_file({"transformer.h.0.attn.weight": torch.ones(2, 2)}, odd / "model.safetensors")
    (odd / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 1}))
    cfg = load_merge_config({"merge_method": "passthrough", "slices": [{"sources": [{"model": str(odd), "layer_range": [0, 1]}]},
                                                                       {"sources": [{"model": str(odd), "layer_range": [0, 1]}]}]})  # fmt: skip
    with pytest.raises(TensorError, match="architecture 'GPT2LMHeadModel' has no layer table") as err:
        run_merge(cfg, tmp_path / "out", MergeOptions(progress=False))
    assert "\n" not in str(err.value)


def test_a_tensor_outside_the_layout_is_named(llamas, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text((llamas["A"] / "config.json").read_text())
    save_file({**weights(llamas["A"]), "model.mystery.weight": torch.ones(2)}, odd / "model.safetensors")
    cfg = load_merge_config({"merge_method": "passthrough", "slices": [{"sources": [{"model": str(odd), "layer_range": [0, 2]}]}]})
    with pytest.raises(MergekitHetError, match=r"^model\.mystery\.weight: tensor of .* is neither a layer"):
        run_merge(cfg, tmp_path / "out", MergeOptions(progress=False))


def test_base_missing_from_the_slice_sources_is_an_error():
    """§11.9 #6: slices never add the base among a slice's sources."""
    with pytest.raises(ConfigError, match=r"slices\[0\]: base_model 'a' is not one of the slice's sources"):
        load_merge_config({"merge_method": "task_arithmetic", "base_model": "a", "slices": [
            {"sources": [{"model": "b", "layer_range": [0, 2], "parameters": {"weight": 1}}]},
            {"sources": [{"model": "a", "layer_range": [2, 4]}, {"model": "b", "layer_range": [2, 4], "parameters": {"weight": 1}}]}]})  # fmt: skip


def test_each_output_tensor_reads_one_tensor_per_source(llamas):
    """Streaming: a plan entry reads one tensor of each of its slice's sources, never a layer range."""
    from mergekit_het.merge.slices import opened_models, plan_slices

    A, B = str(llamas["A"]), str(llamas["B"])
    cfg = load_merge_config({"merge_method": "linear", "slices": [
        {"sources": [{"model": A, "layer_range": [0, 2], "parameters": {"weight": 1}}, {"model": B, "layer_range": [2, 4], "parameters": {"weight": 1}}]},
        {"sources": [{"model": B, "layer_range": [0, 4], "parameters": {"weight": 1}}, {"model": A, "layer_range": [0, 4], "parameters": {"weight": 1}}]}]})  # fmt: skip
    with opened_models(cfg, False) as models:
        plan, layers = plan_slices(cfg, models, MergeOptions(), torch.device("cpu"))
    assert layers == 6 and len(plan.tensors) == 3 + 6 * len(LAYER)
    tp = next(tp for tp in plan.tensors if tp.name == "model.layers.1.mlp.up_proj.weight")
    assert [name for _, name in tp.reads] == ["model.layers.1.mlp.up_proj.weight", "model.layers.3.mlp.up_proj.weight"]
    tp = next(tp for tp in plan.tensors if tp.name == "model.layers.5.mlp.up_proj.weight")
    assert [name for _, name in tp.reads] == ["model.layers.3.mlp.up_proj.weight"] * 2
