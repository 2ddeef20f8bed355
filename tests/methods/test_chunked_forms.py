"""Chunked forms of ramplus_tl, sce, model_stock, nuslerp, multislerp and karcher: through the
engine with a small --chunk-size, against the whole-tensor merge (exact for ramplus_tl, whose
statistics are integer counts; within float32 rounding for the others, whose norms and means are
summed over chunks in float64 instead of by one whole-tensor reduction)."""

from pathlib import Path

import pytest
import torch
from case_merge import merge_case  # tests/conftest.py puts this folder on sys.path

from mergekit_het.methods import get_method
from mergekit_het.methods.registry import TensorStats
from mergekit_het.methods.spherical import gram, karcher_coefficients, karcher_mean

CHUNK = 97
CASES = {  # label: (method, experts, base?, per-model parameters, global parameters, exact?)
    "ramplus_tl": ("ramplus_tl", 3, True, {}, {"r": 0.5, "alpha": 0.3, "epsilon": 1e-3}, True),
    "sce": ("sce", 3, True, {}, {}, False),
    "sce_topk_0": ("sce", 3, True, {}, {"select_topk": 0.0}, True),
    "model_stock": ("model_stock", 3, True, {}, {}, False),
    "nuslerp": ("nuslerp", 2, True, {"weight": [1.0, 3.0]}, {}, False),
    "nuslerp_no_base": ("nuslerp", 2, False, {"weight": [2.0, 1.0]}, {}, False),
    "multislerp": ("multislerp", 3, True, {"weight": [0.5, 0.3, 0.7]}, {}, False),
    "multislerp_no_base": ("multislerp", 3, False, {"weight": [0.5, 0.3, 0.7]}, {"normalize_weights": False}, False),
    "karcher": ("karcher", 3, False, {}, {}, False),
    "karcher_with_base": ("karcher", 3, True, {}, {"max_iter": 20, "tol": 1e-6}, False),
}


def merge(tmp_path: Path, models: dict[str, Path], case: str, out: str, **options) -> dict[str, torch.Tensor]:
    return merge_case(tmp_path, models, CASES[case], out, **options)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chunked_merge_equals_whole_tensor_merge(tmp_path, tiny_models, case):
    whole = merge(tmp_path, tiny_models, case, "whole")
    chunked = merge(tmp_path, tiny_models, case, "chunked", chunk_size=CHUNK)
    reread = merge(tmp_path, tiny_models, case, "reread", chunk_size=CHUNK + 3, cache_bytes=0)
    assert any(t.numel() > 4 * CHUNK for t in whole.values())
    for name, t in whole.items():
        for other in (chunked, reread):
            if CASES[case][-1]:
                assert torch.equal(other[name], t), name
            else:  # float32 rounding of the whole-tensor norms: a few ulps of the tensor's largest entry
                torch.testing.assert_close(other[name], t, rtol=0, atol=2e-6 * max(1.0, float(t.abs().max())), msg=name)


@pytest.mark.parametrize(("method", "params"), [("nuslerp", {"nuslerp_flatten": False}), ("sce", {"select_topk": 0.5}),
                                             ("model_stock", {"filter_wise": True})])
def test_forms_needing_whole_tensors_say_so(method, params):
    m = get_method(method)
    kwargs = {k: p.default for k, p in m.params.items() if not p.required} | params
    assert m.chunked(10**6, kwargs) is None


def test_karcher_coefficients_of_orthogonal_pair_hand_value():
    # u = (e1 + e2)/√2 after one step, scale (3 + 4)/2: coefficients 3.5/(√2·3), 3.5/(√2·4)
    g = torch.tensor([[9.0, 0.0], [0.0, 16.0]], dtype=torch.float64)
    c = karcher_coefficients(g, [0.5, 0.5])
    assert c == pytest.approx([3.5 / (2**0.5 * 3), 3.5 / (2**0.5 * 4)], rel=1e-12)


def test_karcher_coefficients_drop_zero_inputs_from_direction_not_scale():
    g = torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert karcher_coefficients(g, [0.5, 0.5]) == pytest.approx([0.5, 0.0])  # (2·½)·(x/2)


def test_karcher_coefficients_equal_the_iterated_mean_on_random_inputs():
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(400, generator=gen, dtype=torch.float64) + 1.0 for _ in range(4)]
    g = gram(lambda: iter([(0, None, xs)]))
    coefficients = karcher_coefficients(g, [0.25] * 4)
    direct = karcher_mean(xs, [0.25] * 4)
    torch.testing.assert_close(sum(c * x for c, x in zip(coefficients, xs)), direct, rtol=1e-9, atol=1e-9)


def test_multislerp_chunked_equals_weighted_mean_direction_times_mean_norm():
    x1, x2 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    g = gram(lambda: iter([(0, None, [x1, x2])]))
    out = get_method("multislerp").apply(None, [x1, x2], weight=[0.5, 0.5], stats=TensorStats(tensor={"gram": g}))
    s = 0.5 ** 0.5
    torch.testing.assert_close(out, torch.tensor([3.5 * s, 3.5 * s]))  # (½·3 + ½·4)·(e1 + e2)/√2
