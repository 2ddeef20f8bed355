"""Seeding: every random choice of a run is a function of its configured seed."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and torch (CPU and every CUDA device), as
    `accelerate.utils.set_seed` does; torch's default stream then gives the same draws on rerun."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A private torch generator seeded with `seed` (draws independent of the global stream)."""
    return torch.Generator(device=device).manual_seed(seed)
