"""End-to-end fine-tuning on tiny random-init models and synthetic data."""

import json

import pytest
import torch
from safetensors.torch import load_file

from finetune_fixtures import interrupted_at_step
from mergekit_het.errors import ConfigError
from mergekit_het.finetune import finetune, load_finetune_config
from mergekit_het.finetune import recipe as recipe_mod


def _cfg(model_path, task_file, out, over=None, **kw):
    """Config over the tiny model; `over`/`kw` are key.sub=value overrides."""
    raw = {
        "model": str(model_path), "protocol": "frozen_head", "mode": "dense",
        "data": {"task_file": str(task_file), "task": "toy", "max_length": 16},
        "head": {"temperature": 0.1},
        "train": {"max_steps": 12, "batch_size": 8, "lr": 2e-3, "log_every": 4, "weight_decay": 0.1, "seed": 3},
        "output": {"dir": str(out)},
    }
    return load_finetune_config(raw, [f"{k}={v}" for k, v in {**(over or {}), **kw}.items()])


def test_finetune_dense_loss_goes_down_and_writes_expert(tiny_bert, toy_task, tmp_path):
    out = tmp_path / "dense"
    info = finetune(_cfg(tiny_bert, toy_task, out, **{"output.save_task_vector": "true"}))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in log if "split" not in h]
    assert losses[-1] < 0.7 * losses[0]
    assert info["steps"] == 12 and info["mode"] == "dense"
    assert json.loads((out / "expert.json").read_text())["metrics"]["test_examples"] == 32
    base, expert = load_file(tiny_bert / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(expert) == set(base)  # same tensor names as the pretrained checkpoint
    tv = load_file(out / "task_vector.safetensors")
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(tv[name], expert[name] - base[name]) and tv[name].abs().sum() > 0
    assert (out / "head.safetensors").is_file() and (out / "training_curve.png").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # work folder removed


def test_finetune_talos_only_masked_entries_change(tiny_bert, toy_task, tmp_path):
    out = tmp_path / "talos"
    info = finetune(_cfg(tiny_bert, toy_task, out, mode="talos",
                         **{"talos.sparsity": 0.7, "train.max_steps": 15, "talos.max_examples": 8}))
    base, expert = load_file(tiny_bert / "model.safetensors"), load_file(out / "model.safetensors")
    masks = {k: v.bool() for k, v in load_file(out / "talos_mask.safetensors").items()}
    total = sum(m.numel() for m in masks.values())
    unused = [n for n in masks if n.startswith("pooler.")]  # mean pooling never uses BERT's pooler
    live = total - sum(masks[n].numel() for n in unused)
    assert unused and not any(bool(masks[n].any()) for n in unused)
    assert sum(int(m.sum()) for m in masks.values()) == int(0.3 * live + 1e-6)
    assert info["sparsity"]["trainable_fraction"] == pytest.approx(int(0.3 * live + 1e-6) / total, abs=1e-9)
    assert not any("embeddings." in n and "LayerNorm" not in n for n in masks)  # embeddings are not prunable
    changed = 0
    for name, t0 in base.items():
        if name in masks:
            assert torch.equal(expert[name][~masks[name]], t0[~masks[name]]), name
            changed += int((expert[name][masks[name]] != t0[masks[name]]).sum())
        else:
            assert torch.equal(expert[name], t0), name  # embeddings, pooler: frozen
    assert changed > 0.5 * sum(int(m.sum()) for m in masks.values())


def test_finetune_undertrained_stops_at_budget_with_full_schedule(tiny_bert, toy_task, tmp_path):
    out = tmp_path / "under"
    cfg = _cfg(tiny_bert, toy_task, out, mode="undertrained",
               **{"train.max_steps": 20, "train.budget_fraction": 0.25, "train.log_every": 1,
                  "train.snapshot_steps": "[2]"})
    info = finetune(cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [h["step"] for h in log if "split" not in h]
    assert info["steps"] == 5 and steps == [1, 2, 3, 4, 5]
    assert [h["lr"] for h in log if "split" not in h][-1] == pytest.approx(2e-3 * 15 / 20)  # linear decay over 20
    snap = out / "snapshots" / "step_2"
    assert json.loads((snap / "expert.json").read_text())["steps"] == 2 and (snap / "model.safetensors").is_file()


def test_finetune_lora_adapter_loads_in_peft(tiny_bert, toy_task, tmp_path):
    from peft import PeftModel

    from mergekit_het.models.encoder import load_encoder

    out = tmp_path / "lora"
    finetune(_cfg(tiny_bert, toy_task, out, mode="lora", **{"lora.r": 4, "lora.target_modules": "[query, value]"}))
    model = PeftModel.from_pretrained(load_encoder(tiny_bert), out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 4 and all(p.abs().sum() > 0 for p in lora_b)  # trained (B starts at 0)


def test_finetune_resume_equals_uninterrupted(tiny_bert, toy_task, tmp_path):
    over = {"train.checkpoint_every": 4, "train.max_steps": 10, "talos.max_examples": 4}
    finetune(_cfg(tiny_bert, toy_task, tmp_path / "full", mode="talos", **over))
    with interrupted_at_step(7), pytest.raises(KeyboardInterrupt):
        finetune(_cfg(tiny_bert, toy_task, tmp_path / "resumed", mode="talos", **over))
    info = finetune(_cfg(tiny_bert, toy_task, tmp_path / "resumed", mode="talos", resume="true", **over))
    assert info["metrics"]["train_steps_this_run"] == 6  # resumed from the step-4 checkpoint
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_classifier_protocol_and_causal_lm(tiny_bert, tiny_gpt2, toy_task, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    info = finetune(_cfg(tiny_bert, toy_task, tmp_path / "cls", protocol="classifier"))
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls").config.num_labels == 3
    assert info["metrics"]["validation_examples"] == 32
    info = finetune(_cfg(tiny_gpt2, toy_task, tmp_path / "lm", protocol="causal_lm", mode="talos",
                         **{"talos.max_examples": 8}))
    AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert info["metrics"]["validation_examples"] > 32  # next-token accuracy over tokens


@pytest.mark.parametrize(
    "over, message",
    [
        ({"model": "/no/such/model"}, "does not exist"),
        ({"data.task": "nope"}, "no task named"),
        ({"talos.sparsity": 1.0}, "talos.sparsity: Input should be less than 1"),
        ({"talos.sparsity": 0}, "talos.sparsity: Input should be greater than 0"),
        ({"mode": "dense", "train.budget_fraction": 0.5}, "budget_fraction is for mode 'undertrained'"),
        ({"train.bogus": 1}, "unknown key 'train.bogus'"),
    ],
)
def test_finetune_bad_config_one_line_error(tiny_bert, toy_task, tmp_path, over, message):
    with pytest.raises(ConfigError, match=message) as exc:
        finetune(_cfg(tiny_bert, toy_task, tmp_path / "x", over))
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "x").exists()


def test_finetune_bad_inputs_fail_before_training(tiny_bert, toy_task, tmp_path, monkeypatch):
    from finetune_fixtures import make_bert

    monkeypatch.setattr(recipe_mod, "train_step", lambda *a, **k: pytest.fail("training started"))
    bad_cols = tmp_path / "cols"
    bad_cols.mkdir()
    for split in ("train", "validation", "test"):
        (bad_cols / f"{split}.csv").write_text("sentence,label\nw1 w2,0\n")
    (bad_cols / "tasks.yaml").write_text("tasks: [{name: toy, dir: ., num_labels: 3}]\n")
    with pytest.raises(ConfigError, match="has no column 'text'"):
        finetune(_cfg(tiny_bert, bad_cols / "tasks.yaml", tmp_path / "a"))
    five = make_bert(tmp_path / "five", num_labels=5)
    with pytest.raises(ConfigError, match="5-label classification head but task 'toy' has 3 labels"):
        finetune(_cfg(five, toy_task, tmp_path / "b", protocol="classifier"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        finetune(_cfg(tiny_bert, toy_task, tmp_path / "exists"))
