"""Tokenizer merging against hand-assembled embedding matrices.

Two tiny Llama checkpoints with hand-made WordLevel vocabularies that overlap partially:
A = [UNK] a b c d (ids 0..4), B = [UNK] b e a f g (ids 0..5). Row i of A's embeddings is all
10 + i, of B's 20 + i; lm_head rows 30 + i and 40 + i. Every merge is linear with weights 1, 1
and base_model A, so a shared token's row is the mean of the two models' rows and a token only
one model has keeps that model's row (the other model borrows it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_het.errors import ConfigError, TensorError
from mergekit_het.merge.config import load_merge_config
from mergekit_het.merge.embeddings import aligned_rows
from mergekit_het.merge.engine import MergeOptions, run_merge
from mergekit_het.merge.tokenizer import Vocabulary

VOCAB_A = ["[UNK]", "a", "b", "c", "d"]
VOCAB_B = ["[UNK]", "b", "e", "a", "f", "g"]
H = 4


def _save_tokenizer(folder: Path, tokens: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))


def _save_llama(folder: Path, tokens: list[str], embed0: float, head0: float, tied: bool = False) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=H, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        rows = torch.arange(len(tokens), dtype=torch.float32)[:, None].expand(-1, H)
        model.model.embed_tokens.weight.copy_(embed0 + rows)
        if not tied:
            model.lm_head.weight.copy_(head0 + rows)
    model.save_pretrained(str(folder))
    _save_tokenizer(folder, tokens)
    return folder


@pytest.fixture
def llamas(tmp_path: Path) -> dict[str, Path]:
    return {"A": _save_llama(tmp_path / "A", VOCAB_A, 10, 30), "B": _save_llama(tmp_path / "B", VOCAB_B, 20, 40)}


def _merge(tmp_path: Path, llamas: dict[str, Path], _truncate: bool = False, **extra) -> Path:
    cfg = {"merge_method": "linear", "base_model": str(llamas["A"]),
           "models": [{"model": str(llamas["A"]), "parameters": {"weight": 1.0}},
                      {"model": str(llamas["B"]), "parameters": {"weight": 1.0}}], **extra}  # fmt: skip
    out = tmp_path / "out"
    run_merge(load_merge_config(cfg), out, MergeOptions(progress=False, overwrite=True,
                                                        unsafe_truncate_embeddings=_truncate))  # fmt: skip
    return out


def _rows(out: Path, name: str = "model.embed_tokens.weight") -> list[float]:
    t = load_file(out / "model.safetensors")[name]
    assert torch.equal(t, t[:, :1].expand(-1, t.shape[1])), "every row is constant by construction"
    return t[:, 0].tolist()


def _vocab(out: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(out)).get_vocab()


def _by_token(out: Path, name: str = "model.embed_tokens.weight") -> dict[str, float]:
    rows = _rows(out, name)
    return {tok: rows[i] for tok, i in _vocab(out).items()}


def test_union(tmp_path, llamas):
    out = _merge(tmp_path, llamas, tokenizer_source="union")
    assert _vocab(out) == {"[UNK]": 0, "a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7}
    # shared: mean of A's and B's rows; A only (c, d): A's row; B only (e, f, g): B's row
    assert _rows(out) == [15.0, 17.0, 16.5, 13.0, 14.0, 22.0, 24.0, 25.0]
    assert _rows(out, "lm_head.weight") == [35.0, 37.0, 36.5, 33.0, 34.0, 42.0, 44.0, 45.0]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 8
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(out))
    assert model.get_input_embeddings().weight.shape == (8, H)


def test_base_and_model_sources(tmp_path, llamas):
    out = _merge(tmp_path, llamas, tokenizer_source="base")
    assert _by_token(out) == {"[UNK]": 15.0, "a": 17.0, "b": 16.5, "c": 13.0, "d": 14.0}
    out = _merge(tmp_path, llamas, tokenizer_source=f"model:{llamas['B']}")
    assert _rows(out) == [15.0, 16.5, 22.0, 17.0, 24.0, 25.0]  # B's order: [UNK] b e a f g
    out = _merge(tmp_path, llamas, tokenizer={"source": str(llamas["B"])})  # mergekit's plain model path
    assert _rows(out) == [15.0, 16.5, 22.0, 17.0, 24.0, 25.0]


def test_forced_and_configured_tokens(tmp_path, llamas):
    tokens = {
        "a": {"source": f"model:{llamas['B']}", "force": True},  # both models take B's row of 'a' (23)
        "z": {"source": {"kind": "zero"}},  # a new token: zero rows
        "y": {"source": {"kind": "model_token", "model": str(llamas["A"]), "token": "c"}},  # A's row of 'c'
        "x": {"source": {"kind": "model_token", "model": str(llamas["B"]), "token_id": 5}},  # B's row 5 ('g')
    }
    out = _merge(tmp_path, llamas, tokenizer={"source": "base", "tokens": tokens})
    assert _by_token(out) == {"[UNK]": 15.0, "a": 23.0, "b": 16.5, "c": 13.0, "d": 14.0,
                              "z": 0.0, "y": 13.0, "x": 25.0}  # fmt: skip


def test_pad_to_multiple_of(tmp_path, llamas):
    out = _merge(tmp_path, llamas, tokenizer={"source": "union", "pad_to_multiple_of": 3})
    a_rows = torch.tensor([10, 11, 12, 13, 14, 22, 24, 25.0])  # A's rows in the union vocabulary
    b_rows = torch.tensor([20, 23, 21, 13, 14, 22, 24, 25.0])
    pad = ((a_rows.mean() + b_rows.mean()) / 2).item()
    assert _rows(out) == [15.0, 17.0, 16.5, 13.0, 14.0, 22.0, 24.0, 25.0, pytest.approx(pad, abs=1e-6)]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 9


def test_differing_vocabularies_without_tokenizer(tmp_path, llamas):
    with pytest.raises(TensorError, match=r"lm_head\.weight: the models' vocabulary sizes differ \(.*A: 5, .*B: 6 rows\)"):
        _merge(tmp_path, llamas)
    with pytest.warns(UserWarning, match="UNSAFE vocabulary truncation"):
        out = _merge(tmp_path, llamas, _truncate=True)
    assert _rows(out) == [15.0, 16.0, 17.0, 18.0, 19.0]  # (10 + i + 20 + i) / 2 for the first 5 ids


def test_tied_embeddings(tmp_path):
    a = _save_llama(tmp_path / "A", VOCAB_A, 10, 0, tied=True)
    b = _save_llama(tmp_path / "B", VOCAB_B, 20, 0, tied=True)
    out = _merge(tmp_path, {"A": a, "B": b}, tokenizer_source="union")
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    assert _rows(out) == [15.0, 17.0, 16.5, 13.0, 14.0, 22.0, 24.0, 25.0]
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(out))
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_chat_template_written(tmp_path, llamas):
    from transformers import AutoTokenizer

    out = _merge(tmp_path, llamas, tokenizer_source="union", chat_template="chatml")
    text = AutoTokenizer.from_pretrained(str(out)).apply_chat_template([{"role": "user", "content": "a b"}], tokenize=False)
    assert text == "<|im_start|>user\na b<|im_end|>\n"


def test_config_errors(llamas):
    a, b = str(llamas["A"]), str(llamas["B"])
    base = {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 1}}, {"model": b, "parameters": {"weight": 1}}]}
    with pytest.raises(ConfigError, match="either tokenizer_source or tokenizer"):
        load_merge_config({**base, "tokenizer_source": "union", "tokenizer": {"source": "union"}})
    with pytest.raises(ConfigError, match="tokenizer_source 'nope' must be"):
        load_merge_config({**base, "tokenizer_source": "nope"})
    with pytest.raises(ConfigError, match="chat_template"):
        load_merge_config({**base, "chat_template": "no-such-template"})


def test_mean_of_present_rows_without_base():
    """A token two of three models have, no base: the mean of their rows; the third model
    borrows it (mergekit's rule), forced tokens aside."""
    vocab = Vocabulary(tokenizer=None, size=2, ids={"s": 0, "t": 1}, perms={"p": [0, 1], "q": [1, -1], "r": [-1, 0]})
    tensors = {"p": torch.tensor([[1.0], [2.0]]), "q": torch.tensor([[3.0], [5.0]]), "r": torch.tensor([[7.0]])}
    out = aligned_rows(vocab, "w", tensors)
    assert out["p"].flatten().tolist() == [1.0, 2.0]
    assert out["q"].flatten().tolist() == [5.0, 4.5]  # own row 1 for token 0; mean(2, 7) for token 1
    assert out["r"].flatten().tolist() == [3.0, 7.0]  # mean(1, 5) for token 0; own row 0 for token 1


def _save_bert(folder: Path, tokens: list[str], embed0: float) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tokens), hidden_size=H, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=8, max_position_embeddings=16)  # fmt: skip
    model = BertModel(cfg)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.copy_(embed0 + torch.arange(len(tokens), dtype=torch.float32)[:, None])
    model.save_pretrained(str(folder))
    return folder


