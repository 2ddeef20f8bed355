"""End-to-end federated rounds on a tiny BERT against centralized closed forms."""

import pytest
import torch

from mergekit_het.errors import ConfigError
from mergekit_het.federated import load_federated_config, run_federated
from mergekit_het.models.classifier import build_classifier, trainable_state
from mergekit_het.federated.runner import load_data
from mergekit_het.runtime.batching import collate, encoder_inputs

LR = 0.1


def _full_batch_config(fed_config, **over):
    """Full participation, one local step on each client's whole data (unequal client sizes)."""
    return fed_config(**{
        "partition": {"scheme": "dirichlet", "num_clients": 4, "alpha": 1.0}, "clients_per_round": 4,
        "client": {"lr": LR, "batch_size": 1000, "local_epochs": 1}, **over,
    })  # fmt: skip


def _centralized(cfg, rounds: int, momentum: float = 0.0):
    """Heavy-ball SGD on the mean loss over the union: v ← μv + ∇L(x); x ← x − lr·v."""
    data = load_data(cfg)
    model = build_classifier(cfg.model, cfg.protocol, data.num_labels, cfg.seed)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    batch = collate(data.train, data.tokenizer)
    buf = {}
    for _ in range(rounds):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(**encoder_inputs(batch)).logits, batch["labels"]).backward()
        with torch.no_grad():
            for n, p in params.items():
                if p.grad is None:  # e.g. BERT's pooler, unused by mean pooling
                    continue
                buf[n] = momentum * buf[n] + p.grad if n in buf else p.grad.clone()
                p -= LR * buf[n]
    return trainable_state(model), data


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_fedavg_full_participation_one_step_equals_centralized_sgd(fed_config):
    cfg = load_federated_config(_full_batch_config(fed_config, rounds=1))
    result = run_federated(cfg, progress=False)
    expected, data = _centralized(cfg, rounds=1)
    assert len({len(p) for p in data.partition}) > 1  # clients of different sizes: weights matter
    assert _max_diff(result.global_state, expected) < 1e-6
    init = trainable_state(build_classifier(cfg.model, cfg.protocol, data.num_labels, cfg.seed))
    assert _max_diff(result.global_state, init) > 1e-3  # the step did something


def test_fedavg_uniform_weighting_differs_from_centralized(fed_config):
    cfg = load_federated_config(_full_batch_config(fed_config, rounds=1, **{"aggregate.weighting": "uniform"}))
    expected, _ = _centralized(cfg, rounds=1)
    assert _max_diff(run_federated(cfg, progress=False).global_state, expected) > 1e-5


def test_task_arithmetic_normalized_equals_linear_fedavg(fed_config):
    lin = run_federated(load_federated_config(fed_config()), progress=False)
    ta_cfg = fed_config(**{"aggregate.method": "task_arithmetic", "aggregate.parameters": {"normalize": True},
                           "output.dir": fed_config()["output"]["dir"] + "_ta"})  # fmt: skip
    ta = run_federated(load_federated_config(ta_cfg), progress=False)
    assert _max_diff(lin.global_state, ta.global_state) < 1e-6


def test_ghbm_tau1_equals_server_heavy_ball_and_centralized(fed_config):
    ghbm_cfg = load_federated_config(_full_batch_config(fed_config, rounds=3, ghbm={"beta": 0.9, "tau": 1}))
    ghbm = run_federated(ghbm_cfg, progress=False).global_state
    avgm_cfg = _full_batch_config(fed_config, rounds=3, **{"server.momentum": 0.9})
    avgm_cfg["output"]["dir"] += "_m"
    avgm = run_federated(load_federated_config(avgm_cfg), progress=False).global_state
    expected, _ = _centralized(ghbm_cfg, rounds=3, momentum=0.9)
    assert _max_diff(ghbm, expected) < 1e-5
    assert _max_diff(ghbm, avgm) < 1e-5
    plain, _ = _centralized(ghbm_cfg, rounds=3, momentum=0.0)
    assert _max_diff(ghbm, plain) > 1e-4  # the momentum mattered


