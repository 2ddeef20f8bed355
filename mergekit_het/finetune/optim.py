"""AdamW with per-entry binary masks (TaLoS's AdaptW, vision/optimizers.py of iurada/talos-task-arithmetic).

For a parameter θ with mask m ∈ {0,1} (1 = trainable), gradient g, step t:

    g  ← m ⊙ g
    μ  ← β1 μ + (1 − β1) g,            ν ← β2 ν + (1 − β2) g²
    θ  ← θ − m ⊙ lr·wd·θ                                   (decoupled weight decay, masked)
    θ  ← θ − m ⊙ (lr / (1 − β1^t)) · μ / (√ν / √(1 − β2^t) + ε)

Masked entries are left untouched with `torch.where`, so θ − θ0 is EXACTLY zero outside the
mask after any number of steps. Parameters without a mask follow `torch.optim.AdamW` (same
operation order as its single-tensor implementation).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class MaskedAdamW(torch.optim.Optimizer):
    """AdamW; `masks` maps a parameter (by identity) to a bool tensor of its shape (True = train)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        masks: dict[torch.nn.Parameter, torch.Tensor] | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._masks = {id(p): m for p, m in (masks or {}).items()}
        for group in self.param_groups:
            for p in group["params"]:
                m = self._masks.get(id(p))
                if m is not None and m.shape != p.shape:
                    raise ValueError(f"mask shape {tuple(m.shape)} != parameter shape {tuple(p.shape)}")
                if m is not None:
                    self._masks[id(p)] = m.to(device=p.device, dtype=torch.bool)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                mask = self._masks.get(id(p))
                if mask is not None and mask.device != p.device:
                    mask = self._masks[id(p)] = mask.to(p.device)
                grad = p.grad if mask is None else torch.where(mask, p.grad, 0.0)
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                new = p.mul(1 - lr * wd).addcdiv_(exp_avg, denom, value=-step_size)
                p.copy_(new if mask is None else torch.where(mask, new, p))
        return loss
