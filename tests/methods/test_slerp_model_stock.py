"""slerp and model_stock against closed forms (ALGORITHMS.md §9 items 17, 19)."""

import math

import torch

from mergekit_het.methods import get_method

T = torch.tensor


def slerp(v0, v1, t):
    return get_method("slerp")(v0, [v1], t=t)


def test_slerp_orthogonal_midpoint():
    torch.testing.assert_close(slerp(T([1.0, 0.0]), T([0.0, 1.0]), 0.5), T([math.sqrt(0.5)] * 2))


def test_slerp_endpoints():
    v0, v1 = T([1.0, 2.0, 0.5]), T([-1.0, 0.3, 2.0])
    torch.testing.assert_close(slerp(v0, v1, 0.0), v0, atol=1e-7, rtol=0)
    torch.testing.assert_close(slerp(v0, v1, 1.0), v1, atol=1e-6, rtol=0)


def test_slerp_colinear_falls_back_to_lerp():
    v0 = T([1.0, 2.0])
    torch.testing.assert_close(slerp(v0, 2 * v0, 0.5), 1.5 * v0)
    torch.testing.assert_close(slerp(v0, -v0, 0.5), torch.zeros(2))


def test_slerp_unnormalized_inputs_keep_norms():
    torch.testing.assert_close(slerp(T([2.0, 0.0]), T([0.0, 4.0]), 0.5), T([math.sqrt(2), 2 * math.sqrt(2)]))


def model_stock(base, tensors, filter_wise=False):
    return get_method("model_stock")(base, tensors, filter_wise=filter_wise)


def test_model_stock_orthogonal_offsets_give_base():
    b = T([0.0, 0.0])
    torch.testing.assert_close(model_stock(b, [T([1.0, 0.0]), T([0.0, 1.0])]), b)


def test_model_stock_identical_offsets_give_mean():
    b = T([0.0, 0.0])
    torch.testing.assert_close(model_stock(b, [T([1.0, 1.0]), T([1.0, 1.0])]), T([1.0, 1.0]))


def test_model_stock_general_ratio():
    b = torch.zeros(2)
    a, c = T([1.0, 0.0]), T([1.0, 1.0])
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    torch.testing.assert_close(model_stock(b, [a, c]), t * (a + c) / 2)


def test_model_stock_filter_wise_per_row():
    b = torch.zeros(2, 2)
    x = T([[1.0, 0.0], [1.0, 1.0]])
    y = T([[0.0, 1.0], [1.0, 1.0]])
    out = model_stock(b, [x, y], filter_wise=True)
    torch.testing.assert_close(out, T([[0.0, 0.0], [1.0, 1.0]]))


def test_model_stock_opposite_offsets_singular_give_base():
    # N = 2, cos θ = −1: 1 + (N − 1) cos θ = 0, mergekit 0.1.5 keeps the base (addendum §10.8 item 7)
    b = T([0.5, 0.5])
    assert torch.equal(model_stock(b, [T([1.5, 0.5]), T([-0.5, 0.5])]), b)


def test_slerp_large_tensor_chunked_norms_match_closed_form():
    # above 2^20 entries the norms and the dot are summed over chunks (mergekit 0.1.5)
    g = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(1 << 21, generator=g), torch.randn(1 << 21, generator=g)
    cos = float((v0.double() / v0.double().norm()) @ (v1.double() / v1.double().norm()))
    omega = math.acos(cos)
    expected = (math.sin(0.7 * omega) * v0.double() + math.sin(0.3 * omega) * v1.double()) / math.sin(omega)
    torch.testing.assert_close(slerp(v0, v1, 0.3).double(), expected, atol=1e-5, rtol=1e-5)
