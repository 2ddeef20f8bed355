"""`ties_paper`: model-wide trim and majority tie-break, against the paper's flattened algorithm."""

import pytest
import torch

from mergekit_het.merge.engine import merge_state_dicts
from mergekit_het.errors import TensorError


def paper_reference(base, experts, density, lam):
    """The TIES repository's algorithm on the whole model flattened into one vector per task."""
    names = [n for n in base if base[n].is_floating_point()]
    flat = torch.stack([torch.cat([(e[n] - base[n]).flatten() for n in names]) for e in experts])
    d = flat.shape[1]
    k = d - int(d * density)
    thr = flat.abs().kthvalue(k, dim=1, keepdim=True).values
    trimmed = flat * (flat.abs() >= thr)
    gamma = trimmed.sum(0).sign()
    gamma[gamma == 0] = gamma.sum().sign()
    agree = torch.where(gamma > 0, trimmed > 0, trimmed < 0)
    mean = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    out, pos = {}, 0
    for n in names:
        size = base[n].numel()
        out[n] = base[n] + lam * mean[pos : pos + size].view_as(base[n])
        pos += size
    return out


def random_models(seed, shapes, n=3):
    g = torch.Generator().manual_seed(seed)
    base = {f"t{i}": torch.randn(s, generator=g) for i, s in enumerate(shapes)}
    experts = [{k: v + torch.randn(v.shape, generator=g) * (i + 1) for k, v in base.items()} for i in range(n)]
    return base, experts


@pytest.mark.parametrize("density", [0.1, 0.2, 0.5])
def test_ties_paper_equals_flattened_paper_algorithm(density):
    base, experts = random_models(0, [(40, 30), (50,), (7, 7, 3)])
    got = merge_state_dicts("ties_paper", experts, base=base, parameters={"density": density, "lambda": 1.3})
    ref = paper_reference(base, experts, density, 1.3)
    for n in base:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=1e-6)


def test_ties_paper_trims_globally_not_per_tensor():
    base = {"a": torch.zeros(2), "b": torch.zeros(2)}
    expert = {"a": torch.tensor([10.0, 9.0]), "b": torch.tensor([1.0, 0.5])}
    got = merge_state_dicts("ties_paper", [expert], base=base, parameters={"density": 0.25})
    assert got["a"].tolist() == [10.0, 9.0] and got["b"].tolist() == [0.0, 0.0]
    per_tensor = merge_state_dicts("ties", [expert], base=base, parameters={"density": 0.5}, model_parameters=[{"weight": 1.0}])
    assert per_tensor["a"].tolist() == [10.0, 0.0] and per_tensor["b"].tolist() == [1.0, 0.0]


def test_ties_paper_zero_sum_takes_majority_sign():
    base = {"w": torch.zeros(4)}
    e1 = {"w": torch.tensor([1.0, -2.0, -3.0, -4.0])}
    e2 = {"w": torch.tensor([-1.0, -2.0, -3.0, -4.0])}
    got = merge_state_dicts("ties_paper", [e1, e2], base=base, parameters={"density": 1.0})
    assert got["w"].tolist() == [-1.0, -2.0, -3.0, -4.0]  # entry 0: mass 0, majority sign is −
    mk = merge_state_dicts("ties", [e1, e2], base=base, model_parameters=[{"weight": 1.0}] * 2)
    assert mk["w"][0] == 1.0  # mergekit elects + on a tie


def test_ties_paper_rejects_density_gradient():
    g = torch.Generator().manual_seed(1)
    base = {f"model.layers.{i}.x": torch.randn(4, 4, generator=g) for i in range(2)}
    experts = [{k: v + torch.randn(4, 4, generator=g) for k, v in base.items()} for _ in range(2)]
    with pytest.raises(TensorError, match="one density per model"):
        merge_state_dicts("ties_paper", experts, base=base, parameters={"density": [0.1, 0.9]}, num_layers=2)


def test_ties_paper_float64_inputs_equal_the_paper_algorithm():
    """float64 checkpoints (the threshold search reads float32 bit patterns: it used to raise
    'bincount only supports 1-d non-negative integral inputs'): with magnitudes that float32
    represents exactly, the merge equals the paper's algorithm run in float64."""
    base, experts = random_models(3, [(40, 30), (50,)])
    base = {k: v.double() for k, v in base.items()}
    experts = [{k: (v.double() * 64).round() / 64 for k, v in e.items()} for e in experts]  # dyadic: exact in float32
    base = {k: (v * 64).round() / 64 for k, v in base.items()}
    got = merge_state_dicts("ties_paper", experts, base=base, parameters={"density": 0.2, "lambda": 1.0})
    ref = paper_reference(base, experts, 0.2, 1.0)
    for n in base:
        assert got[n].dtype == torch.float64
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=1e-12)
