"""ram and ramplus_tl against hand computations (addendum §10.6, §10.8 item 1)."""

import torch

from mergekit_het.methods import get_method

T = torch.tensor
B = torch.zeros(4)
X1, X2 = T([1.0, 2.0, 0.0, -1.0]), T([3.0, 0.0, 0.0, 1.0])


def merge(method, base, tensors, **params):
    return get_method(method).apply(base, [t.clone() for t in tensors], **params)


def test_ram_schema_mergekit_names_and_defaults():
    assert {k: v.default for k, v in get_method("ram").params.items()} == {"epsilon": 1e-5}
    p = get_method("ramplus_tl").params
    assert {k: v.default for k, v in p.items()} == {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}


def test_ram_unique_kept_shared_averaged():
    torch.testing.assert_close(merge("ram", B, [X1, X2]), T([2.0, 2.0, 0.0, 0.0]))


def test_ram_changes_within_epsilon_are_dropped():
    out = merge("ram", torch.zeros(2), [T([1e-6, 1.0]), T([3.0, 1e-6])])
    torch.testing.assert_close(out, T([3.0, 1.0]))
    out = merge("ram", torch.zeros(2), [T([0.5, 1.0])], epsilon=0.6)
    torch.testing.assert_close(out, T([0.0, 1.0]))


def test_ram_identical_models_give_that_model():
    b, x = T([0.5, -0.5, 1.0]), T([1.0, -2.0, 3.0])
    torch.testing.assert_close(merge("ram", b, [x, x]), x)


def test_ram_model_order_does_not_matter():
    g = torch.Generator().manual_seed(0)
    b, xs = torch.randn(50, generator=g), [torch.randn(50, generator=g) * (torch.rand(50, generator=g) < 0.5) for _ in range(3)]
    torch.testing.assert_close(merge("ram", b, xs), merge("ram", b, xs[::-1]))


def test_ram_chunks_equal_whole_tensor():
    g = torch.Generator().manual_seed(1)
    b, xs = torch.randn(90, generator=g), [torch.randn(90, generator=g) * (torch.rand(90, generator=g) < 0.5) for _ in range(3)]
    whole = merge("ram", b, xs)
    parts = torch.cat([merge("ram", b[i : i + 40], [x[i : i + 40] for x in xs]) for i in range(0, 90, 40)])
    assert torch.equal(whole, parts) and get_method("ram").chunked is not None


def test_ramplus_tl_defaults_hand_value():
    # model 1: 1 shared, 2 unique entries → ρ = 0.5 → λ = 1 + 0.1·min(0.5, 0.2) = 1.02
    torch.testing.assert_close(merge("ramplus_tl", B, [X1, X2]), T([2.0, 2.04, 0.0, 0.0]))


def test_ramplus_tl_r_1_alpha_1_hand_value():
    torch.testing.assert_close(merge("ramplus_tl", B, [X1, X2], r=1.0, alpha=1.0), T([2.0, 4.0, 0.0, 0.0]))


def test_ramplus_tl_r_zero_equals_ram():
    g = torch.Generator().manual_seed(2)
    b, xs = torch.randn(40, generator=g), [torch.randn(40, generator=g) * (torch.rand(40, generator=g) < 0.5) for _ in range(3)]
    assert torch.equal(merge("ramplus_tl", b, xs, r=0.0), merge("ram", b, xs))


def test_ramplus_tl_no_unique_entries_bounds_rho_by_alpha():
    # every change shared: ρ = 2/ε is clamped to α, yet no unique entry is there to scale
    torch.testing.assert_close(merge("ramplus_tl", torch.zeros(2), [T([1.0, 2.0]), T([3.0, 4.0])]), T([2.0, 3.0]))
