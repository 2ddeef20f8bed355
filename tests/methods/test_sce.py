"""sce against hand computations (addendum §10.3, §10.8 item 2)."""

import pytest
import torch

from mergekit_het.methods import get_method

T = torch.tensor


def sce(base, tensors, **params):
    return get_method("sce").apply(base, tensors, **params)


def test_sce_schema_mergekit_names_and_defaults():
    p = get_method("sce").params
    assert {k: v.default for k, v in p.items()} == {"select_topk": 1.0, "int8_mask": False}


def test_sce_mean_square_weights_hand_value():
    # ω ∝ mean(τ²) = [1.5, 2.5] → [0.375, 0.625]; entry 3 disagrees in sign and model 2 wins
    out = sce(torch.zeros(4), [T([1.0, 2.0, 0.0, -1.0]), T([3.0, 0.0, 0.0, 1.0])])
    torch.testing.assert_close(out, T([2.25, 2.0, 0.0, 1.0]))


def test_sce_select_topk_keeps_top_variance_entries_for_all_models():
    # variances [0, 4, 0.0025, 2.25]: 3 nonzero, k = int(3·0.5) = 1 keeps entry 1 only; there
    # the deltas ±2 tie in sum, + is elected, model 1 alone agrees
    out = sce(torch.zeros(4), [T([1.0, 2.0, 0.5, 4.0]), T([1.0, -2.0, 0.4, 1.0])], select_topk=0.5)
    torch.testing.assert_close(out, T([0.0, 2.0, 0.0, 0.0]))


@pytest.mark.parametrize("topk", [0.0, -1.0])
def test_sce_select_topk_zero_gives_base(topk):
    b = T([1.0, -1.0, 2.0])
    assert torch.equal(sce(b, [T([2.0, 0.0, 1.0]), T([0.0, 3.0, 2.5])], select_topk=topk), b)


def test_sce_identical_models_give_that_model():
    b, x = T([0.1, 0.2, 0.3]), T([1.0, -2.0, 0.5])
    torch.testing.assert_close(sce(b, [x, x.clone(), x.clone()]), x)


def test_sce_no_change_gives_base():
    b = T([0.5, -1.5])
    assert torch.equal(sce(b, [b.clone(), b.clone()]), b)


def test_sce_model_order_does_not_matter():
    g = torch.Generator().manual_seed(1)
    b, xs = torch.randn(64, generator=g), [torch.randn(64, generator=g) for _ in range(3)]
    torch.testing.assert_close(sce(b, [x.clone() for x in xs]), sce(b, xs[::-1]))


def test_sce_int8_mask_changes_nothing():
    g = torch.Generator().manual_seed(2)
    b, xs = torch.randn(32, generator=g), [torch.randn(32, generator=g) for _ in range(2)]
    one = sce(b, [x.clone() for x in xs], select_topk=0.5)
    assert torch.equal(one, sce(b, xs, select_topk=0.5, int8_mask=True))
