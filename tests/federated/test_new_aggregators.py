"""TSV-M / Iso-C / Iso-CTS as federated aggregators: the config validates, a round runs, and the
server's aggregate is the method applied to the clients' task vectors with weights = example counts."""

import pytest
import torch

from mergekit_het.federated import load_federated_config, run_federated
from mergekit_het.federated.strategy import ClientUpdate, build_strategy
from mergekit_het.methods import get_method


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_aggregate_is_the_method_over_client_models_weighted_by_examples(fed_config, method):
    strategy = build_strategy(load_federated_config(fed_config(**{"aggregate.method": method,
                                                                  "aggregate.parameters": {"alpha": 0.5}})))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    x = {"w": torch.randn(6, 4, generator=gen), "b": torch.randn(4, generator=gen)}
    clients = [{k: v + torch.randn(v.shape, generator=gen) for k, v in x.items()} for _ in range(3)]
    updates = [ClientUpdate(i, n, c, 1, 0.0) for i, (n, c) in enumerate(zip([10, 30, 20], clients))]
    out = strategy.aggregate(x, updates, rnd=0)
    for k in x:
        expected = get_method(method).apply(x[k], [c[k] for c in clients], weight=[10.0, 30.0, 20.0], alpha=0.5)
        assert torch.equal(out[k], expected)


def test_tsv_federated_round_runs(fed_config):
    cfg = load_federated_config(fed_config(rounds=1, **{"aggregate.method": "tsv"}))
    result = run_federated(cfg, progress=False)
    assert all(bool(torch.isfinite(v).all()) for v in result.global_state.values())


def test_tsv_aggregate_bad_parameter_refused(fed_config):
    with pytest.raises(Exception, match="common_space_fraction"):
        load_federated_config(fed_config(**{"aggregate.method": "iso_cts", "aggregate.parameters": {"common_space_fraction": 2}}))
