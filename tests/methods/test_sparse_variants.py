"""DARE, Breadcrumbs, DELLA sparsifiers (ALGORITHMS.md §9 items 13-16)."""

import pytest
import torch

from mergekit_het.methods import get_method
from mergekit_het.methods.sparsify import della_prune, drop_outliers, random_drop, rescale_kept


def run(name, base, tensors, **params):
    return get_method(name).apply(base, tensors, **params)


def test_random_drop_mask_mean_close_to_density():
    x = torch.ones(1_000_000)
    kept = random_drop(x, 0.3, generator=torch.Generator().manual_seed(0))
    assert abs(float(kept.mean()) - 0.3) < 3e-3
    assert set(kept.unique().tolist()) <= {0.0, 1.0}


def test_random_drop_density_one_consumes_no_randomness():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10)
    assert random_drop(x, 1.0, generator=g) is x
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(0)))


def test_rescale_l1_preserves_l1_norm_exactly():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    kept = random_drop(x, 0.4, generator=torch.Generator().manual_seed(2))
    out = rescale_kept(x, kept, 0.4, "l1")
    torch.testing.assert_close(out.abs().sum(), x.abs().sum(), rtol=1e-6, atol=0)


def test_rescale_density_is_paper_inverse_density():
    x = torch.randn(100)
    kept = random_drop(x, 0.25, generator=torch.Generator().manual_seed(3))
    assert torch.equal(rescale_kept(x, kept, 0.25, "density"), kept / 0.25)


def test_dare_ties_same_seed_same_output_and_defaults():
    m = get_method("dare_ties")
    assert m.params["rescale"].default is True and m.params["normalize"].default is False
    b = torch.zeros(100)
    ms = [torch.randn(100, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    a = run("dare_ties", b, ms, weight=[1.0, 1.0], density=0.5, generator=torch.Generator().manual_seed(7))
    c = run("dare_ties", b, ms, weight=[1.0, 1.0], density=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, c)


def test_breadcrumbs_drops_bottom_and_top_hand_computed():
    x = torch.arange(1.0, 101.0)
    kept = drop_outliers(x, 0.9, 0.01)
    assert kept[kept != 0].tolist() == list(range(10, 100))


def test_breadcrumbs_zero_gamma_keeps_top_unlike_mergekit_bug():
    x = torch.arange(1.0, 11.0)
    kept = drop_outliers(x, 0.5, 0.0)
    assert kept[kept != 0].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0]


def test_della_keep_probability_range_and_errors():
    x = torch.arange(1.0, 100_001.0).repeat(2, 1)
    kept = della_prune(x, 0.5, 0.15, generator=torch.Generator().manual_seed(0))
    low = (kept[:, :10_000] != 0).float().mean()
    high = (kept[:, -10_000:] != 0).float().mean()
    assert abs(float(low) - 0.365) < 0.02 and abs(float(high) - 0.635) < 0.02
    with pytest.raises(ValueError):
        della_prune(x, 0.1, 0.15)
    assert torch.equal(della_prune(x, 0.0, 0.15), torch.zeros_like(x))
