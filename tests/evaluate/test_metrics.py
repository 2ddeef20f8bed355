import pytest

from mergekit_het.errors import MergekitHetError
from mergekit_het.evaluate import metrics


def test_accuracy_always_class0_on_balanced_two_class_is_half():
    assert metrics.accuracy([0, 0, 0, 0], [0, 1, 0, 1]) == 0.5


def test_macro_f1_always_class0_on_balanced_two_class_is_one_third():
    # class 0: precision 1/2, recall 1 -> F1 2/3; class 1: F1 0 -> mean 1/3
    assert metrics.macro_f1([0, 0, 0, 0], [0, 1, 0, 1]) == pytest.approx(1 / 3)


def test_macro_f1_hand_computed_three_classes():
    preds, labels = [0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 1, 0]
    # F1_c = 2TP / (2TP + FP + FN): c0 2/3, c1 2/4, c2 2/5
    assert metrics.macro_f1(preds, labels) == pytest.approx((2 / 3 + 1 / 2 + 2 / 5) / 3)


def test_normalized_accuracy_reference_example_is_0_75():
    assert metrics.normalized_accuracy([0.5, 0.9], [1.0, 0.9]) == pytest.approx(0.75)


def test_normalized_accuracy_expert_on_itself_is_one():
    assert metrics.normalized_accuracy([0.81, 0.37], [0.81, 0.37]) == 1.0


def test_normalized_accuracy_length_mismatch_raises():
    with pytest.raises(MergekitHetError, match="one expert accuracy per task"):
        metrics.normalized_accuracy([0.5], [1.0, 0.9])


def test_normalize_columns_divides_by_reference():
    assert metrics.normalize_columns([[0.5, 0.3], [0.25, 0.6]], [0.5, 0.3]) == [[1.0, 1.0], [0.5, 2.0]]


def test_disentanglement_error_identical_predictions_is_zero():
    assert metrics.disentanglement_error([[0, 1, 2], [1, 1]], [[0, 1, 2], [1, 1]]) == 0.0


def test_disentanglement_error_sums_disagreement_over_tasks():
    assert metrics.disentanglement_error([[0, 1, 2, 3], [1, 1]], [[0, 1, 0, 0], [0, 1]]) == 0.5 + 0.5


def test_continual_summaries_hand_computed():
    r = [[0.9, 0.1, 0.2],
         [0.6, 0.8, 0.1],
         [0.5, 0.7, 0.9]]
    assert metrics.average_accuracy(r) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    # forgetting: max over steps 0..1 minus final, tasks 0..1: (0.9-0.5 + 0.8-0.7)/2
    assert metrics.forgetting(r) == pytest.approx(0.25)
    # BWT: (0.5-0.9 + 0.7-0.8)/2
    assert metrics.backward_transfer(r) == pytest.approx(-0.25)


def test_continual_summaries_non_square_raises():
    with pytest.raises(MergekitHetError, match="T x T"):
        metrics.forgetting([[0.1, 0.2]])
