"""model_stock, nearswap, sce, ram, ramplus_tl and arcee_fusion compute in place (few full-size
buffers) and without bool tensors or torch.sort on CPUs; each must give the bits of its plain out-of-place
form (mergekit 0.1.5's operations in its order, restated here), NaN, ±0 and ±Inf included, in
float32 and in bf16/fp16 arithmetic (`--arithmetic config-dtype`)."""

import pytest
import torch

from mergekit_het.methods import arcee_fusion as af
from mergekit_het.methods import get_method
from mergekit_het.methods.registry import Float32Copies, TensorStats
from mergekit_het.methods.spherical import gram

NAN, INF = float("nan"), float("inf")
SHAPES = [(7,), (1000,), (37, 53), (4, 5, 6)]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b)), f"{int((a != b).sum())} entries differ"


def inputs(shape, n, seed, special, infinities=True):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    models = [base + torch.randn(shape, generator=g) * 0.001 * (i + 1) for i in range(n)]
    models[0].view(-1)[::3] = base.view(-1)[::3]  # unchanged entries
    base.view(-1)[0], models[0].view(-1)[0] = -0.0, 0.0
    if special:
        models[0].view(-1)[1::9] = NAN
        if infinities:
            models[-1].view(-1)[2::7] = INF
            base.view(-1)[3::11] = -INF
    return base, models


def arithmetic():
    """(stored dtype, arithmetic dtype: None = float32 copies)."""
    return [(torch.float32, None), (torch.bfloat16, None), (torch.bfloat16, torch.bfloat16),
            (torch.float16, torch.float16)]


def run(method, base, models, dtype, arith, **params):
    base, models = base.to(dtype), [m.to(dtype) for m in models]
    b = base.to(arith) if arith else base.float()
    keep = b.clone()
    out = get_method(method).apply(b, Float32Copies(models, arith), **params)
    assert torch.equal(bits(b), bits(keep)), "the base was written to"
    return out, b, [m.to(arith) if arith else m.float() for m in models]


def plain_nearswap(base, other, t):
    w = (t / (base - other).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return w * other + (1 - w) * base


def plain_model_stock(base, models, filter_wise):
    shape = base.shape
    if not filter_wise:
        base, models = base.reshape(-1), [x.reshape(-1) for x in models]
    elif base.dim() == 1:
        base, models = base.unsqueeze(0), [x.unsqueeze(0) for x in models]
    offsets = [x - base for x in models]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(models)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, (n * cos) / torch.where(singular, 1.0, denominator))
    return (t * (sum(models) / n) + (1 - t) * base).reshape(shape)


def plain_sce(base, models, mean_squares=None):
    deltas = torch.stack(models) - base
    majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    agree = deltas.sign() == majority
    w = deltas.square().reshape(len(models), -1).mean(dim=1) if mean_squares is None else mean_squares
    total = torch.sum(w).item()
    w = torch.ones_like(w) / w.shape[0] if abs(total) < 1e-6 else w / total
    weights = w.view(-1, *([1] * (deltas.dim() - 1))) * agree
    return base + (deltas * weights).sum(dim=0) / torch.sum(weights, dim=0).clamp(min=1e-6)


def plain_ram(base, models, epsilon, r=None, alpha=None):
    """mergekit 0.1.5's two-term form; with r and alpha RAM+ (tensor-local)."""
    flat = (torch.stack(models) - base).reshape(len(models), -1)
    active = flat.abs() > epsilon
    kept, counts = flat * active, active.sum(dim=0, keepdim=True)
    unique = kept * (counts == 1)
    if r is not None:
        n_unique = (active & (counts == 1)).sum(dim=1)
        rho = ((active & (counts > 1)).sum(dim=1)) / n_unique.clamp(min=epsilon)
        unique = unique * (1 + r * rho.clamp(min=0, max=alpha)).unsqueeze(-1)
    shared = kept * (counts > 1) / counts.clamp(min=1)
    return base + (unique + shared).sum(dim=0, keepdim=True).reshape_as(base)


