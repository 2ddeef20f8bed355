"""Every merge method on a CUDA device, whole tensors and chunk by chunk, against the CPU merge
of the same config (skipped without a GPU; run on the GPU machine). Tolerance: float32 rounding
of a different reduction order, 1e-5 of each tensor's largest entry; the sampling methods
(dare_*, della*, arcee_fusion above its sample size) draw from the device's generator, so there
only the run itself and finite outputs are checked."""

from pathlib import Path

import pytest
import torch
from case_merge import merge_case  # tests/conftest.py puts this folder on sys.path


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CHUNK = 97
CASES = {  # label: (method, experts, base?, per-model parameters, global parameters, deterministic?)
    "linear": ("linear", 3, False, {"weight": [1.0, 2.0, 0.5]}, {}, True),
    "task_arithmetic": ("task_arithmetic", 3, True, {"weight": [1.0, 0.7, 0.5]}, {}, True),
    "ties": ("ties", 3, True, {"weight": [1.0, 1.0, 1.0], "density": [0.3, 0.5, 0.7]}, {}, True),
    "ties_paper": ("ties_paper", 3, True, {}, {"density": 0.2}, True),
    "breadcrumbs": ("breadcrumbs", 3, True, {"weight": [1.0] * 3, "density": [0.8] * 3, "gamma": [0.1] * 3}, {}, True),
    "dare_ties": ("dare_ties", 3, True, {"weight": [1.0] * 3, "density": [0.5] * 3}, {}, False),
    "della": ("della", 3, True, {"weight": [1.0] * 3, "density": [0.5] * 3, "epsilon": [0.1] * 3}, {}, False),
    "slerp": ("slerp", 1, True, {}, {"t": 0.3}, True),
    "nuslerp": ("nuslerp", 2, True, {"weight": [1.0, 3.0]}, {}, True),
    "nuslerp_rows": ("nuslerp", 2, True, {"weight": [1.0, 3.0]}, {"nuslerp_flatten": False}, True),
    "multislerp": ("multislerp", 3, True, {"weight": [0.5, 0.3, 0.7]}, {}, True),
    "karcher": ("karcher", 3, False, {}, {}, True),
    "karcher_with_base": ("karcher", 3, True, {}, {"max_iter": 20, "tol": 1e-6}, True),
    "sce": ("sce", 3, True, {}, {}, True),
    "sce_topk": ("sce", 3, True, {}, {"select_topk": 0.5}, True),
    "model_stock": ("model_stock", 3, True, {}, {}, True),
    "nearswap": ("nearswap", 1, True, {}, {"t": 0.01}, True),
    "arcee_fusion": ("arcee_fusion", 1, True, {}, {}, True),
    "ram": ("ram", 3, True, {}, {}, True),
    "ramplus_tl": ("ramplus_tl", 3, True, {}, {"r": 0.5, "alpha": 0.3, "epsilon": 1e-3}, True),
    "tsv": ("tsv", 3, True, {}, {}, True),
    "iso_c": ("iso_c", 3, True, {}, {}, True),
    "iso_cts": ("iso_cts", 3, True, {}, {}, True),
}


def merge(tmp_path: Path, models: dict[str, Path], case: str, out: str, **options) -> dict[str, torch.Tensor]:
    return merge_case(tmp_path, models, CASES[case], out, **options)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_merge_equals_cpu_merge(tmp_path, tiny_models, case):
    cpu = merge(tmp_path, tiny_models, case, "cpu")
    for out, chunk in (("cuda", None), ("cuda_chunked", CHUNK)):
        got = merge(tmp_path, tiny_models, case, out, device="cuda", chunk_size=chunk)
        assert got.keys() == cpu.keys()
        for name, t in cpu.items():
            assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
            if CASES[case][-1]:
                torch.testing.assert_close(got[name], t, rtol=0, atol=1e-5 * max(1.0, float(t.abs().max())), msg=name)
            else:
                assert bool(torch.isfinite(got[name]).all()), name