def test_union_of_bert_tokenizers(tmp_path):
    """mergekit 0.1.5 fails on every BertModel merge; a union of two WordPiece vocabularies here."""
    from transformers import AutoModel, AutoTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    a = _save_bert(tmp_path / "A", specials + ["a", "b", "c"], 10)
    b = _save_bert(tmp_path / "B", specials + ["b", "x", "a"], 20)
    out = _merge(tmp_path, {"A": a, "B": b}, tokenizer_source="union")
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok("a x c")["input_ids"] == [2, 5, 8, 7, 3]  # [CLS] a x c [SEP]: x appended after A's vocabulary
    # specials (same ids) and shared tokens (a: A 5, B 7; b: A 6, B 5): means; c: A's row; x: B's row
    assert _rows(out, "embeddings.word_embeddings.weight") == [15.0, 16.0, 17.0, 18.0, 19.0, 21.0, 20.5, 17.0, 26.0]
    assert AutoModel.from_pretrained(str(out)).embeddings.word_embeddings.weight.shape[0] == 9


def test_union_in_a_frankenmerge(tmp_path, llamas):
    """slices: the embeddings are merged from the first slice's model only (A), lm_head from the
    last slice's (B), so each is aligned among that model alone, as mergekit does: a token that
    model lacks has no row to borrow and gets zeros."""
    cfg = {"merge_method": "passthrough", "tokenizer_source": "union",
           "slices": [{"sources": [{"model": str(llamas["A"]), "layer_range": [0, 1]}]},
                      {"sources": [{"model": str(llamas["B"]), "layer_range": [0, 1]}]}]}  # fmt: skip
    with pytest.warns(UserWarning, match="is in no model"):
        run_merge(load_merge_config(cfg), tmp_path / "out", MergeOptions(progress=False))
    out = tmp_path / "out"
    assert _vocab(out) == {"[UNK]": 0, "a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7}
    assert _rows(out) == [10.0, 11.0, 12.0, 13.0, 14.0, 0.0, 0.0, 0.0]
    assert _rows(out, "lm_head.weight") == [40.0, 43.0, 41.0, 0.0, 0.0, 42.0, 44.0, 45.0]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


def _save_bpe_tokenizer(folder: Path, tokens: list[str], merges: list[tuple[str, str]]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))