def plain_arcee_fusion(base, other):
    diff = (other - base).abs()
    P = torch.softmax(other, dim=-1) + 1e-8
    Q = torch.softmax(base, dim=-1) + 1e-8
    scores = diff * torch.sum(P * torch.log(P / Q), dim=-1, keepdim=True)
    z = torch.sort(scores.reshape(-1)).values
    q1, median, q3 = z[(torch.tensor([0.25, 0.5, 0.75]) * (z.numel() - 1)).long()]
    mask = (scores >= median + 1.5 * (q3 - q1)).float()
    return base + (other - base) * mask


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_nearswap_in_place_equals_plain_form(shape, special):
    base, models = inputs(shape, 1, 1, special)
    for dtype, arith in arithmetic():
        for t in (1e-3, 1e-4, 0.0, -1.0, 5.0):
            out, b, m = run("nearswap", base, models, dtype, arith, t=t)
            assert_same_bits(out, plain_nearswap(b, m[0], t))


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_model_stock_in_place_equals_plain_form(shape, special):
    for n in (2, 3):
        base, models = inputs(shape, n, 2, special)
        for dtype, arith in arithmetic():
            for filter_wise in (False, True):
                out, b, m = run("model_stock", base, models, dtype, arith, filter_wise=filter_wise)
                assert_same_bits(out, plain_model_stock(b, m, filter_wise))


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_sce_in_place_equals_plain_form(shape, special):
    for n in (1, 3):
        base, models = inputs(shape, n, 3, special)
        for dtype, arith in arithmetic():
            out, b, m = run("sce", base, models, dtype, arith)
            assert_same_bits(out, plain_sce(b, m))
        mean_squares = torch.tensor([1e-6, 3e-6, 2e-6][:n])  # a chunk's whole-tensor statistics, float32
        for dtype in (torch.float32, torch.float64):
            b, ms = base.to(dtype), [x.to(dtype) for x in models]
            out = get_method("sce").apply(b, ms, stats=TensorStats(tensor={"mean_squares": mean_squares}))
            assert_same_bits(out, plain_sce(b, ms, mean_squares))


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_ram_and_ramplus_tl_float_masks_equal_plain_form(shape, special):
    # no ±Inf: an infinite τ makes mergekit's shared term ∞·0 = NaN where the float32 form keeps ∞
    for n in (1, 3):
        base, models = inputs(shape, n, 5, special, infinities=False)
        for dtype, arith in arithmetic():
            for epsilon in (1e-5, 1e-3, 0.0):
                out, b, m = run("ram", base, models, dtype, arith, epsilon=epsilon)
                assert_same_bits(out, plain_ram(b, m, epsilon))
                for r, alpha in ((0.1, 0.2), (0.5, 0.3), (-0.5, 0.3)):
                    out, b, m = run("ramplus_tl", base, models, dtype, arith, epsilon=epsilon, r=r, alpha=alpha)
                    assert_same_bits(out, plain_ram(b, m, epsilon, r, alpha))


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_arcee_fusion_in_place_equals_plain_form(shape, special):
    base, models = inputs(shape, 1, 4, special)
    for dtype, arith in arithmetic():
        out, b, m = run("arcee_fusion", base, models, dtype, arith)
        assert_same_bits(out, plain_arcee_fusion(b, m[0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_arcee_fusion_numpy_sort_equals_torch_sort(dtype):
    z = torch.randn(20000, generator=torch.Generator().manual_seed(5)).to(dtype)
    z[::7], z[::11], z[::13], z[::17], z[::19] = NAN, INF, -0.0, 0.0, -INF
    expected, got = torch.sort(z).values, af._sorted(z)
    assert got.dtype == dtype and torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got[~got.isnan()], expected[~expected.isnan()])


@pytest.mark.parametrize("base_as_model", [False, True])
def test_gram_of_stored_dtypes_equals_gram_of_their_copies(base_as_model):
    # rows are converted straight into the Gram buffer: the same bits as from the float copies,
    # also where the models are stored in different dtypes (one rounding into the float32 rows)
    g = torch.Generator().manual_seed(6)
    base = torch.randn(5000, generator=g).bfloat16()
    models = [torch.randn(5000, generator=g).to(d) for d in (torch.bfloat16, torch.float64, torch.float16)]

    def chunks(b, ms):
        return lambda: iter([(s, b[s : s + 3000], [m[s : s + 3000] for m in ms]) for s in range(0, 5000, 3000)])
    copies = [m.float() if m.dtype != torch.float64 else m for m in models]
    got = gram(chunks(base, models), base_as_model=base_as_model)
    expected = gram(chunks(base.float(), copies), base_as_model=base_as_model)
    assert torch.equal(got.view(torch.int64), expected.view(torch.int64))
