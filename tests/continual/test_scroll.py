import torch

from mergekit_het.continual import load_continual_config, run_continual
from mergekit_het.continual.scroll import ScrollClassifier
from mergekit_het.models.ridge import fit_ridge

SCROLL = [{"name": "scroll", "memory": 8, "steps": 2, "batch_size": 4}]


def test_ridge_of_any_schedule_equals_the_pooled_ridge():
    """Stage 1 fed in any order and any chunking = ridge on the pooled data: float64 statistics,
    so the only difference is summation order (tolerance 1e-10 absolute on weights of order 1)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 6, generator=g), torch.randint(0, 5, (60,), generator=g)
    ref = fit_ridge(x, y, 5)
    for chunk, seed in ((1, 1), (7, 2), (60, 3)):
        perm = torch.randperm(60, generator=torch.Generator().manual_seed(seed))
        s = ScrollClassifier(6, 5)
        by_class = torch.cat([perm[y[perm] == c] for c in (3, 1, 4, 0, 2)])  # class-incremental order
        s.observe(x[by_class], y[by_class], chunk_size=chunk)
        assert torch.allclose(s.head().weight, ref.weight, rtol=0, atol=1e-10)
        assert torch.allclose(s.head().bias, ref.bias, rtol=0, atol=1e-10)


def test_suite_stage1_identical_across_schedules_and_stage2_buffer_balanced(cl_config, tmp_path):
    """Two schedules (different class order, experience sizes 2-2 / 1-3, chunks 4 / 5): the final
    stage-1 classifier is the same (≤ 1e-9; features are float32, statistics float64); the replay
    buffer of stage 2 ends class-balanced with ⌊8/4⌋ = 2 examples per class and the same content."""
    res = run_continual(load_continual_config(cl_config(strategies=SCROLL)), progress=False)
    inv = res.report["data"]["scroll_invariance"]
    assert inv["schedules"] == 2 and inv["max_abs_weight"] <= 1e-9 and inv["max_abs_bias"] <= 1e-9
    runs = [r for r in res.runs if r.label == "scroll"]
    assert [r.experiences for r in runs][0] != [r.experiences for r in runs][1]
    assert all(r.artifacts["buffer_counts"] == {c: 2 for c in range(4)} for r in runs)
    stage1 = [r.final_accuracy for r in res.runs if r.label == "scroll:stage1"]
    assert stage1[0] == stage1[1]  # same classifier, same eval pool: the same final accuracy


def test_stage2_with_zero_steps_is_exactly_the_ridge_predictor(cl_config):
    """steps: 0 (and nothing held out) adapts nothing, so SCROLL predicts with the stage-1
    ridge classifier: identical matrices and final accuracy (ALGORITHMS-addendum §16.4, test 4)."""
    res = run_continual(load_continual_config(cl_config(
        strategies=[{"name": "scroll", "memory": 40, "steps": 0, "validation": 0.0}],
        stream={"by": "classes", "experience_sizes": [[2, 2]], "schedules": 1})), progress=False)  # fmt: skip
    s2, s1 = (next(r for r in res.runs if r.label == lab) for lab in ("scroll", "scroll:stage1"))
    assert s2.artifacts["accepted"] == [False, False]
    assert s2.class_incremental == s1.class_incremental and s2.final_accuracy == s1.final_accuracy


def test_stage2_starts_as_the_stage1_predictor(cl_bert):
    """Stage 2's starting network (pretrained encoder, head = the ridge W̃ in float32, logits / T)
    predicts exactly what the stage-1 ridge classifier predicts from the pretrained features, so
    any accepted adaptation is a change from stage 1, not from a different head."""
    from mergekit_het.models.classifier import PooledClassifier, set_head
    from mergekit_het.models.encoder import load_encoder

    torch.manual_seed(0)
    model = PooledClassifier(load_encoder(str(cl_bert)), 5, 0.1).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, 60, (40, 12), generator=g), "attention_mask": torch.ones(40, 12, dtype=torch.long)}
    with torch.no_grad():
        feats = model.features(**batch)
        s = ScrollClassifier(feats.shape[1], 5)
        s.observe(feats, torch.arange(40) % 5, chunk_size=7)
        set_head(model, s.head().to(torch.float32))
        logits = model(**batch).logits
    assert torch.equal(logits.argmax(-1), s.head()(feats).argmax(-1))
    torch.testing.assert_close(logits.double() * 0.1, s.head()(feats), rtol=0, atol=1e-5)
