import json

import pytest
import torch

from mergekit_het.continual import load_continual_config, run_continual
from mergekit_het.errors import ConfigError
from mergekit_het.continual.metrics import summarize


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_merge_linear_equals_task_arithmetic_half_on_two_experts(cl_config, tmp_path):
    lin = run_continual(load_continual_config(cl_config(strategy="merge", output={"dir": str(tmp_path / "l")})), progress=False)
    ta = run_continual(load_continual_config(cl_config(
        strategy="merge", merge={"method": "task_arithmetic", "parameters": {"lambda": 0.5}},
        output={"dir": str(tmp_path / "t")})), progress=False)  # fmt: skip
    assert _max_diff(lin.state, ta.state) < 1e-6  # (θ1 + θ2)/2 = θ0 + ½(τ1 + τ2)
    ties = run_continual(load_continual_config(cl_config(
        strategy="merge", merge={"method": "ties", "model_parameters": {"density": 0.3}},
        output={"dir": str(tmp_path / "x")})), progress=False)  # fmt: skip
    assert _max_diff(lin.state, ties.state) > 1e-4


def test_summary_matches_hand_computed_numbers():
    """R = [[.75], [.875, 1], [.25, .5, .875]] (unseen entries None): average accuracy = mean of
    the last row = 1.625/3; forgetting = mean over j < 2 of (best earlier R[i][j]) − R[2][j] =
    ((.875 − .25) + (1 − .5))/2 = .5625 (the best of task 0 came after it was learned);
    BWT = mean of R[2][j] − R[j][j] = ((.25 − .75) + (.5 − 1))/2 = −.5."""
    s = summarize([[0.75, None, None], [0.875, 1.0, None], [0.25, 0.5, 0.875]])
    assert s["average_accuracy"] == pytest.approx(1.625 / 3, abs=1e-12)
    assert s["forgetting"] == pytest.approx(0.5625, abs=1e-12)
    assert s["backward_transfer"] == pytest.approx(-0.5, abs=1e-12)
    assert summarize([[0.5]]) == {"average_accuracy": 0.5, "forgetting": 0.0, "backward_transfer": 0.0}


def test_finetune_with_ewc_writes_matrix_and_summaries(cl_config, tmp_path):
    cfg = load_continual_config(cl_config(strategy="finetune", ewc={"lam": 10.0, "samples": 8}))
    res = run_continual(cfg, progress=False)
    (a00, _), (a10, a11) = res.matrix
    assert res.matrix[0][1] is None and None not in res.matrix[1]
    assert all(0.0 <= v <= 1.0 for v in (a00, a10, a11))
    saved = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert saved["accuracy"] == res.matrix and (tmp_path / "out" / "accuracy_matrix.png").is_file()
    # two experiences: the formulas reduce to one term each
    assert saved["average_accuracy"] == pytest.approx((a10 + a11) / 2, abs=1e-12)
    assert saved["forgetting"] == pytest.approx(a00 - a10, abs=1e-12)
    assert saved["backward_transfer"] == pytest.approx(a10 - a00, abs=1e-12)


def test_finetune_ewc_lambda0_equals_plain_sequential(cl_config, tmp_path):
    plain = run_continual(load_continual_config(cl_config(strategy="finetune", output={"dir": str(tmp_path / "p")})), progress=False)
    zero = run_continual(load_continual_config(cl_config(strategy="finetune", ewc={"lam": 0.0, "samples": 4},
                                                         output={"dir": str(tmp_path / "z")})), progress=False)  # fmt: skip
    assert all(torch.equal(plain.state[k], zero.state[k]) for k in plain.state)


@pytest.mark.parametrize("over,msg", [
    ({"stream": {"split": "toy", "classes": [[0, 1], [1, 2]]}}, "disjoint"),
    ({"stream": {"split": "toy", "classes": [[0, 9]]}}, "outside"),
    ({"stream": {"split": "toy", "classes": [[0], [1]], "order": [0, 0]}}, "permutation"),
    ({"strategy": "merge", "ewc": {"lam": 1.0}}, "ewc applies"),
])  # fmt: skip
def test_config_bad_stream_raises(cl_config, over, msg):
    with pytest.raises(ConfigError, match=msg):
        run_continual(load_continual_config(cl_config(**over)), progress=False)
