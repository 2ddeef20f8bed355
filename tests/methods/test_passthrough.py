"""passthrough (addendum §10.7, §10.8 item 6)."""

import torch

from mergekit_het.methods import get_method

T = torch.tensor


def passthrough(x, **params):
    return get_method("passthrough").apply(None, [x], **params)


def test_passthrough_schema_scale_per_model_default_none():
    m = get_method("passthrough")
    assert set(m.params) == {"scale"} and m.params["scale"].per_model and m.params["scale"].default is None
    assert m.base == "none" and m.max_models == 1


def test_passthrough_without_scale_is_bitwise_the_input():
    x = T([1.0, -0.0, 3.25e-30, float("inf")])
    out = passthrough(x)
    assert torch.equal(out.view(torch.int32), x.view(torch.int32))


def test_passthrough_scale_multiplies():
    torch.testing.assert_close(passthrough(T([1.0, 2.0]), scale=3.0), T([3.0, 6.0]))
    assert torch.equal(passthrough(T([1.0, 2.0]), scale=0.0), torch.zeros(2))


def test_passthrough_bf16_input_round_trips_exactly():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0)).bfloat16()
    assert torch.equal(passthrough(x).bfloat16(), x)


def test_passthrough_through_engine_returns_the_state_dict_bitwise():
    from mergekit_het.merge.engine import merge_state_dicts

    g = torch.Generator().manual_seed(1)
    sd = {"a.weight": torch.randn(8, 4, generator=g).bfloat16(), "a.bias": torch.randn(8, generator=g).bfloat16(),
          "pos": torch.arange(5)}
    out = merge_state_dicts("passthrough", [sd])
    assert all(torch.equal(out[k], sd[k]) and out[k].dtype == sd[k].dtype for k in sd)
