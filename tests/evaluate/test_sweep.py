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
