"""RegMean and Fisher merging against ALGORITHMS-addendum §15.5, directly and through the engine."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

from mergekit_het.errors import TensorError
from mergekit_het.io import statistics as st
from mergekit_het.merge.engine import merge_state_dicts
from mergekit_het.methods import get_method
from mergekit_het.methods.registry import TensorStats


def regmean(ws, grams, rows=None, **params):
    inputs = {"gram": tuple(grams), "gram_rows": tuple(torch.tensor(r) for r in rows) if rows else (None,) * len(grams)}
    return get_method("regmean").apply(None, ws, stats=TensorStats(inputs=inputs), **params)


def fisher(ws, fishers, counts=None, norms=None, **params):
    model = {k: v for k, v in (("fisher_examples", counts), ("fisher_norm", norms)) if v}
    return get_method("fisher").apply(None, ws, stats=TensorStats(model=model, inputs={"fisher": tuple(fishers)}), **params)


def spd(n, seed):
    x = torch.randn(3 * n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ x


def test_regmean_identical_grams_give_the_mean_for_any_alpha():
    ws = [torch.randn(4, 5, dtype=torch.float64) for _ in range(3)]
    g = spd(5, 0)
    for alpha in (1.0, 0.3):
        out = regmean(ws, [g, g, g], reduce_nondiag=alpha)
        torch.testing.assert_close(out, sum(ws) / 3, rtol=1e-10, atol=1e-12)


def test_regmean_one_model_returns_it():
    w = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(regmean([w], [spd(5, 1)], rows=[15.0]), w, rtol=1e-10, atol=1e-12)


def test_regmean_alpha_zero_is_columnwise_weighted_mean():
    w1, w2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 6.0]])
    g1, g2 = torch.tensor([[1.0, 0.5], [0.5, 3.0]]), torch.tensor([[3.0, -1.0], [-1.0, 1.0]])
    out = regmean([w1, w2], [g1, g2], reduce_nondiag=0.0)
    # column j: (G1[jj] w1j + G2[jj] w2j) / (G1[jj] + G2[jj])
    assert torch.allclose(out, torch.tensor([[(1 + 9) / 4, (6 + 6) / 4]]), atol=1e-6)


def test_regmean_raw_grams_of_least_squares_experts_give_pooled_least_squares():
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(n, 6, generator=gen, dtype=torch.float64) for n in (20, 35, 11)]
    ys = [torch.randn(x.shape[0], 3, generator=gen, dtype=torch.float64) for x in xs]
    ws = [torch.linalg.lstsq(x, y).solution.T for x, y in zip(xs, ys)]
    out = regmean(ws, [x.T @ x for x in xs], gram="sum")
    pooled = torch.linalg.lstsq(torch.cat(xs), torch.cat(ys)).solution.T
    torch.testing.assert_close(out, pooled, rtol=1e-8, atol=1e-10)


def test_regmean_mean_grams_divide_by_rows():
    # official mean Grams: the same raw Gram counted over 10 vs 40 rows weighs 4x more in model 1
    g = spd(3, 3)
    w1, w2 = torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    torch.testing.assert_close(regmean([w1, w2], [g, g], rows=[10.0, 40.0]), torch.full((2, 3), 0.8, dtype=torch.float64))


def test_regmean_without_grams_averages_and_partial_grams_refused():
    b1, b2 = torch.tensor([1.0, 3.0]), torch.tensor([3.0, 7.0])
    assert torch.equal(regmean([b1, b2], [None, None]), torch.tensor([2.0, 5.0]))
    with pytest.raises(ValueError, match="model 1"):
        regmean([torch.ones(2, 2), torch.ones(2, 2)], [torch.eye(2), None])


def test_regmean_singular_gram_sum_is_an_error():
    with pytest.raises(ValueError, match="reduce_nondiag"):
        regmean([torch.ones(2, 2)], [torch.ones(2, 2)])  # two identical inputs: singular, no zero diagonal


def test_regmean_input_no_example_uses_takes_the_weighted_mean_column():
    # input 1 is 0 in every example of both models: its column is the weighted mean, the others
    # are RegMean over the remaining inputs
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(9, 3, generator=gen, dtype=torch.float64) for _ in range(2)]
    for x in xs:
        x[:, 1] = 0
    ws = [torch.randn(2, 3, generator=gen, dtype=torch.float64) for _ in range(2)]
    out = regmean(ws, [x.T @ x for x in xs], weight=[1.0, 3.0], gram="sum")
    torch.testing.assert_close(out[:, 1], 0.25 * ws[0][:, 1] + 0.75 * ws[1][:, 1], rtol=1e-12, atol=1e-12)
    keep = [0, 2]
    reduced = regmean([w[:, keep] for w in ws], [x[:, keep].T @ x[:, keep] for x in xs], weight=[1.0, 3.0], gram="sum")
    torch.testing.assert_close(out[:, keep], reduced, rtol=1e-12, atol=1e-12)


def test_fisher_equal_fishers_give_the_mean():
    ws = [torch.randn(7) for _ in range(3)]
    f = torch.rand(7) + 0.1
    torch.testing.assert_close(fisher(ws, [f, f, f], normalize_fishers=False), sum(ws) / 3)


def test_fisher_all_zero_with_favor_target_returns_target():
    ws = [torch.randn(5), torch.randn(5)]
    # (c₀·1e-6·θ₀) / (c₀·1e-6): θ₀ within two roundings
    torch.testing.assert_close(fisher(ws, [torch.zeros(5), torch.zeros(5)], normalize_fishers=False), ws[0], rtol=3e-7, atol=0)


def test_fisher_normalized_is_scale_invariant():
    ws = [torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)]
    f1, f2 = torch.rand(6, dtype=torch.float64) + 1, torch.rand(6, dtype=torch.float64) + 1
    n1, n2 = float(f1.norm()), float(f2.norm())
    a = fisher(ws, [f1, f2], norms=[n1, n2])
    b = fisher(ws, [f1, 10 * f2], norms=[n1, 10 * n2])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    hand = (f1 / n1 * ws[0] + f2 / n2 * ws[1]) / (f1 / n1 + f2 / n2)
    torch.testing.assert_close(a, hand)


def test_regmean_summed_shard_statistics_equal_pooled_through_engine():
    gen = torch.Generator().manual_seed(4)
    ws = [{"lin.weight": torch.randn(3, 4, generator=gen), "lin.bias": torch.randn(3, generator=gen)} for _ in range(2)]
    xs = [torch.randn(12, 4, generator=gen) for _ in range(2)]

    def stats_of(x):
        return {"lin.weight.gram": x.T @ x, "lin.weight.gram_rows": torch.tensor(x.shape[0])}

    pooled = [stats_of(x) for x in xs]
    shards = [st.add([stats_of(x[:5]), stats_of(x[5:])]) for x in xs]
    a = merge_state_dicts("regmean", ws, statistics=pooled, parameters={"reduce_nondiag": 0.9})
    b = merge_state_dicts("regmean", ws, statistics=shards, parameters={"reduce_nondiag": 0.9})
    torch.testing.assert_close(a["lin.weight"], b["lin.weight"], rtol=1e-5, atol=1e-6)
    assert torch.equal(a["lin.bias"], (ws[0]["lin.bias"] + ws[1]["lin.bias"]) / 2)
    g = [0.9 * (s["lin.weight.gram"] / 12) + 0.1 * torch.diag(torch.diag(s["lin.weight.gram"] / 12)) for s in pooled]
    hand = torch.linalg.solve(g[0] + g[1], g[0] @ ws[0]["lin.weight"].T + g[1] @ ws[1]["lin.weight"].T).T
    torch.testing.assert_close(a["lin.weight"], hand, rtol=1e-4, atol=1e-5)


def test_fisher_through_engine_reads_counts_and_norms():
    w = [{"p": torch.tensor([1.0, 2.0])}, {"p": torch.tensor([3.0, 6.0])}]
    s = [{"p.fisher": torch.tensor([2.0, 0.0]), "fisher_examples": torch.tensor(2)},
         {"p.fisher": torch.tensor([6.0, 8.0]), "fisher_examples": torch.tensor(2)}]  # fmt: skip
    out = merge_state_dicts("fisher", w, statistics=s)
    # mean Fishers (1, 0) norm 1 and (3, 4) norm 5: λ-scaled (0.5, 1e-6·0.5) and (0.3, 0.4)
    expected = torch.tensor([(0.5 * 1 + 0.3 * 3) / 0.8, (0.5e-6 * 2 + 0.4 * 6) / (0.5e-6 + 0.4)])
    torch.testing.assert_close(out["p"], expected)


def test_missing_statistics_one_line_error():
    with pytest.raises(Exception, match="needs the gram/gram_rows statistics of every model"):
        merge_state_dicts("regmean", [{"p": torch.ones(2)}])
    with pytest.raises(TensorError, match="lin.weight: regmean failed"):
        merge_state_dicts("regmean", [{"lin.weight": torch.ones(2, 2)}],
                          statistics=[{"lin.weight.gram": torch.ones(2, 2), "lin.weight.gram_rows": torch.tensor(1)}])  # fmt: skip