def test_base_tokens_beyond_vocab_size_are_stripped(tmp_path, llamas):
    """A's tokenizer has a 6th token 'ab' but its model only 5 rows: the output drops it (and
    the merge that makes it), as mergekit does for BPE; another kind of tokenizer is refused."""
    _save_bpe_tokenizer(llamas["A"], VOCAB_A + ["ab"], [("a", "b")])
    out = _merge(tmp_path, llamas, tokenizer_source="base")
    assert _by_token(out) == {"[UNK]": 15.0, "a": 17.0, "b": 16.5, "c": 13.0, "d": 14.0}
    _save_tokenizer(llamas["A"], VOCAB_A + ["ab"])
    with pytest.raises(ConfigError, match=r"A: its WordLevel tokenizer has 1 token\(s\) beyond vocab_size 5"):
        _merge(tmp_path, llamas, tokenizer_source="base")


@pytest.mark.parametrize("chunk", [None, 5])
def test_chunked_equals_whole(tmp_path, llamas, chunk):
    """TIES over chunks of 5 elements (its statistics pass reads the aligned rows twice) equals
    the whole-tensor merge."""
    cfg = load_merge_config({"merge_method": "ties", "base_model": str(llamas["A"]), "tokenizer_source": "union",
                             "parameters": {"density": 0.5}, "models": [{"model": str(llamas["B"]), "parameters": {"weight": 1.0}}]})  # fmt: skip
    state = run_merge(cfg, None, MergeOptions(progress=False, chunk_size=chunk)).state
    whole = run_merge(cfg, None, MergeOptions(progress=False, chunk_size=10**6)).state
    assert state.keys() == whole.keys() and all(torch.equal(state[n], whole[n]) for n in whole)
    assert state["model.embed_tokens.weight"].shape == (8, H)


