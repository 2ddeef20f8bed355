import json

import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from mergekit_het.errors import ConfigError
from mergekit_het.evaluate.data import encode_split
from mergekit_het.evaluate.runner import evaluate, load_model, predict, write_eval_results
from mergekit_het.data.tasks import load_split, load_task_file


def _data(task_file, folder, names, split="test", batch_size=4):
    tok = AutoTokenizer.from_pretrained(folder)
    return {t.name: encode_split(t, split, tok, batch_size=batch_size) for t in load_task_file(task_file, names)}


def test_evaluate_always_class0_on_balanced_two_class_scores_half(task_file, always0):
    model = load_model(always0, load_task_file(task_file, ["pair"]))
    scores = evaluate(model, _data(task_file, always0, ["pair"]), progress=False)
    assert scores["pair"].accuracy == 0.5
    assert scores["pair"].macro_f1 == pytest.approx(1 / 3)
    assert scores["pair"].n == 24


def test_predict_length_sorted_batches_keep_original_order(task_file, seqcls3):
    task = load_task_file(task_file, ["triple"])[0]
    model = load_model(seqcls3, [task])
    preds = predict(model.heads["triple"], _data(task_file, seqcls3, ["triple"], batch_size=5)["triple"],
                    progress=False)
    hf = BertForSequenceClassification.from_pretrained(seqcls3).eval()
    tok = AutoTokenizer.from_pretrained(seqcls3)
    with torch.no_grad():
        direct = [hf(**tok([t], return_tensors="pt")).logits.argmax(-1).item()
                  for t in load_split(task, "test")["text"]]
    assert preds.tolist() == direct


def test_load_model_head_label_count_mismatch_raises(task_file, always0, seqcls3):
    with pytest.raises(ConfigError, match="task 'triple' has 3 labels but .*head.safetensors has a 2-label head"):
        load_model(always0, load_task_file(task_file, ["triple"]))
    with pytest.raises(ConfigError, match="task 'pair' has 2 labels but model folder .* has a 3-label head"):
        load_model(seqcls3, load_task_file(task_file, ["pair"]))


def test_load_model_without_any_head_raises(task_file, base):
    with pytest.raises(ConfigError, match="no head for task 'pair'"):
        load_model(base, load_task_file(task_file, ["pair"]))


def test_load_model_heads_from_experts_share_one_encoder(task_file, base, experts):
    model = load_model(base, load_task_file(task_file), experts)
    assert len(model.encoders) == 1
    assert model.heads["pair"].encoder is model.heads["triple"].encoder


def test_load_encoder_state_swaps_weights_in_place(task_file, base, experts):
    tasks = load_task_file(task_file)
    on_base = load_model(base, tasks, experts)
    on_expert = load_model(experts["pair"], tasks, experts)
    data = _data(task_file, base, None)
    on_base.load_encoder_state(on_expert.encoder_state())
    swapped = {t: predict(on_base.heads[t], d, progress=False) for t, d in data.items()}
    direct = {t: predict(on_expert.heads[t], d, progress=False) for t, d in data.items()}
    assert all(torch.equal(swapped[t], direct[t]) for t in data)


def test_load_model_jointly_trained_head_gets_model_encoder(task_file, base, seqcls3):
    from transformers import BertModel

    model = load_model(base, load_task_file(task_file, ["triple"]), {"triple": seqcls3})
    got = model.heads["triple"].base_model.state_dict()
    want = BertModel.from_pretrained(base).state_dict()
    other = BertModel.from_pretrained(seqcls3).state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert not torch.equal(got[name], other[name])


def test_write_eval_results_format_and_no_overwrite(tmp_path, task_file, always0):
    model = load_model(always0, load_task_file(task_file, ["pair"]))
    scores = evaluate(model, _data(task_file, always0, ["pair"]), progress=False)
    path = write_eval_results(tmp_path, scores, "test")
    data = json.loads(path.read_text())
    assert data == {"split": "test", "tasks": {"pair": {"accuracy": 0.5, "macro_f1": pytest.approx(1 / 3), "n": 24}}}
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        write_eval_results(tmp_path, scores, "test")
