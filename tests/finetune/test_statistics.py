"""Merge statistics: Grams and Fishers against closed forms, and the full path fine-tune →
merge_stats.safetensors → regmean / fisher merge from a YAML config."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mergekit_het.cli import main
from mergekit_het.finetune import finetune, load_finetune_config
from mergekit_het.finetune.statistics import fisher_statistics, gram_statistics, match_names
from mergekit_het.io.statistics import add
from mergekit_het.merge.config import load_merge_config
from mergekit_het.merge.engine import run_merge


class Toy(nn.Module):
    """logits = W₂ relu(W₁ x); a batch is {'input_ids': x (b, d) floats, 'attention_mask': ones (b, d)}."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3, bias=False)

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.b(torch.relu(self.a(input_ids)))})()


def _batch(x):
    return {"input_ids": x, "attention_mask": torch.ones(len(x), 4, dtype=torch.long)}  # one "token" per feature


def test_gram_batches_of_3_and_5_equal_one_batch_of_8_and_hand_value():
    model, x = Toy(), torch.randn(8, 4)
    one = gram_statistics(model, [_batch(x)])
    split = gram_statistics(model, [_batch(x[:3]), _batch(x[3:])])
    assert one["a.weight.gram_rows"] == split["a.weight.gram_rows"] == 8
    torch.testing.assert_close(one["a.weight.gram"], x.T @ x)
    torch.testing.assert_close(split["a.weight.gram"], one["a.weight.gram"])
    h = torch.relu(model.a(x)).detach()
    torch.testing.assert_close(one["b.weight.gram"], h.T @ h)
    parts = add([gram_statistics(model, [_batch(x[:3])]), gram_statistics(model, [_batch(x[3:])])])
    torch.testing.assert_close(parts["a.weight.gram"], one["a.weight.gram"])
    assert int(parts["a.weight.gram_rows"]) == 8


@pytest.mark.parametrize("chunk", [1, 3, 4, 64, None])  # (example, class) pairs per call: within, at and across examples; None: the memory budget
def test_fisher_of_softmax_layer_matches_closed_form(chunk):
    model, x = Toy(), torch.randn(6, 4)
    got = fisher_statistics(model, [(torch.arange(4), _batch(x[:4])), (torch.arange(4, 6), _batch(x[4:]))], chunk=chunk)
    h = torch.relu(model.a(x)).detach()
    p = torch.softmax(model.b(h), dim=-1).detach()
    # ∂ log p_y / ∂W₂ = (e_y − p) hᵀ  ⇒  F = Σ_x Σ_y p_y ((e_y − p) hᵀ)²
    expected = sum(p[i, y] * torch.outer(torch.eye(3)[y] - p[i], h[i]).square() for i in range(6) for y in range(3))
    torch.testing.assert_close(got["b.weight.fisher"], expected, rtol=1e-5, atol=1e-7)
    assert int(got["fisher_examples"]) == 6 and got["a.bias.fisher"].shape == (5,)


def test_match_names_strips_wrapper_prefix():
    stats = {"encoder.layer.0.q.weight.gram": torch.ones(1), "head.weight.gram": torch.ones(1), "fisher_examples": torch.tensor(3)}
    out = match_names(stats, ["layer.0.q.weight", "layer.0.q.bias"])
    assert set(out) == {"layer.0.q.weight.gram", "fisher_examples"}


def _expert(tiny_bert, toy_task, out, seed, stats=True):
    over = {"train.seed": seed, "train.max_steps": 4}
    if stats:
        over.update({"stats.examples": 12, "stats.fisher": "true", "stats.batch_size": 5})
    raw = {"model": str(tiny_bert), "data": {"task_file": str(toy_task), "task": "toy", "max_length": 16},
           "train": {"batch_size": 8, "lr": 2e-3, "log_every": 2}, "output": {"dir": str(out)}}  # fmt: skip
    finetune(load_finetune_config(raw, [f"{k}={v}" for k, v in over.items()]))
    return out


@pytest.mark.slow
def test_finetune_stats_then_regmean_and_fisher_merges(tiny_bert, toy_task, tmp_path):
    a = _expert(tiny_bert, toy_task, tmp_path / "a", 1)
    b = _expert(tiny_bert, toy_task, tmp_path / "b", 2, stats=False)
    assert main(["stats", str(b), "--tasks", str(toy_task), "--task", "toy", "--examples", "12", "--fisher"]) == 0
    sa, sb = load_file(a / "merge_stats.safetensors"), load_file(b / "merge_stats.safetensors")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    name = "encoder.layer.0.attention.self.query.weight"
    assert f"{name}.gram" in sa and f"{name}.fisher" in sb and int(sa["fisher_examples"]) == 12
    assert not any(k.startswith("head.") for k in sa)  # the frozen head is not part of the expert's weights
    out = run_merge(load_merge_config({"merge_method": "regmean", "models": [{"model": str(a)}, {"model": str(b)}],
                                       "parameters": {"reduce_nondiag": 0.9}}), None).state  # fmt: skip
    g = [s[f"{name}.gram"] / s[f"{name}.gram_rows"] for s in (sa, sb)]
    g = [0.9 * x + 0.1 * torch.diag(torch.diag(x)) for x in g]
    hand = torch.linalg.solve(g[0] + g[1], g[0] @ wa[name].T + g[1] @ wb[name].T).T
    torch.testing.assert_close(out[name], hand, rtol=1e-4, atol=1e-5)
    bias = "encoder.layer.0.attention.self.query.bias"
    torch.testing.assert_close(out[bias], (wa[bias] + wb[bias]) / 2)
    fused = run_merge(load_merge_config({"merge_method": "fisher", "models": [{"model": str(a)}, {"model": str(b)}]}), None).state
    lo, hi = torch.minimum(wa[name], wb[name]), torch.maximum(wa[name], wb[name])
    assert bool(((fused[name] >= lo - 1e-6) & (fused[name] <= hi + 1e-6)).all())  # a convex combination per entry


def test_regmean_without_statistics_file_one_line_error(tiny_bert, tmp_path, capsys):
    cfg = tmp_path / "m.yml"
    cfg.write_text(f"merge_method: regmean\nmodels:\n  - model: {tiny_bert}\n  - model: {tiny_bert}\n")
    assert main(["merge", str(cfg), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no merge statistics" in err and "mergekit-het stats" in err


def test_stats_command_reports_every_argument_problem_in_one_line(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "missing"), "--tasks", str(tmp_path / "none.yaml"), "--task", "t",
                 "--examples", "0"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "--examples" in err and "missing" in err and "none.yaml" in err
    assert not (tmp_path / "missing").exists()
