"""TSV-M, Iso-C and Iso-CTS against the exactness cases of ALGORITHMS-addendum §14.5."""

import pytest
import torch

from mergekit_het.errors import ConfigError
from mergekit_het.merge.binder import bind_parameters
from mergekit_het.merge.engine import merge_state_dicts
from mergekit_het.methods import get_method
from mergekit_het.methods import singular
from mergekit_het.methods.singular import gram_svd, iso_c_matrix, iso_cts_matrix, iso_cts_split, polar, tsv_matrix


@pytest.fixture(autouse=True, params=["lapack", "gram"])
def svd_route(request, monkeypatch):
    """Every case twice: with the CPU's LAPACK SVD and with the GPU's route (`gram_svd`) on the CPU."""
    if request.param == "gram":
        monkeypatch.setattr(singular, "thin_svd", gram_svd)
    return request.param


@pytest.mark.parametrize("shape", [(40, 40), (70, 24), (24, 70), (1, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_svd_equals_lapack_svd(shape, dtype):
    g = torch.Generator().manual_seed(1)
    m = (torch.randn(shape, generator=g, dtype=torch.float64) * torch.logspace(0, -3, shape[1], dtype=torch.float64)).to(dtype)
    u, s, vh = gram_svd(m)
    ref_s = torch.linalg.svdvals(m.double())
    tol = 2e-7 if dtype == torch.float32 else 1e-13
    assert (s.double() - ref_s).abs().max() <= 4 * tol * ref_s[0]
    assert ((u * s) @ vh - m).abs().max() <= 8 * tol * m.abs().max()
    k = min(shape)
    assert (u.T @ u - torch.eye(k, dtype=dtype)).abs().max() <= 10 * tol * (ref_s[0] / ref_s[-1])
    ref_u, _, ref_vh = torch.linalg.svd(m.double(), full_matrices=False)
    assert (polar(m).double() - ref_u @ ref_vh).abs().max() <= 20 * tol * (ref_s[0] / ref_s[-1])


def test_gram_svd_null_space_directions_are_zero():
    # rank 2 of 3: the third direction has no determined U, V; gram_svd leaves it 0, the nonzero
    # part of the polar factor is the SVD's
    m = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    u, s, vh = gram_svd(m)
    assert torch.equal(s, torch.tensor([3.0, 2.0, 0.0], dtype=torch.float64))
    assert torch.equal(u[:, 2], torch.zeros(4, dtype=torch.float64)) and torch.equal(vh[2], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(u @ vh, torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float64))


def run(name, base, tensors, **params):
    return get_method(name).apply(base, tensors, **params)


def singular_values(m):
    return torch.linalg.svdvals(m.double())


@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts"])
def test_one_dimensional_tensor_gets_alpha_times_mean(name):
    base = torch.tensor([1.0, 2.0, 3.0])
    out = run(name, base, [base + torch.tensor([1.0, 0.0, 2.0]), base + torch.tensor([3.0, 4.0, 0.0])], alpha=0.5)
    assert torch.allclose(out, base + 0.5 * torch.tensor([2.0, 2.0, 1.0]), atol=0, rtol=1e-7)


def test_tsv_one_task_is_task_arithmetic_at_alpha():
    torch.manual_seed(0)
    base, tau = torch.randn(12, 7), torch.randn(12, 7)
    out = run("tsv", base, [base + tau], alpha=0.7)
    assert (out - (base + 0.7 * tau)).abs().max() <= 1e-5 * tau.abs().max()


def test_tsv_disjoint_singular_subspaces_give_exact_sum():
    base = torch.zeros(4, 4)
    t1, t2 = torch.diag(torch.tensor([3.0, 2.0, 0.0, 0.0])), torch.diag(torch.tensor([0.0, 0.0, 5.0, 4.0]))
    out = run("tsv", base, [t1, t2])
    assert torch.allclose(out, t1 + t2, atol=1e-6, rtol=0)


def test_tsv_budget_k7_two_tasks_three_slots_each_last_empty():
    torch.manual_seed(1)
    deltas = [torch.randn(9, 7), torch.randn(9, 7)]
    merged = tsv_matrix([d.clone() for d in deltas])
    s = torch.linalg.svdvals(merged)
    # r = int(7 · 1/2) = 3 per task: rank 6, the singular values are the tasks' top 3 each
    expected = torch.cat([torch.linalg.svdvals(d)[:3] for d in deltas]).sort(descending=True).values
    assert torch.allclose(s[:6], expected, rtol=1e-5, atol=1e-5)
    assert s[6] < 1e-5


def test_iso_c_diag_3_1_becomes_diag_2_2():
    out = iso_c_matrix(torch.diag(torch.tensor([3.0, 1.0])))
    assert torch.allclose(out, torch.diag(torch.tensor([2.0, 2.0])), atol=1e-6, rtol=0)


def test_iso_c_output_spectrum_flat_at_mean_singular_value():
    torch.manual_seed(2)
    base, deltas = torch.randn(10, 6), [torch.randn(10, 6) for _ in range(3)]
    out = run("iso_c", base, [base + d for d in deltas], alpha=1.0)
    mean_s = singular_values(sum(deltas)).mean()
    assert torch.allclose(singular_values(out - base), mean_s.expand(6), rtol=1e-5)


def test_iso_c_one_task_with_flat_spectrum_returns_it():
    q, _ = torch.linalg.qr(torch.randn(8, 5, generator=torch.Generator().manual_seed(3)))
    tau = 2.5 * q
    assert torch.allclose(run("iso_c", torch.zeros(8, 5), [tau]), tau, atol=1e-6, rtol=0)


def test_iso_cts_split_hand_computed():
    assert iso_cts_split(16, 3, 0.8) == (13, 1)
    assert iso_cts_split(16, 8, 0.8) == (16, 0)
    assert iso_cts_split(10, 3, 0.8) == (7, 1)


def test_iso_cts_with_many_tasks_equals_iso_c():
    torch.manual_seed(4)
    deltas = [torch.randn(20, 16) for _ in range(8)]  # k = 16, T = 8: n = 0
    assert torch.allclose(iso_cts_matrix(deltas, 0.8), iso_c_matrix(sum(deltas)), atol=1e-5, rtol=0)


def test_iso_cts_output_spectrum_flat_and_keeps_task_directions():
    torch.manual_seed(5)
    deltas = [torch.randn(16, 16) for _ in range(3)]  # (k_c, n) = (13, 1)
    out = iso_cts_matrix(deltas, 0.8)
    s = singular_values(out)
    assert torch.allclose(s, s.mean().expand(16), rtol=1e-5)
    assert not torch.allclose(out, iso_c_matrix(sum(deltas)), atol=1e-3)


def test_iso_cts_too_few_common_directions_refused():
    with pytest.raises(ValueError, match="common_space_fraction"):
        iso_cts_split(2, 3, 0.0)


@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts"])
def test_equal_weights_of_any_scale_equal_default(name):
    torch.manual_seed(6)
    base, xs = torch.randn(6, 5), [torch.randn(6, 5) for _ in range(3)]
    a = run(name, base, xs)
    b = run(name, base, xs, weight=[120.0, 120.0, 120.0])
    assert torch.equal(a, b)


def test_tsv_weights_scale_task_vectors_by_t_w_over_sum():
    t1, t2 = torch.diag(torch.tensor([3.0, 2.0, 0.0, 0.0])), torch.diag(torch.tensor([0.0, 0.0, 5.0, 4.0]))
    out = run("tsv", torch.zeros(4, 4), [t1, t2], weight=[3.0, 1.0])  # c = (1.5, 0.5)
    assert torch.allclose(out, 1.5 * t1 + 0.5 * t2, atol=1e-6, rtol=0)


def test_svd_false_averages_a_matrix():
    base, x, y = torch.zeros(3, 3), torch.eye(3), 3 * torch.eye(3)
    assert torch.allclose(run("iso_c", base, [x, y], svd=False), 2 * torch.eye(3))


def test_parameters_bind_with_filters_and_bad_fraction_refused():
    binding = bind_parameters("tsv", {"alpha": 1.5, "svd": [{"filter": "text_projection", "value": False}, {"value": True}]},
                              [{}, {}], "test")  # fmt: skip
    assert binding.for_tensor("text_projection")["svd"] is False
    assert binding.for_tensor("layers.0.q.weight") == {"weight": [1.0, 1.0], "alpha": 1.5, "svd": True}
    with pytest.raises(ConfigError, match="common_space_fraction"):
        bind_parameters("iso_cts", {"common_space_fraction": 1.5}, [{}, {}], "test")


def test_tsv_through_the_engine_matches_the_function():
    torch.manual_seed(8)
    base = {"w": torch.randn(6, 4), "b": torch.randn(4)}
    models = [{k: v + torch.randn_like(v) for k, v in base.items()} for _ in range(2)]
    out = merge_state_dicts("tsv", models, base, {"alpha": 0.8})
    for k in base:
        assert torch.equal(out[k], run("tsv", base[k], [m[k] for m in models], alpha=0.8))
