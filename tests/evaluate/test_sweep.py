import pytest
import torch

from mergekit_het.errors import ConfigError
from mergekit_het.evaluate.sweep import TIES_LAMBDAS, TASK_ARITHMETIC_ALPHAS, grid_points, sweep


def test_grid_points_cartesian_product_in_given_order():
    assert grid_points({"density": [0.1, 0.2], "lambda": [1, 2]}) == [
        {"density": 0.1, "lambda": 1}, {"density": 0.1, "lambda": 2},
        {"density": 0.2, "lambda": 1}, {"density": 0.2, "lambda": 2}]
    assert grid_points({}) == [{}]


def test_grid_points_empty_values_raises():
    with pytest.raises(ConfigError, match="grid 'lambda' has no values"):
        grid_points({"lambda": []})


def test_reference_grids_match_papers():
    assert len(TASK_ARITHMETIC_ALPHAS) == 21 and TASK_ARITHMETIC_ALPHAS[:3] == [0.0, 0.05, 0.1]
    assert TASK_ARITHMETIC_ALPHAS[-1] == 1.0
    assert len(TIES_LAMBDAS) == 18 and TIES_LAMBDAS[0] == 0.8 and TIES_LAMBDAS[-1] == 2.5


def test_sweep_task_arithmetic_picks_validation_argmax():
    # θ0 = 0, θ1 = 1: the merge at λ is exactly λ; the score peaks at λ = 0.3.
    base, expert = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    seen = []

    def score(state):
        seen.append(state["w"].clone())
        return -float((state["w"][0] - 0.3) ** 2), {}

    res = sweep("task_arithmetic", [expert], base, {"lambda": TASK_ARITHMETIC_ALPHAS}, score,
                parameters={"normalize": False}, model_parameters=[{"weight": 1.0}])
    assert res.best.params == {"lambda": 0.3}
    assert [p.params["lambda"] for p in res.points] == TASK_ARITHMETIC_ALPHAS
    assert torch.allclose(torch.stack(seen)[:, 0], torch.tensor(TASK_ARITHMETIC_ALPHAS))


def test_sweep_ties_density_reaches_every_model_and_ties_keep_first():
    base = {"w": torch.zeros(4)}
    experts = [{"w": torch.tensor([4.0, 3.0, 2.0, 1.0])}, {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}]
    kept = {}

    def score(state):
        kept[len(kept)] = int((state["w"] != 0).sum())
        return 1.0, {}

    res = sweep("ties", experts, base, {"density": [0.25, 0.5]}, score,
                model_parameters=[{"weight": 1.0}, {"weight": 1.0}])
    # density 0.25 keeps 1 entry per model (entries 0 and 3), 0.5 keeps 2 (0,1 and 2,3)
    assert kept == {0: 2, 1: 4}
    assert res.best.params == {"density": 0.25}  # equal scores: the first point wins


@pytest.mark.parametrize("method,grid", [
    ("ties", {"lambda": [0.8, 1.0, 1.7], "density": [0.2, 0.5]}),  # the scale first: points keep the grid's order
    ("task_arithmetic", {"lambda": [0.0, 0.35, 1.0]}),
    ("tsv", {"alpha": [0.5, 1.0, 2.0]}),
    ("iso_cts", {"alpha": [1.5, 3.0]}),
])
def test_sweep_over_a_scale_merges_once_per_other_setting_and_equals_direct_merges(method, grid, monkeypatch):
    """A scale parameter (λ, α) is swept as θ0 + s·(θ(1) − θ0): one merge per setting of the other
    parameters, and each point's state equals the direct merge at that point to float32 rounding."""
    from mergekit_het.evaluate import sweep as sweep_module
    from mergekit_het.merge.engine import merge_state_dicts

    gen = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(12, 8, generator=gen), "b": torch.randn(8, generator=gen)}
    experts = [{k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(3)]
    calls, states = [], []
    real = sweep_module.merge_state_dicts

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "merge_state_dicts", counting)
    weights = [{"weight": 1.0}] * 3
    res = sweep(method, experts, base, grid, lambda st: (states.append(st) or 0.0, {}), model_parameters=weights)
    others = [len(v) for k, v in grid.items() if k not in ("lambda", "alpha")]
    assert len(calls) == (others[0] if others else 1)
    assert [p.params for p in res.points][0].keys() == grid.keys()
    scale = "lambda" if "lambda" in grid else "alpha"
    evaluated = [{**fixed, scale: s} for fixed in grid_points({k: v for k, v in grid.items() if k != scale})
                 for s in grid[scale]]  # one merge per setting of the others, then every scale
    for params, state in zip(evaluated, states):
        direct = merge_state_dicts(method, experts, base, params, weights)
        for k in base:
            torch.testing.assert_close(state[k], direct[k], rtol=0, atol=1e-5)
    assert [p.params for p in res.points] == grid_points(grid)