def test_fedprox_mu0_equals_fedavg_and_mu_changes_result(fed_config):
    base = run_federated(load_federated_config(fed_config()), progress=False).global_state
    cfg0 = fed_config(**{"client.prox_mu": 0.0})
    cfg0["output"]["dir"] += "_0"
    assert _max_diff(run_federated(load_federated_config(cfg0), progress=False).global_state, base) == 0.0
    cfg1 = fed_config(**{"client.prox_mu": 1.0})
    cfg1["output"]["dir"] += "_1"
    assert _max_diff(run_federated(load_federated_config(cfg1), progress=False).global_state, base) > 1e-6


class _Killed(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(fed_config, tmp_path):
    over = {"rounds": 4, "ghbm": {"beta": 0.9, "tau": 2}, "server.momentum": 0.5,
            "partition": {"scheme": "dirichlet", "num_clients": 4, "alpha": 0.5}}  # fmt: skip
    full = run_federated(load_federated_config(fed_config(**over, **{"output.dir": str(tmp_path / "a")})), progress=False)
    cfg = load_federated_config(fed_config(**over, **{"output.dir": str(tmp_path / "b")}))

    def kill(rnd, _entry):
        if rnd == 2:
            raise _Killed

    with pytest.raises(_Killed):
        run_federated(cfg, on_round=kill, progress=False)
    assert not (tmp_path / "b").exists()  # nothing published by the killed run
    resumed = run_federated(cfg, progress=False)
    assert all(torch.equal(full.global_state[k], resumed.global_state[k]) for k in full.global_state)
    assert [h["clients"] for h in full.history[1:]] == [h["clients"] for h in resumed.history[1:]]
    assert (tmp_path / "b" / "history.json").is_file() and (tmp_path / "b" / "accuracy.png").is_file()


def test_existing_output_without_overwrite_raises(fed_config, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        run_federated(load_federated_config(fed_config()), progress=False)


@pytest.mark.parametrize("over,msg", [
    ({"aggregate.method": "tie"}, "did you mean 'ties'"),
    ({"aggregate.parameters": {"densty": 0.5}, "aggregate.method": "ties"}, "is not a parameter of ties"),
    ({"clients_per_round": 9}, "exceeds partition.num_clients"),
    ({"aggregate.method": "ties", "aggregate.model_parameters": {"lambda": 1.0}}, "'lambda' is a global parameter"),
    ({"aggregate.method": "ties", "aggregate.model_parameters": {"density": -0.5}}, "density: -0.5 is out of range"),
    ({"aggregate.model_parameters": {"weight": 2.0}}, "weight is set per model from aggregate.weighting"),
])  # fmt: skip
def test_config_bad_values_raise_one_line(fed_config, over, msg):
    with pytest.raises(ConfigError, match=msg):
        load_federated_config(fed_config(**over))


def test_resume_with_changed_result_keys_is_refused_naming_them(fed_config, tmp_path):
    """A killed run resumed with another seed and client lr is refused (keys and values named);
    rounds may grow; allow_config_change resumes anyway."""
    def kill(rnd, _entry):
        if rnd == 1:
            raise _Killed

    with pytest.raises(_Killed):
        run_federated(load_federated_config(fed_config()), on_round=kill, progress=False)
    changed = fed_config(seed=3, rounds=3, **{"client.lr": 0.2})
    with pytest.raises(ConfigError, match=r"client\.lr: 0\.1 -> 0\.2, seed: 0 -> 3\).*--allow-config-change") as err:
        run_federated(load_federated_config(changed), progress=False)
    assert "rounds" not in str(err.value)
    done = run_federated(load_federated_config({**changed, "allow_config_change": True}), progress=False)
    assert [h["round"] for h in done.history] == [0, 1, 2, 3]


def test_nan_in_aggregation_names_the_round_and_no_merge_cli_option(fed_config):
    from mergekit_het.errors import TensorError
    from mergekit_het.federated.strategy import ClientUpdate, build_strategy

    strategy = build_strategy(load_federated_config(fed_config()))
    x = {"w": torch.zeros(3)}
    updates = [ClientUpdate(2, 5, {"w": torch.tensor([1.0, float("nan"), 0.0])}, 1, 0.0),
               ClientUpdate(3, 5, {"w": torch.ones(3)}, 1, 0.0)]  # fmt: skip
    with pytest.raises(TensorError, match=r"round 4: aggregating clients \[2, 3\] failed: w: .*lower client\.lr") as err:
        strategy.aggregate(x, updates, rnd=3)
    assert "--nan-policy" not in str(err.value)
