import pytest
import torch

from mergekit_het.continual.evaluation import accuracy_rows, final_accuracy
from mergekit_het.continual.metrics import mean_std, summarize
from mergekit_het.continual.stream import Experience, Schedule


def test_class_incremental_vs_task_incremental_on_a_hand_made_case():
    """4 classes, experience 0 = {0, 1}, experience 1 = {2, 3}; eval rows 0-1 belong to e0, 2-3 to e1.
    Row 0 (y=0): logits favour 2 overall, 0 within {0,1}: after step 0 (seen {0,1}) right; after
    step 1 (seen all) wrong class-incrementally, right task-incrementally. Row 1 (y=1): argmax 1 always.
    Row 2 (y=2): favours 1 overall, 3 within {2,3}: wrong both ways. Row 3 (y=3): 3 everywhere."""
    logits = torch.tensor([[0.5, 0.1, 0.9, 0.0],
                           [0.0, 1.0, 0.2, 0.3],
                           [0.1, 0.9, 0.2, 0.4],
                           [0.0, 0.0, 0.0, 1.0]])  # fmt: skip
    labels = torch.tensor([0, 1, 2, 3])
    sched = Schedule(0, [Experience("e0", [0, 1], [], [0, 1]), Experience("e1", [2, 3], [], [2, 3])], chunk=1)
    assert accuracy_rows(logits, labels, sched, 0) == ([1.0], [1.0])
    ci, ti = accuracy_rows(logits, labels, sched, 1)
    assert ci == [0.5, 0.5] and ti == [1.0, 0.5]
    assert final_accuracy(logits, labels, sched) == 0.5


def test_summaries_match_hand_computed_numbers():
    """R = [[.75], [.875, 1], [.25, .5, .875]]: average accuracy = 1.625/3; forgetting = mean over
    j < 2 of (best earlier R[i][j]) − R[2][j] = ((.875 − .25) + (1 − .5))/2 = .5625 (task 0's best
    came after it was learned); BWT = ((.25 − .75) + (.5 − 1))/2 = −.5."""
    s = summarize([[0.75, None, None], [0.875, 1.0, None], [0.25, 0.5, 0.875]])
    assert s["average_accuracy"] == pytest.approx(1.625 / 3, abs=1e-12)
    assert s["forgetting"] == pytest.approx(0.5625, abs=1e-12)
    assert s["backward_transfer"] == pytest.approx(-0.5, abs=1e-12)
    assert summarize([[0.5]]) == {"average_accuracy": 0.5, "forgetting": 0.0, "backward_transfer": 0.0}
    # joint training: one row over 3 experiences has no forgetting or BWT
    assert summarize([[0.5, 0.25, 0.75]]) == {"average_accuracy": 0.5, "forgetting": None, "backward_transfer": None}


def test_mean_std_is_the_sample_std():
    m, s = mean_std([0.2, 0.4, None, 0.9])
    assert m == pytest.approx(0.5) and s == pytest.approx(((0.09 + 0.01 + 0.16) / 2) ** 0.5)
    assert mean_std([0.3]) == (0.3, 0.0) and mean_std([None]) is None
