"""nuslerp, multislerp and karcher against hand computations (ALGORITHMS.md §9 items 18, 20;
addendum §10.0, §10.2, §10.8 items 5 and 7)."""

import math

import pytest
import torch

from mergekit_het.methods import get_method

T = torch.tensor
S = math.sqrt(0.5)


def slerp_ref(t, a, b):
    """Closed-form slerp of two 1-D tensors (unnormalized), in float64."""
    a, b = a.double(), b.double()
    cos = float((a / a.norm()) @ (b / b.norm()))
    theta = math.acos(max(-1.0, min(1.0, cos)))
    return ((math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)).float()


def nuslerp(base, tensors, **params):
    return get_method("nuslerp").apply(base, tensors, **params)


def test_nuslerp_schema_mergekit_names_and_defaults():
    p = get_method("nuslerp").params
    assert set(p) == {"weight", "nuslerp_row_wise", "nuslerp_flatten"}
    assert p["weight"].required and p["weight"].per_model
    assert p["nuslerp_row_wise"].default is False and p["nuslerp_flatten"].default is True


def test_nuslerp_weights_1_3_interpolate_at_three_quarters():
    out = nuslerp(None, [T([1.0, 0.0]), T([0.0, 1.0])], weight=[1.0, 3.0])
    torch.testing.assert_close(out, T([math.cos(3 * math.pi / 8), math.sin(3 * math.pi / 8)]))


