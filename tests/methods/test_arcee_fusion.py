"""arcee_fusion against hand computations (addendum §10.5, §10.8 item 4)."""

import torch

from mergekit_het.methods import arcee_fusion as af
from mergekit_het.methods import get_method

T = torch.tensor


def fusion(base, other, generator=None):
    return get_method("arcee_fusion").apply(base, [other], generator=generator)


def test_arcee_fusion_schema_no_parameters():
    m = get_method("arcee_fusion")
    assert m.params == {} and m.base == "required" and m.max_models == 1


def test_arcee_fusion_mostly_zero_importance_takes_every_change():
    # one changed entry of four: ≥ ¾ of I is 0, the threshold is 0, all of p is taken
    p = T([[1.0, 2.0], [3.0, 9.0]])
    assert torch.equal(fusion(T([[1.0, 2.0], [3.0, 4.0]]), p), p)


def test_arcee_fusion_keeps_outlier_changes_only():
    # 1-D: one KL scalar k scales |p − b| = [0,0,0,0,0,1,2,10]; sorted, q(¼) = z[1] = 0,
    # q(½) = z[3] = 0, q(¾) = z[5] = k → threshold 1.5k keeps the changes 2 and 10
    p = T([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 10.0])
    out = fusion(torch.zeros(8), p)
    torch.testing.assert_close(out, T([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 10.0]))


def test_arcee_fusion_identical_models_give_base():
    b = T([[0.5, -1.0, 2.0], [1.0, 1.0, 0.0]])
    assert torch.equal(fusion(b, b.clone()), b)


def test_arcee_fusion_threshold_sample_follows_the_generator(monkeypatch):
    monkeypatch.setattr(af, "QUANTILE_SAMPLE", 8)
    g = torch.Generator().manual_seed(0)
    b, p = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    one = fusion(b, p.clone(), torch.Generator().manual_seed(5))
    assert torch.equal(one, fusion(b, p.clone(), torch.Generator().manual_seed(5)))
    scores = af.importance(p, b)
    thresholds = {float(af.fusion_threshold(scores, torch.Generator().manual_seed(s))) for s in range(6)}
    assert len(thresholds) > 1  # a sample, not the whole tensor
