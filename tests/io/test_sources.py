"""Lazy readers: safetensors (single, sharded, truncated), pickle opt-in, LoRA against peft."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergekit_het.errors import ConfigError, TensorError
from mergekit_het.io.resolve import open_model
from mergekit_het.io.sources import SafetensorsModel


def test_reader_single_file_reads_exact_tensors(tiny_models):
    src = open_model(str(tiny_models["base"]))
    ref = load_file(tiny_models["base"] / "model.safetensors")
    assert sorted(src.names()) == sorted(ref)
    for name, t in ref.items():
        assert src.meta(name) == (tuple(t.shape), t.dtype)
        assert torch.equal(src.read(name), t)
    src.close()


def test_reader_sharded_folder_via_index(tmp_path):
    from transformers import BertModel

    from tests.conftest import tiny_bert_config

    model = BertModel(tiny_bert_config())
    model.save_pretrained(tmp_path / "m", max_shard_size="10KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    src = open_model(str(tmp_path / "m"))
    sd = model.state_dict()
    for name in src.names():
        assert torch.equal(src.read(name), sd[name])


def test_reader_truncated_shard_names_file_and_tensor(tmp_path, tiny_models):
    f = tiny_models["base"] / "model.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(TensorError, match=r"model.safetensors: truncated shard: tensor \S+ needs bytes up to"):
        SafetensorsModel(tiny_models["base"])


def test_reader_garbage_file_one_line_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(TensorError, match="corrupt safetensors header"):
        SafetensorsModel(tmp_path / "m")


def test_reader_pickle_refused_without_opt_in(tmp_path):
    (tmp_path / "p").mkdir()
    torch.save({"w": torch.arange(4.0)}, tmp_path / "p" / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pickle .* --allow-pickle"):
        open_model(str(tmp_path / "p"))
    src = open_model(str(tmp_path / "p"), allow_pickle=True)
    assert torch.equal(src.read("w"), torch.arange(4.0))


def test_reader_pickle_chunk_copies_only_the_chunk(tmp_path):
    """A chunked read of a pickle checkpoint copied the whole tensor out of the map for every
    chunk (32 chunks of an 8 MiB tensor: 32 full copies); now each copy holds the chunk alone."""
    (tmp_path / "p").mkdir()
    w = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0))
    torch.save({"w": w}, tmp_path / "p" / "pytorch_model.bin")
    src = open_model(str(tmp_path / "p"), allow_pickle=True)
    copied: list[int] = []
    clone = torch.Tensor.clone

    def spy(t, *args, **kwargs):
        copied.append(t.numel())
        return clone(t, *args, **kwargs)

    torch.Tensor.clone = spy
    try:
        chunks = [src.read_range("w", s, min(s + 5000, w.numel())) for s in range(0, w.numel(), 5000)]
    finally:
        torch.Tensor.clone = clone
    assert copied == [5000] * 12 + [4000]
    assert all(c.untyped_storage().nbytes() == c.numel() * 4 for c in chunks)
    assert torch.equal(torch.cat(chunks), w.reshape(-1))
    src.close()


def test_reader_missing_path_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        open_model(str(tmp_path / "nope"))


def test_reader_task_vector_folder_is_base_plus_tau(tmp_path, tiny_models):
    base = load_file(tiny_models["base"] / "model.safetensors")
    name = "encoder.layer.0.output.dense.weight"
    tau = {name: torch.full_like(base[name], 0.5)}
    (tmp_path / "tv").mkdir()
    save_file(tau, tmp_path / "tv" / "task_vector.safetensors")
    src = open_model(str(tmp_path / "tv"), base=str(tiny_models["base"]))
    assert torch.equal(src.read(name), base[name] + 0.5)
    other = "encoder.layer.1.output.dense.weight"
    assert torch.equal(src.read(other), base[other])


@pytest.mark.parametrize("target_modules, extra", [(["query", "value"], {}), (["dense"], {"use_rslora": True}), (["word_embeddings", "key"], {})])
def test_lora_materialization_equals_peft_merge_and_unload(tmp_path, target_modules, extra):
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    from tests.conftest import tiny_bert_config

    torch.manual_seed(0)
    base = BertModel(tiny_bert_config())
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False, **extra))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "base")
    cfg_path.write_text(json.dumps(cfg))
    expected = peft_model.merge_and_unload().state_dict()
    src = open_model(str(tmp_path / "adapter"))
    for name in src.names():
        torch.testing.assert_close(src.read(name), expected[name], rtol=0, atol=1e-6)
    plus = open_model(f"{tmp_path / 'base'}+{tmp_path / 'adapter'}")
    name = next(n for n in src.names() if target_modules[-1] in n and n.endswith("weight"))
    assert torch.equal(plus.read(name), src.read(name))


def test_lora_dora_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True, "r": 2, "base_model_name_or_path": "x"}))
    with pytest.raises(ConfigError, match="DoRA"):
        open_model(str(tmp_path / "a"))
