"""Closed-form ridge-regression classifiers from additive sufficient statistics.

Semantics of Fed3R (Fanì, Camoriano, Caputo, Ciccone, ICML 2024, arXiv:2406.01116), also the
stage-1 predictor of SCROLL (arXiv:2210.05561) and the frozen-head protocol of `finetune`:

* features are augmented with a constant 1 for the bias: φ̃ = [φ; 1] ∈ R^{d+1};
* labels are one-hot rows y ∈ {0,1}^C;
* statistics A = Σ φ̃ φ̃ᵀ ((d+1)×(d+1)) and b = Σ φ̃ yᵀ ((d+1)×C) are sums, so statistics of
  clients / batches / stream chunks are merged with `+` and the result does not depend on the
  order or batching of the data (up to float summation order);
* the solution is W̃ = (A + λ I_{d+1})⁻¹ b, λ added ONCE to all d+1 diagonal entries (the bias
  coordinate included); the last row of W̃ is the bias, the first d rows are W;
* `normalize_head` is Fed3R's `normalize_W`: each class column w_c is divided by ‖w_c‖₂ (zero
  norms replaced by 1e-6) and bias_c by the same number. Argmax predictions are unchanged by it
  only when the biases are zero.

Heads are returned in `torch.nn.Linear` layout: `weight` (C, d) = Wᵀ and `bias` (C,).

```python
stats = RidgeStatistics.zeros(dim=384, num_classes=6)
for feats, labels in batches:                  # feats (n, d) float, labels (n,) int
    stats.update(feats, labels)
stats = stats + other_client_stats             # Fed3R aggregation
head = stats.solve(lam=0.01)                   # RidgeHead(weight (C, d), bias (C,))
logits = head(feats)                           # feats @ weight.T + bias
head.normalized().save("head.safetensors")
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, TensorError

NORM_EPS = 1e-6  # Fed3R's replacement for zero column norms


@dataclass
class RidgeStatistics:
    """Sufficient statistics A = Σ φ̃φ̃ᵀ, b = Σ φ̃yᵀ of ridge regression with a bias feature.

    `A` is (d+1, d+1), `b` is (d+1, C), `count` the number of examples; float64 by default, so
    sums over many examples stay exact enough for a closed-form solution.
    """

    A: torch.Tensor
    b: torch.Tensor
    count: int = 0

    @classmethod
    def zeros(
        cls, dim: int, num_classes: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
    ) -> "RidgeStatistics":
        """Empty statistics for `dim`-dimensional features and `num_classes` classes."""
        if dim < 1 or num_classes < 1:
            raise ConfigError(f"ridge statistics need dim >= 1 and num_classes >= 1; got {dim}, {num_classes}")
        return cls(
            A=torch.zeros(dim + 1, dim + 1, dtype=dtype, device=device),
            b=torch.zeros(dim + 1, num_classes, dtype=dtype, device=device),
        )

    @property
    def dim(self) -> int:
        return self.A.shape[0] - 1

    @property
    def num_classes(self) -> int:
        return self.b.shape[1]

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> "RidgeStatistics":
        """Add a batch in place: `features` (n, d); `labels` (n,) class ids or (n, C) targets."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise TensorError(f"ridge features: expected shape (n, {self.dim}), got {tuple(features.shape)}")
        n = features.shape[0]
        phi = torch.cat([features.to(self.A), torch.ones(n, 1, dtype=self.A.dtype, device=self.A.device)], dim=1)
        y = self._targets(labels, n)
        self.A += phi.T @ phi
        self.b += phi.T @ y
        self.count += n
        return self

    def _targets(self, labels: torch.Tensor, n: int) -> torch.Tensor:
        if labels.ndim == 1:
            labels = labels.to(self.A.device)
            if labels.shape[0] != n:
                raise TensorError(f"ridge labels: expected {n} labels, got {labels.shape[0]}")
            if n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise TensorError(
                    f"ridge labels: class ids must lie in 0..{self.num_classes - 1}, "
                    f"got {int(labels.min())}..{int(labels.max())}"
                )
            return torch.nn.functional.one_hot(labels.long(), self.num_classes).to(self.A.dtype)
        if labels.shape != (n, self.num_classes):
            raise TensorError(
                f"ridge targets: expected shape ({n}, {self.num_classes}), got {tuple(labels.shape)}"
            )
        return labels.to(self.A)

    def __add__(self, other: "RidgeStatistics") -> "RidgeStatistics":
        """Statistics of the union of both datasets (Fed3R server aggregation)."""
        if self.A.shape != other.A.shape or self.b.shape != other.b.shape:
            raise TensorError(
                f"cannot add ridge statistics of shapes A{tuple(self.A.shape)}/b{tuple(self.b.shape)} "
                f"and A{tuple(other.A.shape)}/b{tuple(other.b.shape)}"
            )
        return RidgeStatistics(self.A + other.A.to(self.A), self.b + other.b.to(self.b), self.count + other.count)

    def solve(self, lam: float = 0.01) -> "RidgeHead":
        """W̃ = (A + λI)⁻¹ b, λ added once to every diagonal entry incl. the bias coordinate."""
        if lam < 0:
            raise ConfigError(f"ridge lambda must be >= 0, got {lam}")
        eye = torch.eye(self.A.shape[0], dtype=self.A.dtype, device=self.A.device)
        w_tilde = torch.linalg.solve(self.A + lam * eye, self.b)
        return RidgeHead(weight=w_tilde[:-1].T.contiguous(), bias=w_tilde[-1].contiguous())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"A": self.A, "b": self.b, "count": torch.tensor(self.count, dtype=torch.int64)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "RidgeStatistics":
        return cls(A=state["A"], b=state["b"], count=int(state["count"]))

    def save(self, path: str | Path) -> None:
        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "RidgeStatistics":
        return cls.from_state_dict(_load(path, ("A", "b", "count")))


