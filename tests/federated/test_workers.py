"""Parallel client training (worker processes) against the sequential in-process round."""

import pytest
import torch
from fed_fixtures import NUM_LABELS

from mergekit_het.errors import ConfigError, MergekitHetError
from mergekit_het.federated import load_federated_config, run_federated
from mergekit_het.models.classifier import build_classifier, trainable_state


def test_worker_pool_two_cpu_workers_equal_sequential_bit_for_bit(fed_config, tmp_path):
    over = {"rounds": 3, "clients_per_round": 3, "threads": 1, "ghbm": {"beta": 0.9, "tau": 2},
            "client.prox_mu": 0.1, "partition": {"scheme": "dirichlet", "num_clients": 4, "alpha": 0.5}}  # fmt: skip
    seq = run_federated(load_federated_config(fed_config(**over, **{"output.dir": str(tmp_path / "seq")})), progress=False)
    par_cfg = load_federated_config(fed_config(**over, client_devices=["cpu", "cpu"], **{"output.dir": str(tmp_path / "par")}))
    par = run_federated(par_cfg, progress=False)
    assert [h["clients"] for h in par.history[1:]] == [h["clients"] for h in seq.history[1:]]
    assert [h["train_loss"] for h in par.history[1:]] == [h["train_loss"] for h in seq.history[1:]]
    assert all(torch.equal(par.global_state[k], seq.global_state[k]) for k in seq.global_state)
    init = trainable_state(build_classifier(par_cfg.model, par_cfg.protocol, NUM_LABELS, par_cfg.seed))
    assert max(float((par.global_state[k] - init[k]).abs().max()) for k in init) > 1e-3  # clients trained


def test_worker_pool_missing_cuda_device_raises_one_line(fed_config):
    if torch.cuda.device_count() > 7:
        pytest.skip("this host has a cuda:7")
    with pytest.raises(MergekitHetError, match="cuda:7' is not available"):
        run_federated(load_federated_config(fed_config(client_devices=["cuda:7"])), progress=False)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0"])
def test_config_bad_device_raises_one_line(fed_config, device):
    with pytest.raises(ConfigError, match="is not a device"):
        load_federated_config(fed_config(client_devices=[device]))
