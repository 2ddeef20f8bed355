"""Chunked merging: a large tensor merged chunk by chunk equals the whole-tensor merge bit for bit,
reads never exceed a chunk, and the streamed top-k selection equals a full sort."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mergekit_het.merge.binder import bind_parameters
from mergekit_het.merge.config import load_merge_config
from mergekit_het.merge.engine import MergeOptions, run_merge
from mergekit_het.io.pieces import Pieces
from mergekit_het.io.sources import SafetensorsModel
from mergekit_het.methods import get_method, sparsify
from mergekit_het.methods.sparsify import top_magnitude_trims

CASES = {
    "linear": ("linear", {"weight": [1.0, 0.5, 2.0]}, {}),
    "task_arithmetic": ("task_arithmetic", {"weight": [1.0, 0.5, 2.0]}, {"lambda": 0.7}),
    "ties": ("ties", {"weight": [1.0, 0.5, 1.0], "density": [0.5, 0.2, 0.3]}, {"lambda": 1.3}),
    "ties_count_unnormalized": ("ties", {"weight": [1.0, 2.0, 1.0], "density": [0.4, 0.4, 0.9]}, {"normalize": False}),
}


@pytest.fixture
def bf16_models(tmp_path: Path) -> dict[str, Path]:
    """bf16 base + 3 experts: differences of bf16 numbers tie often at the trim threshold."""
    from tests.conftest import perturb, save_tiny_bert

    base = save_tiny_bert(tmp_path / "base16", dtype=torch.bfloat16, vocab_size=300)
    return {"base": base, **{f"e{i}": perturb(base, tmp_path / f"e16_{i}", seed=i + 1, scale=0.02) for i in range(3)}}


def merge(tmp_path: Path, models: dict[str, Path], case: str, out: str, **options) -> dict[str, torch.Tensor]:
    method, per_model, params = CASES[case]
    entries = [{"model": str(models[f"e{i}"]), "parameters": {k: v[i] for k, v in per_model.items()}} for i in range(3)]
    cfg = {"merge_method": method, "models": entries, "parameters": params}
    if method != "linear":
        cfg["base_model"] = str(models["base"])
    path = tmp_path / f"{out}.yml"
    path.write_text(yaml.safe_dump(cfg))
    run_merge(load_merge_config(path), tmp_path / out, MergeOptions(progress=False, **options))
    return load_file(tmp_path / out / "model.safetensors")


@pytest.fixture
def sampled_selection(monkeypatch):
    """Make tiny tensors take the sampled-bracket selection that large ones take."""
    monkeypatch.setattr(sparsify, "_EXACT_MAX", 128)
    monkeypatch.setattr(sparsify, "_SAMPLE", (16, 64))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fixture", ["tiny_models", "bf16_models"])
def test_chunked_merge_equals_whole_tensor_merge(tmp_path, request, case, fixture, sampled_selection):
    models = request.getfixturevalue(fixture)
    whole = merge(tmp_path, models, case, "whole")
    chunked = merge(tmp_path, models, case, "chunked", chunk_size=97)
    reread = merge(tmp_path, models, case, "reread", chunk_size=100, cache_bytes=0)
    assert whole.keys() == chunked.keys()
    assert any(t.numel() > 97 for t in whole.values())
    for name, t in whole.items():
        assert torch.equal(chunked[name], t), name
        assert torch.equal(reread[name], t), name


def test_chunked_reads_never_exceed_a_chunk(tmp_path, tiny_models, monkeypatch):
    sizes: list[int] = []
    whole_reads: list[str] = []
    read_range = SafetensorsModel.read_range
    monkeypatch.setattr(SafetensorsModel, "read_range", lambda self, n, a, b, pin_memory=False: sizes.append(b - a) or read_range(self, n, a, b, pin_memory))
    monkeypatch.setattr(SafetensorsModel, "read", lambda self, n, pin_memory=False: whole_reads.append(n))
    merge(tmp_path, tiny_models, "ties", "out", chunk_size=200, cache_bytes=0)
    assert max(sizes) == 200 and not whole_reads
    largest = max(t.numel() for t in load_file(tiny_models["base"] / "model.safetensors").values())
    assert largest > 4 * 200


@pytest.mark.parametrize("case", ["linear", "task_arithmetic", "ties"])
def test_only_methods_that_pass_over_chunks_keep_them(tmp_path, tiny_models, monkeypatch, case):
    """A single-pass (elementwise) merge holds one chunk group, not a whole tensor's chunks."""
    kept: dict[str, bool] = {}
    init = Pieces.__init__

    def spy(self, reader, name, ranges, *args):
        init(self, reader, name, ranges, *args)
        if len(ranges) > 1:
            kept[name] = self._cache_ok

    monkeypatch.setattr(Pieces, "__init__", spy)
    merge(tmp_path, tiny_models, case, "out", chunk_size=200)
    assert kept and all(kept.values()) == (case == "ties") and any(kept.values()) == (case == "ties")


def test_chunked_writes_assemble_in_memory_merge(tmp_path, tiny_models):
    method, per_model, params = CASES["ties"]
    entries = [{"model": str(tiny_models[f"e{i}"]), "parameters": {k: v[i] for k, v in per_model.items()}} for i in range(3)]
    cfg = load_merge_config({"merge_method": method, "base_model": str(tiny_models["base"]), "models": entries, "parameters": params})
    in_memory = run_merge(cfg, None, MergeOptions(progress=False, chunk_size=50)).state
    on_disk = merge(tmp_path, tiny_models, "ties", "disk")
    for name, t in on_disk.items():
        assert torch.equal(in_memory[name], t), name


