"""TIES (mergekit 0.1 semantics) against hand computations (ALGORITHMS.md §9 items 5-12)."""

import pytest
import torch

from mergekit_het.methods import get_method
from mergekit_het.methods.consensus import elect_sign
from mergekit_het.methods.sparsify import keep_top_magnitude

T = torch.tensor


def ties(base, tensors, **params):
    return get_method("ties").apply(base, tensors, **params)


def test_ties_sum_election_disjoint_mean_hand_computed():
    b = T([10.0, 10.0, 10.0])
    out = ties(b, [b + T([2.0, -1.0, 0.5]), b + T([-1.0, -1.0, -3.0])], weight=[1.0, 1.0])
    assert torch.equal(out, b + T([2.0, -1.0, -3.0]))


def test_elect_sign_count_ties_break_positive():
    d = [T([2.0, -1.0, 0.5]), T([-1.0, -1.0, -3.0])]
    assert elect_sign(d, "count").tolist() == [1.0, -1.0, 1.0]
    assert elect_sign(d, "sum").tolist() == [1.0, -1.0, -1.0]
    assert elect_sign([T([1.0, 2.0]), T([-1.0, 1.0])], "sum", tie=-1.0).tolist() == [-1.0, 1.0]


def test_ties_weights_applied_before_election():
    b = T([0.0])
    assert torch.equal(ties(b, [T([1.0]), T([-1.0])], weight=[3.0, 1.0]), T([1.0]))
    assert torch.equal(ties(b, [T([1.0]), T([-1.0])], weight=[3.0, 1.0], normalize=False), T([3.0]))


def test_ties_exact_zero_sum_elects_positive():
    b = T([0.0])
    assert torch.equal(ties(b, [T([1.0]), T([-1.0])], weight=[1.0, 1.0]), T([1.0]))


def test_ties_all_trimmed_entry_equals_base():
    b = T([5.0, 5.0])
    out = ties(b, [b + T([0.0, 1.0]), b + T([0.0, 2.0])], weight=[1.0, 1.0])
    assert out[0] == 5.0 and out[1] == 6.5


def test_keep_top_magnitude_hand_computed():
    t = T([0.1, -5.0, 3.0, -0.2, 0.05])
    assert keep_top_magnitude(t, 0.4).tolist() == [0.0, -5.0, 3.0, 0.0, 0.0]
    assert keep_top_magnitude(t, 1.0) is t


def test_keep_top_magnitude_density_too_small_raises():
    with pytest.raises(ValueError, match="keeps no entry"):
        keep_top_magnitude(T([1.0, 2.0]), 0.4)


@pytest.mark.parametrize("density", [0.01, 0.1, 0.33, 0.5, 0.9])
def test_keep_top_magnitude_keeps_exact_count_and_largest(density):
    x = torch.randn(10_001, generator=torch.Generator().manual_seed(0))
    kept = keep_top_magnitude(x, density)
    k = int(density * x.numel())
    assert int((kept != 0).sum()) == k
    assert kept.abs().max() == x.abs().max()
    assert kept[kept != 0].abs().min() >= x.abs().sort(descending=True).values[k - 1]


def test_keep_top_magnitude_ties_at_threshold_keep_exact_count():
    x = T([1.0, 1.0, 1.0, 1.0, 0.5, 2.0])
    kept = keep_top_magnitude(x, 0.5)
    assert int((kept != 0).sum()) == 3 and kept[5] == 2.0


def test_ties_trim_is_per_tensor_density_respected_per_model():
    g = torch.Generator().manual_seed(1)
    b = torch.zeros(1000)
    d = [torch.randn(1000, generator=g) for _ in range(3)]
    out = ties(b, d, weight=[1.0, 1.0, 1.0], density=[0.1, 0.1, 0.1])
    assert 0 < int((out != 0).sum()) <= 300


def test_ties_int8_mask_identical():
    g = torch.Generator().manual_seed(2)
    b = torch.randn(50, generator=g)
    ms = [b + torch.randn(50, generator=g) for _ in range(3)]
    a = ties(b, ms, weight=[1.0, 0.5, 2.0], density=[0.5] * 3)
    c = ties(b, ms, weight=[1.0, 0.5, 2.0], density=[0.5] * 3, int8_mask=True)
    assert torch.equal(a, c)


def test_ties_matches_stacked_reference_implementation():
    """Same as mergekit's stacked formulation (written independently here)."""
    g = torch.Generator().manual_seed(3)
    b = torch.randn(200, generator=g)
    ms = [b + torch.randn(200, generator=g) for _ in range(4)]
    w = T([1.0, 0.3, 0.8, 1.5])
    dens = [0.3, 0.5, 0.7, 0.2]
    out = ties(b, ms, weight=w.tolist(), density=dens, lambda_=0.7)
    deltas = torch.stack([keep_top_magnitude(m - b, d) for m, d in zip(ms, dens)])
    wd = deltas * w[:, None]
    elected = torch.where(wd.sum(0) >= 0, 1.0, -1.0)  # mergekit: ties elect +
    mask = wd.sign() == elected
    mixed = (wd * mask).sum(0)
    div = (w[:, None] * mask).sum(0)
    div[div == 0] = 1
    torch.testing.assert_close(out, b + 0.7 * mixed / div, rtol=0, atol=1e-6)


def test_keep_top_magnitude_sampled_bracket_path_matches_sort_on_large_tensor():
    g = torch.Generator().manual_seed(5)
    x = torch.round(torch.randn(1_200_000, generator=g) * 1000) / 1000  # many exact ties
    for density in (0.2, 0.5):
        k = int(density * x.numel())
        kept = keep_top_magnitude(x, density)
        assert int((kept != 0).sum()) == k
        threshold = x.abs().sort(descending=True).values[k - 1]
        assert bool((kept[kept != 0].abs() >= threshold).all())
        assert int((x.abs() > threshold).sum()) <= int((kept.abs() > threshold).sum())