def test_aligned_group_freed_once_every_model_read_it():
    from mergekit_het.io.sources import StateDictSource
    from mergekit_het.merge.embeddings import AlignedSource, align_sources

    name = "model.embed_tokens.weight"
    vocab = Vocabulary(tokenizer=None, size=2, ids={"s": 0, "t": 1}, perms={"p": [0, 1], "q": [1, 0]})
    sources = {"p": StateDictSource({name: torch.tensor([[1.0], [2.0]])}), "q": StateDictSource({name: torch.tensor([[3.0], [4.0]])})}
    group, shapes = align_sources(sources, "p", vocab, False, None)
    p, q = (AlignedSource(sources[r], r, group, shapes) for r in "pq")
    assert p.read_range(name, 0, 1).tolist() == [1.0]
    assert q.read(name).flatten().tolist() == [4.0, 3.0]
    assert group._last is not None  # p has not read its last piece yet
    assert p.read_range(name, 1, 2).tolist() == [2.0]
    assert group._last is None
    assert q.read(name).flatten().tolist() == [4.0, 3.0]  # recomputed on demand


def test_chat_template_auto_and_without_tokenizer_merging(tmp_path, llamas):
    from transformers import AutoTokenizer

    for name, template in (("A", "{{ 'A' }}{% for m in messages %}{{ m['content'] }}{% endfor %}"),
                           ("B", "{{ 'B' }}{% for m in messages %}{{ m['content'] }}{% endfor %}")):  # fmt: skip
        tok = AutoTokenizer.from_pretrained(str(llamas[name]))
        tok.chat_template = template
        tok.save_pretrained(str(llamas[name]))
    chat = [{"role": "user", "content": "hi"}]
    out = _merge(tmp_path, llamas, tokenizer_source="union", chat_template="auto")  # a tie: the first model's
    assert AutoTokenizer.from_pretrained(str(out)).apply_chat_template(chat, tokenize=False) == "Ahi"
    cfg = {"merge_method": "linear", "chat_template": "{% for m in messages %}[{{ m['content'] }}]{% endfor %}",
           "models": [{"model": str(llamas["B"]), "parameters": {"weight": 1.0}}] * 2}  # fmt: skip
    run_merge(load_merge_config(cfg), tmp_path / "same", MergeOptions(progress=False))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "same"))
    assert tok.apply_chat_template(chat, tokenize=False) == "[hi]" and tok.get_vocab() == {t: i for i, t in enumerate(VOCAB_B)}
    with pytest.warns(UserWarning, match="template is not saved"):
        run_merge(load_merge_config(cfg), tmp_path / "bare", MergeOptions(progress=False, copy_tokenizer=False))
    assert not (tmp_path / "bare" / "tokenizer.json").exists()


def test_identical_vocabularies_are_not_realigned(tmp_path, llamas):
    """tokenizer_source: base over models sharing A's vocabulary reads the rows as they are."""
    from mergekit_het.merge.embeddings import align_vocabularies
    from mergekit_het.io.resolve import open_model

    cfg = load_merge_config({"merge_method": "linear", "tokenizer_source": "base",
                             "models": [{"model": str(llamas["A"]), "parameters": {"weight": 1.0}}] * 2})  # fmt: skip
    models = [open_model(str(llamas["A"])) for _ in range(2)]
    base, aligned, vocab = align_vocabularies(cfg, None, None, models, MergeOptions(), None)
    assert aligned == models and vocab.size == 5


def test_a_tied_model_beside_an_untied_one(tmp_path):
    """B ties its lm_head to its embeddings (no lm_head.weight): its embedding rows stand in."""
    a = _save_llama(tmp_path / "A", VOCAB_A, 10, 30)
    b = _save_llama(tmp_path / "B", VOCAB_B, 20, 0, tied=True)
    out = _merge(tmp_path, {"A": a, "B": b}, tokenizer_source="union")
    assert _rows(out, "lm_head.weight") == [25.0, 27.0, 26.5, 33.0, 34.0, 22.0, 24.0, 25.0]