def _reference_keep(mag: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: the k largest by a full sort; entries tied at the threshold follow mergekit's
    argsort where at most ARGSORT_TIES tie, else the lowest indices."""
    threshold = mag.sort(descending=True).values[k - 1]
    keep = torch.zeros(mag.numel(), dtype=torch.bool)
    if int((mag == threshold).sum()) <= sparsify.ARGSORT_TIES:
        keep[torch.argsort(mag, descending=True)[:k]] = True
        return keep
    order = sorted(range(mag.numel()), key=lambda i: (-float(mag[i]), i))
    keep[order[:k]] = True
    return keep


@pytest.mark.parametrize("density", [0.01, 0.3, 0.9])
@pytest.mark.parametrize("chunk", [1000, 7777, 50_000])
@pytest.mark.parametrize("band", ["numpy", "torch"])  # the CPU's band pass, the GPU's (run here on the CPU)
def test_streamed_selection_equals_sort(density, chunk, band, monkeypatch):
    if band == "torch":
        monkeypatch.setattr(sparsify, "_band_numpy", sparsify._band_torch)
    g = torch.Generator().manual_seed(int(density * 100) + chunk)
    x = torch.round(torch.randn(50_000, generator=g) * 300) / 300  # thousands of exact ties
    x[::7] = 0.0
    mags = [x.abs(), torch.rand(50_000, generator=g)]

    def magnitudes(stride):
        for s in range(0, x.numel(), chunk):
            first = -s % stride
            yield s, [m[s : s + chunk][first::stride] for m in mags]

    trims = top_magnitude_trims(magnitudes, x.numel(), [density, density])
    k = int(density * x.numel())
    for m, trim in zip(mags, trims):
        kept = trim.apply(torch.where(m == 0, 0.0, m)) != 0  # ties at 0 are "kept" zeros
        expected = _reference_keep(m, k) & (m != 0)
        assert torch.equal(kept, expected)


def test_streamed_selection_widens_a_missed_bracket(monkeypatch):
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(3))
    for bad in [(0.98, 0.99), (0.01, 0.02)]:  # the true threshold (0.7) lies below / above
        monkeypatch.setattr(sparsify, "_bracket", lambda sample, q: bad)
        (trim,) = top_magnitude_trims(lambda stride: iter([(0, [x[::stride]])]), x.numel(), [0.3])
        assert trim.threshold == float(x.kthvalue(x.numel() - 30_000 + 1).values)
        assert int((trim.apply(x) != 0).sum()) == 30_000


@pytest.mark.parametrize("chunk", [300_000, 65_536])
def test_streamed_selection_few_ties_follow_argsort_like_mergekit(chunk):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(300_000, generator=g)
    x[::50_000] = 0.5  # six exact ties, straddling the threshold below
    density = float((x.abs() > 0.5).sum() + 3) / x.numel()
    k = int(density * x.numel())
    expected = torch.zeros(x.numel(), dtype=torch.bool)
    expected[torch.argsort(x.abs(), descending=True)[:k]] = True  # mergekit's sparsify.magnitude
    mag = x.abs()
    (trim,) = top_magnitude_trims(lambda stride: ((s, [mag[s : s + chunk][-s % stride :: stride]]) for s in range(0, mag.numel(), chunk)), mag.numel(), [density])
    assert torch.equal(trim.apply(x) != 0, expected)


def test_ties_method_on_slices_with_trims_equals_whole():
    g = torch.Generator().manual_seed(4)
    b = torch.randn(10_000, generator=g)
    ms = [b + torch.round(torch.randn(10_000, generator=g) * 50) / 50 for _ in range(3)]
    ties = get_method("ties")
    params = {"weight": [1.0, 0.5, 2.0], "density": [0.2, 0.5, 0.7], "lambda": 0.9}
    whole = ties.apply(b, ms, **params)
    kwargs = bind_parameters(ties, {"lambda": 0.9}, [{"weight": w, "density": d} for w, d in zip(params["weight"], params["density"])]).for_tensor("x")
    prepare = ties.chunked(b.numel(), kwargs)
    chunks = lambda: ((s, b[s : s + 999], [m[s : s + 999] for m in ms]) for s in range(0, b.numel(), 999))  # noqa: E731
    stats = prepare(chunks)
    assert stats.trims is not None and len(stats.trims) == 3
    pieces = [ties.fn(b[s : s + 999], [m[s : s + 999].clone() for m in ms], **kwargs, stats=replace(stats, start=s)) for s in range(0, b.numel(), 999)]
    assert torch.equal(torch.cat(pieces), whole)


def test_few_ties_in_a_tensor_above_argsort_max_keep_lowest_indices(monkeypatch):
    monkeypatch.setattr(sparsify, "ARGSORT_MAX", 100_000)
    x = torch.randn(300_000, generator=torch.Generator().manual_seed(9))
    x[::50_000] = 0.5  # six exact ties; three must go
    density = float((x.abs() > 0.5).sum() + 3) / x.numel()
    (trim,) = top_magnitude_trims(lambda stride: iter([(0, [x.abs()[::stride]])]), x.numel(), [density])
    assert trim.threshold == 0.5 and trim.dropped.tolist() == [150_000, 200_000, 250_000]
