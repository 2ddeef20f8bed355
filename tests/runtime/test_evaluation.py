"""runtime.evaluation: the one eval loop, checked against hand-computed sums."""

import math

import pytest
import torch

from mergekit_het.runtime.evaluation import eval_mode, evaluate_batches

# 4 rows, 2 classes; logits chosen by hand: rows 0, 2 correct, rows 1, 3 wrong
LOGITS = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
LABELS = torch.tensor([0, 1, 1, 1])


def _batches(order: list[int], size: int):
    for i in range(0, len(order), size):
        idx = torch.tensor(order[i : i + size])
        yield idx, {"row": idx, "labels": LABELS[idx]}


def _ce(logit: list[float], y: int) -> float:
    return math.log(sum(math.exp(v) for v in logit)) - logit[y]


def test_evaluate_batches_sums_and_predictions_in_row_order():
    totals = evaluate_batches(lambda b: LOGITS[b["row"]], _batches([2, 0, 3, 1], 3), num_rows=4)
    assert totals.count == 4 and totals.accuracy == 0.5
    want = sum(_ce(LOGITS[i].tolist(), int(LABELS[i])) for i in range(4)) / 4
    assert totals.mean_loss == pytest.approx(want, rel=1e-6)
    assert totals.preds.tolist() == [0, 0, 1, 0]  # argmax per row, back in row order (ties: first)
    assert totals.labels.tolist() == LABELS.tolist()


def test_evaluate_batches_labels_never_reach_the_model_and_reduce_is_applied():
    seen = []

    def logits(b):
        seen.append(set(b))
        return LOGITS[b["row"]]

    totals = evaluate_batches(logits, _batches([0, 1, 2, 3], 2), reduce=lambda s: 2 * s)
    assert seen == [{"row"}, {"row"}]
    assert totals.count == 8 and totals.accuracy == 0.5  # two identical "processes"
    assert totals.preds is None


def test_evaluate_batches_causal_lm_counts_next_tokens_without_padding():
    # one sequence of 3 tokens, vocabulary 2: positions 0, 1 predict tokens 1, 2; the last label is padding
    logits = torch.tensor([[[0.0, 5.0], [5.0, 0.0], [0.0, 0.0]]])
    batch = {"labels": torch.tensor([[0, 1, -100]]), "x": torch.zeros(1)}
    totals = evaluate_batches(lambda b: logits, [(torch.tensor([0]), batch)], causal_lm=True)
    assert totals.count == 1  # only position 0 -> label 1 counts
    assert totals.accuracy == 1.0
    assert totals.mean_loss == pytest.approx(_ce([0.0, 5.0], 1), rel=1e-6)


def test_eval_mode_restores_training_mode():
    m = torch.nn.Dropout().train()
    with eval_mode(m):
        assert not m.training
    assert m.training
    with pytest.raises(RuntimeError), eval_mode(m):
        raise RuntimeError
    assert m.training
