"""Client-side local training: SGD on the mean cross-entropy of logits / T, with optional
corrections added to every local gradient before the step.

With w the local weights, w^t the global model received, η the client lr and J the number of
local steps this round:

- FedProx (Li et al., MLSys 2020, arXiv:1812.06127): local loss F_k(w) + (μ/2)‖w − w^t‖²,
  i.e. g ← g + μ (w − w^t)  (μ, not μ/2: RickZack/GHBM's FedProx client adds half of it);
- GHBM (Zaccone et al., arXiv:2311.18578, `GHBMBaseClient._before_opt_step`):
  g ← g + β/(η J) · m with the server's m = (x^{t+1−τ} − x^{t+1})/τ, so plain SGD moves the
  weights by exactly −β·m over the round, independently of η and J.

The client returns its trained weights and example count; the server merges them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..finetune.data import collate


@dataclass
class ClientUpdate:
    client: int
    num_examples: int
    state: dict[str, torch.Tensor]  # trained trainable parameters
    steps: int
    loss: float  # mean training loss over the local steps


def local_batch_indices(n: int, batch_size: int, epochs: int, steps: int | None, seed: int) -> list[list[int]]:
    """Indices of each local step: one fresh permutation per epoch, the last batch of an epoch
    may be partial; with `steps`, exactly that many batches (as many epochs as needed)."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    want = steps if steps is not None else epochs * -(-n // batch_size)
    while len(out) < want:
        perm = torch.randperm(n, generator=g).tolist()
        out.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return out[:want]


def correct_gradients(
    params: Mapping[str, nn.Parameter],
    *,
    anchor: Mapping[str, torch.Tensor] | None = None,
    prox_mu: float = 0.0,
    momentum: Mapping[str, torch.Tensor] | None = None,
    momentum_coef: float = 0.0,
) -> None:
    """In place: p.grad += μ (p − anchor) + momentum_coef · m (momentum_coef = β/(ηJ))."""
    with torch.no_grad():
        for name, p in params.items():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if prox_mu and anchor is not None:
                p.grad.add_(p - anchor[name], alpha=prox_mu)
            if momentum is not None and momentum_coef:
                p.grad.add_(momentum[name], alpha=momentum_coef)


def train_client(
    model: nn.Module,
    rows: Sequence[dict],
    tokenizer,
    *,
    client: int,
    lr: float,
    batch_size: int,
    local_epochs: int = 1,
    local_steps: int | None = None,
    weight_decay: float = 0.0,
    temperature: float = 1.0,
    prox_mu: float = 0.0,
    ghbm_beta: float = 0.0,
    momentum: Mapping[str, torch.Tensor] | None = None,
    extra_corrections: Sequence[Callable[[Mapping[str, nn.Parameter]], None]] = (),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ClientUpdate:
    """Train `model` (already holding the global weights) on this client's tokenized `rows`.

    `extra_corrections` are called with the trainable parameters after each backward pass and
    add their terms to `.grad` in place (e.g. the EWC penalty of `continual.ewc`). Batch order
    and dropout are seeded by `seed`, so a round is reproducible on resume."""
    torch.manual_seed(seed)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    anchor = {n: p.detach().clone() for n, p in params.items()} if prox_mu else None
    steps = local_batch_indices(len(rows), batch_size, local_epochs, local_steps, seed)
    coef = ghbm_beta / (lr * len(steps)) if momentum is not None else 0.0
    opt = torch.optim.SGD(params.values(), lr=lr, weight_decay=weight_decay)
    model.train()
    total = 0.0
    for idx in steps:
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], tokenizer).items()}
        loss = nn.functional.cross_entropy(model(batch) / temperature, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        correct_gradients(params, anchor=anchor, prox_mu=prox_mu, momentum=momentum, momentum_coef=coef)
        for fix in extra_corrections:
            fix(params)
        opt.step()
        total += loss.item()
    state = {n: p.detach().cpu().clone() for n, p in params.items()}
    return ClientUpdate(client, len(rows), state, len(steps), total / max(len(steps), 1))
