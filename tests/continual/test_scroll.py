import torch

from mergekit_het.continual import load_continual_config, run_continual
from mergekit_het.continual.scroll import ScrollClassifier
from mergekit_het.models.ridge import fit_ridge


def test_scroll_classifier_any_chunking_equals_batch_ridge():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    perm = torch.randperm(50, generator=g)
    a, b = ScrollClassifier(6, 3), ScrollClassifier(6, 3)
    a.observe(x, y, chunk_size=1)
    b.observe(x[perm], y[perm], chunk_size=17)
    ref = fit_ridge(x, y, 3)
    for s in (a, b):
        assert torch.allclose(s.head().weight, ref.weight, atol=1e-10)
        assert torch.allclose(s.head().bias, ref.bias, atol=1e-10)


def test_scroll_two_schedules_give_identical_classifier(cl_config, tmp_path):
    one = run_continual(load_continual_config(cl_config(
        strategy="scroll", stream={"split": "toy", "classes": [[0, 1], [2, 3]]}, scroll={"chunk_size": 5},
        output={"dir": str(tmp_path / "a")})), progress=False)  # fmt: skip
    two = run_continual(load_continual_config(cl_config(
        strategy="scroll", stream={"split": "toy", "classes": [[3], [1, 2], [0]], "order": [2, 0, 1]},
        scroll={"chunk_size": 7}, output={"dir": str(tmp_path / "b")})), progress=False)  # fmt: skip
    assert one.experiences != two.experiences  # really a different schedule
    assert torch.allclose(one.scroll_head.weight, two.scroll_head.weight, rtol=0, atol=1e-9)
    assert torch.allclose(one.scroll_head.bias, two.scroll_head.bias, rtol=0, atol=1e-9)
    assert len(two.matrix) == 3 and two.matrix[0][1] is None and two.matrix[2][0] is not None
