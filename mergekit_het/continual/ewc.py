"""Elastic Weight Consolidation with a diagonal Fisher (Kirkpatrick et al., PNAS 2017, arXiv:1612.00796).

Loss on a new task: L(θ) + Σ_i (λ/2) Σ_p F_{i,p} (θ_p − θ*_{i,p})², one term per finished task i
(θ*_i its final weights, F_i its diagonal Fisher there). The penalty's gradient is
λ Σ_i F_i ⊙ (θ − θ*_i) = λ (F ⊙ θ − G) with F = Σ_i F_i and G = Σ_i F_i ⊙ θ*_i, so two running
sums replace the list of tasks.

Fisher estimators over N examples x with p = softmax(f(x)) (f(x) = the model's logits, already
divided by its temperature T; van de Ven, arXiv:2502.11756):
- `exact`:     F = (1/N) Σ_x Σ_y p(y|x) (∂ log p(y|x) / ∂θ)²   (C backward passes per example)
- `sample`:    F = (1/N) Σ_x (∂ log p(ŷ|x) / ∂θ)², ŷ ~ p(·|x)   (ariseff/overcoming-catastrophic)
- `empirical`: F = (1/N) Σ_x (∂ log p(y_x|x) / ∂θ)² with the true label.
Per-example gradients are squared (not mini-batch gradients, which bias F low).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ..runtime.batching import encoder_inputs

State = dict[str, torch.Tensor]


def fisher_diagonal(
    model: nn.Module,
    examples: Iterable[dict[str, torch.Tensor]],
    *,
    estimator: str = "exact",
    generator: torch.Generator | None = None,
    logits_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> State:
    """Diagonal Fisher of the trainable parameters (frozen ones have no entry); `examples`
    yields one-example batches, `logits_fn(batch)` gives their logits (default: the HF call
    `model(**encoder_inputs(batch)).logits` of `models.classifier`)."""
    if logits_fn is None:
        logits_fn = lambda batch: model(**encoder_inputs(batch)).logits  # noqa: E731
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    for batch in examples:
        logp = torch.log_softmax(logits_fn(batch)[0], dim=-1)
        if estimator == "exact":
            probs = logp.exp().detach()
            terms = [(y, float(probs[y])) for y in range(logp.shape[0])]
        elif estimator == "sample":
            terms = [(int(torch.multinomial(logp.exp().detach(), 1, generator=generator)), 1.0)]
        else:
            terms = [(int(batch["labels"][0]), 1.0)]
        for k, (y, weight) in enumerate(terms):
            grads = torch.autograd.grad(logp[y], list(params.values()), retain_graph=k + 1 < len(terms), allow_unused=True)
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    fisher[name].add_(g.square(), alpha=weight)
        count += 1
    model.train(was_training)
    return {n: f / max(count, 1) for n, f in fisher.items()}


class EWCPenalty:
    """Running sums F = Σ F_i and G = Σ F_i ⊙ θ*_i; calling it adds λ (F ⊙ θ − G) to the grads."""

    def __init__(self, lam: float) -> None:
        self.lam = lam
        self.fisher: State = {}
        self.anchor: State = {}

    def add_task(self, fisher: Mapping[str, torch.Tensor], theta_star: Mapping[str, torch.Tensor]) -> None:
        for name, f in fisher.items():
            self.fisher[name] = self.fisher.get(name, 0) + f
            self.anchor[name] = self.anchor.get(name, 0) + f * theta_star[name]

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ_i (λ/2) F_i (θ − θ*_i)² up to a constant: (λ/2) Σ (F θ² − 2 G θ) (for checks)."""
        return sum((self.lam / 2) * (self.fisher[n] * p.square() - 2 * self.anchor[n] * p).sum() for n, p in params.items() if n in self.fisher)

    def __call__(self, params: Mapping[str, nn.Parameter]) -> None:
        if not self.fisher:
            return
        with torch.no_grad():
            for name, p in params.items():
                if name in self.fisher:
                    p.grad.add_(self.fisher[name] * p - self.anchor[name], alpha=self.lam)
