"""TaLoS: closed-form score on a linear model, global low-score masks, nested schedule, masked AdamW."""

import pytest
import torch
from torch import nn

from bench.talos_calibration_speed import loop_scores
from mergekit_het.finetune.optim import MaskedAdamW
from mergekit_het.finetune.talos import (
    calibrate_masks,
    mask_fraction,
    prunable_parameters,
    prune_step,
    sensitivity_scores,
)


class Linear(nn.Module):
    """f(x) = W x (no bias); a batch is {'input_ids': x, 'attention_mask': ones}."""

    def __init__(self, c=3, d=4):
        super().__init__()
        self.proj = nn.Linear(d, c, bias=False)

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.proj(input_ids)})()


def test_sensitivity_score_linear_model_matches_closed_form():
    torch.manual_seed(0)
    model, x = Linear(), torch.randn(10, 4)
    batches = [(torch.arange(6), {"input_ids": x[:6], "attention_mask": torch.ones(6, 4)}),
               (torch.arange(6, 10), {"input_ids": x[6:], "attention_mask": torch.ones(4, 4)})]
    params = {"proj.weight": model.proj.weight}
    scores, ys = sensitivity_scores(model, params, batches, torch.Generator().manual_seed(7))
    # closed form: score[c, j] = sum_x 1[y_x = c] x_j^2, with y_x drawn by the same sampler
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        expect_y = [int(torch.multinomial(torch.softmax(model.proj(xi).double(), -1), 1, generator=g)) for xi in x]
    assert ys == expect_y
    expected = torch.zeros(3, 4)
    for xi, y in zip(x, ys):
        expected[y] += xi.square()
    assert scores["proj.weight"].dtype == torch.float64
    torch.testing.assert_close(scores["proj.weight"], expected.double(), rtol=1e-6, atol=1e-7)


def test_prune_step_keeps_low_scores_trainable():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0, 0.2])}
    masks = prune_step(scores, {"a": torch.ones(4, dtype=torch.bool)}, 0.5)
    assert masks["a"].tolist() == [False, True, False, True]


def test_prune_step_global_threshold_across_tensors_and_nested():
    scores = {"a": torch.tensor([10.0, 9.0]), "b": torch.tensor([1.0, 0.5, 8.0, 7.0])}
    start = {"a": torch.tensor([True, True]), "b": torch.tensor([True, True, True, False])}
    masks = prune_step(scores, start, 0.5)  # k = min(int(0.5*6), 5-1) = 3 lowest active: 0.5, 1, 8
    assert masks["a"].tolist() == [False, False] and masks["b"].tolist() == [True, True, True, False]


def test_calibrate_masks_schedule_fraction_and_nesting(monkeypatch):
    import mergekit_het.finetune.talos as talos

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.Linear(50, 10))
    model.forward = lambda input_ids, attention_mask: type("O", (), {"logits": nn.Sequential.forward(model, input_ids)})()
    x = torch.randn(8, 20)
    history = []
    real = talos.prune_step

    def spy(scores, masks, keep):
        out = real(scores, masks, keep)
        history.append((keep, {n: m.clone() for n, m in out.items()}))
        return out

    monkeypatch.setattr(talos, "prune_step", spy)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = calibrate_masks(model, lambda: [(torch.arange(8), {"input_ids": x, "attention_mask": torch.ones(8, 20)})], sparsity=0.9)
    total = sum(p.numel() for p in model.parameters())  # 1560
    assert [round(k, 4) for k, _ in history] == [0.5623, 0.3162, 0.1778, 0.1]
    for (k, m) in history:
        assert sum(int(v.sum()) for v in m.values()) == int(k * total + 1e-6)  # 877, 493, 277, 156
    for (_, prev), (_, nxt) in zip(history, history[1:]):
        assert all(bool((nxt[n] & ~prev[n]).sum() == 0) for n in prev)  # nested
    assert mask_fraction(masks) == 156 / total
    for n, p in model.named_parameters():  # forward scaling of frozen entries was undone exactly
        assert torch.equal(p, before[n])


def test_masked_adamw_unmasked_equals_torch_adamw():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5, 3)), None
    b = nn.Parameter(a.detach().clone())
    opt_a = MaskedAdamW([a], lr=0.1, weight_decay=0.3)
    opt_b = torch.optim.AdamW([b], lr=0.1, weight_decay=0.3, foreach=False)
    for _ in range(20):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step(), opt_b.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_masked_adamw_frozen_entries_bit_identical_after_many_steps():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(40, 40))
    theta0 = p.detach().clone()
    mask = torch.rand(40, 40) < 0.1
    opt = MaskedAdamW([p], {p: mask}, lr=0.05, weight_decay=0.5)
    for _ in range(200):
        p.grad = torch.randn(40, 40) * 10
        opt.step()
    delta = p.detach() - theta0
    assert torch.equal(p.detach()[~mask], theta0[~mask])
    assert bool((delta[mask] != 0).all())


def _tiny(kind, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from finetune_fixtures import make_bert, make_gpt2, make_tokenizer

    from mergekit_het.models.classifier import PooledClassifier
    from mergekit_het.models.encoder import load_causal_lm, load_encoder

    if kind == "bert":
        model = PooledClassifier(load_encoder(make_bert(tmp_path / "b")), 3)
    else:
        model = load_causal_lm(make_gpt2(tmp_path / "g"))
    tok = make_tokenizer()
    texts = ["w1 w2 w3", "w5 w6", "w7 w8 w9 w10 w11", "w3", "w20 w21 w22", "w9 w8"]
    return model, [(torch.arange(4), dict(tok(texts[:4], padding=True, return_tensors="pt"))),
                   (torch.arange(4, 6), dict(tok(texts[4:], padding=True, return_tensors="pt")))]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_vectorized_scores_match_the_per_example_loop_and_masks_identical(kind, tmp_path):
    import warnings

    model, batches = _tiny(kind, tmp_path)
    params = prunable_parameters(model)
    ref, ys_ref = loop_scores(model, params, batches, torch.Generator().manual_seed(3), samples=2)  # the per-example autograd loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's fallback note for SDPA on CPU
        got, ys = sensitivity_scores(model, params, batches, torch.Generator().manual_seed(3), samples=2, chunk=3)
    assert ys == ys_ref
    for name in params:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-9)
    live = [n for n in params if bool(ref[n].any())]
    start = {n: torch.ones_like(params[n], dtype=torch.bool) for n in live}
    got_masks = prune_step({n: got[n] for n in live}, start, 0.3)
    ref_masks = prune_step({n: ref[n] for n in live}, start, 0.3)
    assert all(torch.equal(got_masks[n], ref_masks[n]) for n in live)
