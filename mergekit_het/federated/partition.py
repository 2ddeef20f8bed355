"""Client splits of a labelled dataset: IID, Dirichlet label skew, pathological (few classes each).

Every function returns one sorted list of example indices per client; together they form a
partition of `range(len(labels))` (disjoint, covering). All randomness comes from `seed`.

- `iid`: a random permutation cut into `num_clients` near-equal parts.
- `dirichlet` (Hsu, Qi, Brown, arXiv:1909.06335): for every class c, proportions
  p_c ~ Dir(α·1_K) over the K clients cut the class's shuffled examples; drawn again until every
  client holds at least `min_size` examples. Small α ⇒ each client sees few classes.
- `pathological` (McMahan et al., arXiv:1602.05629, one class per client as in GHBM's α = 0):
  client k holds classes {(k·s + j) mod C : j < s}; each class is split evenly among the
  clients that hold it. Needs K·s ≥ C so that every class has a client.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .config import PartitionConfig

MAX_DRAWS = 1000


def _split_even(idx: torch.Tensor, parts: int) -> list[torch.Tensor]:
    return list(torch.tensor_split(idx, parts))


def iid(num_examples: int, num_clients: int, seed: int) -> list[list[int]]:
    perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return [sorted(p.tolist()) for p in _split_even(perm, num_clients)]


def dirichlet(labels: Sequence[int], num_clients: int, alpha: float, seed: int, min_size: int = 1) -> list[list[int]]:
    y = np.asarray(labels, dtype=np.int64)
    if len(y) < num_clients * min_size:
        raise ConfigError(
            f"partition: {len(y)} examples cannot give {num_clients} clients {min_size} example(s) each"
        )
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        clients: list[list[int]] = [[] for _ in range(num_clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, part in enumerate(np.split(idx, cuts)):
                clients[k].extend(part.tolist())
        if min(len(c) for c in clients) >= min_size:
            return [sorted(c) for c in clients]
    raise ConfigError(
        f"partition: no Dirichlet(α={alpha}) draw in {MAX_DRAWS} gave every one of {num_clients} clients "
        f"{min_size} example(s); raise alpha, lower num_clients or min_size"
    )


def pathological(labels: Sequence[int], num_clients: int, classes_per_client: int, seed: int) -> list[list[int]]:
    y = torch.as_tensor(labels, dtype=torch.long)
    classes = torch.unique(y).tolist()
    s = min(classes_per_client, len(classes))
    if num_clients * s < len(classes):
        raise ConfigError(
            f"partition: {num_clients} clients x {s} class(es) each cannot cover {len(classes)} classes; "
            f"raise num_clients or classes_per_client"
        )
    g = torch.Generator().manual_seed(seed)
    order = [classes[i] for i in torch.randperm(len(classes), generator=g).tolist()]
    holders: dict[int, list[int]] = {c: [] for c in classes}
    for k in range(num_clients):
        for j in range(s):
            holders[order[(k * s + j) % len(classes)]].append(k)
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    for c, ks in holders.items():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        for k, part in zip(ks, _split_even(idx, len(ks))):
            clients[k].extend(part.tolist())
    return [sorted(c) for c in clients]


def make_partition(labels: Sequence[int], cfg: PartitionConfig, seed: int) -> list[list[int]]:
    """The configured partition of `labels`' indices; every client gets at least one example."""
    if len(labels) < cfg.num_clients:
        raise ConfigError(f"partition: {len(labels)} examples are fewer than {cfg.num_clients} clients")
    if cfg.scheme == "iid":
        parts = iid(len(labels), cfg.num_clients, seed)
    elif cfg.scheme == "dirichlet":
        parts = dirichlet(labels, cfg.num_clients, cfg.alpha, seed, cfg.min_size)
    else:
        parts = pathological(labels, cfg.num_clients, cfg.classes_per_client, seed)
    empty = [k for k, p in enumerate(parts) if not p]
    if empty:
        raise ConfigError(f"partition: client(s) {empty} received no examples; use fewer clients or more data")
    return parts
