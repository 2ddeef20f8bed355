"""extract-lora: Eckart–Young bounds, peft loading, mergekit's module rules, the CLI and its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from lora_fixtures import low_rank, merged_state, noise, save_pair, tiny_llama
from safetensors.torch import load_file, save_file

from mergekit_het.cli import main
from mergekit_het.errors import ConfigError
from mergekit_het.lora.extract import ExtractOptions, extract_lora, low_rank_factors

P = "base_model.model."
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def opts(**kw) -> ExtractOptions:
    return ExtractOptions(progress=False, **kw)


def config(adapter: Path) -> dict:
    return json.loads((adapter / "adapter_config.json").read_text())


def assert_states_close(got: dict, want: dict, atol: float = 1e-6) -> None:
    assert set(want) <= set(got)
    worst = {k: (got[k].float() - want[k].float()).abs().max().item() for k in want}
    bad = {k: v for k, v in worst.items() if v > atol}
    assert not bad, bad


# ---- the decomposition ------------------------------------------------------------------


@pytest.mark.parametrize("distribute", [True, False])
def test_low_rank_factors_delta_of_rank_r_reproduced_to_rounding(distribute):
    delta = low_rank((20, 12), 3, torch.Generator().manual_seed(0))
    a, b = low_rank_factors(delta, max_rank=4, distribute_scale=distribute)
    assert a.shape == (4, 12) and b.shape == (20, 4)
    torch.testing.assert_close(b @ a, delta, rtol=0, atol=2e-6 * delta.abs().max().item())


def test_low_rank_factors_error_equals_tail_singular_values():
    delta = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(delta.double())
    for r in (1, 5, 11):
        a, b = low_rank_factors(delta, max_rank=r)
        err2 = ((delta.double() - (b @ a).double()) ** 2).sum()
        torch.testing.assert_close(err2, (s[r:] ** 2).sum(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.norm(dim=1).double(), s[:r].sqrt(), rtol=1e-5, atol=0)  # rows of A: √S
    a, b = low_rank_factors(delta, max_rank=5, distribute_scale=False)
    torch.testing.assert_close(a.norm(dim=1).double(), s[:5], rtol=1e-5, atol=0)  # A carries S, B is orthonormal
    torch.testing.assert_close(b.T @ b, torch.eye(5), rtol=0, atol=1e-5)


def test_low_rank_factors_sv_epsilon_keeps_values_above_it():
    g = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(10, 4, generator=g))
    v, _ = torch.linalg.qr(torch.randn(8, 4, generator=g))
    delta = u @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.1])) @ v.T
    assert low_rank_factors(delta, 8, sv_epsilon=0.5)[0].shape == (3, 8)
    assert low_rank_factors(delta, 2, sv_epsilon=0.5)[0].shape == (2, 8)  # max_rank still caps
    assert low_rank_factors(delta, 8, sv_epsilon=10.0)[0].shape == (0, 8)


# ---- whole models through peft ----------------------------------------------------------


@pytest.fixture(scope="module")
def llama_rank2(tmp_path_factory):
    """Every Linear of the Llama changed by a rank-2 Δ, every other tensor by full-rank noise."""
    root = tmp_path_factory.mktemp("rank2")

    def delta(name, w, g):
        return low_rank(tuple(w.shape), 2, g) if name.endswith(tuple(f"{n}.weight" for n in LINEARS)) else noise(name, w, g)

    return save_pair(root, tiny_llama(), delta)


def test_extract_known_rank_peft_merge_reproduces_finetuned(llama_rank2, tmp_path):
    from transformers import LlamaForCausalLM

    base, ft = llama_rank2
    out = tmp_path / "adapter"
    summary = extract_lora(str(ft), str(base), out, opts(max_rank=2))
    assert (summary.decomposed, summary.saved_whole, summary.rank) == (14, 7, 2)
    cfg = config(out)
    assert (cfg["r"], cfg["lora_alpha"], cfg["rank_pattern"], cfg["task_type"]) == (2, 2, {}, "CAUSAL_LM")
    assert cfg["target_modules"] == sorted(LINEARS)
    assert cfg["modules_to_save"] == ["embed_tokens", "input_layernorm", "post_attention_layernorm", "norm", "lm_head"]
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors[f"{P}model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (2, 16)
    assert tensors[f"{P}model.layers.0.mlp.down_proj.lora_B.weight"].shape == (16, 2)
    ft_sd = load_file(ft / "model.safetensors")
    assert torch.equal(tensors[f"{P}model.embed_tokens.weight"], ft_sd["model.embed_tokens.weight"])  # saved whole
    assert_states_close(merged_state(base, out, LlamaForCausalLM), ft_sd, atol=2e-6)


def test_extract_general_delta_error_is_the_tail(tmp_path):
    from transformers import LlamaForCausalLM

    base, ft = save_pair(tmp_path, tiny_llama(), noise)
    out = tmp_path / "adapter"
    extract_lora(str(ft), str(base), out, opts(max_rank=3))
    merged, ad = merged_state(base, out, LlamaForCausalLM), load_file(out / "adapter_model.safetensors")
    b_sd, f_sd = load_file(base / "model.safetensors"), load_file(ft / "model.safetensors")
    checked = 0
    for name, w in b_sd.items():
        module = name.removesuffix(".weight")
        if f"{P}{module}.lora_A.weight" not in ad:
            continue
        ba = ad[f"{P}{module}.lora_B.weight"] @ ad[f"{P}{module}.lora_A.weight"]
        torch.testing.assert_close(merged[name], w + ba, rtol=0, atol=1e-6)  # peft gives W_base + B·A
        delta = (f_sd[name] - w).double()
        tail = (torch.linalg.svdvals(delta)[3:] ** 2).sum()
        torch.testing.assert_close(((delta - ba.double()) ** 2).sum(), tail, rtol=1e-4, atol=1e-8)
        checked += 1
    assert checked == 14


def test_extract_sv_epsilon_sets_rank_pattern_that_peft_honours(tmp_path):
    from transformers import LlamaForCausalLM

    def delta(name, w, g):
        if name.endswith("q_proj.weight"):
            return low_rank(tuple(w.shape), 1, g)
        return low_rank(tuple(w.shape), 3, g) if name.endswith(tuple(f"{n}.weight" for n in LINEARS)) else noise(name, w, g)

    base, ft = save_pair(tmp_path, tiny_llama(), delta)
    out = tmp_path / "adapter"
    extract_lora(str(ft), str(base), out, opts(max_rank=8, sv_epsilon=1e-4))
    cfg = config(out)
    assert cfg["r"] == 3 and cfg["lora_alpha"] == 3
    q = {f"model.layers.{i}.self_attn.q_proj": 1 for i in range(2)}
    assert cfg["rank_pattern"] == q and cfg["alpha_pattern"] == q
    assert_states_close(merged_state(base, out, LlamaForCausalLM), load_file(ft / "model.safetensors"), atol=2e-6)


def test_extract_bert_biases_reproduce_finetuned(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    base, ft = save_pair(tmp_path, BertModel(cfg), noise)
    out = tmp_path / "adapter"
    extract_lora(str(ft), str(base), out, opts(max_rank=16))  # 16 = hidden: every Δ at full rank
    cfg = config(out)
    assert cfg["lora_bias"] is True and cfg["task_type"] is None
    assert cfg["modules_to_save"] == ["word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"]
    assert cfg["target_modules"] == ["dense", "key", "query", "value"]
    ad = load_file(out / "adapter_model.safetensors")
    f_sd, b_sd = load_file(ft / "model.safetensors"), load_file(base / "model.safetensors")
    bias = "encoder.layer.0.attention.self.query.bias"
    assert torch.equal(ad[f"{P}{bias.removesuffix('.bias')}.lora_B.bias"], f_sd[bias] - b_sd[bias])
    assert_states_close(merged_state(base, out, BertModel), f_sd, atol=2e-6)


def test_extract_embed_lora_decomposes_embeddings_transposed(tmp_path):
    from transformers import LlamaForCausalLM

    base, ft = save_pair(tmp_path, tiny_llama(), noise)
    out = tmp_path / "adapter"
    extract_lora(str(ft), str(base), out, opts(max_rank=16, embed_lora=True))  # 16 = hidden: full rank
    cfg = config(out)
    assert "embed_tokens" in cfg["target_modules"] and "lm_head" in cfg["target_modules"]
    assert cfg["modules_to_save"] == ["input_layernorm", "post_attention_layernorm", "norm"]
    ad = load_file(out / "adapter_model.safetensors")
    assert ad[f"{P}model.embed_tokens.lora_embedding_A"].shape == (16, 48)  # [r, vocab]
    assert ad[f"{P}model.embed_tokens.lora_embedding_B"].shape == (16, 16)  # [hidden, r]
    assert_states_close(merged_state(base, out, LlamaForCausalLM), load_file(ft / "model.safetensors"), atol=2e-6)


def test_extract_embed_lora_resized_vocabulary_saves_embeddings_whole(tmp_path):
    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    ft = save_pair(tmp_path / "big", tiny_llama(vocab_size=52), noise)[1]
    extract_lora(str(ft), str(base), tmp_path / "out", opts(max_rank=4, embed_lora=True))
    cfg = config(tmp_path / "out")
    assert cfg["modules_to_save"][:1] == ["embed_tokens"] and "lm_head" in cfg["modules_to_save"]
    assert load_file(tmp_path / "out" / "adapter_model.safetensors")[f"{P}model.embed_tokens.weight"].shape == (52, 16)


def test_extract_embed_lora_with_biases_refused(tmp_path):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    base, ft = save_pair(tmp_path, BertModel(cfg), noise)
    with pytest.raises(ConfigError, match="--embed-lora on a model whose linear layers have biases"):
        extract_lora(str(ft), str(base), tmp_path / "out", opts(embed_lora=True))
    assert not (tmp_path / "out").exists()


def test_extract_tied_embeddings_save_lm_head_as_finetuned_embedding(tmp_path):
    from transformers import LlamaForCausalLM

    base, ft = save_pair(tmp_path, tiny_llama(tie_word_embeddings=True), noise)
    assert "lm_head.weight" not in load_file(ft / "model.safetensors")
    out = tmp_path / "adapter"
    extract_lora(str(ft), str(base), out, opts(max_rank=16))
    f_sd = load_file(ft / "model.safetensors")
    assert torch.equal(load_file(out / "adapter_model.safetensors")[f"{P}lm_head.weight"], f_sd["model.embed_tokens.weight"])
    merged = merged_state(base, out, LlamaForCausalLM)
    assert torch.equal(merged["lm_head.weight"], f_sd["model.embed_tokens.weight"])


def test_extract_conv_and_batchnorm_reproduce_finetuned(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    base, ft = save_pair(tmp_path, ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])), noise)
    out = tmp_path / "adapter"
    extract_lora(str(ft), str(base), out, opts(max_rank=200))
    ad = load_file(out / "adapter_model.safetensors")
    assert ad[f"{P}embedder.embedder.convolution.lora_A.weight"].shape == (8, 3, 7, 7)
    assert ad[f"{P}embedder.embedder.convolution.lora_B.weight"].shape == (8, 8, 1, 1)
    assert f"{P}embedder.embedder.normalization.running_mean" in ad  # buffers of a module saved whole
    assert_states_close(merged_state(base, out, ResNetModel), load_file(ft / "model.safetensors"), atol=2e-6)


def test_extract_module_selection_follows_mergekit(llama_rank2, tmp_path):
    base, ft = llama_rank2
    cases = {
        "inc": opts(max_rank=2, include=(r"q_proj",)),
        "exc": opts(max_rank=2, exclude=(r"layers\.1\.", r"embed_tokens")),
        "save": opts(max_rank=2, save_modules=("o_proj",), skip_undecomposable=True),
    }
    got = {}
    for name, o in cases.items():
        extract_lora(str(ft), str(base), tmp_path / name, o)
        got[name] = (config(tmp_path / name), set(load_file(tmp_path / name / "adapter_model.safetensors")))
    cfg, keys = got["inc"]
    assert cfg["target_modules"] == ["q_proj"] and cfg["modules_to_save"] == ["embed_tokens", "lm_head"]
    cfg, keys = got["exc"]
    assert not any("layers.1." in k and "lora" in k or "embed_tokens" in k for k in keys) and "embed_tokens" not in cfg["modules_to_save"]
    assert f"{P}model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    # mergekit tests modules_to_save before the regexes: layer 1's norms, named like layer 0's, stay saved
    assert f"{P}model.layers.1.input_layernorm.weight" in keys
    cfg, keys = got["save"]
    assert cfg["modules_to_save"] == ["o_proj", "embed_tokens", "lm_head"] and "o_proj" not in cfg["target_modules"]
    assert f"{P}model.layers.0.self_attn.o_proj.weight" in keys and not any("norm" in k for k in keys)


# ---- command line -----------------------------------------------------------------------


def cli(tmp_path, capsys, *args) -> tuple[int, list[str]]:
    capsys.readouterr()  # drop what building the fixtures printed
    try:
        rc = main(["extract-lora", "--quiet", *args])
    except SystemExit as exc:  # argparse's (one-line) usage errors
        rc = exc.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no staging left
    return rc, err


def test_cli_mergekit_flags_and_aliases(llama_rank2, tmp_path, capsys):
    base, ft = llama_rank2
    out = tmp_path / "out"
    rc, err = cli(tmp_path, capsys, "--model", str(ft), "--base", str(base), "--out", str(out), "--rank", "2",
                  "--no-distribute-scale", "-j", "1", "--out-shard-size", "1B", "--lazy-unpickle", "--no-copy-tokenizer")  # fmt: skip
    assert rc == 0 and err == ["note: --lazy-unpickle, --out-shard-size, --copy-tokenizer have no effect on extract-lora"]
    ad = load_file(out / "adapter_model.safetensors")
    b = ad[f"{P}model.layers.0.self_attn.q_proj.lora_B.weight"]
    torch.testing.assert_close(b.T @ b, torch.eye(2), rtol=0, atol=1e-5)  # --no-distribute-scale: B = U_r
    rc, err = cli(tmp_path, capsys, "--model", str(ft), "--base-model", str(base), "--out-path", str(out), "--max-rank", "2")
    assert rc == 2 and len(err) == 1 and re.search(r"out already exists; pass --overwrite", err[0])


def _no_config(tmp_path, ft):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((ft / "model.safetensors").read_bytes())
    return bare


def _nan(tmp_path, ft):
    import shutil

    bad = tmp_path / "nan"
    shutil.copytree(ft, bad)
    sd = load_file(bad / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    return bad


def _narrow_base(tmp_path, ft):
    return save_pair(tmp_path / "narrow", tiny_llama(intermediate_size=20), noise)[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-rank", "0"], r"argument --max-rank/--rank/-r: 0 is below 1"),
        (["-i", "(", "--sv-epsilon", "-1"], r"--sv-epsilon must be ≥ 0, got -1.0; --include-regex '\(' is not a valid"),
        (["--sv-epsilon", "100"], r"no module to decompose \(every one has rank 0 under --sv-epsilon 100.0\)"),
        (["-i", "no_such_module"], r"no module to decompose \(the regexes and --save-module leave none\)"),
        (["--device", "tpu"], r"argument --device: 'tpu' is not a device"),
        (["MODEL=/nonexistent/ft"], r"model path /nonexistent/ft does not exist"),
        (["MODEL=no_config"], r"bare: no config.json; extract-lora needs the architecture"),
        (["MODEL=nan"], r"model.layers.1.mlp.up_proj.weight: the fine-tuned model or the base holds NaN/Inf"),
        (["BASE=narrow"], r"model.layers.0.mlp.gate_proj.weight: fine-tuned shape \(24, 16\), base \(20, 16\)"),
    ],
)
def test_cli_bad_input_one_line_no_output(llama_rank2, tmp_path, capsys, args, message):
    base, ft = llama_rank2
    makers = {"no_config": _no_config, "nan": _nan, "narrow": _narrow_base}
    model, over = str(ft), str(base)
    rest = []
    for a in args:
        key, _, value = a.partition("=")
        if key in ("MODEL", "BASE"):
            value = str(makers[value](tmp_path, ft)) if value in makers else value
            model, over = (value, over) if key == "MODEL" else (model, value)
        else:
            rest.append(a)
    rc, err = cli(tmp_path, capsys, "--model", model, "--base-model", over, "--out-path", str(tmp_path / "out"), *rest)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists()
