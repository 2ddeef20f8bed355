"""Loading, mean pooling and the frozen-head classifier."""

import pytest
import torch

from finetune_fixtures import NUM_LABELS, make_bert
from mergekit_het.errors import ConfigError
from mergekit_het.models.classifier import PooledClassifier
from mergekit_het.models.encoder import (
    HEAD_FILE,
    encode_texts,
    load_classifier,
    load_encoder,
    load_tokenizer,
    mean_pool,
    resolve_model,
)
from mergekit_het.models.ridge import RidgeHead, fit_ridge


def test_mean_pool_ignores_padding_exactly():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]
    assert mean_pool(h, torch.tensor([[0, 0, 0]])).tolist() == [[0.0, 0.0]]


def test_resolve_model_missing_folder_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_model(tmp_path / "empty")


def test_encode_texts_matches_manual_mean_pool(tiny_bert):
    enc, tok = load_encoder(tiny_bert), load_tokenizer(tiny_bert)
    texts = ["w1 w2 w3", "w4", "w5 w6"]
    feats = encode_texts(enc, tok, texts, batch_size=2)
    with torch.no_grad():
        single = enc(**tok(["w4"], return_tensors="pt")).last_hidden_state.mean(1)
    assert feats.shape == (3, 32)
    torch.testing.assert_close(feats[1:2], single, rtol=1e-5, atol=1e-5)


def test_frozen_head_logits_equal_ridge_head_over_temperature(tiny_bert, tmp_path):
    enc, tok = load_encoder(tiny_bert), load_tokenizer(tiny_bert)
    texts, labels = ["w1 w2", "w7 w8 w9", "w10", "w3"], torch.tensor([0, 1, 2, 0])
    feats = encode_texts(enc, tok, texts)
    head = fit_ridge(feats, labels, NUM_LABELS, lam=0.1)
    model = PooledClassifier(enc, head, temperature=0.5).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    out = model(**batch, labels=labels)
    torch.testing.assert_close(out.logits, head(feats).float() / 0.5, rtol=1e-4, atol=1e-5)
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, labels).item())
    assert [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")] == []  # frozen
    # round trip through a folder
    enc.save_pretrained(tmp_path)
    RidgeHead(head.weight, head.bias, {"temperature": "0.5"}).save(tmp_path / HEAD_FILE)
    back = PooledClassifier.from_folder(tmp_path).eval()
    torch.testing.assert_close(back(**batch).logits, out.logits)


def test_load_classifier_label_count_mismatch_raises(tmp_path):
    path = make_bert(tmp_path / "cls", num_labels=5)
    with pytest.raises(ConfigError, match="5-label classification head but the task has 3 labels"):
        load_classifier(path, 3)
    assert load_classifier(path, 5).config.num_labels == 5


def test_pooled_classifier_new_head_trains_and_head_inputs_are_the_pooled_features(tiny_bert):
    from mergekit_het.models.classifier import head_inputs

    enc, tok = load_encoder(tiny_bert), load_tokenizer(tiny_bert)
    torch.manual_seed(0)
    model = PooledClassifier(enc, NUM_LABELS, temperature=2.0).eval()
    assert [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")] == ["head.weight", "head.bias"]
    texts = ["w1 w2 w3", "w4"]
    batch = {**tok(texts, padding=True, return_tensors="pt"), "labels": torch.tensor([0, 2])}
    feats, labels = next(head_inputs(model, [batch]))
    torch.testing.assert_close(feats, encode_texts(enc, tok, texts), rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [0, 2]
    out = model(**batch)
    torch.testing.assert_close(out.logits, model.head(feats) / 2.0, rtol=1e-5, atol=1e-6)


def test_hf_classifier_head_is_the_last_linear_and_logits_are_over_temperature(tmp_path):
    from mergekit_het.models.classifier import HFClassifier

    path = make_bert(tmp_path / "cls", num_labels=NUM_LABELS)
    net, tok = load_classifier(path, NUM_LABELS).eval(), load_tokenizer(path)
    model = HFClassifier(net, NUM_LABELS, temperature=0.5)
    assert model.head is net.classifier
    batch = tok(["w1 w2", "w3"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, net(**batch).logits / 0.5)
    with pytest.raises(ConfigError, match="no Linear layer with 7 outputs"):
        HFClassifier(net, 7)
