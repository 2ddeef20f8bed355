import pytest
import torch
from torch import nn

from mergekit_het.continual.ewc import EWCPenalty, fisher_diagonal


class Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.head = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(w)

    def forward(self, batch):
        return self.head(batch["x"])


def test_fisher_exact_softmax_linear_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    w, xs = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    got = fisher_diagonal(Linear(w), ({"x": x[None], "labels": torch.tensor([0])} for x in xs), estimator="exact",
                          temperature=0.5)["head.weight"]  # fmt: skip
    expected = torch.zeros(3, 4)
    for x in xs:
        p = torch.softmax(w @ x / 0.5, dim=0)
        for y in range(3):
            grad = torch.outer(torch.eye(3)[y] - p, x) / 0.5  # ∂ log p_y / ∂W
            expected += p[y] * grad.square()
    assert torch.allclose(got, expected / 5, atol=1e-6)


def test_fisher_sample_estimator_converges_to_exact():
    w, x = torch.tensor([[1.0, -0.5], [0.2, 0.3], [-1.0, 0.4]]), torch.tensor([[0.7, -1.2]])
    model = Linear(w)
    exact = fisher_diagonal(model, [{"x": x}], estimator="exact")["head.weight"]
    g = torch.Generator().manual_seed(0)
    sample = fisher_diagonal(model, ({"x": x} for _ in range(4000)), estimator="sample", generator=g)["head.weight"]
    assert torch.allclose(sample, exact, atol=0.03)


def test_ewc_penalty_gradient_is_lambda_fisher_times_distance_summed_over_tasks():
    pen = EWCPenalty(lam=2.0)
    pen.add_task({"w": torch.tensor([1.0, 0.5])}, {"w": torch.tensor([0.0, 1.0])})
    pen.add_task({"w": torch.tensor([3.0, 0.0])}, {"w": torch.tensor([1.0, 2.0])})
    p = nn.Parameter(torch.tensor([2.0, -1.0]))
    p.grad = torch.zeros(2)
    pen({"w": p})
    # λ Σ_i F_i (θ − θ*_i) = 2·([1·2 + 3·1, 0.5·(−2) + 0]) = [10, −2]
    assert torch.equal(p.grad, torch.tensor([10.0, -2.0]))
    p.grad = None
    pen.penalty({"w": p}).backward()
    assert torch.allclose(p.grad, torch.tensor([10.0, -2.0]))


@pytest.mark.parametrize("estimator", ["exact", "sample", "empirical"])
def test_fisher_is_nonnegative_and_zero_for_frozen(estimator):
    model = Linear(torch.randn(2, 3))
    f = fisher_diagonal(model, [{"x": torch.randn(1, 3), "labels": torch.tensor([1])}], estimator=estimator,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert (f["head.weight"] >= 0).all() and f["head.weight"].sum() > 0
