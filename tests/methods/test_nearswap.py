"""nearswap against hand computations (addendum §10.4, §10.8 item 3)."""

import torch

from mergekit_het.methods import get_method

T = torch.tensor


def nearswap(a, b, t):
    return get_method("nearswap").apply(a, [b], t=t)


def test_nearswap_schema_t_required():
    p = get_method("nearswap").params
    assert set(p) == {"t"} and p["t"].required and not p["t"].per_model


def test_nearswap_hand_value():
    torch.testing.assert_close(nearswap(T([1.0, 1.0, 1.0]), T([1.2, 3.0, 1.0]), 0.5), T([1.2, 1.5, 1.0]))


def test_nearswap_far_entries_move_by_t():
    out = nearswap(T([0.0, 10.0]), T([4.0, 2.0]), 1.0)
    torch.testing.assert_close(out, T([1.0, 9.0]))


def test_nearswap_nonpositive_t_gives_base():
    a = T([1.0, 2.0, 3.0])
    assert torch.equal(nearswap(a, T([1.5, 0.0, 3.0]), 0.0), a)
    assert torch.equal(nearswap(a, T([1.5, 0.0, 3.0]), -1.0), a)


def test_nearswap_large_t_gives_other_model():
    b = T([1.5, 0.0, 3.0])
    assert torch.equal(nearswap(T([1.0, 2.0, 3.0]), b, 100.0), b)


def test_nearswap_chunks_equal_whole_tensor():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(100, generator=g), torch.randn(100, generator=g)
    whole = nearswap(a, b, 0.3)
    parts = torch.cat([nearswap(a[i : i + 37], b[i : i + 37], 0.3) for i in range(0, 100, 37)])
    assert torch.equal(whole, parts) and get_method("nearswap").chunked is not None
