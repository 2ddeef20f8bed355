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


def logits(model, temperature=1.0):
    return lambda batch: model.head(batch["x"]) / temperature


def test_fisher_exact_softmax_linear_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    w, xs = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    model = Linear(w)
    got = fisher_diagonal(model, ({"x": x[None], "labels": torch.tensor([0])} for x in xs), estimator="exact",
                          logits_fn=logits(model, 0.5))["head.weight"]  # fmt: skip
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
    exact = fisher_diagonal(model, [{"x": x}], estimator="exact", logits_fn=logits(model))["head.weight"]
    g = torch.Generator().manual_seed(0)
    sample = fisher_diagonal(model, ({"x": x} for _ in range(4000)), estimator="sample", generator=g,
                             logits_fn=logits(model))["head.weight"]  # fmt: skip
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
def test_fisher_is_nonnegative_zero_for_unused_and_absent_for_frozen(estimator):
    """A frozen parameter gets no Fisher entry (EWC never pulls it); a trainable one the output
    does not depend on gets exactly 0; the used weight gets a non-negative, non-zero Fisher."""
    model = Linear(torch.randn(2, 3))
    model.frozen = nn.Parameter(torch.randn(2, 3), requires_grad=False)
    model.unused = nn.Parameter(torch.randn(4))

    def fn(batch):
        return model.head(batch["x"]) + (model.frozen @ batch["x"][0])[None]

    f = fisher_diagonal(model, [{"x": torch.randn(1, 3), "labels": torch.tensor([1])}], estimator=estimator,
                        generator=torch.Generator().manual_seed(0), logits_fn=fn)  # fmt: skip
    assert set(f) == {"head.weight", "unused"}
    assert torch.equal(f["unused"], torch.zeros(4))
    assert (f["head.weight"] >= 0).all() and f["head.weight"].sum() > 0
