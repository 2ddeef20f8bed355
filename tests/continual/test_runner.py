import json

import pytest
import torch

from mergekit_het.continual import load_continual_config, run_continual
from mergekit_het.continual.federated_link import weight_gap
from mergekit_het.continual.strategies import DivergedError, step_seed
from mergekit_het.errors import ConfigError
from mergekit_het.federated.strategy import client_seed

ALL = [{"name": "finetune"}, {"name": "ewc", "lam": 10.0, "samples": 4}, {"name": "replay", "memory": 8},
       {"name": "merge", "method": "ties", "model_parameters": {"density": 0.5}}, {"name": "joint"}, {"name": "federated"}]  # fmt: skip


@pytest.mark.slow
def test_suite_writes_matrices_summaries_table_and_plots(cl_config, tmp_path):
    res = run_continual(load_continual_config(cl_config(strategies=ALL)), progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(saved["runs"]) == 2 * len(ALL)
    for run in saved["runs"]:
        ci, ti = run["class_incremental"], run["task_incremental"]
        if run["strategy"] == "joint":  # one step over both experiences
            assert len(ci) == 1 and run["summary"]["class_incremental"]["forgetting"] is None
            continue
        assert ci[0][1] is None and None not in ci[1]
        (a00, _), (a10, a11) = ci
        s = run["summary"]["class_incremental"]  # two experiences: one term each
        assert s["average_accuracy"] == pytest.approx((a10 + a11) / 2, abs=1e-12)
        assert s["forgetting"] == pytest.approx(a00 - a10, abs=1e-12)
        assert s["backward_transfer"] == pytest.approx(a10 - a00, abs=1e-12)
        # task-incremental scoring chooses among fewer classes: never below class-incremental
        assert all(t >= c for rt, rc in zip(ti, ci) for t, c in zip(rt, rc) if c is not None)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| merge:ties |" in table and "Federated (one client per round" in table
    assert (tmp_path / "out" / "matrix_finetune.png").is_file() and (tmp_path / "out" / "accuracy_vs_experience.png").is_file()
    fed = res.report["data"]["federated_vs_finetune"]
    assert fed["schedules"] == 2 and fed["max_relative_weight"] < 1e-3


def test_federated_one_client_one_round_is_finetuning_up_to_rounding(cl_config, tmp_path):
    """One experience: the federated round (client program + engine linear merge of one model +
    server step x − (x − θ)) equals the sequential fine-tuning step up to float32 rounding of the
    server arithmetic (≤ 1e-6 on weights of order 1); the step seeds are the federated client's."""
    assert all(step_seed(s, t) == client_seed(s, t, t) for s in (0, 3) for t in range(4))
    res = run_continual(load_continual_config(cl_config(
        strategies=[{"name": "finetune"}, {"name": "federated"}],
        stream={"by": "classes", "experience_sizes": [[4]], "schedules": 1})), progress=False)  # fmt: skip
    ft, fl = (next(r for r in res.runs if r.label == lab).artifacts["state"] for lab in ("finetune", "federated"))
    assert weight_gap(fl, ft)["max_abs"] <= 1e-6


@pytest.mark.slow
def test_merge_linear_of_two_experts_is_their_mean(cl_config, tmp_path):
    """Merge-as-you-go with `linear` (uniform): after two experiences the running model is
    (θ1 + θ2)/2 = θ0 + ½(τ1 + τ2), which task_arithmetic with λ = 0.5 must reproduce."""
    one = {"by": "classes", "experience_sizes": [[2, 2]], "schedules": 1}
    lin = run_continual(load_continual_config(cl_config(strategies=[{"name": "merge", "method": "linear"}, {"name": "finetune"}],
                                                        stream=one, output={"dir": str(tmp_path / "l")})), progress=False)  # fmt: skip
    ta = run_continual(load_continual_config(cl_config(
        strategies=[{"name": "merge", "method": "task_arithmetic", "parameters": {"lambda": 0.5}}],
        stream=one, output={"dir": str(tmp_path / "t")})), progress=False)  # fmt: skip
    a, b = (next(r for r in x.runs if r.label.startswith("merge")) for x in (lin, ta))
    assert a.class_incremental == b.class_incremental and a.final_accuracy == b.final_accuracy


@pytest.mark.parametrize("over,msg", [
    ({"stream": {"by": "classes", "experience_sizes": [[2, 1]]}}, "sum to 3"),
    ({"stream": {"by": "classes", "experience_sizes": [[2, 2], [4]]}}, "same number of experiences"),
    ({"stream": {"by": "tasks", "experience_sizes": [[4]]}}, "apply to stream.by: classes"),
    ({"stream": {"by": "classes", "experiences": 5}}, "at least as many classes"),
    ({"stream": {"by": "classes"}}, "exactly one of"),
    ({"strategies": [{"name": "finetune"}, {"name": "finetune"}]}, "listed twice"),
    ({"strategies": [{"name": "merge", "method": "tie"}]}, "tie"),
    ({"strategies": [{"name": "sgd"}]}, "sgd"),
    ({"device": "gpu"}, "is not a device"),
])  # fmt: skip
def test_bad_config_is_one_line(cl_config, over, msg):
    with pytest.raises(ConfigError, match=msg):
        run_continual(load_continual_config(cl_config(**over)), progress=False)


def test_reduced_applies_the_config_overlay(cl_config):
    cfg = load_continual_config(cl_config(reduced={"stream": {"schedules": 1}, "train": {"steps": 1}}), ["train.lr=0.2"], reduced=True)
    assert cfg.stream.schedules == 1 and cfg.train.steps == 1 and cfg.train.lr == 0.2
    assert load_continual_config(cl_config(reduced={"stream": {"schedules": 1}})).stream.schedules == 2


@pytest.mark.parametrize("strategy", [{"name": "finetune"}, {"name": "ewc", "lam": 10.0, "samples": 4}])
def test_diverged_training_is_one_line_naming_strategy_schedule_and_experience(cl_config, strategy):
    """lr = 1e38: the first step's update overflows float32, so the weights are non-finite
    after experience 0 (EWC: before its Fisher samples from NaN probabilities)."""
    cfg = cl_config(strategies=[strategy], train={"lr": 1e38}, stream={"by": "classes", "experience_sizes": [[2, 2]], "schedules": 1})
    with pytest.raises(DivergedError, match=rf"strategy '{strategy['name']}' diverged on schedule 0, experience '[^']+': .*lower train.lr") as err:
        run_continual(load_continual_config(cfg), progress=False)
    assert "\n" not in str(err.value)
