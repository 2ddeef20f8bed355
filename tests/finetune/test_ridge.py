"""Closed-form ridge (Fed3R semantics): centralized equality, additivity, normalization."""

import pytest
import torch

from mergekit_het.errors import TensorError
from mergekit_het.models.ridge import RidgeHead, RidgeStatistics, fit_ridge, normalize_head


def _data(n=60, d=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)


def _centralized(x, y, c, lam):
    """min ||[X,1] W - Y||^2 + lam ||W||^2 (bias row penalized too) as an augmented least squares."""
    phi = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    tgt = torch.nn.functional.one_hot(y, c).double()
    aug_x = torch.cat([phi, lam**0.5 * torch.eye(phi.shape[1], dtype=x.dtype)])
    aug_y = torch.cat([tgt, torch.zeros(phi.shape[1], c, dtype=x.dtype)])
    return torch.linalg.lstsq(aug_x, aug_y).solution


def test_ridge_solve_clients_equals_centralized_least_squares():
    x, y = _data()
    stats = [RidgeStatistics.zeros(5, 3).update(x[i:i + 20], y[i:i + 20]) for i in (0, 20, 40)]
    head = (stats[2] + stats[0] + stats[1]).solve(lam=0.5)
    ref = _centralized(x, y, 3, 0.5)
    torch.testing.assert_close(head.weight, ref[:-1].T, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.bias, ref[-1], rtol=1e-6, atol=1e-9)


def test_ridge_statistics_batching_and_order_invariant():
    x, y = _data()
    one = RidgeStatistics.zeros(5, 3).update(x, y)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    many = RidgeStatistics.zeros(5, 3)
    for chunk in perm.split(7):
        many.update(x[chunk], y[chunk])
    torch.testing.assert_close(many.A, one.A, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(many.b, one.b, rtol=1e-12, atol=1e-12)
    assert many.count == one.count == 60
    assert one.A[-1, -1] == 60 and one.b[-1].sum() == 60  # bias feature is a constant 1


def test_ridge_solve_lambda_added_once_including_bias():
    stats = RidgeStatistics.zeros(2, 2)  # no data: W = (lam I)^-1 0 = 0; with b=e: 1/lam
    stats.b[-1, 0] = 1.0
    head = stats.solve(lam=4.0)
    assert head.bias.tolist() == [0.25, 0.0]
    assert head.weight.abs().sum() == 0


def test_ridge_head_shapes_independent_of_data_size():
    x, y = _data(n=200, d=7, c=4)
    stats = RidgeStatistics.zeros(7, 4).update(x, y)
    assert stats.A.shape == (8, 8) and stats.b.shape == (8, 4)
    assert fit_ridge(x, y, 4).weight.shape == (4, 7)


def test_normalize_head_unit_rows_bias_scaled_zero_row_safe():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([10.0, 1.0], dtype=torch.float64)
    wn, bn = normalize_head(w, b)
    assert wn.tolist() == [[0.6, 0.8], [0.0, 0.0]]
    assert bn[0].item() == 2.0 and bn[1].item() == pytest.approx(1e6)


def test_ridge_head_save_load_roundtrip(tmp_path):
    x, y = _data()
    head = fit_ridge(x, y, 3).normalized()
    head.metadata["temperature"] = "0.1"
    head.save(tmp_path / "head.safetensors")
    back = RidgeHead.load(tmp_path / "head.safetensors")
    assert torch.equal(back.weight, head.weight) and torch.equal(back.bias, head.bias)
    assert back.metadata == {"normalized": "true", "temperature": "0.1"}
    torch.testing.assert_close(back(x), x @ head.weight.T + head.bias)


def test_ridge_update_bad_shapes_raise_one_line():
    stats = RidgeStatistics.zeros(3, 2)
    with pytest.raises(TensorError, match=r"expected shape \(n, 3\)"):
        stats.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TensorError, match="class ids must lie in 0..1"):
        stats.update(torch.zeros(2, 3), torch.tensor([0, 2]))
    with pytest.raises(TensorError, match="cannot add"):
        stats + RidgeStatistics.zeros(4, 2)