@dataclass
class RidgeHead:
    """A linear classifier in `nn.Linear` layout: logits = features @ weight.T + bias.

    `metadata` holds string facts saved with the head (e.g. lambda, temperature, pooling).
    """

    weight: torch.Tensor  # (C, d)
    bias: torch.Tensor  # (C,)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight) @ self.weight.T + self.bias

    def normalized(self) -> "RidgeHead":
        """Fed3R `normalize_W` (see module docstring)."""
        weight, bias = normalize_head(self.weight, self.bias)
        return RidgeHead(weight, bias, {**self.metadata, "normalized": "true"})

    def to(self, dtype: torch.dtype) -> "RidgeHead":
        return RidgeHead(self.weight.to(dtype), self.bias.to(dtype), dict(self.metadata))

    def save(self, path: str | Path) -> None:
        """Write `weight` and `bias` (and the metadata) to a safetensors file."""
        tensors = {"weight": self.weight.contiguous().cpu(), "bias": self.bias.contiguous().cpu()}
        save_file(tensors, str(path), metadata={k: str(v) for k, v in self.metadata.items()})

    @classmethod
    def load(cls, path: str | Path) -> "RidgeHead":
        from safetensors import safe_open

        tensors = _load(path, ("weight", "bias"))
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
        return cls(tensors["weight"], tensors["bias"], metadata)


def normalize_head(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fed3R `normalize_W` on an `nn.Linear`-layout head: rows of `weight` (= class columns of W)
    get unit L2 norm and each bias is divided by its row's norm; zero norms become 1e-6."""
    norms = weight.norm(dim=1)
    norms = torch.where(norms == 0, torch.full_like(norms, NORM_EPS), norms)
    return weight / norms[:, None], bias / norms


def fit_ridge(features: torch.Tensor, labels: torch.Tensor, num_classes: int, lam: float = 0.01) -> RidgeHead:
    """Ridge head on one in-memory dataset (float64 statistics); same as accumulating batches."""
    stats = RidgeStatistics.zeros(features.shape[1], num_classes)
    return stats.update(features, labels).solve(lam)


def _load(path: str | Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ridge file {path} does not exist")
    tensors = load_file(str(path))
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise TensorError(f"{path}: missing tensor(s) {missing}; has {sorted(tensors)}")
    return tensors