def test_nuslerp_weight_ends_give_each_model():
    a, b = T([1.0, 2.0, -0.5]), T([-1.0, 0.3, 2.0])
    torch.testing.assert_close(nuslerp(None, [a, b], weight=[1.0, 0.0]), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(nuslerp(None, [a, b], weight=[0.0, 1.0]), b, atol=1e-6, rtol=0)


def test_nuslerp_weights_summing_to_zero_use_midpoint():
    a, b = T([1.0, 0.0]), T([0.0, 1.0])
    torch.testing.assert_close(nuslerp(None, [a, b], weight=[1.0, -1.0]), T([S, S]))


def test_nuslerp_with_base_slerps_task_vectors():
    out = nuslerp(T([1.0, 1.0]), [T([2.0, 1.0]), T([1.0, 2.0])], weight=[1.0, 1.0])
    torch.testing.assert_close(out, T([1 + S, 1 + S]))


def test_nuslerp_identical_inputs_give_that_input():
    x = T([[0.5, -1.0], [2.0, 3.0]])
    torch.testing.assert_close(nuslerp(None, [x, x.clone()], weight=[0.3, 0.7]), x)
    torch.testing.assert_close(nuslerp(T([[1.0, 0.0], [0.0, 1.0]]), [x, x.clone()], weight=[0.3, 0.7]), x)


def test_nuslerp_colinear_rows_fall_back_to_lerp():
    v = T([1.0, 2.0])
    torch.testing.assert_close(nuslerp(None, [v, 3 * v], weight=[1.0, 1.0]), 2 * v)


def test_nuslerp_unflattened_slerps_rows_and_row_wise_slerps_columns():
    a, b = T([[1.0, 2.0], [3.0, 4.0]]), T([[4.0, 3.0], [2.0, 1.0]])
    rows = nuslerp(None, [a, b], weight=[1.0, 1.0], nuslerp_flatten=False)
    cols = nuslerp(None, [a, b], weight=[1.0, 1.0], nuslerp_flatten=False, nuslerp_row_wise=True)
    torch.testing.assert_close(rows, torch.stack([slerp_ref(0.5, a[i], b[i]) for i in range(2)]))
    torch.testing.assert_close(cols, torch.stack([slerp_ref(0.5, a[:, j], b[:, j]) for j in range(2)], dim=1))
    assert not torch.allclose(rows, cols)


def test_nuslerp_flattened_equals_whole_tensor_slerp():
    a, b = T([[1.0, 2.0], [3.0, 4.0]]), T([[4.0, 3.0], [2.0, 1.0]])
    out = nuslerp(None, [a, b], weight=[1.0, 3.0])
    torch.testing.assert_close(out, slerp_ref(0.75, a.reshape(-1), b.reshape(-1)).reshape(2, 2))


def multislerp(base, tensors, **params):
    return get_method("multislerp").apply(base, tensors, **params)


def test_multislerp_schema_mergekit_names_and_defaults():
    p = get_method("multislerp").params
    assert set(p) == {"weight", "normalize_weights", "eps"}
    assert p["normalize_weights"].default is True and p["eps"].default == 1e-8


def test_multislerp_orthogonal_pair_gives_midpoint():
    torch.testing.assert_close(multislerp(None, [T([1.0, 0.0]), T([0.0, 1.0])], weight=[1.0, 1.0]), T([S, S]))


def test_multislerp_with_base_equals_nuslerp():
    b, x1, x2 = T([1.0, 1.0]), T([2.0, 1.0]), T([1.0, 2.0])
    expected = nuslerp(b, [x1.clone(), x2.clone()], weight=[1.0, 1.0])
    torch.testing.assert_close(multislerp(b, [x1, x2], weight=[1.0, 1.0]), expected)


def test_multislerp_antipodal_pair_falls_back_to_linear_zero():
    a = T([1.0, -2.0, 0.5])
    torch.testing.assert_close(multislerp(None, [a, -a], weight=[1.0, 1.0]), torch.zeros(3))


def test_multislerp_balanced_antipodal_triple_is_an_error():
    a = T([1.0, -2.0, 0.5])
    with pytest.raises(ValueError, match="weighted mean of the unit vectors is zero"):
        multislerp(None, [a, -a, T([0.0, 1.0, 0.0])], weight=[1.0, 1.0, 0.0])


def test_multislerp_one_model_returned_without_base():
    x = T([3.0, 4.0])
    assert torch.equal(multislerp(T([1.0, 1.0]), [x], weight=[2.0]), x)


def test_multislerp_identical_inputs_give_that_input():
    x = T([0.3, -1.2, 2.0, 0.7])
    torch.testing.assert_close(multislerp(None, [x, x.clone(), x.clone()], weight=[1.0, 2.0, 3.0]), x, atol=1e-6, rtol=0)


def test_multislerp_model_order_does_not_matter():
    g = torch.Generator().manual_seed(0)
    xs, w = [torch.randn(16, generator=g) for _ in range(3)], [0.2, 0.5, 0.3]
    one = multislerp(None, [x.clone() for x in xs], weight=w)
    other = multislerp(None, [xs[2], xs[0], xs[1]], weight=[w[2], w[0], w[1]])
    torch.testing.assert_close(one, other, atol=1e-6, rtol=1e-6)


def test_multislerp_unnormalized_weights_summing_to_one_equal_normalized():
    xs = [T([1.0, 0.0, 2.0]), T([0.0, 1.0, -1.0])]
    torch.testing.assert_close(
        multislerp(None, [x.clone() for x in xs], weight=[0.25, 0.75], normalize_weights=False),
        multislerp(None, xs, weight=[1.0, 3.0]),
    )


def karcher(tensors, **params):
    return get_method("karcher").apply(None, tensors, **params)


def test_karcher_schema_mergekit_names_and_defaults():
    p = get_method("karcher").params
    assert {k: v.default for k, v in p.items()} == {"max_iter": 10, "tol": 1e-5}
    assert get_method("karcher").base == "optional"


def test_karcher_base_is_one_more_input():
    a, b, base = T([1.0, 0.0]), T([0.0, 2.0]), T([3.0, 3.0])
    torch.testing.assert_close(get_method("karcher").apply(base, [a, b]), karcher([a, b, base]))


def test_karcher_orthogonal_pair_hand_value():
    torch.testing.assert_close(karcher([T([1.0, 0.0]), T([0.0, 2.0])]), T([1.5 * S, 1.5 * S]))


def test_karcher_identical_inputs_give_that_input():
    x = T([0.3, -1.2, 2.0])
    torch.testing.assert_close(karcher([x, x.clone(), x.clone()]), x)


def test_karcher_all_zero_inputs_give_zeros():
    assert torch.equal(karcher([torch.zeros(3), torch.zeros(3)]), torch.zeros(3))


def test_karcher_zero_input_counts_in_scale_not_direction():
    # the zero tensor is dropped from the mean direction but its norm 0 enters the mean norm
    out = karcher([T([2.0, 0.0]), torch.zeros(2)])
    torch.testing.assert_close(out, T([1.0, 0.0]))


def test_karcher_three_directions_reach_the_fixed_point():
    # the Karcher mean of e1, e2, e3 is (1,1,1)/√3 by symmetry; each norm is 1
    out = karcher([T([1.0, 0.0, 0.0]), T([0.0, 1.0, 0.0]), T([0.0, 0.0, 1.0])])
    torch.testing.assert_close(out, torch.full((3,), 1 / math.sqrt(3)))


def test_nuslerp_through_engine_with_and_without_base_matches_direct_call():
    from mergekit_het.merge.engine import merge_state_dicts

    g = torch.Generator().manual_seed(3)
    sds = [{"w": torch.randn(4, 6, generator=g), "b": torch.randn(6, generator=g)} for _ in range(3)]
    weights = [{"weight": 1.0}, {"weight": 3.0}]
    with_base = merge_state_dicts("nuslerp", sds[1:], base=sds[0], model_parameters=weights)
    without = merge_state_dicts("nuslerp", sds[1:], model_parameters=weights)
    for name in ("w", "b"):
        one = nuslerp(sds[0][name], [sds[1][name].clone(), sds[2][name].clone()], weight=[1.0, 3.0])
        assert torch.equal(with_base[name], one)
        assert torch.equal(without[name], nuslerp(None, [sds[1][name].clone(), sds[2][name].clone()], weight=[1.0, 3.0]))
