"""The protocol pieces the merge-quality bench relies on, checked through the fine-tuning recipe:
the frozen head is the centralized ridge least-squares solution on pretrained mean-pooled
features, and a TaLoS expert's task vector is exactly zero outside its mask under weight decay."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bench.merge_quality.table import mask_usage
from mergekit_het.finetune import finetune, load_finetune_config
from mergekit_het.models.ridge import RidgeHead
from mergekit_het.data.tasks import load_split, load_task_file


def _cfg(model, task_file, out, **over):
    raw = {"model": str(model), "protocol": "frozen_head", "mode": "dense",
           "data": {"task_file": str(task_file), "task": "toy", "max_length": 16},
           "train": {"max_steps": 1, "batch_size": 8, "lr": 1e-3, "seed": 0},
           "output": {"dir": str(out), "save_task_vector": True}}
    return load_finetune_config(raw, [f"{k}={v}" for k, v in over.items()])


def _pooled_features(model_dir, texts):
    """Mean of the last hidden states over real tokens, one unpadded example at a time."""
    tok, enc = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return torch.stack([enc(**tok(t, return_tensors="pt", truncation=True, max_length=16))
                            .last_hidden_state[0].mean(0) for t in texts]).double()


def _least_squares(x, y, c, lam):
    """argmin ‖[X 1]W − onehot(Y)‖² + λ‖W‖² as an augmented least-squares problem (float64)."""
    phi = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    aug_x = torch.cat([phi, lam**0.5 * torch.eye(phi.shape[1], dtype=x.dtype)])
    aug_y = torch.cat([torch.nn.functional.one_hot(y, c).double(), torch.zeros(phi.shape[1], c, dtype=x.dtype)])
    return torch.linalg.lstsq(aug_x, aug_y).solution


@pytest.mark.parametrize("normalize", [False, True])
def test_frozen_head_equals_centralized_ridge_least_squares(tiny_bert, toy_task, tmp_path, normalize):
    out = tmp_path / "expert"
    finetune(_cfg(tiny_bert, toy_task, out, **{"head.lam": 0.3, "head.normalize": normalize}))
    head = RidgeHead.load(out / "head.safetensors")
    train = load_split(load_task_file(toy_task)[0], "train")
    ref = _least_squares(_pooled_features(tiny_bert, train["text"]), torch.tensor(train["label"]), 3, 0.3)
    weight, bias = ref[:-1].T, ref[-1]
    if normalize:  # Fed3R normalize_W: unit class rows, bias divided by the same norm
        norms = weight.norm(dim=1)
        weight, bias = weight / norms[:, None], bias / norms
        torch.testing.assert_close(head.weight.double().norm(dim=1), torch.ones(3, dtype=torch.double))
    torch.testing.assert_close(head.weight.double(), weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.bias.double(), bias, rtol=1e-4, atol=1e-5)


def test_talos_task_vector_zero_outside_mask_after_many_steps_with_weight_decay(tiny_bert, toy_task, tmp_path):
    out = tmp_path / "talos"
    finetune(_cfg(tiny_bert, toy_task, out, mode="talos", **{
        "talos.sparsity": 0.8, "talos.max_examples": 8, "train.max_steps": 40, "train.lr": 1e-2,
        "train.weight_decay": 0.5}))
    use = mask_usage(out)
    from safetensors.torch import load_file

    masks = load_file(str(out / "talos_mask.safetensors"))
    live = sum(m.numel() for n, m in masks.items() if not n.startswith("pooler."))  # pooler: unused, frozen
    assert use["kept"] == int(0.2 * live + 1e-6) and use["kept_without_gradient"] == 0
    assert use["changed_outside_mask"] == 0
    assert use["changed"] > 0.5 * (use["kept"] - use["kept_without_gradient"])
