"""The one local-SGD loop: a federated client's round and a continual learner's step.

Plain SGD (torch.optim.SGD, optional weight decay) on the mean cross-entropy of
each batch's logits (`models.classifier`: logits = head(features) / T, the model's temperature). After every backward pass, parameters without a gradient get a zero one (so weight
decay and the corrections apply to every trainable parameter alike), then each correction
adds its term to `.grad` in place, in the order given:

- `Proximal(μ, w^t)`: g ← g + μ (w − w^t)  (FedProx, Li et al., arXiv:1812.06127: μ, not μ/2);
- `HeavyBall(m, c)`: g ← g + c · m  (GHBM, Zaccone et al., arXiv:2311.18578, with
  c = β / (η J): over J plain-SGD steps of lr η the weights move by exactly −β·m);
- any callable `fix(params)` (e.g. the EWC penalty of `continual.ewc`).

Batch order and dropout are seeded by `seed`, so a step is reproducible (and a resumed run
equals an uninterrupted one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .batching import collate, encoder_inputs

Params = Mapping[str, nn.Parameter]
Correction = Callable[[Params], None]


@dataclass
class LocalResult:
    state: dict[str, torch.Tensor]  # trained trainable parameters (CPU copies)
    steps: int
    loss: float  # mean training loss over the steps


@dataclass
class Proximal:
    """g ← g + μ (w − anchor)."""

    mu: float
    anchor: Mapping[str, torch.Tensor]

    def __call__(self, params: Params) -> None:
        with torch.no_grad():
            for name, p in params.items():
                p.grad.add_(p - self.anchor[name], alpha=self.mu)


@dataclass
class HeavyBall:
    """g ← g + coef · m."""

    momentum: Mapping[str, torch.Tensor]
    coef: float

    def __call__(self, params: Params) -> None:
        with torch.no_grad():
            for name, p in params.items():
                p.grad.add_(self.momentum[name], alpha=self.coef)


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


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def local_sgd(
    model: nn.Module,
    rows: Sequence[dict],
    tokenizer,
    batches: list[list[int]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    corrections: Sequence[Correction] = (),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> LocalResult:
    """Train `model` (on `device`, holding its starting weights) on the tokenized `rows`, one
    SGD step per entry of `batches` (from `local_batch_indices`)."""
    torch.manual_seed(seed)
    params = trainable_parameters(model)
    opt = torch.optim.SGD(params.values(), lr=lr, weight_decay=weight_decay)
    model.train()
    total = 0.0
    for idx in batches:
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], tokenizer).items()}
        loss = model(**encoder_inputs(batch), labels=batch["labels"]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in params.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        for fix in corrections:
            fix(params)
        opt.step()
        total += loss.item()
    state = {n: p.detach().cpu().clone() for n, p in params.items()}
    return LocalResult(state, len(batches), total / max(len(batches), 1))

