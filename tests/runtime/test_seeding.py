"""runtime.seeding: the same seed gives the same draws, a different one different draws."""

import random

import numpy as np
import torch

from mergekit_het.runtime.seeding import generator, seed_everything


def _draws() -> tuple[list[float], float, float, torch.Tensor]:
    return torch.rand(4).tolist(), random.random(), float(np.random.rand()), torch.nn.Linear(3, 2).weight.detach()


def test_seed_everything_reproduces_torch_python_numpy_and_module_init():
    seed_everything(11)
    a = _draws()
    seed_everything(11)
    b = _draws()
    assert a[:3] == b[:3] and torch.equal(a[3], b[3])
    seed_everything(12)
    assert _draws()[0] != a[0]


def test_generator_is_independent_of_the_global_stream():
    torch.manual_seed(0)
    x = torch.rand(3, generator=generator(5))
    torch.rand(100)  # moves the global stream only
    assert torch.equal(torch.rand(3, generator=generator(5)), x)
    assert torch.equal(x, torch.rand(3, generator=torch.Generator().manual_seed(5)))
